"""Mask export: one binary PNG per painted colour, named as the seed names them.

``<image stem>_mask_(R:r,G:g,B:b).png``, e.g. ``jet1_mask_(R:204,G:0,B:0).png``: an 8-bit
grey PNG, 255 where the colour was painted and 0 elsewhere.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping

import cv2
import numpy as np

from icas_ray.storage import Storage

__all__ = ["encode_mask", "export_masks", "mask_file_name", "parse_mask_file_name"]

logger = logging.getLogger(__name__)


def mask_file_name(image_name: str, color: tuple[int, int, int]) -> str:
    """The mask file name for an image and an (R, G, B) colour.

    Example:
        >>> mask_file_name("planes/jet1.jpg", (204, 0, 0))
        'jet1_mask_(R:204,G:0,B:0).png'
    """
    base = posixpath.basename(image_name.replace("\\", "/"))
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    r, g, b = (int(v) for v in color)
    return f"{stem}_mask_(R:{r},G:{g},B:{b}).png"


def parse_mask_file_name(name: str) -> tuple[str, tuple[int, int, int]] | None:
    """``(stem, (r, g, b))`` of a mask file name, or None if it is not one."""
    import re

    m = re.fullmatch(r"(.*)_mask_\(R:(\d+),G:(\d+),B:(\d+)\)\.png", posixpath.basename(name))
    if not m:
        return None
    return m.group(1), (int(m.group(2)), int(m.group(3)), int(m.group(4)))


def encode_mask(mask: np.ndarray) -> bytes:
    """PNG bytes of a ``(H, W) bool`` mask: 8-bit grey, 255 = painted."""
    ok, buf = cv2.imencode(".png", np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
    if not ok:  # pragma: no cover - OpenCV encodes any 2-D uint8 array
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def export_masks(masks: Mapping[tuple[int, int, int], np.ndarray], image_name: str, folder: str,
                 *, storage: Storage | None = None) -> list[str]:
    """Write one mask PNG per colour into ``folder`` (local path or ``s3://``).

    Args:
        masks: (R, G, B) -> ``(H, W) bool`` (e.g. :meth:`Painter.masks`).
        image_name: the image's file name or path; its stem names the masks.
        folder: destination folder (the seed's ``<image folder>_segmented``).
        storage: file access; None = local/ambient defaults.

    Returns:
        The URIs written, in colour order.
    """
    storage = storage or Storage()
    written = []
    for color in sorted(masks):
        uri = storage.join(folder, mask_file_name(image_name, color))
        storage.write_bytes(uri, encode_mask(masks[color]))
        written.append(uri)
    logger.info("wrote %d mask(s) of %s to %s", len(written), image_name, folder)
    return written
