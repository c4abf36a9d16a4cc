"""Decoding and resizing: bytes -> ``(H, W, 3) uint8`` RGB arrays, with limits.

Every image that enters a pipeline goes through :func:`decode`: grayscale, palette, RGBA and
16-bit images all come out as 8-bit RGB (8-bit grey for the methods that read grey), so
features never see mixed shapes, and an EXIF
Orientation tag (JPEG, PNG, TIFF, WebP; also XMP's ``tiff:Orientation``) is applied as
``PIL.ImageOps.exif_transpose`` does, so a phone photo stored sideways comes out upright.
Files that cannot be decoded raise :class:`DecodeError` with a short reason that ends up in
the manifest.

Example:
    >>> import io, numpy as np
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("L", (8, 4), 7).save(buf, "PNG")
    >>> decode(buf.getvalue()).shape
    (4, 8, 3)
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from icas_ray.errors import ConfigError

__all__ = ["DEFAULT_MAX_PIXELS", "DecodeError", "ReadConfig", "decode", "resize", "to_gray", "upright_size"]

logger = logging.getLogger(__name__)

#: Larger images are refused (decompression bombs, accidental gigapixel scans): 100 MP.
DEFAULT_MAX_PIXELS = 100_000_000

# Truncated files must fail loudly, not decode to half-grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DecodeError(ValueError):
    """A file that is not a decodable image; ``str(e)`` is the reason for the manifest."""


@dataclass(frozen=True)
class ReadConfig:
    """How images are read before feature extraction.

    Args:
        size: ``(width, height)`` every image is resized to; None keeps the size.
        scale: factor applied to both sides (the seed's ``scale``); ignored when ``size`` is set.
        max_side: fit the image inside ``max_side`` x ``max_side`` (keeping aspect) when no
            size/scale is given; None = no limit.
        max_pixels: images with more pixels are refused as "exceeds pixel limit".
        grey: decode to ``(H, W)`` grey (ITU-R 601 luma) instead of RGB, for methods that
            use nothing else. A JPEG then gives its stored luma (no chroma upsampling, no
            colour conversion); other formats are converted after decoding.
    """

    size: tuple[int, int] | None = None
    scale: float | None = None
    max_side: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    grey: bool = False

    def __post_init__(self) -> None:
        if self.size is not None:
            if len(self.size) != 2 or min(self.size) < 1:
                raise ConfigError(f"size {self.size!r} is invalid: expected WxH with W, H >= 1, e.g. 64x64")
        if self.scale is not None and not (0 < self.scale <= 16):
            raise ConfigError(f"scale {self.scale!r} is out of range: expected 0 < scale <= 16")
        if self.max_side is not None and self.max_side < 1:
            raise ConfigError(f"max_side {self.max_side!r} is invalid: expected >= 1")
        if self.max_pixels < 1:
            raise ConfigError(f"max_pixels {self.max_pixels!r} is invalid: expected >= 1")

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The ``(width, height)`` an image of the given size is resized to."""
        if self.size is not None:
            return self.size
        if self.scale is not None:
            return max(1, round(width * self.scale)), max(1, round(height * self.scale))
        if self.max_side is not None and max(width, height) > self.max_side:
            f = self.max_side / max(width, height)
            return max(1, round(width * f)), max(1, round(height * f))
        return width, height


def _to_rgb8(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im)
        if arr.dtype != np.uint16:
            # 32-bit integer PNGs: scale by the actual range to avoid all-black results.
            hi = float(arr.max()) if arr.size else 0.0
            arr = (arr.astype(np.float64) * (255.0 / hi)).astype(np.uint8) if hi > 255 else arr.astype(np.uint8)
        else:
            arr = (arr >> 8).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) * (255.0 / (hi - lo if hi > lo else 1.0))).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        # Composite on white: transparent regions look like the paper they would be shown on.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
# Chunks that may carry an orientation for Pillow: eXIf, and text chunks (XMP's
# tiff:Orientation in iTXt, ImageMagick's "Raw profile type exif" in tEXt/zTXt).
_PNG_METADATA_CHUNKS = frozenset({b"eXIf", b"tEXt", b"zTXt", b"iTXt"})

# What a viewer does to the stored pixels for each EXIF orientation: Pillow's
# ImageOps.exif_transpose table (2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM,
# 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90), done on the (H, W, 3) array: views,
# whatever the mode was. np.rot90 turns counter-clockwise, as Pillow's ROTATE_90.
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _plain_png_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a complete 8-bit grey or RGB PNG without metadata, else None.

    Those (the common case) OpenCV decodes straight into an array, with less overhead than Pillow;
    their pixels are the same either way (PNG is lossless, and neither applies gamma). Every
    other file (palettes, alpha, 16 bits, truncated, other formats, and PNGs with an eXIf or
    text chunk, which may hold an orientation) goes through Pillow. Only the chunk headers are
    read: a few per 8 KiB of image data.
    """
    if len(data) < 45 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    if data[24] != 8 or data[25] not in (0, 2) or not data.rstrip(b"\0").endswith(_PNG_END):
        return None
    pos, end = 8, len(data) - 12
    while pos <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind in _PNG_METADATA_CHUNKS:
            return None
        if kind == b"IEND":
            break
        pos += 12 + length
    else:
        return None  # chunks run past the end: let Pillow say what is wrong
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _orientation(im: Image.Image) -> int:
    """The image's EXIF orientation (2..8) when it asks for a transform, else 1.

    Read as ``exif_transpose`` reads it (EXIF, then XMP); an unreadable EXIF block counts as
    no orientation: the pixels are still good. TIFF images come back upright from Pillow's
    ``load`` (which then drops the tag), so after ``load`` this is 1 for them.
    """
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except (SyntaxError, ValueError, TypeError, KeyError, struct.error) as e:
        logger.debug("ignoring unreadable EXIF data: %s", e)
        return 1
    return value if isinstance(value, int) and value in _ORIENT else 1


def upright_size(im: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an opened image as :func:`decode` returns it: its EXIF
    orientation applied (a sideways-stored photo swaps them), read from the header alone."""
    w, h = im.size
    return (int(h), int(w)) if _orientation(im) in (5, 6, 7, 8) else (int(w), int(h))


