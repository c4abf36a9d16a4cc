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
set's root). :func:`near_duplicate_objects` regenerates the near-duplicates in memory, each with
the ground-truth mask of one object moved along with the image (for the labelling study). ``broken=True`` adds three unreadable files labelled ``broken``: a zero-byte PNG,
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

__all__ = [
    "DATASET_KINDS", "DatasetInfo", "NEAR_DUPLICATE_PHOTOS", "NearDuplicate", "Variant",
    "apply_variant", "draw_variant", "make_dataset", "near_duplicate_objects", "photo_object",
    "read_truth", "warp_mask",
]

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


@dataclass(frozen=True)
class Variant:
    """How :func:`near_duplicate` changes a photo, in the order it applies the changes.

    Attributes:
        y0, x0, height, width: the crop box, in photo pixels.
        angle: rotation in degrees about the crop's centre (counter-clockwise).
        size: ``(width, height)`` after resizing.
        alpha, beta: contrast and brightness (``value * alpha + beta``).
        quality: JPEG quality it is saved with.
    """

    y0: int
    x0: int
    height: int
    width: int
    angle: float
    size: tuple[int, int]
    alpha: float
    beta: float
    quality: int


def draw_variant(shape: tuple[int, ...], rng: np.random.Generator) -> Variant:
    """A random :class:`Variant` of a photo of ``shape`` (crop 80-95%, rotation up to 5
    degrees, resize 60-100%, brightness/contrast jitter, JPEG quality 60-90)."""
    h, w = shape[:2]
    fh, fw = rng.uniform(0.80, 0.95, size=2)
    ch, cw = int(h * fh), int(w * fw)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    angle = float(rng.uniform(-5, 5))
    f = float(rng.uniform(0.6, 1.0))
    size = (max(16, round(cw * f)), max(16, round(ch * f)))
    alpha, beta = float(rng.uniform(0.85, 1.15)), float(rng.uniform(-20, 20))
    return Variant(y0, x0, ch, cw, angle, size, alpha, beta, int(rng.integers(60, 91)))


def _rotation(v: Variant) -> np.ndarray:
    return cv2.getRotationMatrix2D((v.width / 2, v.height / 2), v.angle, 1.0)


def apply_variant(photo: np.ndarray, v: Variant) -> np.ndarray:
    """The variant's image (before its JPEG encoding): ``(h, w, 3) uint8``."""
    img = photo[v.y0:v.y0 + v.height, v.x0:v.x0 + v.width]
    img = cv2.warpAffine(img, _rotation(v), (v.width, v.height), borderMode=cv2.BORDER_REFLECT)
    img = cv2.resize(img, v.size, interpolation=cv2.INTER_AREA)
    return np.clip(img.astype(np.float32) * v.alpha + v.beta, 0, 255).astype(np.uint8)


