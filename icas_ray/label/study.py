"""How many clicks whole-cluster labelling saves, measured on generated near-duplicates.

The study (``scripts/bench.py label`` tabulates it):

1. generate the near-duplicates data set in memory (the same images as
   ``icas datasets make near-duplicates --count N --seed S --classes C``), each image with the
   ground-truth mask of one object (:func:`icas_ray.datasets.photo_object`);
2. segment every image with a method (default ``superpixel``);
3. the truth of each image is its object snapped to its own segments
   (:func:`~icas_ray.label.propagate.snap_to_segments`): exactly what a labeller paints;
4. the first image of each group (cluster) is painted by hand, its truth; for every other image
   :func:`~icas_ray.label.propagate.propose` carries those masks over, snapped to the image's
   segments, and the clicks still needed (:func:`~icas_ray.label.propagate.clicks_to_paint`)
   are compared with the clicks of painting the image from nothing. The hand-painted source
   is itself snapped to its segments, so its edges are ragged at the scale of a segment;
   ``object_iou`` carries the source's true object pixels instead and compares them with the
   target's, which says how well the alignment did, independent of the segments.

Example:
    >>> r = clicks_study(count=4, classes=2)  # doctest: +SKIP
    >>> r["saving"] > 0.5  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from icas_ray.label._colour import Colour
from icas_ray.label.propagate import clicks_to_paint, propose, segment_units, snap_to_segments

__all__ = ["STUDY_COLOUR", "clicks_study", "iou"]

logger = logging.getLogger(__name__)

#: The colour the study paints its objects with (the original's first palette colour).
STUDY_COLOUR: Colour = (204, 0, 0)


def iou(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty or None)."""
    if a is None and b is None:
        return 1.0
    if a is None or b is None:
        return 0.0 if (a if a is not None else b).any() else 1.0  # type: ignore[union-attr]
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def _object_iou(src: Any, tgt: Any) -> float:
    """How well the alignment alone does: the source's true object carried to the target,
    against the target's true object (pixels, no segments involved)."""
    carried = propose(src.image, {STUDY_COLOUR: src.object}, tgt.image)
    return iou(carried.masks.get(STUDY_COLOUR), tgt.object)


def clicks_study(*, count: int = 24, classes: int = 4, seed: int = 0,
                 method: str = "superpixel", params: Mapping[str, Any] | None = None,
                 coverage: float = 0.5) -> dict[str, Any]:
    """Clicks per image with and without cluster proposals on generated near-duplicates.

    Args:
        count: images (``count // classes`` per group, the first of each painted by hand).
        classes: groups (photos), 1..19.
        seed: the data set's seed.
        method: segmentation method (:func:`icas_ray.segment.method_names`).
        params: its parameters (defaults when None).
        coverage: the part of a segment a colour must cover to take it (snapping and counting).

    Returns:
        A JSON-able dict: ``clusters`` (studied), ``skipped_clusters`` (names of the groups
        whose object is smaller than its segments on the first image: no click paints it, so
        there is nothing to carry over), ``targets`` (images proposed onto), ``clicks_alone``
        and ``clicks_with_proposal`` (means per target image), ``saving`` (``1 - with / alone``
        over all targets), ``median_image_saving`` (the median of each target's own saving,
        which one image with thousands of tiny segments cannot dominate),
        ``cluster_clicks_alone`` / ``cluster_clicks_with_proposal`` (every
        image of every group, hand-painted first images included), ``mean_iou`` / ``min_iou``
        (proposal against truth, both snapped to the target's segments),
        ``mean_object_iou`` / ``min_object_iou`` (the source's true object carried over against
        the target's: the alignment alone), ``methods`` (proposals per alignment
        method), and ``rows``, one per image.
    """
    from icas_ray.datasets import near_duplicate_objects
    from icas_ray.segment import segment

    items = near_duplicate_objects(count, seed=seed, classes=classes)
    seg_params = dict(params or {})
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.label, []).append(i)
    rows: list[dict[str, Any]] = []
    methods: dict[str, int] = {}
    skipped: list[str] = []
    for label, members in groups.items():
        src = items[members[0]]
        src_labels = segment(src.image, method, **seg_params)
        src_truth = snap_to_segments(src_labels, {STUDY_COLOUR: src.object}, coverage=coverage)
        if not src_truth:
            skipped.append(label)  # the object is smaller than its segments: no click paints it
            continue
        alone = clicks_to_paint(src_labels, src_truth, coverage=coverage)
        rows.append({"file": src.file, "cluster": label, "role": "source",
                     "segments": segment_units(src_labels)[1], "clicks_alone": alone,
                     "clicks_with_proposal": alone, "iou": 1.0, "object_iou": None,
                     "score": 1.0, "method": "hand"})
        for j in members[1:]:
            tgt = items[j]
            labels = segment(tgt.image, method, **seg_params)
            truth = snap_to_segments(labels, {STUDY_COLOUR: tgt.object}, coverage=coverage)
            raw = propose(src.image, src_truth, tgt.image)
            snapped = snap_to_segments(labels, raw.masks, coverage=coverage) if raw.masks else {}
            methods[raw.method] = methods.get(raw.method, 0) + 1
            rows.append({
                "file": tgt.file, "cluster": label, "role": "target",
                "segments": segment_units(labels)[1],
                "clicks_alone": clicks_to_paint(labels, truth, coverage=coverage),
                "clicks_with_proposal": clicks_to_paint(labels, truth, start=snapped,
                                                        coverage=coverage),
                "iou": round(iou(snapped.get(STUDY_COLOUR), truth.get(STUDY_COLOUR)), 4),
                "object_iou": round(_object_iou(src, tgt), 4),
                "score": round(raw.score, 4), "method": raw.method,
            })
    targets = [r for r in rows if r["role"] == "target"]
    alone_t = sum(r["clicks_alone"] for r in targets)
    with_t = sum(r["clicks_with_proposal"] for r in targets)
    ious = [r["iou"] for r in targets]
    per_image = [1.0 - r["clicks_with_proposal"] / r["clicks_alone"] for r in targets
                 if r["clicks_alone"]]
    object_ious = [r["object_iou"] for r in targets]
    result = {
        "data": {"kind": "near-duplicates", "count": count, "classes": classes, "seed": seed},
        "method": method, "params": seg_params, "coverage": coverage,
        "clusters": len(groups) - len(skipped), "skipped_clusters": skipped,
        "targets": len(targets),
        "clicks_alone": alone_t / len(targets) if targets else 0.0,
        "clicks_with_proposal": with_t / len(targets) if targets else 0.0,
        "saving": 1.0 - with_t / alone_t if alone_t else 0.0,
        "median_image_saving": float(np.median(per_image)) if per_image else 0.0,
        "cluster_clicks_alone": sum(r["clicks_alone"] for r in rows),
        "cluster_clicks_with_proposal": sum(r["clicks_with_proposal"] for r in rows),
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
        "min_iou": float(np.min(ious)) if ious else 0.0,
        "mean_object_iou": float(np.mean(object_ious)) if object_ious else 0.0,
        "min_object_iou": float(np.min(object_ious)) if object_ious else 0.0,
        "methods": methods, "rows": rows,
    }
    logger.info("clicks study: %.1f clicks per image alone, %.1f with proposals (%.0f%% saved)",
                result["clicks_alone"], result["clicks_with_proposal"], 100 * result["saving"])
    return result
