"""Decoding: OpenCV's fast path for plain PNGs gives Pillow's pixels; the rest keeps Pillow's."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import icas_ray.images as images
from icas_ray.images import DecodeError, ReadConfig, decode


def _png(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, "PNG")
    return buf.getvalue()


def _pillow_decode(data: bytes, config: ReadConfig, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setattr(images, "_plain_png_size", lambda _: None)
        return decode(data, config)


@pytest.mark.parametrize("mode,shape", [("RGB", (37, 53, 3)), ("L", (41, 29))])
@pytest.mark.parametrize("config", [ReadConfig(), ReadConfig(size=(16, 16)), ReadConfig(max_side=20),
                                    ReadConfig(scale=1.5)])
def test_plain_png_fast_path_equals_pillow(mode, shape, config, monkeypatch):  # type: ignore[no-untyped-def]
    data = _png(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8), mode)
    assert images._plain_png_size(data) == (shape[1], shape[0])
    fast = decode(data, config)
    assert fast.dtype == np.uint8 and fast.flags.c_contiguous
    np.testing.assert_array_equal(fast, _pillow_decode(data, config, monkeypatch))


def test_other_pngs_take_pillow():  # type: ignore[no-untyped-def]
    rgba = _png(np.zeros((4, 4, 4), np.uint8), "RGBA")
    grey16 = io.BytesIO()
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(grey16, "PNG")
    palette = io.BytesIO()
    Image.new("P", (4, 4), 3).save(palette, "PNG")
    for data in (rgba, grey16.getvalue(), palette.getvalue()):
        assert images._plain_png_size(data) is None
        assert decode(data).shape == (4, 4, 3)
    assert decode(grey16.getvalue()).max() == 255  # 16 bits scaled to 8
    assert decode(rgba)[0, 0].tolist() == [255, 255, 255]  # transparent on white


def test_truncated_and_huge_plain_pngs():  # type: ignore[no-untyped-def]
    data = _png(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    with pytest.raises(DecodeError, match="truncated"):
        decode(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="exceeds pixel limit"):
        decode(data, ReadConfig(max_pixels=100))


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_grey_reads_of_plain_pngs_are_the_luma(mode):  # type: ignore[no-untyped-def]
    """The fast path with ``grey=True``: a grey PNG decodes straight to grey, an RGB one to
    RGB then to its luma; both equal the RGB decode's luma, resized alike."""
    from icas_ray.images import to_gray

    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "PNG")
    data = buf.getvalue()
    luma = to_gray(decode(data))
    np.testing.assert_array_equal(decode(data, ReadConfig(grey=True)), luma)
    got = decode(data, ReadConfig(size=(30, 20), grey=True))
    np.testing.assert_array_equal(got, images.resize(luma, (30, 20)))  # grey, then resized


@pytest.mark.parametrize("shape, size", [((256, 256), (64, 64)), ((256, 256, 3), (32, 32)),
                                         ((512, 256), (32, 128)), ((384, 384), (64, 64))])
def test_resize_in_halves_is_the_area_average(shape, size):  # type: ignore[no-untyped-def]
    """A shrink by even factors, in 2x2 halves, is OpenCV's area average of the whole factor
    within one level (each half rounds); other factors are the direct area average."""
    import cv2

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    image = cv2.GaussianBlur(image, (5, 5), 0)  # photo-like: neighbours correlate
    got = images.resize(image, size)
    direct = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    assert got.shape == direct.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - direct.astype(int)).max() <= 1
    odd = images.resize(image[:300, :300], (100, 100))  # factor 3: no halves
    np.testing.assert_array_equal(odd, cv2.resize(image[:300, :300], (100, 100), interpolation=cv2.INTER_AREA))
