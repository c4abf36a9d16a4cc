"""minhash: MinHash of the set of Harris-corner locations, compared by Jaccard estimate.

As in the original tool: the grey image's Harris response (``cv2.cornerHarris``, dilated) is
computed, the flattened indices of its ``top_n_corners`` strongest pixels form a set, and a
datasketch MinHash (``num_perm`` permutations) summarises it. Similarity = the share of equal
MinHash values, an estimate of the Jaccard index of the two corner sets, in [0, 1].

Corner indices are positions, so images are brought to one size first (default 128x128).

Signatures hold, per permutation, the *position* whose permuted hash is the smallest rather
than that hash. Equal positions mean equal MinHash values and, under datasketch's default
(affine) permutations, equal values mean equal positions: a position's permuted hash is a
bijection of its 32-bit SHA-1 hash (odd multiplier), and that hash is checked to be distinct
over all positions of the grid. So the share of equal entries is exactly datasketch's Jaccard
estimate, and on a grid of at most 65536 pixels (256x256) the entries fit 16 bits: half the
bytes of the hash values for the pairwise comparison to read. Without a fixed read size (a
``--scale`` job), or where the check fails, signatures are the hash values themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from icas_ray.features._base import Features, FeatureMethod, positive_int, register
from icas_ray.images import ReadConfig, resize, to_gray

__all__ = ["MinHashMethod", "corner_indices", "signature_similarity"]

_BLOCK_BYTES = 32 * 2**20
#: Largest per-position hash table kept (128x128 positions x 128 permutations: 8 MiB).
_TABLE_BYTES = 128 * 2**20
#: Largest grid whose signatures are positions (16-bit).
_MAX_ID_POSITIONS = 2**16


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


@functools.lru_cache(maxsize=8)
def _positions_identify_values(num_perm: int, seed: int, positions: int) -> bool:
    """Whether positions ``0 .. positions - 1`` have distinct MinHash values under every
    permutation (see the module docstring): an affine scheme with odd multipliers, and
    distinct 32-bit hashes of the positions."""
    from datasketch import MinHash

    mh = MinHash(num_perm=num_perm, seed=seed)
    if getattr(mh, "scheme", None) not in ("affine32", "affine64"):
        return False
    if not (np.asarray(mh.permutations[0]) & 1).all():
        return False
    hashes = {mh.hashfunc(v.tobytes()) for v in np.arange(positions, dtype="<u4")}
    return len(hashes) == positions


_BYTE_SUM = np.uint64(0x0101010101010101)


def signature_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of equal values for all pairs of signature rows: ``(Na, P), (Nb, P) -> (Na, Nb)``.

    The equality flags of a block, one byte each, are read as 64-bit words (8 flags a word)
    and summed word-wise; one multiply then adds the 8 bytes of each sum. That avoids numpy's
    slow reduction over a short trailing axis. Signatures (16-bit positions or 32-bit hash
    values) are compared in their own dtype; they are padded to a multiple of 8 with values
    that never match.
    """
    p = a.shape[1]
    pad = (-p) % 8
    dtype = np.result_type(a.dtype, b.dtype)
    a32, b32 = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
    if pad:
        a32 = np.pad(a32, ((0, 0), (0, pad)), constant_values=0)
        b32 = np.pad(b32, ((0, 0), (0, pad)), constant_values=1)
    out = np.empty((len(a), len(b)), np.float32)
    rows = max(1, _BLOCK_BYTES // max(1, (p + pad) * len(b)))
    # The byte-lane sum of one chunk must stay below 256: chunks of at most 248 values.
    chunk = 248
    for s in range(0, len(a), rows):
        counts = None
        for c in range(0, p + pad, chunk):
            eq = a32[s:s + rows, None, c:c + chunk] == b32[None, :, c:c + chunk]
            w = eq.shape[2] // 8
            total = eq.view(np.uint64).reshape(len(eq), len(b), w).sum(axis=2, dtype=np.uint64)
            total *= _BYTE_SUM
            total >>= np.uint64(56)
            if counts is None:
                counts = total
            else:
                counts += total
        np.multiply(counts, np.float32(1.0 / p), out=out[s:s + rows], dtype=np.float32)
    return out


@register("minhash")
class MinHashMethod(FeatureMethod):
    """MinHash of Harris-corner locations."""

    Params = MinHashParams
    default_read = ReadConfig(size=(128, 128))
    cheap = True
    # Its clusters are small and many images stay outliers (all of which join the merge):
    # 8 representatives per cluster gave the same partitions as 32 on the digits, with a
    # tenth of the merge's comparisons (benchmarks/cluster.md).
    merge_reps = 8

    def __init__(self, params: MinHashParams, read: ReadConfig | None = None) -> None:
        positive_int(self.name, "num_perm", params.num_perm, 1)
        positive_int(self.name, "top_n_corners", params.top_n_corners, 1)
        super().__init__(params, read)
        self._template: Any = None
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        #: ``(width, height)`` every image is brought to when signatures are positions.
        self._grid: tuple[int, int] | None = None
        size = self.read.size
        if size is not None and size[0] * size[1] <= _MAX_ID_POSITIONS and \
                _positions_identify_values(params.num_perm, params.seed, size[0] * size[1]):
            self._grid = (int(size[0]), int(size[1]))

    def extract(self, images: Sequence[np.ndarray]) -> Features:
        p = self.params
        if self._grid is None:
            sigs = np.empty((len(images), p.num_perm), np.uint32)
            for i, img in enumerate(images):
                gray = to_gray(img)
                idx = corner_indices(gray, p)
                # A MinHash is the element-wise minimum of its elements' permuted hashes, and
                # the elements are pixel positions: each position's hashes are computed once
                # (by datasketch itself) and a signature is a minimum over table rows.
                sigs[i] = self._position_hashes(gray.size, idx).min(axis=0)
            return {"signature": sigs}
        w, h = self._grid
        sigs = np.empty((len(images), p.num_perm), np.uint16)
        cols = np.arange(p.num_perm)
        for i, img in enumerate(images):
            gray = to_gray(img)
            if gray.shape != (h, w):  # the pipeline reads at the grid already
                gray = resize(gray, (w, h))
            idx = corner_indices(gray, p)
            sigs[i] = idx[self._position_hashes(w * h, idx).argmin(axis=0)]
        return {"signature": sigs}

    def _position_hashes(self, positions: int, idx: np.ndarray) -> np.ndarray:
        """``(len(idx), num_perm)`` permuted hashes of pixel positions ``idx`` (cached)."""
        table = self._tables.get(positions)
        if table is None:
            if positions * self.params.num_perm * 4 > _TABLE_BYTES:
                return self._hashes(idx)
            table = self._tables[positions] = (np.zeros((positions, self.params.num_perm), np.uint32),
                                               np.zeros(positions, bool))
        values, known = table
        missing = idx[~known[idx]]
        if len(missing):
            values[missing] = self._hashes(missing)
            known[missing] = True
        return values[idx]

    def _hashes(self, idx: np.ndarray) -> np.ndarray:
        """Permuted hashes of each position, from datasketch (one value per MinHash)."""
        from datasketch import MinHash

        p = self.params
        if self._template is None:
            self._template = MinHash(num_perm=p.num_perm, seed=p.seed)
        mh = self._template
        out = np.empty((len(idx), p.num_perm), np.uint32)
        for k, v in enumerate(idx.astype("<u4")):
            mh.clear()
            mh.update(v.tobytes())
            out[k] = mh.hashvalues
        return out

    def pairwise(self, a: Features, b: Features) -> np.ndarray:
        return signature_similarity(a["signature"], b["signature"])
