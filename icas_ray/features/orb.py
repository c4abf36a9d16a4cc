"""ORB: the share of good matches between two images' ORB descriptors, in [0, 1].

As in the original tool: descriptors are matched with a brute-force Hamming matcher with
cross-check; a match is good when its distance is below ``ratio`` times the largest distance
among the pair's matches, or exactly 0 (the original's strict "<" scored an image 0 against
itself); similarity = good matches / matches (0 when either image has no descriptors). Matching
is OpenCV's (C++) per pair; the pipeline spreads pairs over actors.

Matching every pair costs 0.1-1 ms a pair (150-450 descriptors an image), so a batch of 1000
images would spend minutes on half a million pairs. A shortlist comes first: each image also
gets a bag of binary visual words (:func:`bag_of_words`), and only each image's ``shortlist``
nearest images by that bag (tf-idf, cosine) are matched; pairs off the shortlist score 0.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> d = rng.integers(0, 256, (3, 40, 32), dtype=np.uint8)
    >>> bag_of_words(d, np.array([40, 40, 0])).shape
    (3, 1024)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from icas_ray.features._base import FeatureMethod, Features, positive_int, register
from icas_ray.graph import nearest_pairs
from icas_ray.images import ReadConfig, to_gray

__all__ = ["ORBMethod", "bag_of_words", "orb_similarity", "word_weights"]

#: Visual words: ``_TABLES`` tables, each reading ``_WORD_BITS`` fixed bits of a descriptor as
#: a word id (bit sampling, the locality-sensitive hash of Hamming space: descriptors a few
#: bits apart mostly share their words); 4 x 256 words. Fixed bits rather than a vocabulary of
#: descriptors (each assigned to its nearest word by Hamming distance): on 1000 generated
#: digits 99.9% of each image's 30 nearest show its digit (100% with 1024 words sampled from
#: the batch), at 0.07 s of CPU instead of 1.5 s, and nothing to learn or ship, so features
#: extracted in different tasks, the batches and the merge all share one vocabulary.
_TABLES = 4
_WORD_BITS = 8
_SEED = 0


@dataclass(frozen=True)
class ORBParams:
    """Args:
        nfeatures: most keypoints per image (``cv2.ORB_create``).
        ratio: a match is good when its distance < ratio * the pair's largest match distance.
        shortlist: match each image only with its ``shortlist`` nearest images by bag of
            visual words (and the pairs where it is among theirs); 0 matches every pair (slow:
            a batch of 1000 is half a million pairs). 30: on 475 generated near-duplicates
            (25 of each photo) it finds every pair above 0.95 that matching every pair finds
            (20: 96%), and the same clusters; larger groups are joined through chains.
    """

    nfeatures: int = 500
    ratio: float = 0.75
    shortlist: int = 30


@functools.lru_cache(maxsize=1)
def _word_bits() -> tuple[np.ndarray, np.ndarray]:
    """Byte index and bit shift of each word bit: ``(_TABLES, _WORD_BITS)`` each, fixed."""
    rng = np.random.default_rng(_SEED)
    bits = np.stack([rng.choice(256, _WORD_BITS, replace=False) for _ in range(_TABLES)])
    byte, shift = bits // 8, 7 - bits % 8
    byte.flags.writeable = shift.flags.writeable = False
    return byte, shift


def bag_of_words(desc: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Visual-word counts of each image's descriptors.

    Args:
        desc: ``(N, K, 32) uint8`` ORB descriptors, the first ``count[i]`` of image ``i`` valid.
        count: ``(N,) int``.

    Returns:
        ``(N, 4 * 256) float32``: how many of the image's descriptors fall on each word (every
        descriptor has one word per table).
    """
    n, k = desc.shape[:2]
    valid = np.arange(k)[None, :] < np.asarray(count)[:, None]
    flat = desc[valid]  # (F, 32), image by image
    owner = np.repeat(np.arange(n), valid.sum(axis=1))
    byte, shift = _word_bits()
    bits = (flat[:, byte] >> shift) & 1  # (F, tables, bits)
    words = bits.astype(np.int64) @ (1 << np.arange(_WORD_BITS))  # (F, tables)
    words += np.arange(_TABLES) << _WORD_BITS
    size = _TABLES << _WORD_BITS
    cells = (owner[:, None] * size + words).ravel()
    return np.bincount(cells, minlength=n * size).reshape(n, size).astype(np.float32)


