"""icas-ray: distributed image clustering and segmentation labelling on Ray.

The public entry points, importable without starting Ray or importing torch::

    from icas_ray import cluster, ClusterConfig, make_dataset, Storage
    summary = cluster("./photos", None, ClusterConfig(method="imagehash", threshold=0.84))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icas_ray._lazy import lazy_getattr

__version__ = "0.1.0"

__all__ = ["ClusterConfig", "IcasError", "Storage", "StorageOptions", "cluster", "make_dataset",
           "__version__"]

if TYPE_CHECKING:
    from icas_ray.datasets import make_dataset
    from icas_ray.errors import IcasError
    from icas_ray.pipeline.classic import cluster
    from icas_ray.pipeline.config import ClusterConfig
    from icas_ray.storage import Storage, StorageOptions

_LAZY = {
    "cluster": "icas_ray.pipeline.classic",
    "ClusterConfig": "icas_ray.pipeline.config",
    "make_dataset": "icas_ray.datasets",
    "IcasError": "icas_ray.errors",
    "Storage": "icas_ray.storage",
    "StorageOptions": "icas_ray.storage",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
