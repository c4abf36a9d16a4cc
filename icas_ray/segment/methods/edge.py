"""``edge``: regions between strong colour gradients (the seed's edge method).

Bilateral filter and non-local-means denoising, Sobel gradient magnitude normalised to
0..255 and averaged over the channels, threshold, a 3x3 closing, then every region between
edges labelled and grown by one pixel over the edges (see
:func:`icas_ray.segment._labels.label_regions`). Pixels of edges no region grew over stay 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from icas_ray.segment._labels import label_regions
from icas_ray.segment._registry import register
from icas_ray.segment.methods._common import require

__all__ = ["EdgeParams", "edge", "edge_mask"]

logger = logging.getLogger(__name__)

_K3 = np.ones((3, 3), np.uint8)


@dataclass(frozen=True)
class EdgeParams:
    """Parameters of ``edge`` (seed names in brackets).

    Args:
        edge_th: mean normalised gradient (0..255) above which a pixel is an edge.
        bilateral_d: pixel neighbourhood diameter of the bilateral filter.
        sigma_color: colour sigma of the bilateral filter (sigmaColor).
        sigma_space: space sigma of the bilateral filter (sigmaSpace).
        template_window_size: patch size of non-local-means denoising (templateWindowSize), odd.
        search_window_size: search window of non-local-means denoising (searchWindowSize), odd.
        h: luminance filter strength of non-local-means denoising.
        h_color: colour filter strength of non-local-means denoising (hColor).
    """

    edge_th: int = 60
    bilateral_d: int = 7
    sigma_color: float = 100.0
    sigma_space: float = 100.0
    template_window_size: int = 7
    search_window_size: int = 21
    h: float = 10.0
    h_color: float = 10.0

    def __post_init__(self) -> None:
        require(0 <= self.edge_th <= 255, "edge", "edge_th", self.edge_th, "0 <= edge_th <= 255")
        require(self.bilateral_d >= 1, "edge", "bilateral_d", self.bilateral_d, ">= 1")
        for name in ("template_window_size", "search_window_size"):
            v = getattr(self, name)
            require(v >= 1 and v % 2 == 1, "edge", name, v, "an odd number >= 1")
        for name in ("sigma_color", "sigma_space", "h", "h_color"):
            v = getattr(self, name)
            require(v >= 0, "edge", name, v, ">= 0")


def edge_mask(image: np.ndarray, params: EdgeParams) -> np.ndarray:
    """The edge pixels of an ``(H, W, 3) uint8`` RGB image as ``(H, W) bool``.

    A pixel is an edge when its channel-averaged normalised gradient exceeds ``edge_th``;
    the seed left pixels exactly at the threshold with a stray value, here they are regions.
    """
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # denoising works in Lab from BGR
    smooth = cv2.bilateralFilter(bgr, d=params.bilateral_d, sigmaColor=params.sigma_color,
                                 sigmaSpace=params.sigma_space)
    clean = cv2.fastNlMeansDenoisingColored(
        smooth, None, h=params.h, hColor=params.h_color,
        templateWindowSize=params.template_window_size, searchWindowSize=params.search_window_size,
    )
    gx = cv2.Sobel(clean, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(clean, cv2.CV_64F, 0, 1, ksize=3)
    magnitude = cv2.normalize(np.sqrt(gx * gx + gy * gy), None, 0, 255, cv2.NORM_MINMAX)
    # The seed truncates to integers per channel and averages: sum > 3 * th is the same test.
    total = magnitude.astype(np.int16).sum(axis=2, dtype=np.int32)
    edges = (total > 3 * params.edge_th).astype(np.uint8)
    edges = cv2.erode(cv2.dilate(edges, _K3), _K3)  # closing: bridge one-pixel gaps
    return edges.astype(bool)


@register("edge", EdgeParams, summary="regions between denoised Sobel edges (OpenCV)")
def edge(image: np.ndarray, params: EdgeParams) -> np.ndarray:
    """Regions between strong gradients; edge pixels no region grew over are 0.

    Args:
        image: ``(H, W, 3) uint8`` RGB.
        params: :class:`EdgeParams`.

    Returns:
        ``(H, W) int32`` label map, segments from 1, 0 = edge.
    """
    return label_regions(edge_mask(image, params))
