"""minhash: MinHash of the set of Harris-corner locations, compared by Jaccard estimate.

As in the original tool: the grey image's Harris response (``cv2.cornerHarris``, dilated) is
computed, the flattened indices of its ``top_n_corners`` strongest pixels form a set, and a
MinHash (``num_perm`` permutations) summarises it. Similarity = the share of equal MinHash
values, an estimate of the Jaccard index of the two corner sets, in [0, 1].

The MinHash is datasketch's (its default since 2.0): an element's hash is the first 4 bytes
of its SHA-1, mixed by the MurmurHash3 finalizer, then permuted by ``a * h + b mod 2**32``
with datasketch's seeded odd ``a`` and ``b``. It is computed here with numpy, without
importing datasketch (half a second per worker process); the tests check it against
datasketch bit for bit.

Corner indices are positions, so images are brought to one size first (default 128x128).

Signatures hold, per permutation, the *position* whose permuted hash is the smallest rather
than that hash. Equal positions mean equal MinHash values and, conversely, equal values mean
equal positions: the finalizer and the permutations (odd ``a``) are bijections, and the
positions' SHA-1 hashes are checked to be distinct over the grid. So the share of equal
entries is exactly the Jaccard estimate, and on a grid of at most 65536 pixels (256x256) the
entries fit 16 bits: half the bytes of the hash values for the pairwise comparison to read.
Without a fixed read size (a ``--scale`` job), or where the check fails, signatures are the
hash values themselves.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from icas_ray.features._base import Features, FeatureMethod, positive_int, register
from icas_ray.images import ReadConfig, resize, to_gray

__all__ = ["MinHashMethod", "corner_indices", "signature_similarity", "top_indices"]

_BLOCK_BYTES = 32 * 2**20
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
    response = cv2.cornerHarris(gray.astype(np.float32), p.block_size, p.ksize, p.k)
    response = np.asarray(cv2.dilate(response, None), np.float32).ravel()  # type: ignore[call-overload]
    return top_indices(response, min(p.top_n_corners, response.size))


#: Groups of pixels whose maxima bound the n-th largest response from below: a grid whose
#: pixel count is a multiple of it (the default 128x128, any side a multiple of 32) uses them.
_GROUPS = 1024


def top_indices(values: np.ndarray, n: int) -> np.ndarray:
    """Sorted indices of the ``n`` largest of the 1-D float32 ``values``, ties going to the
    larger index (the ``n`` last of a stable ascending sort).

    The dilated response is full of ties, on which ``argpartition`` is 15x slower, so every
    candidate gets a distinct key: its value as an order-preserving unsigned integer in the
    high 32 bits, its index in the low ones. The candidates are first cut down: the ``n``-th
    largest of the maxima of ``_GROUPS`` disjoint groups of pixels is at most the ``n``-th
    largest value (those ``n`` maxima are ``n`` pixels), so values above it are the only
    candidates, or, when fewer than ``n`` are, it *is* the ``n``-th largest value and the rest
    are its last occurrences. On the generated digits 100 to 150 pixels of 16,384 remain
    (29 against 54 us a 128x128 response).
    """
    size = values.size
    if n >= size:
        return np.arange(size)
    if size % _GROUPS == 0 and size >= 4 * _GROUPS and n <= _GROUPS // 4:
        maxima = values.reshape(-1, _GROUPS).max(axis=0)  # group j: pixels j, j + 1024, ...
        bound = np.partition(maxima, _GROUPS - n)[_GROUPS - n]
        above = np.flatnonzero(values > bound)
        if len(above) < n:  # the bound is the n-th largest value
            ties = np.flatnonzero(values == bound)
            return np.sort(np.concatenate([above, ties[len(ties) - (n - len(above)):]]))
        picked: np.ndarray = above[_top_by_key(values[above], n)]
        return picked
    return _top_by_key(values, n)


def _top_by_key(values: np.ndarray, n: int) -> np.ndarray:
    """:func:`top_indices` over every value (distinct 64-bit keys, one partition)."""
    bits = (values + np.float32(0.0)).view(np.uint32)  # + 0.0: -0.0 becomes 0.0, a tie
    ordered = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    keys = (ordered.astype(np.uint64) << np.uint64(32)) | np.arange(values.size, dtype=np.uint64)
    return np.sort(np.argpartition(keys, values.size - n)[values.size - n:])


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine permutations ``(a, b)``, ``(num_perm,) uint32`` each (``a`` odd)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _element_hashes(positions: np.ndarray) -> np.ndarray:
    """``(n,) uint32``: the mixed 32-bit SHA-1 hash of each position (as 4 little-endian bytes)."""
    digests = b"".join(hashlib.sha1(v.tobytes()).digest()[:4]
                       for v in np.asarray(positions).astype("<u4"))
    h = np.frombuffer(digests, "<u4").astype(np.uint32)
    h ^= h >> np.uint32(16)  # MurmurHash3's finalizer (a bijection of uint32)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


@functools.lru_cache(maxsize=4)
def _grid_hashes(positions: int) -> np.ndarray | None:
    """Element hashes of positions ``0 .. positions - 1`` (read-only), or None if two of them
    coincide (then positions cannot stand for values)."""
    h = _element_hashes(np.arange(positions))
    if len(np.unique(h)) != positions:
        return None
    h.flags.writeable = False
    return h


def _permuted(h: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(h), num_perm) uint32``: every element's hash under every permutation."""
    out: np.ndarray = h[:, None] * a[None, :] + b[None, :]
    return out


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
        counts: np.ndarray | None = None
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
        assert counts is not None  # p >= 1: one chunk at least
        np.multiply(counts, np.float32(1.0 / p), out=out[s:s + rows], dtype=np.float32)
    return out


