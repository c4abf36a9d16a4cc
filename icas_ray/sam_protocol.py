"""The interface every Segment Anything backend satisfies.

Two implementations exist: an in-process model (``icas_ray.sam``) and the HTTP client of the
Ray Serve app (``icas_ray.serve.client``). The ``sam`` segmentation method and the labelling
client accept either.

Conventions: images are ``(H, W, 3) uint8`` RGB; points are ``(N, 2)`` float ``(x, y)`` pixel
coordinates with ``(N,)`` labels (1 = foreground, 0 = background); boxes are ``(B, 4)``
``(x0, y0, x1, y1)``. With several boxes, each box is predicted with the points that lie inside
it, and the masks are merged (logical or) into one.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["SamBackend"]


@runtime_checkable
class SamBackend(Protocol):
    """A Segment Anything model, local or remote."""

    def predict_mask(self, image: np.ndarray, *, points: np.ndarray | None = None,
                     point_labels: np.ndarray | None = None, boxes: np.ndarray | None = None,
                     multimask: bool = False) -> np.ndarray:
        """One ``(H, W) bool`` mask for the prompts (the best-scoring one when ``multimask``)."""
        ...

    def automatic_labels(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Automatic mask generation as a label map: ``(H, W) int32``, segments from 1, 0 = none."""
        ...
