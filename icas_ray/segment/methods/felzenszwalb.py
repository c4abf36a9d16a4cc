"""``felzenszwalb``: scikit-image's graph-based segmentation of Felzenszwalb and Huttenlocher."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icas_ray.segment._registry import register
from icas_ray.segment.methods._common import require

__all__ = ["FelzenszwalbParams", "felzenszwalb"]


@dataclass(frozen=True)
class FelzenszwalbParams:
    """Parameters of ``felzenszwalb``.

    Args:
        segment_scale: higher = larger segments (skimage's ``scale``).
        sigma: Gaussian smoothing before segmenting.
        min_segment_size: smallest segment, in pixels (skimage's ``min_size``).
    """

    segment_scale: float = 100.0
    sigma: float = 0.5
    min_segment_size: int = 100

    def __post_init__(self) -> None:
        require(self.segment_scale > 0, "felzenszwalb", "segment_scale", self.segment_scale, "> 0")
        require(self.sigma >= 0, "felzenszwalb", "sigma", self.sigma, ">= 0")
        require(self.min_segment_size >= 0, "felzenszwalb", "min_segment_size",
                self.min_segment_size, ">= 0")


@register("felzenszwalb", FelzenszwalbParams,
          summary="Felzenszwalb graph segmentation (scikit-image)")
def felzenszwalb(image: np.ndarray, params: FelzenszwalbParams) -> np.ndarray:
    """Felzenszwalb segmentation; ``(H, W) int32`` connected segments from 1, no 0."""
    from skimage.segmentation import felzenszwalb as _felzenszwalb

    labels = _felzenszwalb(image, scale=params.segment_scale, sigma=params.sigma,
                           min_size=params.min_segment_size, channel_axis=-1)
    return labels.astype(np.int32) + 1