@register("minhash")
class MinHashMethod(FeatureMethod):
    """MinHash of Harris-corner locations."""

    Params = MinHashParams
    default_read = ReadConfig(size=(128, 128), grey=True)
    cheap = True
    # Its clusters are small and many images stay outliers (all of which join the merge):
    # 8 representatives per cluster gave the same partitions as 32 on the digits, with a
    # tenth of the merge's comparisons (benchmarks/cluster.md).
    merge_reps = 8

    def __init__(self, params: MinHashParams, read: ReadConfig | None = None) -> None:
        positive_int(self.name, "num_perm", params.num_perm, 1)
        positive_int(self.name, "top_n_corners", params.top_n_corners, 1)
        super().__init__(params, read)
        #: ``(width, height)`` every image is brought to when signatures are positions.
        self._grid: tuple[int, int] | None = None
        size = self.read.size
        if size is not None and size[0] * size[1] <= _MAX_ID_POSITIONS:
            self._grid = (int(size[0]), int(size[1]))

    def extract(self, images: Sequence[np.ndarray]) -> Features:
        return self.extract_prepared([self.prepare(img) for img in images])

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """The image's signature: ``(num_perm,)`` positions (uint16) on the grid, else hash values."""
        p = self.params
        a, b = _permutations(p.num_perm, p.seed)
        table = None if self._grid is None else _grid_hashes(self._grid[0] * self._grid[1])
        gray = to_gray(image)
        if table is None:
            # A MinHash is the element-wise minimum of its elements' permuted hashes.
            sig: np.ndarray = _permuted(_element_hashes(corner_indices(gray, p)), a, b).min(axis=0)
            return sig
        w, h = self._grid  # type: ignore[misc]
        if gray.shape != (h, w):  # the pipeline reads at the grid already
            gray = resize(gray, (w, h))
        idx = corner_indices(gray, p)
        # (num_perm, corners): each permutation's minimum over a contiguous row (a reduction
        # along the first axis of the transpose is slower).
        permuted = a[:, None] * table[idx][None, :] + b[:, None]
        positions: np.ndarray = idx[permuted.argmin(axis=1)].astype(np.uint16)
        return positions

    def extract_prepared(self, prepared: Sequence[np.ndarray]) -> Features:
        table = None if self._grid is None else _grid_hashes(self._grid[0] * self._grid[1])
        dtype = np.uint32 if table is None else np.uint16
        sigs = np.empty((len(prepared), self.params.num_perm), dtype)
        for i, sig in enumerate(prepared):
            sigs[i] = sig
        return {"signature": sigs}

    def pairwise(self, a: Features, b: Features) -> np.ndarray:
        return signature_similarity(a["signature"], b["signature"])
