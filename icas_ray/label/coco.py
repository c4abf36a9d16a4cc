"""COCO instances export of a labelled folder, RLE written in numpy (no pycocotools needed).

Choices (``docs/label.md`` says the same):

* one **category per class name**: a colour's name comes from the labels file, else it is
  ``"R,G,B"``; colours the labels file names alike share one category. Each category also
  carries ``"color": [r, g, b]`` (its first colour), as COCO's panoptic format does.
  Every colour of the labels file gets a category even when nothing is painted with it, so
  category ids stay the same from one export to the next.
* by default one **annotation per colour per image** (``per="colour"``): the painted pixels of
  that colour, exactly, however many pieces they form. ``per="component"`` splits each colour
  into its 8-connected pieces, one annotation each (segments painted side by side are
  separated by their 1-pixel edges with methods whose label maps have edges, such as ``edge``:
  such an object falls into pieces there).
* ``segmentation`` is RLE ``{"size": [h, w], "counts": "<compressed string>"}`` that
  ``pycocotools.mask.decode`` turns back into the mask; ``area`` is its pixel count, ``bbox``
  ``[x, y, w, h]`` as ``pycocotools.mask.toBbox`` gives it; ``iscrowd`` is 0 (the masks are
  objects to learn from, not regions to ignore).
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from icas_ray.errors import ConfigError, InputError
from icas_ray.label import _rle
from icas_ray.label._colour import Colour, colour_text
from icas_ray.segment.masks import parse_mask_file_name
from icas_ray.storage import Storage

__all__ = ["CocoImage", "PER_CHOICES", "coco_dict", "decode_mask", "export_coco", "image_stem"]

logger = logging.getLogger(__name__)

PER_CHOICES = ("colour", "component")


@dataclass(frozen=True)
class CocoImage:
    """One labelled image: its file name in the export, its size and its masks.

    Args:
        file_name: path relative to the exported folder (``/``-separated).
        width, height: the image's size in pixels.
        masks: (R, G, B) -> ``(height, width) bool``.
    """

    file_name: str
    width: int
    height: int
    masks: Mapping[Colour, np.ndarray] = field(default_factory=dict)


def image_stem(name: str) -> str:
    """The stem the original names masks by: the base name without its last extension."""
    base = posixpath.basename(name.replace("\\", "/"))
    return base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base


def _pieces(mask: np.ndarray, per: str) -> list[np.ndarray]:
    if per == "colour":
        return [mask]
    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [lab == k for k in range(1, n)]


def coco_dict(images: Sequence[CocoImage], *, labels: Mapping[Colour, str] | None = None,
              per: str = "colour") -> dict[str, Any]:
    """The COCO instances dict of labelled images (pure: no file access).

    Args:
        images: the images, in the order their ids (from 1) are given.
        labels: colour -> class name; other colours are named ``"R,G,B"``.
        per: ``"colour"`` (one annotation per colour per image) or ``"component"`` (one per
            8-connected piece).

    Returns:
        ``{"info", "licenses", "images", "annotations", "categories"}``.

    Example:
        >>> m = np.zeros((2, 3), bool); m[0, 1:] = True
        >>> im = CocoImage("a.png", 3, 2, {(204, 0, 0): m})
        >>> d = coco_dict([im], labels={(204, 0, 0): "plane"})
        >>> d["categories"][0]["name"], d["annotations"][0]["bbox"], d["annotations"][0]["area"]
        ('plane', [1, 0, 2, 1], 2)
    """
    if per not in PER_CHOICES:
        raise ConfigError(f"COCO annotations per {per!r}: must be one of {', '.join(PER_CHOICES)}")
    labels = dict(labels or {})
    colours = sorted(set(labels) | {c for im in images for c in im.masks})
    cat_of_name: dict[str, int] = {}
    categories: list[dict[str, Any]] = []
    cat_of_colour: dict[Colour, int] = {}
    for c in colours:
        name = labels.get(c) or colour_text(c)
        if name not in cat_of_name:
            cat_of_name[name] = len(categories) + 1
            categories.append({"id": cat_of_name[name], "name": name, "supercategory": "",
                               "color": list(c)})
        cat_of_colour[c] = cat_of_name[name]
    out_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, im in enumerate(images, start=1):
        out_images.append({"id": image_id, "file_name": im.file_name, "width": int(im.width),
                           "height": int(im.height)})
        for c in sorted(im.masks):
            mask = np.asarray(im.masks[c], dtype=bool)
            if mask.shape != (im.height, im.width):
                raise InputError(f"mask of colour {c} for {im.file_name} is {mask.shape[1]}x"
                                 f"{mask.shape[0]}: expected the image's {im.width}x{im.height}")
            for piece in _pieces(mask, per):
                if not piece.any():
                    continue
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id,
                    "category_id": cat_of_colour[c], "segmentation": _rle.encode(piece),
                    "area": int(piece.sum()), "bbox": _rle.bbox(piece), "iscrowd": 0,
                })
    return {"info": {"description": "icas label export", "version": "1.0"}, "licenses": [],
            "images": out_images, "annotations": annotations, "categories": categories}


def decode_mask(data: bytes, uri: str) -> np.ndarray:
    """``(H, W) bool`` of a mask PNG's bytes (grey > 127 = painted)."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if arr is None:
        raise InputError(f"mask {uri!r} is not a readable PNG: delete it or paint it again")
    return np.asarray(arr > 127)


