"""``sam``: Segment Anything through any :class:`~icas_ray.sam_protocol.SamBackend`.

The backend is the in-process model (``icas_ray.sam``) or the HTTP client of the Serve app;
this module never imports torch. Without prompts the backend's automatic mask generation
labels the image, and pixels no mask covers get one label per 4-connected region (as the seed
labelled SAM's background). With points and/or boxes the predicted mask and the rest of the
image are labelled by 4-connected components, mask first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icas_ray.errors import ConfigError
from icas_ray.sam_protocol import SamBackend
from icas_ray.segment._labels import fill_unlabelled, partition_labels, relabel_consecutive
from icas_ray.segment._registry import register
from icas_ray.segment.methods._common import require

__all__ = ["SamParams", "sam"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamParams:
    """Parameters of ``sam``; coordinates are pixels, ``x`` = column, ``y`` = row.

    Args:
        backend: a :class:`SamBackend` (``icas_ray.sam`` model or Serve client). Required.
        points: ``(x, y)`` prompt points; with none and no boxes, automatic mode is used.
        point_labels: one per point, 1 = foreground, 0 = background (default: all 1).
        boxes: ``(x0, y0, x1, y1)`` prompt boxes; several boxes are merged into one mask.
        multimask: let SAM propose three masks and keep the best-scoring one.
        generator: keyword arguments for automatic mask generation (``points_per_side``,
            ``pred_iou_thresh``, ...).
    """

    backend: Any = field(default=None, repr=False, compare=False)
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    multimask: bool = False
    generator: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.point_labels:
            require(len(self.point_labels) == len(self.points), "sam", "point_labels",
                    self.point_labels, f"one label per point ({len(self.points)})")
            require(set(self.point_labels) <= {0, 1}, "sam", "point_labels", self.point_labels,
                    "0 (background) or 1 (foreground) values")
        if self.backend is not None and not isinstance(self.backend, SamBackend):
            raise ConfigError(f"sam parameter backend={type(self.backend).__name__} is not a SAM "
                              "backend: pass an icas_ray.sam model or an icas_ray.serve client")


@register("sam", SamParams, summary="Segment Anything, automatic or prompted (needs a backend)",
          needs_backend=True)
def sam(image: np.ndarray, params: SamParams) -> np.ndarray:
    """Segment Anything labels.

    Raises:
        ConfigError: no backend given.

    Returns:
        ``(H, W) int32`` segments from 1, no 0.
    """
    backend = params.backend
    if backend is None:
        raise ConfigError("method sam needs a SAM backend: pass backend=<icas_ray.sam model or "
                          "Serve client> (CLI: --sam-url URL)")
    if params.points or params.boxes:
        points = np.asarray(params.points, np.float32).reshape(-1, 2) if params.points else None
        labels = None
        if points is not None:
            labels = np.asarray(params.point_labels or [1] * len(points), np.int32)
        boxes = np.asarray(params.boxes, np.float32).reshape(-1, 4) if params.boxes else None
        mask = backend.predict_mask(image, points=points, point_labels=labels, boxes=boxes,
                                    multimask=params.multimask)
        return partition_labels(np.asarray(mask, dtype=bool))
    auto = np.asarray(backend.automatic_labels(image, **params.generator), dtype=np.int32)
    if auto.shape != image.shape[:2]:
        raise ConfigError(f"the SAM backend returned labels of shape {auto.shape} for an image of "
                          f"shape {image.shape[:2]}: check the backend version")
    return fill_unlabelled(relabel_consecutive(np.maximum(auto, 0)))
