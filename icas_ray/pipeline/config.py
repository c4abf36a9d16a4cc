"""Configuration of ``icas cluster``: one frozen dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from icas_ray.clustering import MERGE_MODES
from icas_ray.errors import ConfigError
from icas_ray.features import get_method
from icas_ray.graph import STRATEGIES
from icas_ray.images import DEFAULT_MAX_PIXELS, ReadConfig
from icas_ray.params import check_fields

__all__ = ["FEATURE_COMPUTE", "OPTIONS", "TRANSFERS", "ClusterConfig", "load_config_file"]

OPTIONS = ("all", "dontmerge", "merge")
TRANSFERS = ("copy", "move")
FEATURE_COMPUTE = ("tasks", "actors")


@dataclass(frozen=True)
class ClusterConfig:
    """Everything that decides what ``icas cluster`` computes and writes.

    Args:
        method: feature method (imagehash, minhash, SSIM, ORB, TM).
        method_params: the method's parameters (e.g. ``{"hash_size": 16}``).
        threshold: pairs with similarity > threshold are linked; None = suggested from a sample.
        batch_size: images per batch (files are sorted by size, then cut into batches).
        size: ``(W, H)`` every image is resized to (None = the method's default).
        scale: resize factor instead of ``size``.
        option: ``all`` (batches then merge), ``dontmerge`` (batch folders only), ``merge``
            (merge the batch results of an earlier ``dontmerge`` run).
        transfer: ``copy`` or ``move`` the images into the result folders.
        overwrite: replace an existing finished result.
        time_limit_s: per batch (and for the merge), stop comparing pairs after this many
            seconds; the pairs not compared are reported.
        strategy: ``exhaustive`` (all pairs, every edge), ``connected`` (the same clusters,
            skipping pairs already in one component) or ``pruned`` (the original's lossy
            shortcut); None = the method's default (connected for SSIM and ORB).
        merge_mode: ``full`` (outliers and several representatives per large cluster join the
            merge) or ``original`` (one representative per cluster, outliers stay outliers).
        merge_reps: most representatives per batch cluster (None = the method's default).
        sniff: also list files without an image extension whose content is an image.
        threshold_sample: images sampled to suggest a threshold.
        max_pixels: larger images are skipped as unreadable.
        files_per_task: files per writer task (None = about two tasks per CPU).
        feature_compute: how feature extraction runs: ``tasks`` (Ray tasks over chunks of the
            listing, in Ray's pooled worker processes) or ``actors`` (a Ray Data pool of actors
            started for the job, each loading the method once); None =
            actors for methods that load a model (embedding), else tasks.
        cluster_model: a scikit-learn model (kmeans, hierarchy, DBSCAN, gaussian, HDBSCAN)
            that clusters each batch and then the representatives, chosen over ``cluster_grid``
            by silhouette, Davies-Bouldin and Calinski-Harabasz (the deep pipeline); None =
            the threshold and connected components.
        cluster_grid: the model's parameter grid, each a list (``{"n_clusters": [5, 10]}``);
            missing parameters take the model's defaults.
        gpu: the stages that use a GPU (SSIM/TM batch kernels and the merge, embedding
            actors) ask Ray for one, so an autoscaling cluster adds GPU nodes; False = no GPU
            is used, even where one is present.
    """

    method: str = "imagehash"
    method_params: Mapping[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    batch_size: int = 1000
    size: tuple[int, int] | None = None
    scale: float | None = None
    option: str = "all"
    transfer: str = "copy"
    overwrite: bool = False
    time_limit_s: float | None = None
    strategy: str | None = None
    merge_mode: str = "full"
    merge_reps: int | None = None
    sniff: bool = False
    threshold_sample: int = 1000
    max_pixels: int = DEFAULT_MAX_PIXELS
    files_per_task: int | None = None
    feature_compute: str | None = None
    cluster_model: str | None = None
    cluster_grid: Mapping[str, Any] = field(default_factory=dict)
    gpu: bool = False

    def __post_init__(self) -> None:
        check_fields(self)  # ClusterConfig(batch_size="x"): one line naming the key and type
        m = get_method(self.method, dict(self.method_params))  # validates name and params
        object.__setattr__(self, "method", m.name)
        if self.strategy is None:
            object.__setattr__(self, "strategy", m.default_strategy)
        if self.feature_compute is None:
            object.__setattr__(self, "feature_compute", "actors" if m.loads_model else "tasks")
        if self.cluster_model is not None:
            from icas_ray.cluster_models import get_model, make_grid

            if not m.vector_features:
                raise ConfigError(f"--cluster-model clusters feature vectors, which {m.name} does "
                                  "not have: use --method embedding")
            if self.threshold is not None:
                raise ConfigError("--threshold does not apply with --cluster-model (the model "
                                  "decides the clusters): drop one of them")
            object.__setattr__(self, "cluster_model", get_model(self.cluster_model).name)
            make_grid(self.cluster_model, dict(self.cluster_grid))  # validates names and values
        elif self.cluster_grid:
            raise ConfigError("--grid needs --cluster-model: name the model the grid is for")
        if self.threshold is not None:
            lo, hi = m.threshold_range
            if not lo <= self.threshold <= hi:
                raise ConfigError(f"threshold {self.threshold} is out of range: expected "
                                  f"{lo:g} <= T <= {hi:g} for {m.name}")
        if self.batch_size < 2:
            raise ConfigError(f"batch size {self.batch_size} is too small: expected >= 2")
        for name, value, allowed in (("option", self.option, OPTIONS),
                                     ("transfer", self.transfer, TRANSFERS),
                                     ("strategy", self.strategy, STRATEGIES),
                                     ("merge mode", self.merge_mode, MERGE_MODES),
                                     ("feature compute", self.feature_compute, FEATURE_COMPUTE)):
            if value not in allowed:
                raise ConfigError(f"unknown {name} {value!r}: must be one of {', '.join(allowed)}")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise ConfigError(f"time limit {self.time_limit_s} is invalid: expected > 0 seconds")
        if self.merge_reps is not None and self.merge_reps < 1:
            raise ConfigError(f"merge reps {self.merge_reps} is invalid: expected >= 1")
        if self.threshold_sample < 10:
            raise ConfigError(f"threshold sample {self.threshold_sample} is too small: expected >= 10")
        self.read_config()  # validates size / scale

    def feature_method(self):  # type: ignore[no-untyped-def]
        return get_method(self.method, dict(self.method_params), read=self.read_config())

    def read_config(self) -> ReadConfig:
        base = get_method(self.method, dict(self.method_params)).default_read
        if self.size is not None:
            return ReadConfig(size=tuple(self.size), max_pixels=self.max_pixels,  # type: ignore[arg-type]
                              grey=base.grey)
        if self.scale is not None:
            return ReadConfig(scale=self.scale, max_pixels=self.max_pixels, grey=base.grey)
        return dataclasses.replace(base, max_pixels=self.max_pixels)

    def pair_strategy(self) -> str:
        """The strategy of comparing pairs: ``strategy``, which ``__post_init__`` set to the
        method's default when none was given."""
        if self.strategy is None:  # pragma: no cover - __post_init__ always sets it
            raise AssertionError("ClusterConfig.strategy is unset")
        return self.strategy

    def representatives_per_cluster(self) -> int:
        if self.merge_mode == "original":
            return 1
        if self.merge_reps is not None:
            return self.merge_reps
        return self.feature_method().merge_reps

    def fingerprint(self) -> dict[str, Any]:
        """The parameters a resumed run must share with the interrupted one."""
        return {
            "method": self.method, "method_params": dict(sorted(self.method_params.items())),
            "batch_size": self.batch_size, "size": list(self.size) if self.size else None,
            "scale": self.scale, "strategy": self.strategy, "merge_mode": self.merge_mode,
            "merge_reps": self.representatives_per_cluster(), "max_pixels": self.max_pixels,
            "time_limit_s": self.time_limit_s,
            **({"cluster_model": self.cluster_model,
                "cluster_grid": {k: list(v) for k, v in sorted(self.cluster_grid.items())}}
               if self.cluster_model else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["method_params"] = dict(self.method_params)
        d["cluster_grid"] = {k: list(v) for k, v in self.cluster_grid.items()}
        return d


def load_config_file(path: str) -> dict[str, Any]:
    """Options from a TOML, JSON or YAML file (keys as CLI option names, ``-`` or ``_``)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e.strerror}") from e
    try:
        if path.endswith(".toml"):
            import tomllib

            values = tomllib.loads(data.decode("utf-8"))
        elif path.endswith(".json"):
            values = json.loads(data)
        else:
            import yaml

            values = yaml.safe_load(data)
    except Exception as e:  # parse errors of three libraries: all mean "fix the file"
        raise ConfigError(f"config file {path!r} is not valid: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of option: value")
    if "cluster" in values and isinstance(values["cluster"], dict):
        values = values["cluster"]
    return {str(k).replace("-", "_"): v for k, v in values.items()}
