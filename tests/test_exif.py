"""EXIF orientation: a phone photo stored sideways with an Orientation tag decodes upright.

Each file below stores the upright picture's pixels transformed by the inverse of its
orientation and carries the tag, as a camera does; decoding must give the upright picture
(as ``PIL.ImageOps.exif_transpose`` would) in every format that can carry the tag.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from icas_ray import images
from icas_ray.images import ReadConfig, decode

ORIENTATION = 0x0112

# What the camera did to the upright picture to store it (the inverse of what a viewer does;
# _stored checks every entry against Pillow's exif_transpose).
_STORE = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),
}


def _photo(h: int = 64, w: int = 96) -> np.ndarray:
    """A smooth photo-like RGB picture with an asymmetric subject (no symmetry hides a flip)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([120 + 100 * np.sin(xx / 17) * np.cos(yy / 23),
                    60 + 150 * (xx / w) ** 2,
                    200 - 150 * (yy / h)], axis=2)
    img[8:28, 10:40] = (250, 30, 30)  # a red block in the top-left quarter
    img[40:58, 70:90] = (20, 20, 230)  # a blue block bottom right
    return np.clip(img, 0, 255).astype(np.uint8)


def _stored(upright: np.ndarray, orientation: int) -> np.ndarray:
    stored = np.ascontiguousarray(_STORE[orientation](upright))
    # The viewer's transform of the stored pixels must give the upright picture back.
    viewed = ImageOps.exif_transpose(_with_tag(Image.fromarray(stored), orientation))
    assert np.array_equal(np.asarray(viewed), upright), orientation
    return stored


def _with_tag(im: Image.Image, orientation: int) -> Image.Image:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    im.info["exif"] = exif.tobytes()
    return im


def _save(arr: np.ndarray, orientation: int | None, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        kw["exif"] = exif
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_with_orientation_decodes_upright(orientation: int) -> None:
    upright = _photo()
    reference = decode(_save(upright, None, "JPEG", quality=95)).astype(np.int16)
    data = _save(_stored(upright, orientation), orientation, "JPEG", quality=95)
    got = decode(data)
    assert got.shape == upright.shape
    diff = np.abs(got.astype(np.int16) - reference).mean()
    assert diff < 3.0, f"orientation {orientation}: mean difference {diff:.1f} to the upright copy"
    # Exactly what Pillow's exif_transpose gives for the same file.
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(got, expected)
    if orientation != 1:
        raw = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert raw.shape != got.shape or np.abs(raw.astype(np.int16) - reference).mean() > 20, \
            "the test picture must look different when the tag is ignored"


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("config", [ReadConfig(size=(48, 32)), ReadConfig(max_side=40),
                                    ReadConfig(scale=0.5)], ids=["size", "max_side", "scale"])
def test_sizes_apply_to_the_upright_image(orientation: int, config: ReadConfig) -> None:
    """``size`` is the upright ``(width, height)``; JPEG's reduced-scale decode still fits."""
    upright = _photo(128, 192)
    reference = decode(_save(upright, None, "JPEG", quality=95), config).astype(np.int16)
    got = decode(_save(_stored(upright, orientation), orientation, "JPEG", quality=95), config)
    assert got.shape == reference.shape
    assert np.abs(got.astype(np.int16) - reference).mean() < 4.0


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_deflate"}),
                                    ("WEBP", {"lossless": True})],
                         ids=["png-eXIf", "tiff", "tiff-deflate", "webp"])
@pytest.mark.parametrize("orientation", [2, 5, 6, 7, 8])
def test_lossless_formats_with_orientation_are_exact(fmt: str, kw: dict, orientation: int) -> None:
    upright = _photo()
    data = _save(_stored(upright, orientation), orientation, fmt, **kw)
    np.testing.assert_array_equal(decode(data), upright)


def test_png_fast_path_only_without_orientation() -> None:
    """A plain PNG keeps OpenCV's fast path; one with an eXIf chunk or EXIF/XMP text does not."""
    upright = _photo()
    plain = _save(upright, None, "PNG")
    assert images._plain_png_size(plain) == (96, 64)
    np.testing.assert_array_equal(decode(plain), upright)
    tagged = _save(_stored(upright, 6), 6, "PNG")
    assert b"eXIf" in tagged and images._plain_png_size(tagged) is None
    # XMP orientation in an iTXt chunk counts for Pillow too (exif_transpose reads it).
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta><rdf:Description tiff:Orientation="8"/>'
                  "</x:xmpmeta>")
    buf = io.BytesIO()
    Image.fromarray(_stored(upright, 8)).save(buf, "PNG", pnginfo=info)
    assert images._plain_png_size(buf.getvalue()) is None
    np.testing.assert_array_equal(decode(buf.getvalue()), upright)


def test_broken_orientation_values_are_ignored() -> None:
    upright = _photo()
    for value in (0, 9, 65535):
        data = _save(upright, value, "PNG")
        np.testing.assert_array_equal(decode(data), upright)


def test_corrupt_exif_keeps_the_pixels() -> None:
    """A broken EXIF block is metadata gone wrong, not a broken image: decoded as stored."""
    upright = _photo()
    buf = io.BytesIO()
    Image.fromarray(upright).save(buf, "PNG", exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xff")
    np.testing.assert_array_equal(decode(buf.getvalue()), upright)
    buf = io.BytesIO()
    Image.fromarray(upright).save(buf, "JPEG", quality=95, exif=b"Exif\x00\x00garbage")
    assert decode(buf.getvalue()).shape == upright.shape


GREY = ReadConfig(grey=True)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_grey_jpeg_is_the_upright_luma(orientation: int) -> None:
    """``grey=True`` (the classic methods' reads): a JPEG's stored luma, turned upright as
    the RGB decode is, equals Pillow's own grey decode of the file; sizes apply upright."""
    upright = _photo(128, 192)
    data = _save(_stored(upright, orientation), orientation, "JPEG", quality=95)
    got = decode(data, GREY)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))
    assert got.shape == (128, 192)
    # convert("L") from the decoded RGB (chroma upsampled and rounded) against the stored luma.
    assert np.abs(got.astype(np.int16) - expected).mean() < 1.5
    small = decode(data, ReadConfig(size=(48, 32), grey=True))
    assert small.shape == (32, 48)
    ref = images.to_gray(decode(data, ReadConfig(size=(48, 32))))
    assert np.abs(small.astype(np.int16) - ref).mean() < 2.0


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("orientation", [1, 5, 6, 7, 8])
def test_grey_lossless_formats_are_the_rgb_decodes_luma(fmt: str, orientation: int) -> None:
    upright = _photo()
    data = _save(_stored(upright, orientation), orientation if orientation != 1 else None, fmt)
    np.testing.assert_array_equal(decode(data, GREY), images.to_gray(upright))
