"""``kmeans``: k-means on pixel colour and position (the seed's kmeans method).

Each pixel is the vector ``(c0, c1, c2, row / color_importance, col / color_importance)``;
a larger ``color_importance`` shrinks the position so colour dominates. The seed built the
coordinates with a Python list comprehension over every pixel; :func:`pixel_features` builds
the same float32 array with ``np.indices``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from icas_ray.segment._registry import MinSize, register
from icas_ray.segment.methods._common import require

__all__ = ["KmeansParams", "kmeans", "pixel_features"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KmeansParams:
    """Parameters of ``kmeans``.

    Args:
        k: number of clusters.
        color_importance: divisor of the pixel coordinates; higher = colour matters more.
        attempts: k-means restarts (the best compactness wins).
        max_iter: k-means iterations per attempt.
        epsilon: k-means convergence threshold.
        seed: OpenCV random seed (None = not reseeded, results vary between runs).
    """

    k: int = 15
    color_importance: float = 5.0
    attempts: int = 10
    max_iter: int = 100
    epsilon: float = 0.2
    seed: int | None = 0

    def __post_init__(self) -> None:
        require(self.k >= 1, "kmeans", "k", self.k, ">= 1")
        require(self.color_importance > 0, "kmeans", "color_importance", self.color_importance,
                "> 0")
        require(self.attempts >= 1, "kmeans", "attempts", self.attempts, ">= 1")
        require(self.max_iter >= 1, "kmeans", "max_iter", self.max_iter, ">= 1")
        require(self.epsilon >= 0, "kmeans", "epsilon", self.epsilon, ">= 0")


def pixel_features(image: np.ndarray, color_importance: float) -> np.ndarray:
    """``(H*W, C+2) float32`` rows of ``(colour..., row / ci, col / ci)`` in raster order."""
    h, w = image.shape[:2]
    rc = np.indices((h, w), dtype=np.float64).transpose(1, 2, 0) / color_importance
    data = np.concatenate([image.reshape(h, w, -1), rc], axis=2)
    return data.reshape(h * w, -1).astype(np.float32)


def _min_size(p: KmeansParams) -> MinSize:
    # k clusters need k pixels; OpenCV's kmeans raises on fewer samples than clusters.
    return MinSize(pixels=p.k, because=f"k={p.k}", fix="a smaller k (-p k=N)")


@register("kmeans", KmeansParams, summary="k-means on colour and position (OpenCV)",
          min_size=_min_size)
def kmeans(image: np.ndarray, params: KmeansParams) -> np.ndarray:
    """Cluster pixels by colour and position; the image needs at least ``k`` pixels.

    Returns:
        ``(H, W) int32`` cluster labels from 1 to ``k`` (no 0); a cluster may be split in space.
    """
    h, w = image.shape[:2]
    features = pixel_features(image, params.color_importance)
    k = min(params.k, len(features))
    if k == 1:  # one cluster; OpenCV would read a single pixel's row as a column of samples
        return np.ones((h, w), np.int32)
    if params.seed is not None:
        cv2.setRNGSeed(params.seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, params.max_iter, params.epsilon)
    _, labels, _ = cv2.kmeans(features, k, None, criteria, params.attempts,
                              cv2.KMEANS_RANDOM_CENTERS)
    return labels.reshape(h, w).astype(np.int32) + 1
