"""``quickshift``: scikit-image's quick shift mode seeking in colour (Lab) and space."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icas_ray.segment._registry import register
from icas_ray.segment.methods._common import require

__all__ = ["QuickshiftParams", "quickshift"]


@dataclass(frozen=True)
class QuickshiftParams:
    """Parameters of ``quickshift``.

    Args:
        segment_size: cut-off distance of the mode tree: higher = larger segments
            (skimage's ``max_dist``).
        color_weight: 0..1, weight of colour against space (skimage's ``ratio``).
        kernel_size: width of the Gaussian density kernel.
        sigma: Gaussian smoothing before segmenting (0 = none).
        seed: random seed that breaks ties.
    """

    segment_size: float = 100.0
    color_weight: float = 0.5
    kernel_size: float = 3.0
    sigma: float = 0.0
    seed: int = 42

    def __post_init__(self) -> None:
        require(self.segment_size > 0, "quickshift", "segment_size", self.segment_size, "> 0")
        require(0 <= self.color_weight <= 1, "quickshift", "color_weight", self.color_weight,
                "0 <= color_weight <= 1")
        require(self.kernel_size > 0, "quickshift", "kernel_size", self.kernel_size, "> 0")
        require(self.sigma >= 0, "quickshift", "sigma", self.sigma, ">= 0")


@register("quickshift", QuickshiftParams, summary="quick shift mode seeking (scikit-image)")
def quickshift(image: np.ndarray, params: QuickshiftParams) -> np.ndarray:
    """Quick shift segmentation; ``(H, W) int32`` segments from 1, no 0."""
    from skimage.segmentation import quickshift as _quickshift

    labels = _quickshift(image, ratio=params.color_weight, kernel_size=params.kernel_size,
                         max_dist=params.segment_size, sigma=params.sigma, convert2lab=True,
                         rng=params.seed, channel_axis=-1)
    return labels.astype(np.int32) + 1
