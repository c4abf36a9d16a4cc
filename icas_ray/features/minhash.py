"""minhash: MinHash of the set of Harris-corner locations, compared by Jaccard estimate.

As in the original tool: the grey image's Harris response (``cv2.cornerHarris``, dilated) is
computed, the flattened indices of its ``top_n_corners`` strongest pixels form a set, and a
datasketch MinHash (``num_perm`` permutations) summarises it. Similarity = the share of equal
MinHash values, an estimate of the Jaccard index of the two corner sets, in [0, 1].

Corner indices are positions, so images are brought to one size first (default 128x128).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from icas_ray.features._base import Features, FeatureMethod, positive_int, register
from icas_ray.images import ReadConfig, to_gray

__all__ = ["MinHashMethod", "corner_indices", "signature_similarity"]

_BLOCK_BYTES = 32 * 2**20


@dataclass(frozen=True)
class MinHashParams:
    """Args:
        num_perm: MinHash permutations (signature length).
        top_n_corners: strongest Harris pixels kept as the feature set.
        block_size, ksize, k: ``cv2.cornerHarris`` parameters.
        seed: MinHash seed (all images must share it).
    """

    num_perm: int = 128
    top_n_corners: int = 100
    block_size: int = 2
    ksize: int = 3
    k: float = 0.04
    seed: int = 1


def corner_indices(gray: np.ndarray, p: MinHashParams) -> np.ndarray:
    """Sorted flattened indices of the ``top_n_corners`` strongest dilated Harris responses."""
    response = cv2.cornerHarris(np.float32(gray), p.block_size, p.ksize, p.k)
    response = cv2.dilate(response, None).ravel()
    n = min(p.top_n_corners, response.size)
    # A stable sort, not argpartition: the dilated response is full of ties, on which
    # argpartition is 15x slower, and stable order makes the choice among ties deterministic.
    return np.sort(np.argsort(response, kind="stable")[-n:])


def signature_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of equal values for all pairs of signature rows: ``(Na, P), (Nb, P) -> (Na, Nb)``.

    One pass per permutation over a ``(rows, Nb)`` block, counting equalities in ``uint16``;
    MinHash values are below 2**32, so they are compared as ``uint32``.
    """
    out = np.empty((len(a), len(b)), np.float32)
    a32 = a.astype(np.uint32) if a.size and a.max() < 2**32 else a
    b32 = b.astype(np.uint32) if b.size and b.max() < 2**32 else b
    bt = np.ascontiguousarray(b32.T)  # (P, Nb)
    rows = max(1, _BLOCK_BYTES // max(1, 4 * len(b)))
    eq = np.empty((min(rows, len(a)), len(b)), bool)
    for s in range(0, len(a), rows):
        block = a32[s:s + rows]
        count = np.zeros((len(block), len(b)), np.uint16)
        e = eq[:len(block)]
        for p in range(a.shape[1]):
            np.equal(block[:, p, None], bt[p][None, :], out=e)
            count += e
        np.multiply(count, np.float32(1.0 / a.shape[1]), out=out[s:s + rows], dtype=np.float32)
    return out


@register("minhash")
class MinHashMethod(FeatureMethod):
    """MinHash of Harris-corner locations."""

    Params = MinHashParams
    default_read = ReadConfig(size=(128, 128))
    cheap = True

    def __init__(self, params: MinHashParams) -> None:
        positive_int(self.name, "num_perm", params.num_perm, 1)
        positive_int(self.name, "top_n_corners", params.top_n_corners, 1)
        super().__init__(params)

    def extract(self, images: Sequence[np.ndarray]) -> Features:
        from datasketch import MinHash

        p = self.params
        sigs = np.empty((len(images), p.num_perm), np.uint64)
        first = MinHash(num_perm=p.num_perm, seed=p.seed)  # its permutations are shared (same seed)
        permutations, scheme = first.permutations, first.scheme
        for i, img in enumerate(images):
            idx = corner_indices(to_gray(img), p).astype("<u4")
            mh = MinHash(num_perm=p.num_perm, seed=p.seed, permutations=permutations, scheme=scheme)
            mh.update_batch([v.tobytes() for v in idx])
            sigs[i] = mh.hashvalues
        return {"signature": sigs}

    def pairwise(self, a: Features, b: Features) -> np.ndarray:
        return signature_similarity(a["signature"], b["signature"])
