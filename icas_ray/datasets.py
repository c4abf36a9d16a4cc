"""Generated image data sets with ground truth, for demos, tests and benchmarks.

Two kinds, both deterministic for a given seed:

* ``digits``: a digit 0-9 drawn in a large font on a 256x256 light background, with random
  position jitter and optional colour jitter (the original tool's test data); file names are
  ``<i><digit>.png``.
* ``near-duplicates``: variants of the photos scikit-image ships offline (random crop 80-95%,
  resize, brightness/contrast jitter, rotation up to 5 degrees, JPEG re-encode at quality
  60-90); one class per photo (skimage's ``cat`` and ``chelsea`` are one photo: only
  ``chelsea`` is used).

Each data set has a ``truth.csv`` with columns ``file,label`` (``file`` relative to the data
set's root). ``broken=True`` adds three unreadable files labelled ``broken``: a zero-byte PNG,
a truncated JPEG and a text file named ``.png``.

Example:
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> make_dataset("digits", out, count=20, seed=1).count
    20
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from icas_ray.errors import ConfigError
from icas_ray.storage import Storage

__all__ = ["DATASET_KINDS", "DatasetInfo", "NEAR_DUPLICATE_PHOTOS", "make_dataset", "read_truth"]

logger = logging.getLogger(__name__)

#: scikit-image photos that load without a download, one class each.
NEAR_DUPLICATE_PHOTOS = (
    "astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text",
    "brick", "grass", "gravel", "clock", "colorwheel", "hubble_deep_field",
    "immunohistochemistry", "logo", "retina", "cell",
)

TRUTH_FILE = "truth.csv"
BROKEN_LABEL = "broken"


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`make_dataset` wrote: its root URI, the number of images and of classes."""

    uri: str
    count: int
    classes: int
    broken: int


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=int(quality))
    return buf.getvalue()


