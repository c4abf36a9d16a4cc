"""ORB: the share of good matches between two images' ORB descriptors, in [0, 1].

As in the original tool: descriptors are matched with a brute-force Hamming matcher with
cross-check; a match is good when its distance is below ``ratio`` times the largest distance
among the pair's matches, or exactly 0 (the original's strict "<" scored an image 0 against
itself); similarity = good matches / matches (0 when either image has no descriptors). Matching is OpenCV's (C++) per pair; the pipeline spreads pairs over actors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from icas_ray.features._base import Features, FeatureMethod, positive_int, register
from icas_ray.images import ReadConfig, to_gray

__all__ = ["ORBMethod", "orb_similarity"]


@dataclass(frozen=True)
class ORBParams:
    """Args:
        nfeatures: most keypoints per image (``cv2.ORB_create``).
        ratio: a match is good when its distance < ratio * the pair's largest match distance.
    """

    nfeatures: int = 500
    ratio: float = 0.75


def orb_similarity(da: np.ndarray, db: np.ndarray, ratio: float, matcher: cv2.BFMatcher) -> float:
    """Similarity of two ``(K, 32) uint8`` descriptor sets."""
    if len(da) == 0 or len(db) == 0:
        return 0.0
    matches = matcher.match(da, db)
    if not matches:
        return 0.0
    d = np.fromiter((m.distance for m in matches), np.float32, len(matches))
    # Exact matches (distance 0) are good: with the original's strict "<" an image scored 0
    # against itself, since all its distances are 0 = 0.75 * max.
    return float(np.count_nonzero((d < ratio * d.max()) | (d == 0)) / len(d))


@register("ORB")
class ORBMethod(FeatureMethod):
    """ORB descriptors matched by Hamming distance."""

    Params = ORBParams
    default_read = ReadConfig(max_side=256)
    cheap = False
    default_strategy = "connected"
    merge_reps = 2

    def __init__(self, params: ORBParams, read: ReadConfig | None = None) -> None:
        positive_int(self.name, "nfeatures", params.nfeatures, 1)
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
        return {"desc": desc, "count": count}

    def pairwise(self, a: Features, b: Features) -> np.ndarray:
        matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
        out = np.zeros((len(a["count"]), len(b["count"])), np.float32)
        for i, (da, na) in enumerate(zip(a["desc"], a["count"])):
            for j, (db, nb) in enumerate(zip(b["desc"], b["count"])):
                out[i, j] = orb_similarity(da[:na], db[:nb], self.params.ratio, matcher)
        return out
