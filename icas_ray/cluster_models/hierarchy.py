"""hierarchy: scikit-learn's ``AgglomerativeClustering`` over a grid of cluster counts and
linkages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from icas_ray.cluster_models._base import ClusterModel, check_values, register
from icas_ray.cluster_models.kmeans import DEFAULT_N_CLUSTERS
from icas_ray.errors import ConfigError

__all__ = ["HierarchyGrid", "HierarchyModel"]

_LINKAGES = ("ward", "complete", "average", "single")


@dataclass(frozen=True)
class HierarchyGrid:
    """Args:
        n_clusters: numbers of clusters to try (>= 2).
        linkage: linkages to try: ward (the default: compact groups), complete, average, single.
    """

    n_clusters: tuple[int, ...] = DEFAULT_N_CLUSTERS
    linkage: tuple[str, ...] = ("ward",)

    def __post_init__(self) -> None:
        check_values("hierarchy grid parameter n_clusters", self.n_clusters, minimum=2)
        if not self.linkage:
            raise ConfigError("hierarchy grid parameter linkage is empty: e.g. linkage=ward,average")
        for v in self.linkage:
            if v not in _LINKAGES:
                raise ConfigError(f"hierarchy grid parameter linkage={v!r} is invalid: "
                                  f"expected one of {', '.join(_LINKAGES)}")


@register("hierarchy")
class HierarchyModel(ClusterModel):
    """Agglomerative clustering (Euclidean distance)."""

    Grid = HierarchyGrid

    def skip(self, point: Mapping[str, Any], n: int) -> str | None:
        k = int(point["n_clusters"])
        return f"n_clusters={k} > {n} samples" if k > n else None

    def fit_predict(self, x: np.ndarray, point: Mapping[str, Any], seed: int) -> np.ndarray:
        from sklearn.cluster import AgglomerativeClustering

        model = AgglomerativeClustering(n_clusters=int(point["n_clusters"]),
                                        linkage=str(point["linkage"]))
        labels: np.ndarray = model.fit_predict(x)
        return labels
