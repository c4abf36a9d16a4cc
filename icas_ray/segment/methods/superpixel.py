"""``superpixel`` and ``slickmeans``: OpenCV ximgproc SLIC superpixels, alone or clustered.

``superpixel`` returns the superpixels themselves. ``slickmeans`` clusters them with k-means
on their centre (row, column) and mean Lab colour, so that similar neighbouring superpixels
share a label. The per-superpixel means are computed with ``np.bincount`` in one pass, not
with one ``np.where`` over the image per superpixel as the seed did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from icas_ray.segment._registry import MinSize, register
from icas_ray.segment.methods._common import choice, require

__all__ = ["SlickmeansParams", "SuperpixelParams", "slic_labels", "slic_min_side", "slickmeans",
           "superpixel"]

logger = logging.getLogger(__name__)

_ALGORITHMS = {"slic": 100, "slico": 101, "mslic": 102}  # cv2.ximgproc.SLIC / SLICO / MSLIC


def _check_slic(method: str, region_size: int, ruler: float, algorithm: str,
                iterations: int) -> None:
    require(region_size >= 2, method, "region_size", region_size, ">= 2 (pixels)")
    require(ruler > 0, method, "ruler", ruler, "> 0")
    choice(method, "algorithm", algorithm, tuple(_ALGORITHMS))
    require(iterations >= 1, method, "iterations", iterations, ">= 1")


@dataclass(frozen=True)
class SuperpixelParams:
    """Parameters of ``superpixel``.

    Args:
        region_size: average superpixel size in pixels (side of the initial grid cell).
        ruler: smoothness: higher values give more compact, regular superpixels.
        algorithm: ``slic``, ``slico`` or ``mslic`` (the seed uses MSLIC).
        iterations: SLIC iterations.
    """

    region_size: int = 40
    ruler: float = 30.0
    algorithm: str = "mslic"
    iterations: int = 10

    def __post_init__(self) -> None:
        _check_slic("superpixel", self.region_size, self.ruler, self.algorithm, self.iterations)


@dataclass(frozen=True)
class SlickmeansParams:
    """Parameters of ``slickmeans``.

    Args:
        region_size: average superpixel size in pixels.
        ruler: superpixel compactness.
        k: number of k-means clusters of superpixels.
        algorithm: ``slic``, ``slico`` or ``mslic``.
        iterations: SLIC iterations.
        attempts: k-means restarts (the best compactness wins).
        seed: OpenCV random seed for k-means (None = not reseeded, results vary).
    """

    region_size: int = 40
    ruler: float = 30.0
    k: int = 15
    algorithm: str = "mslic"
    iterations: int = 10
    attempts: int = 10
    seed: int | None = 0

    def __post_init__(self) -> None:
        _check_slic("slickmeans", self.region_size, self.ruler, self.algorithm, self.iterations)
        require(self.k >= 1, "slickmeans", "k", self.k, ">= 1")
        require(self.attempts >= 1, "slickmeans", "attempts", self.attempts, ">= 1")


def slic_min_side(region_size: int, algorithm: str) -> int:
    """The shortest image side OpenCV's SLIC takes without crashing, in pixels.

    Below it ``createSuperpixelSLIC``/``iterate`` read outside their arrays and the process dies
    (SIGSEGV: no exception to catch). SLIC places ``round(side / region_size)`` seeds a side,
    so it needs ``side >= region_size / 2``; SLICO's grid also fails at exactly half. MSLIC
    fails there too on smooth images, and its splitting and merging of superpixels crashes on
    noise-like images smaller than one region: it needs ``side >= region_size``. (On noise,
    MSLIC still crashed now and then on sides up to 2.1 region sizes, never above: refusing
    those would refuse ordinary small photos, which it segments well, so ``icas segment``
    survives such a crash instead; see :mod:`icas_ray.pipeline.segment_job`.) Measured with
    every case in its own process: region sizes 2 to 100, sides 1 to 320, noise and smooth
    images.
    """
    if algorithm == "slic":
        return max(1, -(-region_size // 2))
    if algorithm == "slico":
        return max(2, region_size // 2 + 1)
    return max(2, region_size)


def _slic_min_size(p: SuperpixelParams | SlickmeansParams) -> MinSize:
    return MinSize(side=slic_min_side(p.region_size, p.algorithm),
                   because=f"region_size={p.region_size}, algorithm {p.algorithm}",
                   fix="a smaller region_size (-p region_size=N)")


def slic_labels(lab: np.ndarray, region_size: int, ruler: float, algorithm: str,
                iterations: int) -> np.ndarray:
    """SLIC superpixels of a Lab image: ``(H, W) int32``, numbered from 0.

    The image must have both sides >= :func:`slic_min_side` (the methods check it first).
    """
    slic = cv2.ximgproc.createSuperpixelSLIC(lab, algorithm=_ALGORITHMS[algorithm],
                                             region_size=region_size, ruler=float(ruler))
    slic.iterate(iterations)
    return np.asarray(slic.getLabels(), dtype=np.int32)


@register("superpixel", SuperpixelParams, summary="SLIC/MSLIC superpixels (OpenCV ximgproc)",
          min_size=_slic_min_size)
def superpixel(image: np.ndarray, params: SuperpixelParams) -> np.ndarray:
    """SLIC superpixels of an ``(H, W, 3) uint8`` RGB image; ``(H, W) int32`` from 1, no 0."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    return slic_labels(lab, params.region_size, params.ruler, params.algorithm,
                       params.iterations) + 1


@register("slickmeans", SlickmeansParams, summary="superpixels clustered by k-means",
          min_size=_slic_min_size)
def slickmeans(image: np.ndarray, params: SlickmeansParams) -> np.ndarray:
    """Superpixels grouped by k-means on centre and mean Lab colour.

    Returns:
        ``(H, W) int32`` cluster labels from 1 to ``k`` (no 0); a cluster may be split in space.
    """
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    sp = slic_labels(lab, params.region_size, params.ruler, params.algorithm, params.iterations)
    h, w = sp.shape
    flat = sp.reshape(-1)
    n = int(flat.max()) + 1
    counts = np.bincount(flat, minlength=n).astype(np.float64)
    present = counts > 0
    rows, cols = np.divmod(np.arange(h * w), w)
    feats = [np.bincount(flat, weights=rows, minlength=n),
             np.bincount(flat, weights=cols, minlength=n)]
    feats += [np.bincount(flat, weights=lab[..., c].reshape(-1), minlength=n) for c in range(3)]
    features = (np.stack(feats, axis=1)[present] / counts[present, None]).astype(np.float32)
    k = min(params.k, len(features))
    lut = np.zeros(n, np.int32)
    if k == 1:  # one cluster; OpenCV would read a single row as a column of samples
        lut[present] = 1
        return lut[sp]
    if params.seed is not None:
        cv2.setRNGSeed(params.seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 0.2)
    _, assign, _ = cv2.kmeans(features, k, None, criteria, params.attempts,
                              cv2.KMEANS_RANDOM_CENTERS)
    lut[present] = assign.reshape(-1) + 1
    return lut[sp]
