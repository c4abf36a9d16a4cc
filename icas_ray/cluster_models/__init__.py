"""Clustering of embeddings with scikit-learn models and model selection (the deep pipeline).

Each family is one module behind a registry and declares its parameter grid (a frozen dataclass
of tuples); :func:`select_model` fits every grid point and keeps the labelling with the best
combined silhouette, Davies-Bouldin and Calinski-Harabasz scores (see ``_selection``).

==========  ==========================  ===========================================================
name        scikit-learn                grid (defaults)
==========  ==========================  ===========================================================
kmeans      ``KMeans``                  n_clusters (2,4,8,16,32,64), max_iter (300)
hierarchy   ``AgglomerativeClustering`` n_clusters (2,4,8,16,32,64), linkage (ward)
DBSCAN      ``DBSCAN``                  eps (0.1,0.2,0.3,0.5,0.7), min_samples (2,5)
gaussian    ``GaussianMixture``         n_clusters (2,4,8,16,32,64), max_iter (100),
                                        covariance_type (diag)
HDBSCAN     ``HDBSCAN``                 min_cluster_size (2,5,10), max_cluster_size (0 = no limit)
==========  ==========================  ===========================================================

Pure scikit-learn and numpy: no Ray, no torch.

Example:
    >>> import numpy as np
    >>> x = np.repeat(np.eye(3, dtype=np.float32), 5, axis=0)
    >>> select_model(x, "kmeans", {"n_clusters": [2, 3]}).labels.tolist()
    [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
"""

from __future__ import annotations

# Importing the modules registers the models.
from icas_ray.cluster_models import dbscan as _dbscan  # noqa: F401
from icas_ray.cluster_models import gaussian as _gaussian  # noqa: F401
from icas_ray.cluster_models import hdbscan as _hdbscan  # noqa: F401
from icas_ray.cluster_models import hierarchy as _hierarchy  # noqa: F401
from icas_ray.cluster_models import kmeans as _kmeans  # noqa: F401
from icas_ray.cluster_models._base import ClusterModel, get_model, make_grid, model_names, register
from icas_ray.cluster_models._selection import GridScore, Selection, normalise, select_model

__all__ = [
    "ClusterModel",
    "GridScore",
    "Selection",
    "get_model",
    "make_grid",
    "model_names",
    "normalise",
    "register",
    "select_model",
]
