"""``graph``: OpenCV ximgproc graph segmentation (Felzenszwalb's algorithm in OpenCV)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from icas_ray.segment._registry import register
from icas_ray.segment.methods._common import require

__all__ = ["GraphParams", "graph"]


@dataclass(frozen=True)
class GraphParams:
    """Parameters of ``graph``.

    Args:
        k: higher = fewer, larger and smoother segments; lower = finer detail.
        min_segment_size: smallest segment, in pixels.
        sigma: Gaussian smoothing before segmenting.
    """

    k: float = 15.0
    min_segment_size: int = 100
    sigma: float = 0.5

    def __post_init__(self) -> None:
        require(self.k > 0, "graph", "k", self.k, "> 0")
        require(self.min_segment_size >= 0, "graph", "min_segment_size", self.min_segment_size,
                ">= 0")
        require(self.sigma >= 0, "graph", "sigma", self.sigma, ">= 0")


@register("graph", GraphParams, summary="graph segmentation (OpenCV ximgproc)")
def graph(image: np.ndarray, params: GraphParams) -> np.ndarray:
    """Graph segmentation; ``(H, W) int32`` segments from 1, no 0."""
    seg = cv2.ximgproc.segmentation.createGraphSegmentation(
        sigma=params.sigma, k=params.k, min_size=params.min_segment_size)
    labels = seg.processImage(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return np.asarray(labels, dtype=np.int32) + 1
