"""``chanvese`` (alias ``chanvase``, the seed's spelling): Chan-Vese level set, binned.

scikit-image's Chan-Vese runs on the grey image; its final level set is scaled to 0..255
and cut into ``number_of_bins`` equal bins, so the labels are level bands 1..N rather than
connected regions (the painting engine fills connected pixels of one label).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from icas_ray.images import to_gray
from icas_ray.segment._registry import register
from icas_ray.segment.methods._common import choice, require

__all__ = ["ChanveseParams", "chanvese"]

logger = logging.getLogger(__name__)

_INIT = ("checkerboard", "disk", "small disk")


@dataclass(frozen=True)
class ChanveseParams:
    """Parameters of ``chanvese``; all but ``number_of_bins`` go to skimage's ``chan_vese``.

    Args:
        number_of_bins: level bands the level set is cut into (labels 1..N).
        mu: edge length weight (higher = rounder contours).
        lambda1: weight of the inside region.
        lambda2: weight of the outside region.
        tol: convergence tolerance.
        max_num_iter: maximum iterations.
        dt: time step.
        init_level_set: ``checkerboard``, ``disk`` or ``small disk``.
    """

    number_of_bins: int = 20
    mu: float = 0.25
    lambda1: float = 2.0
    lambda2: float = 1.0
    tol: float = 1e-3
    max_num_iter: int = 100
    dt: float = 0.5
    init_level_set: str = "checkerboard"

    def __post_init__(self) -> None:
        require(1 <= self.number_of_bins <= 256, "chanvese", "number_of_bins", self.number_of_bins,
                "1 <= number_of_bins <= 256")
        require(self.max_num_iter >= 1, "chanvese", "max_num_iter", self.max_num_iter, ">= 1")
        require(self.dt > 0, "chanvese", "dt", self.dt, "> 0")
        require(self.tol >= 0, "chanvese", "tol", self.tol, ">= 0")
        choice("chanvese", "init_level_set", self.init_level_set, _INIT)


@register("chanvese", ChanveseParams, aliases=("chanvase",),
          summary="Chan-Vese level set cut into bins (scikit-image)")
def chanvese(image: np.ndarray, params: ChanveseParams) -> np.ndarray:
    """Chan-Vese level set of the grey image, binned.

    Returns:
        ``(H, W) int32`` labels 1..``number_of_bins`` (no 0).
    """
    from skimage.segmentation import chan_vese

    gray = to_gray(image)
    _, phi, _ = chan_vese(gray, mu=params.mu, lambda1=params.lambda1, lambda2=params.lambda2,
                          tol=params.tol, max_num_iter=params.max_num_iter, dt=params.dt,
                          init_level_set=params.init_level_set, extended_output=True)
    lo, hi = float(phi.min()), float(phi.max())
    if not hi > lo:
        return np.ones(gray.shape, np.int32)
    scaled = ((phi - lo) / (hi - lo) * 255).astype(np.uint8)
    return (scaled // (256 / params.number_of_bins)).astype(np.int32) + 1
