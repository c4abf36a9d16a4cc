"""SSIM: the mean structural similarity of two grey images of one size, in [-1, 1].

Matches ``skimage.metrics.structural_similarity(x, y)`` for uint8 grey images (7x7 uniform
window, sample covariance, data range 255, mean over the window-valid interior): the interior
of ``uniform_filter`` is a plain box mean, which we compute for whole blocks of pairs at once
with summed-area tables. Per image, the means and variances are computed once; per pair only
the cross term ``box(x * y)`` remains.

Images are brought to one size first (default 64x64): the original scored two images that
differ by a pixel in size as -inf.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from icas_ray.features._base import Features, FeatureMethod, register
from icas_ray.images import ReadConfig, to_gray
from icas_ray.errors import ConfigError

__all__ = ["SSIMMethod", "ssim_matrix", "ssim_matrix_torch"]

_K1, _K2, _DATA_RANGE = 0.01, 0.03, 255.0
_BLOCK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class SSIMParams:
    """Args:
        win_size: side of the square window (odd, >= 3).
    """

    win_size: int = 7


def _box_valid(x: np.ndarray, w: int) -> np.ndarray:
    """Mean over every w x w window fully inside the last two axes (float64)."""
    c = np.zeros(x.shape[:-2] + (x.shape[-2] + 1, x.shape[-1] + 1), np.float64)
    np.cumsum(x, axis=-2, dtype=np.float64, out=c[..., 1:, 1:])
    np.cumsum(c[..., 1:, 1:], axis=-1, out=c[..., 1:, 1:])
    s = c[..., w:, w:] - c[..., :-w, w:] - c[..., w:, :-w] + c[..., :-w, :-w]
    return s / (w * w)


def _stats(x: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image window means and (sample) variances."""
    x = x.astype(np.float64)
    mu = _box_valid(x, w)
    cov_norm = w * w / (w * w - 1.0)
    var = cov_norm * (_box_valid(x * x, w) - mu * mu)
    return mu, var


def ssim_matrix(a: np.ndarray, b: np.ndarray, win_size: int = 7) -> np.ndarray:
    """SSIM of every pair of grey images.

    Args:
        a: ``(Na, H, W)`` uint8; b: ``(Nb, H, W)`` uint8 (same H, W).
        win_size: window side.

    Returns:
        ``(Na, Nb) float32``.
    """
    w = win_size
    c1, c2 = (_K1 * _DATA_RANGE) ** 2, (_K2 * _DATA_RANGE) ** 2
    cov_norm = w * w / (w * w - 1.0)
    mua, vara = _stats(a, w)
    mub, varb = _stats(b, w)
    af, bf = a.astype(np.float64), b.astype(np.float64)
    out = np.empty((len(a), len(b)), np.float32)
    per_row = bf[0].size * 8 * 3 * max(1, len(b))
    rows = max(1, _BLOCK_BYTES // per_row)
    for s in range(0, len(a), rows):
        e = slice(s, s + rows)
        mxy = _box_valid(af[e, None] * bf[None], w)
        ma, mb = mua[e, None], mub[None]
        vxy = cov_norm * (mxy - ma * mb)
        num = (2 * ma * mb + c1) * (2 * vxy + c2)
        den = (ma * ma + mb * mb + c1) * (vara[e, None] + varb[None] + c2)
        out[e] = (num / den).mean(axis=(-2, -1))
    return out


def ssim_matrix_torch(a: np.ndarray, b: np.ndarray, win_size: int = 7,
                      device: str = "cpu") -> np.ndarray:
    """:func:`ssim_matrix` with torch (``avg_pool2d`` as the box mean), batched on ``device``."""
    import torch
    import torch.nn.functional as F

    w = win_size
    c1, c2 = (_K1 * _DATA_RANGE) ** 2, (_K2 * _DATA_RANGE) ** 2
    cov_norm = w * w / (w * w - 1.0)
    dtype = torch.float64 if device == "cpu" else torch.float32
    ta = torch.as_tensor(a, device=device, dtype=dtype)[:, None]
    tb = torch.as_tensor(b, device=device, dtype=dtype)[:, None]

    def box(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, w, stride=1)

    mua, mub = box(ta), box(tb)
    vara, varb = cov_norm * (box(ta * ta) - mua**2), cov_norm * (box(tb * tb) - mub**2)
    out = torch.empty((len(a), len(b)), dtype=torch.float32, device=device)
    rows = max(1, _BLOCK_BYTES // (tb[0].numel() * 8 * 3 * max(1, len(b))))
    with torch.no_grad():
        for s in range(0, len(a), rows):
            xa = ta[s:s + rows]
            n = xa.shape[0]
            prod = (xa[:, None] * tb[None]).reshape(n * len(b), 1, *tb.shape[2:])
            mxy = box(prod).reshape(n, len(b), *mua.shape[2:])
            ma, mb = mua[s:s + rows, 0][:, None], mub[:, 0][None]
            vxy = cov_norm * (mxy - ma * mb)
            num = (2 * ma * mb + c1) * (2 * vxy + c2)
            den = (ma * ma + mb * mb + c1) * (vara[s:s + rows, 0][:, None] + varb[:, 0][None] + c2)
            out[s:s + rows] = (num / den).mean(dim=(-2, -1)).float()
    return out.cpu().numpy()


@register("SSIM")
class SSIMMethod(FeatureMethod):
    """Structural similarity of grey images brought to one size."""

    Params = SSIMParams
    default_read = ReadConfig(size=(64, 64))
    cheap = False
    merge_reps = 8
    threshold_range = (-1.0, 1.0)
    has_torch = True

    def __init__(self, params: SSIMParams) -> None:
        if params.win_size < 3 or params.win_size % 2 == 0:
            raise ConfigError(f"parameter win_size={params.win_size} of method SSIM is invalid: "
                              "expected an odd number >= 3")
        super().__init__(params)

    def extract(self, images: Sequence[np.ndarray]) -> Features:
        grey = [to_gray(img) for img in images]
        shapes = {g.shape for g in grey}
        if len(shapes) > 1:
            raise ConfigError(f"SSIM needs images of one size, got {sorted(shapes)}: set --size WxH")
        if grey and min(grey[0].shape) < self.params.win_size:
            raise ConfigError(f"images of {grey[0].shape[1]}x{grey[0].shape[0]} are smaller than the "
                              f"SSIM window ({self.params.win_size}): use a larger --size")
        return {"grey": np.stack(grey) if grey else np.zeros((0, 1, 1), np.uint8)}

    def pairwise(self, a: Features, b: Features) -> np.ndarray:
        return ssim_matrix(a["grey"], b["grey"], self.params.win_size)

    def pairwise_torch(self, a: Features, b: Features, device: str) -> np.ndarray:
        return ssim_matrix_torch(a["grey"], b["grey"], self.params.win_size, device)
