"""HDBSCAN: scikit-learn's ``HDBSCAN`` over a grid of minimum and maximum cluster sizes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from icas_ray.cluster_models._base import ClusterModel, check_values, register

__all__ = ["HDBSCANGrid", "HDBSCANModel"]


@dataclass(frozen=True)
class HDBSCANGrid:
    """Args:
        min_cluster_size: smallest groups to keep (>= 2); 2 lets a near-duplicate pair be a
            cluster.
        max_cluster_size: largest groups the "eom" selection returns (>= 0; 0 = no limit).
    """

    min_cluster_size: tuple[int, ...] = (2, 5, 10)
    max_cluster_size: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        check_values("HDBSCAN grid parameter min_cluster_size", self.min_cluster_size, minimum=2)
        check_values("HDBSCAN grid parameter max_cluster_size", self.max_cluster_size, minimum=0)


@register("HDBSCAN")
class HDBSCANModel(ClusterModel):
    """Hierarchical density-based clustering; points in no stable group are noise (-1)."""

    Grid = HDBSCANGrid

    def skip(self, point: Mapping[str, Any], n: int) -> str | None:
        lo, hi = int(point["min_cluster_size"]), int(point["max_cluster_size"])
        if lo > n:
            return f"min_cluster_size={lo} > {n} samples"
        if hi and hi < lo:
            return f"max_cluster_size={hi} < min_cluster_size={lo}"
        return None

    def fit_predict(self, x: np.ndarray, point: Mapping[str, Any], seed: int) -> np.ndarray:
        from sklearn.cluster import HDBSCAN

        hi = int(point["max_cluster_size"])
        model = HDBSCAN(min_cluster_size=int(point["min_cluster_size"]),
                        max_cluster_size=hi or None, copy=True)
        labels: np.ndarray = model.fit_predict(x)
        return labels
