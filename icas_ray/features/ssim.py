"""SSIM: the mean structural similarity of two grey images of one size, in [-1, 1].

Matches ``skimage.metrics.structural_similarity(x, y)`` for uint8 grey images (7x7 uniform
window, sample covariance, data range 255, mean over the window-valid interior): the interior
of ``uniform_filter`` is a plain box mean, which we compute for whole blocks of pairs at once
as two matrix products with banded matrices. Per image, the means, variances and every other
per-image term of the formula are computed once (at extraction); per pair only the cross term
``box(x * y)`` and the formula remain.

Images are brought to one size first (default 32x32, which clusters the generated digits as
well as 64x64 at a quarter of the cost): the original scored two images that differ by a pixel
in size as -inf.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from icas_ray.features._base import Features, FeatureMethod, register
from icas_ray.images import ReadConfig, to_gray
from icas_ray.errors import ConfigError

__all__ = ["SSIMMethod", "ssim_from_terms", "ssim_matrix", "ssim_matrix_torch", "ssim_terms"]

_K1, _K2, _DATA_RANGE = 0.01, 0.03, 255.0
_BLOCK_BYTES = 2 * 2**20


@dataclass(frozen=True)
class SSIMParams:
    """Args:
        win_size: side of the square window (odd, >= 3).
    """

    win_size: int = 7


@functools.lru_cache(maxsize=16)
def _band(n: int, w: int) -> np.ndarray:
    """``(n - w + 1, n)`` float32: row i sums inputs i .. i + w - 1 (a box filter as a matrix)."""
    m = np.zeros((n - w + 1, n), np.float32)
    for i in range(n - w + 1):
        m[i, i:i + w] = 1.0
    m.flags.writeable = False
    return m


def _box_sum_t(x: np.ndarray, w: int) -> np.ndarray:
    """Window sums of ``(..., H, W)`` images, **transposed**: ``(..., W - w + 1, H - w + 1)``.

    Two matrix products with banded 0/1 matrices (one per axis) run in BLAS, where the
    cumulative sums of summed-area tables are bound by memory traffic.
    """
    h, wd = x.shape[-2:]
    lead = x.shape[:-2]
    cols = x.reshape(-1, wd) @ _band(wd, w).T  # (..., H, W')
    cols = np.ascontiguousarray(cols.reshape(-1, h, wd - w + 1).swapaxes(1, 2))
    sums: np.ndarray = (cols.reshape(-1, h) @ _band(h, w).T).reshape(*lead, wd - w + 1, h - w + 1)
    return sums


def _stats(x: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image window means and sample variances (float64, transposed like
    :func:`_box_sum_t`) of centred images."""
    x = x.astype(np.float64)
    n = w * w
    mu = _box_sum_t(x, w) / n
    var = n / (n - 1.0) * (_box_sum_t(x * x, w) / n - mu * mu)
    return mu, var