def word_weights(bags: np.ndarray) -> np.ndarray:
    """tf-idf of ``(N, V)`` word counts over these N images, each row L2-normalised (a
    zero row stays zero): words in most images (plain background) weigh little."""
    df = np.count_nonzero(bags, axis=0)
    x = bags * np.log((len(bags) + 1) / (df + 1)).astype(np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    return out


def orb_similarity(da: np.ndarray, db: np.ndarray, ratio: float) -> float:
    """Similarity of two ``(K, 32) uint8`` descriptor sets."""
    if len(da) == 0 or len(db) == 0:
        return 0.0
    # Cross-checked nearest neighbours, as cv2.BFMatcher(NORM_HAMMING, crossCheck=True).match
    # computes them, but as arrays instead of a list of DMatch objects.
    dist, idx = cv2.batchDistance(da, db, cv2.CV_32S, normType=cv2.NORM_HAMMING, K=1,
                                  crosscheck=True)
    d = dist[idx[:, 0] >= 0, 0]
    if len(d) == 0:
        return 0.0
    # Exact matches (distance 0) are good: with the original's strict "<" an image scored 0
    # against itself, since all its distances are 0 = 0.75 * max.
    return float(np.count_nonzero((d < ratio * d.max()) | (d == 0)) / len(d))


@register("ORB")
class ORBMethod(FeatureMethod):
    """ORB descriptors matched by Hamming distance, on a shortlist by bag of visual words."""

    Params = ORBParams
    default_read = ReadConfig(max_side=256, grey=True)
    cheap = False
    default_strategy = "connected"
    merge_reps = 2

    def __init__(self, params: ORBParams, read: ReadConfig | None = None) -> None:
        positive_int(self.name, "nfeatures", params.nfeatures, 1)
        positive_int(self.name, "shortlist", params.shortlist, 0)
        super().__init__(params, read)

    def extract(self, images: Sequence[np.ndarray]) -> Features:
        orb = cv2.ORB_create(nfeatures=self.params.nfeatures)  # type: ignore[attr-defined]
        k = self.params.nfeatures
        desc = np.zeros((len(images), k, 32), np.uint8)
        count = np.zeros(len(images), np.int32)
        for i, img in enumerate(images):
            _, d = orb.detectAndCompute(to_gray(img), None)
            if d is not None:
                n = min(len(d), k)
                desc[i, :n], count[i] = d[:n], n
        return {"desc": desc, "count": count, "words": bag_of_words(desc, count)}

    def candidates(self, features: Features, *, groups: np.ndarray | None = None,
                   ) -> np.ndarray | None:
        if self.params.shortlist == 0:
            return None
        words = features.get("words")
        if words is None:  # features saved before the shortlist existed
            words = bag_of_words(features["desc"], features["count"])
        return nearest_pairs(word_weights(words), self.params.shortlist, groups=groups)

    def pairwise(self, a: Features, b: Features) -> np.ndarray:
        ratio = self.params.ratio
        out = np.zeros((len(a["count"]), len(b["count"])), np.float32)
        db = [d[:n] for d, n in zip(b["desc"], b["count"].tolist())]
        # A set against itself (the threshold sample's matrix): the score is symmetric, so
        # each pair is matched once.
        same = a is b
        for i, (da, na) in enumerate(zip(a["desc"], a["count"].tolist())):
            if na:
                out[i, i if same else 0:] = [orb_similarity(da[:na], d, ratio)
                                             for d in db[i if same else 0:]]
        if same:
            out = np.triu(out) + np.triu(out, 1).T
        return out
