"""gaussian: scikit-learn's ``GaussianMixture`` over a grid of component counts and iteration
limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from icas_ray.cluster_models._base import ClusterModel, check_values, register
from icas_ray.cluster_models.kmeans import DEFAULT_N_CLUSTERS
from icas_ray.errors import ConfigError

__all__ = ["GaussianGrid", "GaussianModel"]

_COVARIANCES = ("diag", "spherical", "tied", "full")


@dataclass(frozen=True)
class GaussianGrid:
    """Args:
        n_clusters: numbers of mixture components to try (>= 2).
        max_iter: EM iteration limits to try (>= 1).
        covariance_type: covariance kinds to try; "diag" by default, since a full covariance
            of a 512-wide embedding needs far more images per component than a batch has.
    """

    n_clusters: tuple[int, ...] = DEFAULT_N_CLUSTERS
    max_iter: tuple[int, ...] = (100,)
    covariance_type: tuple[str, ...] = ("diag",)

    def __post_init__(self) -> None:
        check_values("gaussian grid parameter n_clusters", self.n_clusters, minimum=2)
        check_values("gaussian grid parameter max_iter", self.max_iter, minimum=1)
        if not self.covariance_type:
            raise ConfigError("gaussian grid parameter covariance_type is empty: e.g. covariance_type=diag")
        for v in self.covariance_type:
            if v not in _COVARIANCES:
                raise ConfigError(f"gaussian grid parameter covariance_type={v!r} is invalid: "
                                  f"expected one of {', '.join(_COVARIANCES)}")


@register("gaussian")
class GaussianModel(ClusterModel):
    """Gaussian mixture (seeded); each image gets its most probable component."""

    Grid = GaussianGrid

    def skip(self, point: Mapping[str, Any], n: int) -> str | None:
        k = int(point["n_clusters"])
        return f"n_clusters={k} > {n} samples" if k > n else None

    def fit_predict(self, x: np.ndarray, point: Mapping[str, Any], seed: int) -> np.ndarray:
        from sklearn.mixture import GaussianMixture

        gm = GaussianMixture(n_components=int(point["n_clusters"]), max_iter=int(point["max_iter"]),
                             covariance_type=str(point["covariance_type"]), random_state=seed)
        labels: np.ndarray = gm.fit_predict(x)
        return labels