def window_stats(images: np.ndarray, win_size: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Window means (of the images centred at 128) and sample variances: two
    ``(N, W - w + 1, H - w + 1)`` arrays (windows transposed, as the pair sums come)."""
    return _stats(images.astype(np.float32) - 128.0, win_size)


def ssim_terms(images: np.ndarray, win_size: int = 7) -> dict[str, np.ndarray]:
    """The per-image parts of the SSIM formula (float32), computed once per image.

    ``cen``: the image centred at 128; per window (transposed, as :func:`_box_sum_t` gives the
    pair's sums): ``cmu`` the centred mean, ``mean`` the mean, ``lum`` = ``mean^2 + C1/2`` and
    ``con`` = ``var + C2/2`` (summed over the two images of a pair, the denominators).
    """
    c1, c2 = (_K1 * _DATA_RANGE) ** 2, (_K2 * _DATA_RANGE) ** 2
    mu, var = window_stats(images, win_size)
    f32 = np.float32
    mean = mu + 128.0
    return {"cen": images.astype(f32) - f32(128.0), "cmu": np.ascontiguousarray(mu, f32),
            "mean": np.ascontiguousarray(mean, f32), "lum": np.ascontiguousarray(mean * mean + c1 / 2, f32),
            "con": np.ascontiguousarray(var + c2 / 2, f32)}


def ssim_from_terms(a: dict[str, np.ndarray], b: dict[str, np.ndarray], win_size: int = 7,
                    ) -> np.ndarray:
    """SSIM of every pair from two sets of :func:`ssim_terms`: ``(Na, Nb) float32``.

    Per pair only the window sums of products remain; they are computed for blocks of pairs at
    once in float32 on images centred at 128 (the sums stay small, so float32 loses nothing
    that matters next to the constant C2 = 58.5), with in-place arithmetic to keep memory
    traffic low. Blocks are kept small (a few MiB): the arithmetic is memory-bound.
    """
    w = win_size
    n = w * w
    c1, c2 = (_K1 * _DATA_RANGE) ** 2, (_K2 * _DATA_RANGE) ** 2
    cov_norm = n / (n - 1.0)
    f32 = np.float32
    af, bf = a["cen"], b["cen"]
    out = np.empty((len(af), len(bf)), np.float32)
    rows = max(1, _BLOCK_BYTES // max(1, bf[0].size * 4 * len(bf)))
    for s in range(0, len(af), rows):
        e = slice(s, s + rows)
        cov = _box_sum_t(af[e, None] * bf[None], w)
        cov *= f32(cov_norm / n)
        t = a["cmu"][e, None] * b["cmu"][None]
        t *= f32(cov_norm)
        cov -= t  # sample covariance
        cov *= f32(2.0)
        cov += f32(c2)
        num = a["mean"][e, None] * b["mean"][None]
        num *= f32(2.0)
        num += f32(c1)
        cov *= num
        den = a["lum"][e, None] + b["lum"][None]
        den *= a["con"][e, None] + b["con"][None]
        cov /= den
        out[e] = cov.mean(axis=(-2, -1))
    return out


def ssim_matrix(a: np.ndarray, b: np.ndarray, win_size: int = 7) -> np.ndarray:
    """SSIM of every pair of grey images.

    Args:
        a: ``(Na, H, W)`` uint8; b: ``(Nb, H, W)`` uint8 (same H, W).
        win_size: window side.

    Returns:
        ``(Na, Nb) float32``, equal to skimage's ``structural_similarity`` within 1e-5.
    """
    return ssim_from_terms(ssim_terms(a, win_size), ssim_terms(b, win_size), win_size)


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
    default_read = ReadConfig(size=(32, 32), grey=True)
    cheap = False
    default_strategy = "connected"
    merge_reps = 8
    threshold_range = (-1.0, 1.0)
    has_torch = True

    def __init__(self, params: SSIMParams, read: ReadConfig | None = None) -> None:
        if params.win_size < 3 or params.win_size % 2 == 0:
            raise ConfigError(f"parameter win_size={params.win_size} of method SSIM is invalid: "
                              "expected an odd number >= 3")
        super().__init__(params, read)

    def extract(self, images: Sequence[np.ndarray]) -> Features:
        grey = [to_gray(img) for img in images]
        shapes = {g.shape for g in grey}
        if len(shapes) > 1:
            raise ConfigError(f"SSIM needs images of one size, got {sorted(shapes)}: set --size WxH")
        if grey and min(grey[0].shape) < self.params.win_size:
            raise ConfigError(f"images of {grey[0].shape[1]}x{grey[0].shape[0]} are smaller than the "
                              f"SSIM window ({self.params.win_size}): use a larger --size")
        stack = np.stack(grey) if grey else np.zeros((0, 7, 7), np.uint8)
        # Every per-image term of the formula, so that a pair costs only its own work
        # (row-by-row strategies score the same columns many times).
        return ssim_terms(stack, self.params.win_size)

    def pairwise(self, a: Features, b: Features) -> np.ndarray:
        return ssim_from_terms(a, b, self.params.win_size)

    def pairwise_torch(self, a: Features, b: Features, device: str) -> np.ndarray:
        return ssim_matrix_torch(_grey(a), _grey(b), self.params.win_size, device)


def _grey(terms: Features) -> np.ndarray:
    """The uint8 grey images back from their centred float copies (exact: integers)."""
    return (terms["cen"] + np.float32(128.0)).astype(np.uint8)
