"""What travels between the label server and the page: packed PNGs and the painted map.

Label maps and colour-index maps go to the page as 8-bit RGB PNGs with the value packed as
``R + 256 * G + 65536 * B``: a browser decodes such a PNG losslessly into a canvas (no gamma
or colour chunk is written), so the page gets exact integers without any decoder of its own.
The page sends its painted map back as gzip-compressed little-endian uint16 colour indexes
(0 = unpainted, ``k`` = ``palette[k - 1]``).
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from icas_ray.errors import InputError

__all__ = [
    "decode_paint",
    "encode_image_png",
    "encode_packed_png",
    "masks_from_paint",
    "paint_from_masks",
    "unpack_png",
]

Color = tuple[int, int, int]
#: Fast PNG compression: these PNGs cross a loopback socket, size matters less than time.
_PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def encode_packed_png(values: np.ndarray) -> bytes:
    """PNG bytes of a non-negative ``(H, W)`` integer map below 2**24, packed into RGB.

    Example:
        >>> lab = np.array([[0, 1], [300, 70000]], np.int32)
        >>> bool((unpack_png(encode_packed_png(lab)) == lab).all())
        True
    """
    v = np.asarray(values)
    if v.ndim != 2 or (v.size and (int(v.min()) < 0 or int(v.max()) >= 2**24)):
        raise ValueError(f"cannot pack a map of shape {v.shape} with values outside 0..2**24-1")
    v = v.astype(np.uint32)
    # OpenCV writes BGR: channel 0 is blue = the high byte.
    bgr = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], axis=2).astype(np.uint8)
    ok, buf = cv2.imencode(".png", bgr, _PNG_FAST)
    if not ok:  # pragma: no cover - OpenCV encodes any 3-channel uint8 array
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def unpack_png(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_packed_png`: ``(H, W) int32``."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a PNG")
    b, g, r = (bgr[..., i].astype(np.int32) for i in range(3))
    return r + (g << 8) + (b << 16)


def encode_image_png(image: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, 3) uint8`` RGB image (what the page draws, exactly)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), _PNG_FAST)
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def decode_paint(payload: Mapping[str, object], shape: tuple[int, int]) -> tuple[np.ndarray, list[Color]]:
    """The painted map the page posts on save, checked against the image's shape.

    Args:
        payload: JSON object with ``width``, ``height``, ``palette`` (list of ``[r, g, b]``)
            and ``paint`` (base64 of gzip of ``H*W`` little-endian uint16 indexes).
        shape: ``(H, W)`` of the image being saved.

    Returns:
        ``(paint (H, W) uint16, palette)``; index ``k`` means ``palette[k - 1]``.

    Raises:
        InputError: a malformed payload, another size than the image's, or an index past the
            palette.
    """
    h, w = shape
    if payload.get("width") != w or payload.get("height") != h:
        raise InputError(f"painted map is {payload.get('width')}x{payload.get('height')}: "
                         f"expected the image's {w}x{h}")
    palette = _palette(payload.get("palette"))
    raw = payload.get("paint")
    if not isinstance(raw, str):
        raise InputError("painted map missing: expected 'paint' as base64 text")
    try:
        packed = base64.b64decode(raw, validate=True)
        # At most one byte more than expected: a gzip bomb stops here instead of in memory.
        inflater = zlib.decompressobj(wbits=47)
        data = inflater.decompress(packed, h * w * 2 + 1)
    except (ValueError, zlib.error) as e:
        raise InputError(f"painted map is not base64 gzip data: {e}") from e
    if len(data) != h * w * 2:
        raise InputError(f"painted map holds {len(data)} bytes: expected {h * w * 2} "
                         f"(uint16 per pixel of the {w}x{h} image)")
    paint = np.frombuffer(data, "<u2").reshape(h, w)
    if paint.size and int(paint.max()) > len(palette):
        raise InputError(f"painted map uses colour index {int(paint.max())} but the palette has "
                         f"{len(palette)} colours")
    return paint, palette


def _palette(value: object) -> list[Color]:
    if not isinstance(value, list):
        raise InputError("palette missing: expected a list of [r, g, b]")
    out: list[Color] = []
    for c in value:
        if (not isinstance(c, (list, tuple)) or len(c) != 3
                or not all(isinstance(v, int) and 0 <= v <= 255 for v in c)):
            raise InputError(f"palette colour {c!r} is invalid: expected [r, g, b] with 0..255")
        out.append((int(c[0]), int(c[1]), int(c[2])))
    return out


def masks_from_paint(paint: np.ndarray, palette: Sequence[Color]) -> dict[Color, np.ndarray]:
    """One ``(H, W) bool`` mask per painted colour; black is not a class (as ``Painter.masks``).

    Several palette entries of one colour are merged.
    """
    out: dict[Color, np.ndarray] = {}
    present = np.unique(paint)
    for k in present[present > 0]:
        color = tuple(palette[int(k) - 1])
        if color == (0, 0, 0):
            continue
        m = paint == k
        out[color] = out[color] | m if color in out else m  # type: ignore[index]
    return out  # type: ignore[return-value]


def paint_from_masks(masks: Mapping[Color, np.ndarray], shape: tuple[int, int]) -> dict[str, object]:
    """Masks as the page's paint message: ``{"colors": [[r, g, b], ...], "png": base64}``.

    The PNG is a packed colour-index map (:func:`encode_packed_png`), ``k`` = ``colors[k-1]``;
    where masks overlap, the later colour (in sorted order) wins.
    """
    paint = np.zeros(shape, np.int32)
    colors = sorted(masks)
    for k, color in enumerate(colors, start=1):
        paint[np.asarray(masks[color], bool)] = k
    return {"colors": [list(c) for c in colors],
            "png": base64.b64encode(encode_packed_png(paint)).decode("ascii")}