def _image_size(storage: Storage, uri: str) -> tuple[int, int]:
    """``(width, height)`` of the upright image (as painted: EXIF orientation applied) from
    its header (its first 64 KiB, else the whole file)."""
    from PIL import Image, UnidentifiedImageError

    from icas_ray.images import upright_size

    for head in (True, False):
        data = storage.read_head(uri, 65536) if head else storage.read_bytes(uri)
        try:
            with Image.open(io.BytesIO(data)) as im:
                return upright_size(im)
        except (UnidentifiedImageError, OSError, SyntaxError):
            if not head:
                raise InputError(f"{uri!r} is not a readable image: its masks cannot be "
                                 "exported") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _rel(storage: Storage, root: str, uri: str) -> str:
    base = storage.fs(root)[1].rstrip("/")
    path = storage.fs(uri)[1].replace("\\", "/")
    return path[len(base.replace("\\", "/")):].lstrip("/")


def _mask_files(storage: Storage, masks_dir: str) -> dict[tuple[str, str], dict[Colour, str]]:
    """``(folder relative to masks_dir, stem) -> {colour: mask URI}``."""
    if not storage.exists(masks_dir):
        return {}
    found: dict[tuple[str, str], dict[Colour, str]] = {}
    for f in storage.list_files(masks_dir):
        rel = _rel(storage, masks_dir, f.uri)
        parsed = parse_mask_file_name(rel)
        if parsed is not None:
            found.setdefault((posixpath.dirname(rel), parsed[0]), {})[parsed[1]] = f.uri
    return found


def export_coco(folder: str, masks_dir: str, out_json: str, *,
                labels: Mapping[Colour, str] | None = None, storage: Storage | None = None,
                per: str = "colour") -> dict[str, Any]:
    """Write a COCO instances file for every image of ``folder`` with masks in ``masks_dir``.

    The masks of ``folder/sub/a.jpg`` are the ``a_mask_(R:r,G:g,B:b).png`` files of
    ``masks_dir/sub/``, or of ``masks_dir`` itself when that sub-folder has none (the original
    writes every mask flat into ``<folder>_segmented``).

    Args:
        folder: the labelled images (local path or ``s3://``).
        masks_dir: where the masks are (e.g. ``<folder>_segmented``).
        out_json: the file to write (local or ``s3://``), atomically.
        labels: colour -> class name (:func:`icas_ray.label.load_labels_file`).
        storage: file access; None = local/ambient defaults.
        per: ``"colour"`` or ``"component"`` (see :func:`coco_dict`).

    Returns:
        The COCO dict that was written.

    Raises:
        InputError: a mask's size differs from its image's, or an image is unreadable.
    """
    if per not in PER_CHOICES:
        raise ConfigError(f"COCO annotations per {per!r}: must be one of {', '.join(PER_CHOICES)}")
    storage = storage or Storage()
    by_stem = _mask_files(storage, masks_dir)
    masks_root = storage.fs(masks_dir)[1].rstrip("/")
    entries: list[CocoImage] = []
    for f in storage.list_images(folder):
        if storage.fs(f.uri)[1].startswith(masks_root + "/"):
            continue  # the masks folder inside the image folder
        rel = _rel(storage, folder, f.uri)
        stem = image_stem(rel)
        files = by_stem.get((posixpath.dirname(rel), stem)) or by_stem.get(("", stem))
        if not files:
            continue
        masks = {c: decode_mask(storage.read_bytes(u), u) for c, u in sorted(files.items())}
        width, height = _image_size(storage, f.uri)
        entries.append(CocoImage(rel, width, height, masks))
    coco = coco_dict(entries, labels=labels, per=per)
    storage.write_text(out_json, json.dumps(coco, separators=(",", ":")))
    logger.info("wrote %d image(s), %d annotation(s), %d categories to %s", len(entries),
                len(coco["annotations"]), len(coco["categories"]), out_json)
    return coco