def _to_grey8(im: Image.Image) -> np.ndarray:
    if im.mode == "L":
        return np.asarray(im)
    return to_gray(_to_rgb8(im))


def decode(data: bytes, config: ReadConfig | None = None) -> np.ndarray:
    """Decode image bytes to an upright RGB (or, with ``config.grey``, grey) array, resized
    as ``config`` says.

    The EXIF orientation is applied first (as ``PIL.ImageOps.exif_transpose``), so ``size``,
    ``scale`` and ``max_side`` apply to the upright picture: ``size=(w, h)`` is its width and
    height whichever way the camera stored it.

    Args:
        data: the file's bytes.
        config: size/scale/limits; None decodes at full size with the default pixel limit.

    Returns:
        ``(H, W, 3) uint8`` RGB array, or ``(H, W) uint8`` grey with ``config.grey``
        (C-contiguous).

    Raises:
        DecodeError: empty file, not an image, truncated, or above the pixel limit.
    """
    config = config or ReadConfig()
    if not data:
        raise DecodeError("empty file")
    size = _plain_png_size(data)
    if size is not None:
        width, height = size
        if width * height > config.max_pixels:
            raise DecodeError(f"exceeds pixel limit ({width}x{height} > {config.max_pixels} pixels)")
        # A grey PNG decodes straight to grey; an RGB one to RGB, then to grey where asked
        # (libpng's own conversion to grey was slower than both steps: 369 against 333 us on
        # the generated 256x256 PNGs).
        stored_grey = data[25] == 0
        flag = cv2.IMREAD_GRAYSCALE if config.grey and stored_grey else cv2.IMREAD_COLOR_RGB
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        if arr is not None and config.grey and not stored_grey:
            arr = to_gray(arr)
        if arr is not None and arr.shape[:2] == (height, width):
            tw, th = config.target_size(width, height)
            return np.ascontiguousarray(resize(arr, (tw, th)) if (tw, th) != (width, height) else arr)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", "Corrupt EXIF data", UserWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > config.max_pixels:
                raise DecodeError(
                    f"exceeds pixel limit ({width}x{height} > {config.max_pixels} pixels)"
                )
            if im.format == "JPEG":
                # A JPEG's EXIF is read at open: the upright size is known before decoding,
                # so the reduced-scale decode (much faster) can be asked for in stored axes.
                turned = _orientation(im) >= 5
                uw, uh = (height, width) if turned else (width, height)
                tw, th = config.target_size(uw, uh)
                mode = "L" if config.grey else "RGB"  # "L": libjpeg returns the luma as stored
                if tw < uw or th < uh:
                    im.draft(mode, (th, tw) if turned else (tw, th))
                elif config.grey:
                    im.draft(mode, None)
            im.load()
            orientation = _orientation(im)
            arr = _to_grey8(im) if config.grey else _to_rgb8(im)
            if orientation != 1:
                arr = _ORIENT[orientation](arr)
            if im.format != "JPEG":
                tw, th = config.target_size(arr.shape[1], arr.shape[0])
    except DecodeError:
        raise
    except UnidentifiedImageError as e:
        raise DecodeError("cannot identify image (not an image or unsupported format)") from e
    except Image.DecompressionBombError as e:
        raise DecodeError(f"exceeds pixel limit ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        text = str(e)
        reason = "truncated" if "truncated" in text or "broken" in text or isinstance(e, EOFError) \
            else f"corrupt ({text})"
        raise DecodeError(reason) from e
    if (arr.shape[1], arr.shape[0]) != (tw, th):
        arr = resize(arr, (tw, th))
    return np.ascontiguousarray(arr)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``(width, height)``; area interpolation when shrinking, linear when growing.

    A shrink by an even factor on both sides goes in halves first (256 -> 128 -> 64): OpenCV
    averages 2x2 areas with SIMD code and larger integer areas with a scalar loop (grey 256x256
    to 64x64: 5.7 against 21.7 us; RGB: 24 against 80 us). The average of 2x2 averages is the
    4x4 average, each level rounded to uint8: pixels may differ from a direct shrink by one
    level.
    """
    w, h = size
    height, width = image.shape[:2]
    if w * h >= width * height:
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    while width % (2 * w) == 0 and height % (2 * h) == 0 and (width, height) != (2 * w, 2 * h):
        width, height = width // 2, height // 2
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def to_gray(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB -> ``(H, W) uint8`` luma (ITU-R 601, as OpenCV and Pillow)."""
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