def render_digit(digit: int, rng: np.random.Generator, *, colour_jitter: bool = False,
                 size: int = 256) -> np.ndarray:
    """One ``(size, size, 3) uint8`` image of ``digit`` on a light background."""
    if colour_jitter:
        bg = rng.integers(170, 256, size=3)
        fg = rng.integers(0, 90, size=3)
    else:
        bg = np.full(3, rng.integers(235, 256))
        fg = np.full(3, rng.integers(0, 40))
    image = np.empty((size, size, 3), np.uint8)
    image[:] = bg.astype(np.uint8)
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, size / 40.0, max(2, size // 18)
    (tw, th), _ = cv2.getTextSize(str(digit), font, scale, thickness)
    jitter = size // 32
    x = (size - tw) // 2 + int(rng.integers(-jitter, jitter + 1))
    y = (size + th) // 2 + int(rng.integers(-jitter, jitter + 1))
    cv2.putText(image, str(digit), (x, y), font, scale, tuple(int(c) for c in fg), thickness,
                cv2.LINE_AA)
    return image


def _load_photo(name: str) -> np.ndarray:
    import skimage.data

    photo = np.asarray(getattr(skimage.data, name)())
    if photo.dtype == bool:
        photo = photo.astype(np.uint8) * 255
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=2)
    if photo.shape[2] == 4:
        alpha = photo[..., 3:4].astype(np.float32) / 255.0
        photo = (photo[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    # The largest photos are shrunk once so variants stay small on disk.
    h, w = photo.shape[:2]
    if max(h, w) > 640:
        f = 640 / max(h, w)
        photo = cv2.resize(photo, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(photo)


def near_duplicate(photo: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A random variant of ``photo`` and the JPEG quality to save it with."""
    h, w = photo.shape[:2]
    fh, fw = rng.uniform(0.80, 0.95, size=2)
    ch, cw = int(h * fh), int(w * fw)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    img = photo[y0:y0 + ch, x0:x0 + cw]
    angle = float(rng.uniform(-5, 5))
    m = cv2.getRotationMatrix2D((cw / 2, ch / 2), angle, 1.0)
    img = cv2.warpAffine(img, m, (cw, ch), borderMode=cv2.BORDER_REFLECT)
    f = float(rng.uniform(0.6, 1.0))
    img = cv2.resize(img, (max(16, round(cw * f)), max(16, round(ch * f))), interpolation=cv2.INTER_AREA)
    alpha, beta = float(rng.uniform(0.85, 1.15)), float(rng.uniform(-20, 20))
    img = np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)
    return img, int(rng.integers(60, 91))


def _broken_files(rng: np.random.Generator) -> list[tuple[str, bytes]]:
    good = _jpeg(render_digit(int(rng.integers(0, 10)), rng), 90)
    return [
        ("broken_empty.png", b""),
        ("broken_truncated.jpg", good[: len(good) // 2]),
        ("broken_text.png", b"this is a text file, not an image\n"),
    ]


def _digits(count: int, rng: np.random.Generator, colour_jitter: bool,
            ) -> list[tuple[str, str, Callable[[], bytes]]]:
    items = []
    for i in range(count):
        digit = i % 10
        child = np.random.default_rng(rng.integers(0, 2**63))
        items.append((f"{i}{digit}.png", str(digit),
                      lambda d=digit, r=child: _png(render_digit(d, r, colour_jitter=colour_jitter))))
    return items


def _near_duplicates(count: int, rng: np.random.Generator, classes: int | None,
                     ) -> list[tuple[str, str, Callable[[], bytes]]]:
    names = NEAR_DUPLICATE_PHOTOS[: classes or len(NEAR_DUPLICATE_PHOTOS)]
    photos: dict[str, np.ndarray] = {}
    items = []
    for i in range(count):
        name = names[i % len(names)]
        if name not in photos:
            photos[name] = _load_photo(name)
        child = np.random.default_rng(rng.integers(0, 2**63))

        def make(p: np.ndarray = photos[name], r: np.random.Generator = child) -> bytes:
            img, quality = near_duplicate(p, r)
            return _jpeg(img, quality)

        items.append((f"{i:05d}_{name}.jpg", name, make))
    return items


DATASET_KINDS = ("digits", "near-duplicates")


def make_dataset(kind: str, out: str, *, count: int = 100, seed: int = 0, broken: bool = False,
                 colour_jitter: bool = False, classes: int | None = None,
                 storage: Storage | None = None) -> DatasetInfo:
    """Write a generated data set with its ``truth.csv`` to ``out`` (local path or ``s3://``).

    Args:
        kind: ``digits`` or ``near-duplicates``.
        out: destination folder URI (created if missing; existing files of the same name are
            replaced).
        count: number of images (broken files come on top).
        seed: random seed; the same seed gives the same bytes.
        broken: add three unreadable files (labelled ``broken`` in truth.csv).
        colour_jitter: digits only: random background and ink colours.
        classes: near-duplicates only: use the first N photos (default all 19).
        storage: storage options for ``s3://`` destinations.

    Returns:
        What was written.
    """
    if kind not in DATASET_KINDS:
        raise ConfigError(f"unknown data set kind {kind!r}: must be one of {', '.join(DATASET_KINDS)}")
    if count < 1:
        raise ConfigError(f"count {count} is invalid: expected >= 1")
    if classes is not None and not 1 <= classes <= len(NEAR_DUPLICATE_PHOTOS):
        raise ConfigError(f"classes {classes} is invalid: expected 1..{len(NEAR_DUPLICATE_PHOTOS)}")
    storage = storage or Storage()
    rng = np.random.default_rng(seed)
    if kind == "digits":
        items = _digits(count, rng, colour_jitter)
    else:
        items = _near_duplicates(count, rng, classes)
    storage.makedirs(out)

    def write(item: tuple[str, str, Callable[[], bytes]]) -> None:
        name, _, make = item
        storage.write_bytes(storage.join(out, name), make())

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, items))
    rows = [(name, label) for name, label, _ in items]
    n_broken = 0
    if broken:
        for name, data in _broken_files(rng):
            storage.write_bytes(storage.join(out, name), data)
            rows.append((name, BROKEN_LABEL))
            n_broken += 1
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "label"])
    writer.writerows(rows)
    storage.write_text(storage.join(out, TRUTH_FILE), buf.getvalue())
    n_classes = len({label for _, label, _ in items})
    logger.info("wrote %d %s images (%d classes) to %s", count, kind, n_classes, out)
    return DatasetInfo(uri=out, count=count, classes=n_classes, broken=n_broken)


def read_truth(uri: str, storage: Storage | None = None) -> dict[str, str]:
    """``{file name relative to the data set root: label}`` from a data set's truth.csv."""
    storage = storage or Storage()
    text = storage.read_text(storage.join(uri, TRUTH_FILE))
    return {row["file"]: row["label"] for row in csv.DictReader(io.StringIO(text))}
