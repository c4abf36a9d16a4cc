"""DBSCAN: scikit-learn's ``DBSCAN`` over a grid of radii and neighbour counts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from icas_ray.cluster_models._base import ClusterModel, check_values, register

__all__ = ["DBSCANGrid", "DBSCANModel"]


@dataclass(frozen=True)
class DBSCANGrid:
    """Args:
        eps: neighbourhood radii to try (Euclidean, > 0). The defaults suit L2-normalised
            embeddings (the ``embedding`` feature's), where distances lie in [0, 2] and a
            Euclidean distance d means a cosine similarity of 1 - d^2 / 2: 0.3 ~ cos 0.955,
            0.7 ~ cos 0.755.
        min_samples: neighbours (the point included) that make a core point (>= 1); 2 lets a
            near-duplicate pair form a cluster.
    """

    eps: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7)
    min_samples: tuple[int, ...] = (2, 5)

    def __post_init__(self) -> None:
        check_values("DBSCAN grid parameter eps", self.eps, minimum=0.0, integer=False, strict=True)
        check_values("DBSCAN grid parameter min_samples", self.min_samples, minimum=1)


@register("DBSCAN")
class DBSCANModel(ClusterModel):
    """Density-based clustering; points in no dense region are noise (-1)."""

    Grid = DBSCANGrid

    def fit_predict(self, x: np.ndarray, point: Mapping[str, Any], seed: int) -> np.ndarray:
        from sklearn.cluster import DBSCAN

        model = DBSCAN(eps=float(point["eps"]), min_samples=int(point["min_samples"]))
        labels: np.ndarray = model.fit_predict(x)
        return labels
