"""``grabcut``: OpenCV GrabCut from a rectangle and scribbles, without windows.

The seed drew the rectangle and the four kinds of scribbles in OpenCV windows and pressed
space to iterate. Here they are data: a rectangle ``(x0, y0, x1, y1)`` (pixels outside are
sure background, inside probable foreground), strokes of sure/probable foreground/background
(each a sequence of ``(x, y)`` points drawn with a round brush) and an iteration count. The
foreground and the background are then labelled by 4-connected components, foreground first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from icas_ray.errors import ConfigError
from icas_ray.segment._labels import partition_labels
from icas_ray.segment._registry import register
from icas_ray.segment.methods._common import require

__all__ = ["GrabcutParams", "grabcut", "grabcut_mask"]

logger = logging.getLogger(__name__)

Point = tuple[int, int]
Stroke = tuple[Point, ...]


@dataclass(frozen=True)
class GrabcutParams:
    """Parameters of ``grabcut``; coordinates are pixels, ``x`` = column, ``y`` = row.

    Args:
        rect: ``(x0, y0, x1, y1)``, ``x0 <= x < x1``: the area that holds the object. None
            with no scribbles = the image inset by ``margin`` on each side.
        fg: strokes of sure foreground (the seed's left click).
        bg: strokes of sure background (right click).
        probable_fg: strokes of probable foreground (ctrl + left click).
        probable_bg: strokes of probable background (ctrl + right click).
        brush: stroke radius in pixels.
        iterations: GrabCut iterations (the seed ran one per space key press).
        margin: inset of the default rectangle, as a fraction of the side (0 <= margin < 0.5).
        seed: OpenCV random seed for the colour models (None = not reseeded).
    """

    rect: tuple[int, int, int, int] | None = None
    fg: tuple[Stroke, ...] = ()
    bg: tuple[Stroke, ...] = ()
    probable_fg: tuple[Stroke, ...] = ()
    probable_bg: tuple[Stroke, ...] = ()
    brush: int = 3
    iterations: int = 5
    margin: float = 0.1
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.rect is not None:
            x0, y0, x1, y1 = self.rect
            require(x1 > x0 and y1 > y0, "grabcut", "rect", self.rect,
                    "(x0, y0, x1, y1) with x1 > x0 and y1 > y0")
        require(self.brush >= 0, "grabcut", "brush", self.brush, ">= 0")
        require(self.iterations >= 1, "grabcut", "iterations", self.iterations, ">= 1")
        require(0 <= self.margin < 0.5, "grabcut", "margin", self.margin, "0 <= margin < 0.5")


def _draw(mask: np.ndarray, strokes: tuple[Stroke, ...], value: int, brush: int) -> None:
    for stroke in strokes:
        pts = [(int(x), int(y)) for x, y in stroke]
        for p in pts:
            cv2.circle(mask, p, brush, value, -1)
        for p, q in zip(pts[:-1], pts[1:]):
            cv2.line(mask, p, q, value, max(1, 2 * brush))


def grabcut_mask(image: np.ndarray, params: GrabcutParams) -> np.ndarray:
    """GrabCut's foreground: ``(H, W) bool`` (sure or probable foreground after iterating).

    Raises:
        ConfigError: the rectangle lies outside the image, or the prompts leave GrabCut no
            background or no foreground to learn colours from.
    """
    h, w = image.shape[:2]
    mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    scribbles = (params.fg, params.bg, params.probable_fg, params.probable_bg)
    rect = params.rect
    if rect is None and not any(scribbles):
        mx, my = int(round(w * params.margin)), int(round(h * params.margin))
        rect = (mx, my, max(w - mx, mx + 1), max(h - my, my + 1))
    if rect is not None:
        x0, y0, x1, y1 = (max(0, min(v, lim)) for v, lim in zip(rect, (w, h, w, h)))
        if x1 <= x0 or y1 <= y0:
            given = tuple(params.rect or ())
            raise ConfigError(f"grabcut parameter rect={given!r} lies outside the "
                              f"{w}x{h} image: use (x0, y0, x1, y1) pixel coordinates inside it")
        mask[:] = cv2.GC_BGD
        mask[y0:y1, x0:x1] = cv2.GC_PR_FGD
    for strokes, value in zip(scribbles, (cv2.GC_FGD, cv2.GC_BGD, cv2.GC_PR_FGD, cv2.GC_PR_BGD)):
        _draw(mask, strokes, value, params.brush)
    fg_like = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))
    if fg_like.all() or not fg_like.any():
        raise ConfigError("grabcut needs both foreground and background: give a rect smaller than "
                          "the image or add fg/bg scribbles")
    if params.seed is not None:
        cv2.setRNGSeed(params.seed)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    cv2.grabCut(bgr, mask, None, bgd, fgd, params.iterations, cv2.GC_INIT_WITH_MASK)
    return np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))


@register("grabcut", GrabcutParams, summary="GrabCut from a rectangle and scribbles (OpenCV)")
def grabcut(image: np.ndarray, params: GrabcutParams) -> np.ndarray:
    """GrabCut foreground/background as a label map.

    Returns:
        ``(H, W) int32``: the foreground's 4-connected components from 1, then the
        background's; no 0.
    """
    return partition_labels(grabcut_mask(image, params))
