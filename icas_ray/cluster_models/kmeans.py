"""kmeans: scikit-learn's ``KMeans`` over a grid of cluster counts and iteration limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from icas_ray.cluster_models._base import ClusterModel, check_values, register

__all__ = ["KMeansGrid", "KMeansModel"]

#: Cluster counts for batches of a few hundred to a few thousand images: doubling steps cover
#: the range where near-duplicate groups of a handful of images live at a few fits per batch.
DEFAULT_N_CLUSTERS = (2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class KMeansGrid:
    """Args:
        n_clusters: numbers of clusters to try (>= 2).
        max_iter: iteration limits to try (>= 1).
    """

    n_clusters: tuple[int, ...] = DEFAULT_N_CLUSTERS
    max_iter: tuple[int, ...] = (300,)

    def __post_init__(self) -> None:
        check_values("kmeans grid parameter n_clusters", self.n_clusters, minimum=2)
        check_values("kmeans grid parameter max_iter", self.max_iter, minimum=1)


@register("kmeans")
class KMeansModel(ClusterModel):
    """k-means (``n_init="auto"``, seeded)."""

    Grid = KMeansGrid

    def skip(self, point: Mapping[str, Any], n: int) -> str | None:
        k = int(point["n_clusters"])
        return f"n_clusters={k} > {n} samples" if k > n else None

    def fit_predict(self, x: np.ndarray, point: Mapping[str, Any], seed: int) -> np.ndarray:
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=int(point["n_clusters"]), max_iter=int(point["max_iter"]),
                    n_init="auto", random_state=seed)
        labels: np.ndarray = km.fit_predict(x)
        return labels
