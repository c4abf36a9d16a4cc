"""Masks and label maps on the wire: PNG as base64, COCO RLE as JSON.

PNG encoding and decoding need only OpenCV (a base dependency), so the labelling client can
read every answer; COCO RLE encoding uses pycocotools (the ``serve`` extra) on the server.
"""

from __future__ import annotations

import base64
from typing import Any

import cv2
import numpy as np

from icas_ray.errors import InputError

__all__ = ["decode_label_png", "decode_mask_png", "encode_label_png", "encode_mask_png",
           "encode_rle", "decode_rle"]


def encode_mask_png(mask: np.ndarray) -> str:
    """``(H, W) bool`` -> base64 of a 1-channel 8-bit PNG (255 = inside)."""
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:  # pragma: no cover - OpenCV always encodes 2-D uint8
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def decode_mask_png(data: str) -> np.ndarray:
    """Inverse of :func:`encode_mask_png`: ``(H, W) bool``."""
    arr = _decode_png(data, cv2.IMREAD_GRAYSCALE)
    return arr > 127


def encode_label_png(labels: np.ndarray) -> str:
    """``(H, W) int32`` label map -> base64 of a 16-bit grayscale PNG (labels < 65536)."""
    if labels.size and int(labels.max()) > 65535:
        raise ValueError(f"{int(labels.max())} segments do not fit a 16-bit PNG")
    ok, buf = cv2.imencode(".png", labels.astype(np.uint16))
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def decode_label_png(data: str) -> np.ndarray:
    """Inverse of :func:`encode_label_png`: ``(H, W) int32``."""
    return _decode_png(data, cv2.IMREAD_UNCHANGED).astype(np.int32)


def _decode_png(data: str, flags: int) -> np.ndarray:
    try:
        raw = np.frombuffer(base64.b64decode(data, validate=True), dtype=np.uint8)
    except (ValueError, TypeError) as e:
        raise InputError(f"not base64 PNG data ({e})") from e
    arr = cv2.imdecode(raw, flags)
    if arr is None:
        raise InputError("not a PNG image")
    return arr


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """``(H, W) bool`` -> COCO compressed RLE ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_rle` (needs pycocotools): ``(H, W) bool``."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)
