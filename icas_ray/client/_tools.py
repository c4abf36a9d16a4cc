"""The server-side operations of the page: GrabCut, SAM prompts, template painting.

Each takes a prepared image and the JSON the page sent and returns the JSON the page gets;
painting itself stays in the browser. Coordinates are pixels ``(x, y)`` = (column, row).
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from icas_ray.client._codec import encode_packed_png, paint_from_masks
from icas_ray.client._config import TemplateDirs
from icas_ray.errors import ConfigError, InputError
from icas_ray.images import DecodeError, decode
from icas_ray.segment import Painter, Template
from icas_ray.segment import partition_labels
from icas_ray.storage import Storage

__all__ = ["grabcut", "load_templates", "paint_templates", "sam_automatic", "sam_predict"]

logger = logging.getLogger(__name__)


def _points(value: Any, what: str) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2
            and all(isinstance(v, (int, float)) for v in p) for p in value):
        raise InputError(f"{what} must be a list of [x, y] pixel points")
    return tuple((int(p[0]), int(p[1])) for p in value)


def _strokes(body: Mapping[str, Any], key: str) -> tuple[tuple[tuple[int, int], ...], ...]:
    value = body.get(key) or []
    if not isinstance(value, list):
        raise InputError(f"{key} must be a list of strokes (lists of [x, y] points)")
    return tuple(_points(s, key) for s in value if s)


def _labels_answer(labels: np.ndarray, foreground: int) -> dict[str, Any]:
    return {"labels_png": base64.b64encode(encode_packed_png(labels)).decode("ascii"),
            "segments": int(labels.max()) if labels.size else 0, "foreground": foreground}


def _split(mask: np.ndarray) -> dict[str, Any]:
    """A foreground mask as a label map (its components first) for the page."""
    labels = partition_labels(mask)
    foreground = int(labels[mask].max()) if mask.any() else 0
    return _labels_answer(labels, foreground)


def grabcut(image: np.ndarray, body: Mapping[str, Any]) -> dict[str, Any]:
    """GrabCut from the page's rectangle and strokes, run ``iterations`` times.

    Args:
        image: ``(H, W, 3) uint8``.
        body: ``rect`` ``[x0, y0, x1, y1]`` or null, ``fg``, ``bg``, ``probable_fg``,
            ``probable_bg`` (lists of strokes), ``iterations`` (>= 1, one per space press),
            ``brush``.

    Returns:
        ``labels_png`` (packed label map: foreground components first, then background),
        ``segments`` and ``foreground`` (labels ``1..foreground`` are foreground).
    """
    from icas_ray.segment.methods.grabcut import GrabcutParams, grabcut_mask

    rect = body.get("rect")
    if rect is not None:
        if not isinstance(rect, list) or len(rect) != 4:
            raise InputError("rect must be [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (int(v) for v in rect)
        rect = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    try:
        iterations = int(body.get("iterations") or 1)
        brush = int(body.get("brush") or 3)
    except (TypeError, ValueError) as e:
        raise InputError("iterations and brush must be integers") from e
    params = GrabcutParams(rect=rect, fg=_strokes(body, "fg"), bg=_strokes(body, "bg"),
                           probable_fg=_strokes(body, "probable_fg"),
                           probable_bg=_strokes(body, "probable_bg"),
                           iterations=max(1, min(iterations, 50)), brush=max(0, min(brush, 50)))
    return _split(grabcut_mask(image, params))


def _sam_answer(mask: np.ndarray, t0: float, service: Mapping[str, Any]) -> dict[str, Any]:
    out = _split(mask)
    out["request_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    out["decode_ms"] = service.get("decode_ms")
    out["score"] = service.get("score")
    return out


def sam_predict(client: Any, image_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """Prompts to the SAM service; the predicted mask split into segments for painting.

    Args:
        client: a :class:`~icas_ray.serve.client.SamClient`.
        image_id: the image's id at the service.
        body: ``points`` ``[[x, y], ...]`` with ``labels`` (1 fg, 0 bg) and/or ``boxes``
            ``[[x0, y0, x1, y1], ...]``.
    """
    from icas_ray.serve.client import decode_mask_png

    points = _points(body.get("points"), "points")
    labels = body.get("labels") or [1] * len(points)
    boxes = body.get("boxes") or []
    if not points and not boxes:
        raise InputError("no prompt: add points (left/right click) or a box (middle drag)")
    if len(labels) != len(points) or not all(v in (0, 1) for v in labels):
        raise InputError("labels must hold one 0 or 1 per point")
    t0 = time.perf_counter()
    answer = client.predict(image_id, points=list(points) or None, labels=labels if points else None,
                            boxes=[[float(v) for v in b] for b in boxes] or None, formats=("png",))
    return _sam_answer(decode_mask_png(answer["mask"]["png"]), t0, answer)


def sam_automatic(client: Any, image_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """SAM's automatic masks as the label map to paint on."""
    from icas_ray.serve.client import decode_label_png

    params = {k: v for k, v in body.items() if k in ("points_per_side", "pred_iou_thresh",
                                                      "stability_score_thresh")}
    t0 = time.perf_counter()
    answer = client.automatic(image_id, formats=[], **params)
    labels = decode_label_png(answer["labels_png"]).astype(np.int32)
    if labels.size and int(labels.min()) == 0:  # pixels no mask covers: their own regions
        from icas_ray.segment import fill_unlabelled

        labels = fill_unlabelled(labels)
    out = _labels_answer(labels, 0)
    out["request_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    out["decode_ms"] = answer.get("decode_ms")
    return out


def _read_rgb(storage: Storage, uri: str) -> np.ndarray:
    try:
        return decode(storage.read_bytes(uri))
    except DecodeError as e:
        raise InputError(f"template file {uri!r} is not a readable image: {e}") from e


def load_templates(dirs: TemplateDirs, storage: Storage) -> list[Template]:
    """The templates of the four folders, matched by file name (attention and mask optional).

    Raises:
        ConfigError: a folder is missing, has no images, or a template has no segment.
    """
    for what, folder in (("--templates", dirs.templates), ("--segments", dirs.segments),
                         ("--attentions", dirs.attentions), ("--masks", dirs.masks)):
        if folder is not None and not storage.exists(folder):
            raise ConfigError(f"{what} {folder!r} does not exist: give a folder of images")

    def by_name(folder: str | None) -> dict[str, str]:
        if folder is None:
            return {}
        return {os.path.basename(f.uri.replace("\\", "/")): f.uri
                for f in storage.list_images(folder)}

    templates, segments = by_name(dirs.templates), by_name(dirs.segments)
    attentions, masks = by_name(dirs.attentions), by_name(dirs.masks)
    if not templates:
        raise ConfigError(f"--templates {dirs.templates!r} holds no images")
    missing = sorted(set(templates) - set(segments))
    if missing:
        raise ConfigError(f"template(s) {', '.join(missing)} have no segment of the same name in "
                          f"--segments {dirs.segments!r}")
    out = []
    for name in sorted(templates):
        out.append(Template(
            template=_read_rgb(storage, templates[name]),
            segment=_read_rgb(storage, segments[name]),
            attention=_read_rgb(storage, attentions[name]) if name in attentions else None,
            mask=_read_rgb(storage, masks[name]) if name in masks else None))
    return out


def paint_templates(image: np.ndarray, labels: np.ndarray, templates: Sequence[Template],
                    threshold: float | None = None) -> dict[str, Any]:
    """Template painting (the seed's ``t``): the paint the page applies as one undo step.

    Returns:
        The page's paint message (:func:`~icas_ray.client._codec.paint_from_masks`) with
        ``placed``, the number of placements.
    """
    p = Painter(image, labels)
    placed = p.paint_templates(templates, threshold=threshold)
    masks = {}
    for color in p.colors():
        masks[color] = p.painted & np.all(p.result == np.array(color, np.uint8), axis=2)
    out = paint_from_masks(masks, labels.shape)  # type: ignore[arg-type]
    out["placed"] = placed
    return out
