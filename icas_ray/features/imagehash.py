"""imagehash: the perceptual hash (ImageHash's ``phash``), compared by Hamming distance.

Similarity = 1 - (differing bits) / (hash bits), in [0, 1]. The original tool divided by the
hash's row count instead (its scores ran down to about -63); dividing by the bit count keeps a
threshold's meaning independent of the hash size.

The hash size is a parameter. The default, 16 (256 bits), was chosen by measuring accuracy and
speed on both generated data sets (benchmarks/imagehash_hash_size.md): the original's 64x64
hash with highfreq_factor 16 is slower and groups near-duplicates worse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from icas_ray.features._base import Features, FeatureMethod, positive_int, register
from icas_ray.images import ReadConfig

__all__ = ["ImageHashMethod", "hamming_similarity"]

#: Rows of the first operand per block: bounds the (rows, N, words) temporary to ~32 MB.
_BLOCK_BYTES = 32 * 2**20


@dataclass(frozen=True)
class ImageHashParams:
    """Args:
        hash_size: side of the hash in bits (hash_size**2 bits in all).
        highfreq_factor: the image is shrunk to hash_size * highfreq_factor before the DCT.
    """

    hash_size: int = 16
    highfreq_factor: int = 4


def _pack(bits: np.ndarray) -> np.ndarray:
    """``(N, B) bool`` -> ``(N, ceil(B/64)) uint64`` words."""
    packed = np.packbits(bits, axis=1)
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


def hamming_similarity(a: np.ndarray, b: np.ndarray, n_bits: int) -> np.ndarray:
    """``1 - hamming / n_bits`` for all pairs of rows of packed ``uint64`` words.

    Args:
        a: ``(Na, W) uint64``; b: ``(Nb, W) uint64``.

    Returns:
        ``(Na, Nb) float32``.
    """
    out = np.empty((len(a), len(b)), np.float32)
    rows = max(1, _BLOCK_BYTES // max(1, 8 * b.shape[0] * b.shape[1]))
    for s in range(0, len(a), rows):
        x = a[s:s + rows, None, :] ^ b[None, :, :]
        dist = np.bitwise_count(x).sum(axis=2, dtype=np.int32)
        out[s:s + rows] = 1.0 - dist / np.float32(n_bits)
    return out


@register("imagehash")
class ImageHashMethod(FeatureMethod):
    """Perceptual hash (DCT of a shrunk grey image, bits above the median)."""

    Params = ImageHashParams
    default_read = ReadConfig(max_side=512)
    cheap = True

    def __init__(self, params: ImageHashParams) -> None:
        positive_int(self.name, "hash_size", params.hash_size, 2)
        positive_int(self.name, "highfreq_factor", params.highfreq_factor, 1)
        super().__init__(params)

    @property
    def n_bits(self) -> int:
        return int(self.params.hash_size) ** 2

    def extract(self, images: Sequence[np.ndarray]) -> Features:
        import imagehash

        hs, hf = self.params.hash_size, self.params.highfreq_factor
        bits = np.zeros((len(images), self.n_bits), bool)
        for i, img in enumerate(images):
            bits[i] = imagehash.phash(Image.fromarray(img), hash_size=hs, highfreq_factor=hf).hash.ravel()
        return {"hash": _pack(bits)}

    def pairwise(self, a: Features, b: Features) -> np.ndarray:
        return hamming_similarity(a["hash"], b["hash"], self.n_bits)