def warp_mask(mask: np.ndarray, v: Variant) -> np.ndarray:
    """A ``(H, W) bool`` mask of the photo moved as :func:`apply_variant` moves its pixels
    (the rotated-in corners, which the image fills by reflection, are outside the mask)."""
    m = np.asarray(mask, np.float32)[v.y0:v.y0 + v.height, v.x0:v.x0 + v.width]
    m = cv2.warpAffine(m, _rotation(v), (v.width, v.height), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.asarray(cv2.resize(m, v.size, interpolation=cv2.INTER_AREA) >= 0.5)


def near_duplicate(photo: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A random variant of ``photo`` and the JPEG quality to save it with."""
    v = draw_variant(photo.shape, rng)
    return apply_variant(photo, v), v.quality


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


def _near_duplicate_plan(count: int, rng: np.random.Generator, classes: int | None,
                         ) -> list[tuple[str, str, np.random.Generator]]:
    """``(file name, photo name, the variant's generator)`` of each near-duplicate image."""
    names = NEAR_DUPLICATE_PHOTOS[: classes or len(NEAR_DUPLICATE_PHOTOS)]
    plan = []
    for i in range(count):
        name = names[i % len(names)]
        plan.append((f"{i:05d}_{name}.jpg", name, np.random.default_rng(rng.integers(0, 2**63))))
    return plan


def _near_duplicates(count: int, rng: np.random.Generator, classes: int | None,
                     ) -> list[tuple[str, str, Callable[[], bytes]]]:
    photos: dict[str, np.ndarray] = {}
    items = []
    for file_name, name, child in _near_duplicate_plan(count, rng, classes):
        if name not in photos:
            photos[name] = _load_photo(name)

        def make(p: np.ndarray = photos[name], r: np.random.Generator = child) -> bytes:
            img, quality = near_duplicate(p, r)
            return _jpeg(img, quality)

        items.append((file_name, name, make))
    return items


def photo_object(photo: np.ndarray) -> np.ndarray:
    """The ground-truth object of a near-duplicate photo: one region that follows its content.

    No photo ships with an object mask, so one is chosen by rule, the same every time:
    Felzenszwalb's segmentation of the photo, then the segment covering 1-40% of it whose
    pixels lie closest to the centre on average, segments touching the border last. A photo
    with no such segment (a starry sky) gets a centred ellipse of 22% of each side's radius.

    Args:
        photo: ``(H, W, 3) uint8`` (e.g. ``_load_photo(name)``).

    Returns:
        ``(H, W) bool``.
    """
    from skimage.segmentation import felzenszwalb

    h, w = photo.shape[:2]
    seg = felzenszwalb(photo, scale=float(max(h, w)), sigma=0.8, min_size=h * w // 300)
    yy, xx = np.mgrid[:h, :w]
    dist = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)
    sizes = np.bincount(seg.ravel())
    mean_dist = np.bincount(seg.ravel(), weights=dist.ravel()) / np.maximum(sizes, 1)
    border = np.zeros(len(sizes), bool)
    border[np.unique(np.concatenate([seg[0], seg[-1], seg[:, 0], seg[:, -1]]))] = True
    share = sizes / float(h * w)
    cost = np.where((share >= 0.01) & (share <= 0.40), mean_dist + 0.5 * border, np.inf)
    if not np.isfinite(cost).any():
        return np.asarray(((yy - h / 2) / (0.22 * h)) ** 2 + ((xx - w / 2) / (0.22 * w)) ** 2 <= 1)
    return np.asarray(seg == int(np.argmin(cost)))


@dataclass(frozen=True)
class NearDuplicate:
    """One near-duplicate image with its ground truth.

    Attributes:
        file: its file name in the data set (``00003_coffee.jpg``).
        label: its group, the photo's name.
        image: ``(h, w, 3) uint8`` RGB, decoded from the same JPEG bytes as the file.
        object: ``(h, w) bool``, the photo's :func:`photo_object` moved with the image.
        variant: how the photo was changed.
    """

    file: str
    label: str
    image: np.ndarray
    object: np.ndarray
    variant: Variant


def near_duplicate_objects(count: int = 100, *, seed: int = 0, classes: int | None = None,
                           ) -> list[NearDuplicate]:
    """The images ``make_dataset("near-duplicates", ..., count, seed, classes)`` writes, in
    memory, each with the ground-truth mask of one object (:func:`photo_object`).

    Example:
        >>> items = near_duplicate_objects(4, seed=0, classes=2)
        >>> [(d.file, d.label) for d in items][:2]
        [('00000_astronaut.jpg', 'astronaut'), ('00001_camera.jpg', 'camera')]
        >>> items[0].object.shape == items[0].image.shape[:2]
        True
    """
    photos: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for file_name, name, child in _near_duplicate_plan(count, np.random.default_rng(seed), classes):
        if name not in photos:
            photo = _load_photo(name)
            photos[name] = (photo, photo_object(photo))
        photo, obj = photos[name]
        v = draw_variant(photo.shape, child)
        data = _jpeg(apply_variant(photo, v), v.quality)
        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        out.append(NearDuplicate(file_name, name, image, warp_mask(obj, v), v))
    return out


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
