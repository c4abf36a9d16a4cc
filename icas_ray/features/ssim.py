"""SSIM: the mean structural similarity of two grey images of one size, in [-1, 1].

Matches ``skimage.metrics.structural_similarity(x, y)`` for uint8 grey images (7x7 uniform
window, sample covariance, data range 255, mean over the window-valid interior): the interior
of ``uniform_filter`` is a plain box mean, which we compute for whole blocks of pairs at once
with summed-area tables. Per image, the means and variances are computed once; per pair only
the cross term ``box(x * y)`` remains.

Images are brought to one size first (default 32x32, which clusters the generated digits as
well as 64x64 at a quarter of the cost): the original scored two images that differ by a pixel
in size as -inf.
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
_BLOCK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class SSIMParams:
    """Args:
        win_size: side of the square window (odd, >= 3).
    """

    win_size: int = 7


def _box_sum(x: np.ndarray, w: int) -> np.ndarray:
    """Sum over every w x w window fully inside the last two axes (summed-area table)."""
    c = np.zeros(x.shape[:-2] + (x.shape[-2] + 1, x.shape[-1] + 1), x.dtype)
    np.cumsum(x, axis=-2, out=c[..., 1:, 1:])
    np.cumsum(c[..., 1:, 1:], axis=-1, out=c[..., 1:, 1:])
    s = c[..., w:, w:] - c[..., :-w, w:]
    s -= c[..., w:, :-w]
    s += c[..., :-w, :-w]
    return s


def _stats(x: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image window means and sample variances (float64) of centred images."""
    x = x.astype(np.float64)
    n = w * w
    mu = _box_sum(x, w) / n
    var = n / (n - 1.0) * (_box_sum(x * x, w) / n - mu * mu)
    return mu, var


def window_stats(images: np.ndarray, win_size: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Window means (of the images centred at 128) and sample variances: two
    ``(N, H - w + 1, W - w + 1)`` arrays."""
    return _stats(images.astype(np.float32) - 128.0, win_size)


def ssim_matrix(a: np.ndarray, b: np.ndarray, win_size: int = 7, *,
                stats_a: tuple[np.ndarray, np.ndarray] | None = None,
                stats_b: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """SSIM of every pair of grey images.

    Per image, the window means and variances are computed once (float64). Per pair only the
    window sums of products remain; they are computed for blocks of pairs at once in float32
    on images centred at 128 (the sums stay small, so float32 loses nothing that matters next
    to the constant C2 = 58.5), with in-place arithmetic to keep memory traffic low.

    Args:
        a: ``(Na, H, W)`` uint8; b: ``(Nb, H, W)`` uint8 (same H, W).
        win_size: window side.
        stats_a, stats_b: the images' window statistics from :func:`window_stats`, when
            already known (row-by-row strategies call this many times with the same images).

    Returns:
        ``(Na, Nb) float32``, equal to skimage's ``structural_similarity`` within 1e-5.
    """
    w = win_size
    n = w * w
    c1, c2 = (_K1 * _DATA_RANGE) ** 2, (_K2 * _DATA_RANGE) ** 2
    cov_norm = n / (n - 1.0)
    af = a.astype(np.float32) - 128.0
    bf = b.astype(np.float32) - 128.0
    mua, vara = stats_a if stats_a is not None else window_stats(a, w)
    mub, varb = stats_b if stats_b is not None else window_stats(b, w)
    f32 = np.float32
    # Per-image terms of the SSIM formula.
    ca, cb = mua.astype(f32), mub.astype(f32)  # centred means
    ma, mb = (mua + 128.0).astype(f32), (mub + 128.0).astype(f32)  # means
    pa, pb = (ma * ma + c1 / 2).astype(f32), (mb * mb + c1 / 2).astype(f32)
    va, vb = (vara + c2 / 2).astype(f32), (varb + c2 / 2).astype(f32)
    out = np.empty((len(a), len(b)), np.float32)
    rows = max(1, _BLOCK_BYTES // max(1, bf[0].size * 4 * len(b)))
    for s in range(0, len(a), rows):
        e = slice(s, s + rows)
        cov = _box_sum(af[e, None] * bf[None], w)
        cov *= f32(cov_norm / n)
        t = ca[e, None] * cb[None]
        t *= f32(cov_norm)
        cov -= t  # sample covariance
        cov *= f32(2.0)
        cov += f32(c2)
        num = ma[e, None] * mb[None]
        num *= f32(2.0)
        num += f32(c1)
        cov *= num
        den = pa[e, None] + pb[None]
        den *= va[e, None] + vb[None]
        cov /= den
        out[e] = cov.mean(axis=(-2, -1))
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
    default_read = ReadConfig(size=(32, 32))
    cheap = False
    default_strategy = "connected"
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
        stack = np.stack(grey) if grey else np.zeros((0, 7, 7), np.uint8)
        mu, var = window_stats(stack, self.params.win_size)
        return {"grey": stack, "mu": mu.astype(np.float32), "var": var.astype(np.float32)}

    def pairwise(self, a: Features, b: Features) -> np.ndarray:
        return ssim_matrix(a["grey"], b["grey"], self.params.win_size,
                           stats_a=(a["mu"], a["var"]), stats_b=(b["mu"], b["var"]))

    def pairwise_torch(self, a: Features, b: Features, device: str) -> np.ndarray:
        return ssim_matrix_torch(a["grey"], b["grey"], self.params.win_size, device)
