"""The threshold sample's features, extracted in Ray tasks (``icas threshold`` and ``icas
cluster`` without ``--threshold``); the similarities and the suggestion are pure
(:mod:`icas_ray.threshold`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from icas_ray.errors import IcasError
from icas_ray.features import FeatureMethod, concat_features
from icas_ray.images import DecodeError, decode
from icas_ray.storage import FileInfo, Storage
from icas_ray.threshold import SampleSimilarities, sample_files, similarities

__all__ = ["sample_similarities", "sample_size"]

#: Expensive methods sample fewer images unless asked otherwise (pairs grow quadratically).
_EXPENSIVE_SAMPLE_CAP = 300


def _features_task(uris: list[str], method: FeatureMethod, read: Any, storage: Storage,
                   ) -> tuple[list[str], dict[str, np.ndarray]]:
    ok, images = [], []
    for uri in uris:
        try:
            images.append(decode(storage.read_bytes(uri), read))
            ok.append(uri)
        except (DecodeError, OSError, IcasError):
            continue
    return ok, method.extract(images) if images else {}


def sample_size(method: FeatureMethod, config: Any, sample: int | None = None) -> int:
    """Images in the threshold sample: ``sample``, else ``config.threshold_sample`` (at most
    300 for expensive methods: pairs grow quadratically)."""
    if sample is not None:
        return sample
    n = config.threshold_sample
    return n if method.cheap else min(n, _EXPENSIVE_SAMPLE_CAP)


def sample_similarities(files: Sequence[FileInfo], config: Any, *, storage: Storage,
                        sample: int | None = None) -> SampleSimilarities:
    """Similarities of all pairs of a sample (features computed in Ray tasks).

    Args:
        files: the whole listing.
        config: a :class:`~icas_ray.pipeline.config.ClusterConfig` (method, read size).
        storage: storage for reading.
        sample: sample size (default ``config.threshold_sample``; expensive methods at most 300
            unless given).
    """
    import ray

    method = config.feature_method()
    chosen = [f.uri for f in sample_files(files, sample_size(method, config, sample))]
    task = ray.remote(_features_task).options(num_cpus=0.5)
    chunk = 32
    refs = [task.remote(chosen[i:i + chunk], method, config.read_config(), storage)
            for i in range(0, len(chosen), chunk)]
    parts = ray.get(refs)
    uris = [u for ok, _ in parts for u in ok]
    feats = concat_features([f for _, f in parts if f])
    return similarities(uris, feats, method, len(files))
