"""TM: template matching, 1 - the normalised squared difference of two grey images.

For two images of one size, ``cv2.matchTemplate(x, y, cv2.TM_SQDIFF_NORMED)`` is the single
value ``|x - y|^2 / sqrt(|x|^2 |y|^2)``; the similarity is 1 minus it: 1 for identical images,
about 0 or below for unrelated ones (it is unbounded below when brightness differs a lot).
Since ``|x - y|^2 = |x|^2 + |y|^2 - 2 x.y``, a whole batch needs just one Gram matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from icas_ray.errors import ConfigError
from icas_ray.features._base import Features, FeatureMethod, register
from icas_ray.images import ReadConfig, to_gray

__all__ = ["TMMethod", "tm_matrix", "tm_matrix_torch"]

_EPS = 1e-12


@dataclass(frozen=True)
class TMParams:
    """No parameters: the image size (``--size``) is what matters."""


def _finish(dot: np.ndarray, na: np.ndarray, nb: np.ndarray) -> np.ndarray:
    sq = na[:, None] + nb[None, :] - 2.0 * dot
    den = np.sqrt(na[:, None] * nb[None, :])
    sim = 1.0 - np.maximum(sq, 0.0) / np.maximum(den, _EPS)
    both_black = (na[:, None] == 0) & (nb[None, :] == 0)
    return np.where(both_black, 1.0, sim).astype(np.float32)


def tm_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - TM_SQDIFF_NORMED`` for every pair: ``(Na, H, W), (Nb, H, W) uint8 -> (Na, Nb)``."""
    fa = a.reshape(len(a), -1).astype(np.float64)
    fb = b.reshape(len(b), -1).astype(np.float64)
    return _finish(fa @ fb.T, np.einsum("ij,ij->i", fa, fa), np.einsum("ij,ij->i", fb, fb))


def tm_matrix_torch(a: np.ndarray, b: np.ndarray, device: str = "cpu") -> np.ndarray:
    """:func:`tm_matrix` with torch matrix products on ``device``."""
    import torch

    dtype = torch.float64 if device == "cpu" else torch.float32
    with torch.no_grad():
        fa = torch.as_tensor(a.reshape(len(a), -1), device=device, dtype=dtype)
        fb = torch.as_tensor(b.reshape(len(b), -1), device=device, dtype=dtype)
        dot = (fa @ fb.T).double().cpu().numpy()
        na = (fa * fa).sum(1).double().cpu().numpy()
        nb = (fb * fb).sum(1).double().cpu().numpy()
    return _finish(dot, na, nb)


@register("TM")
class TMMethod(FeatureMethod):
    """Template matching of grey images brought to one size."""

    Params = TMParams
    default_read = ReadConfig(size=(64, 64), grey=True)
    cheap = True
    # Each comparison is a 4096-long dot product: 8 representatives per cluster keep the
    # merge's Gram matrix small and cluster the digits as well as 32 did (benchmarks/).
    merge_reps = 8
    threshold_range = (-1.0, 1.0)
    has_torch = True

    def extract(self, images: Sequence[np.ndarray]) -> Features:
        grey = [to_gray(img) for img in images]
        if len({g.shape for g in grey}) > 1:
            raise ConfigError("TM needs images of one size: set --size WxH")
        return {"grey": np.stack(grey) if grey else np.zeros((0, 1, 1), np.uint8)}

    def pairwise(self, a: Features, b: Features) -> np.ndarray:
        return tm_matrix(a["grey"], b["grey"])

    def pairwise_torch(self, a: Features, b: Features, device: str) -> np.ndarray:
        return tm_matrix_torch(a["grey"], b["grey"], device)
