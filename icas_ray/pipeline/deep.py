"""``icas cluster --method embedding --cluster-model M``: the deep pipeline on Ray.

The original's deep flow, on the classic pipeline's machinery (the journal, the feature stage,
the result writing):

1. List the images and cut them into batches (saved: a resumed run sees the same files).
2. Ray Data extracts embeddings (an actor pool by default: the model is loaded once per actor).
3. Per complete batch, a task runs the model's grid search on the batch's embeddings and keeps
   the best model's clusters (silhouette, Davies-Bouldin and Calinski-Harabasz together); the
   batch is persisted at once, with the model it chose.
4. The merge, a retriable task over the batches' checkpoints (a lost node costs a retry, not
   the job), runs the same selection on the representatives of every batch cluster (and every
   batch outlier) and merges the batch clusters whose representatives share a label.
5. The files are copied or moved into the result layout; manifest, report and summary follow.

Without a checkpoint or a backbone, :func:`ensure_model` trains an autoencoder first (the
original's flow), with ``icas train``'s options.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from icas_ray.clustering import MergeResult, batch_from_labels, merge_by_labels
from icas_ray.errors import ConfigError
from icas_ray.features import Features, concat_features
from icas_ray.output import Layout
from icas_ray.pipeline.config import ClusterConfig
from icas_ray.pipeline.journal import Journal
from icas_ray.pipeline.results import write_results
from icas_ray.pipeline.stages import OpenRun, failpoint, pending_batches, run_batches
from icas_ray.progress import Progress
from icas_ray.storage import Storage

__all__ = ["ensure_model", "run_deep"]

logger = logging.getLogger(__name__)


def _matrix(features: Features) -> np.ndarray:
    """The ``(N, D) float32`` vectors of a vector-feature method."""
    if len(features) != 1:
        raise ValueError(f"expected one feature array, got {sorted(features)}")
    x = np.asarray(next(iter(features.values())), np.float32)
    return x.reshape(len(x), -1)


def _select(x: np.ndarray, config: ClusterConfig, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Labels of the best model of the grid (``-1`` noise), and its description."""
    from icas_ray.cluster_models import select_model

    if len(x) < 2:
        return np.full(len(x), -1, np.int64), {"model": config.cluster_model,
                                               "note": f"{len(x)} sample(s): nothing to cluster"}
    selection = select_model(x, str(config.cluster_model), dict(config.cluster_grid), seed=seed)
    return np.asarray(selection.labels, np.int64), selection.describe()


def _deep_batch_task(batch: int, rows: dict[str, np.ndarray], config: ClusterConfig,
                     threshold: float | None, layout: Layout, use_gpu: bool) -> int:
    """Cluster one batch with the model the grid search picks; persist it and the choice
    (returns the batch number: the result stays on storage, as the classic pipeline's)."""
    ok = rows["status"] == "ok"
    features: Features = {k[2:]: v[ok] for k, v in rows.items() if k.startswith("f_")}
    labels, chosen = _select(_matrix(features), config, seed=batch)
    result = batch_from_labels(
        batch, uris=list(rows["uri"]), sizes=rows["size"], status=rows["status"],
        error=rows["error"], labels=labels, features=features,
        merge_outliers=config.merge_mode == "full")
    st = layout.storage
    st.write_text(_choice_uri(layout, batch), json.dumps(chosen, default=str))
    st.write_bytes(layout.batch_checkpoint(batch), result.to_bytes())  # last: marks it done
    return batch


def _choice_uri(layout: Layout, batch: int) -> str:
    return layout.work_path("models", f"batch_{batch:06d}.json")


def _deep_merge_task(layout: Layout, batches: list[int], config: ClusterConfig,
                     ) -> tuple[MergeResult, dict[str, Any]]:
    """The merge, from the batches' checkpoints on storage (so that a retry rebuilds it)."""
    results = Journal(layout).load_checkpoints(set(batches))
    reps = concat_features([r.rep_features for r in results])
    n_reps = sum(len(r.rep_index) for r in results)
    if len(results) < 2 or n_reps < 2:
        return merge_by_labels(results, np.full(n_reps, -1)), {"note": "one batch: no merge"}
    labels, chosen = _select(_matrix(reps), config)
    return merge_by_labels(results, labels), chosen


def run_deep(input_uri: str, run: OpenRun, config: ClusterConfig, progress: Progress,
             t_start: float) -> dict[str, Any]:
    """The deep pipeline inside an opened run (see :func:`icas_ray.pipeline.stages.open_run`)."""
    import ray

    journal, state, listing, batches = run.journal, run.state, run.listing, run.batches
    layout = journal.layout
    files = listing.files
    timings = run.timings()
    n_batches = int(batches.max()) + 1
    journal.save_state(state, input_uri, config)
    done_before, pending = pending_batches(state, config, n_batches, layout.root)
    t = time.monotonic()
    computed, refs, _ = run_batches(files, batches, pending, config, None, layout, progress,
                                    batch_task=_deep_batch_task, timings=timings)
    ray.get(refs)
    timings["batches_s"] = time.monotonic() - t
    results = journal.load_checkpoints(set(range(n_batches)))
    st = layout.storage
    choices = {b: json.loads(st.read_text(_choice_uri(layout, b))) for b in range(n_batches)
               if st.exists(_choice_uri(layout, b))}

    merge: MergeResult | None = None
    merged: dict[str, Any] = {}
    if config.option in ("all", "merge"):
        t = time.monotonic()
        failpoint("merge", 1)
        progress.start("merge")
        task = ray.remote(_deep_merge_task).options(num_cpus=1, max_retries=3)
        merge, merged = ray.get(task.remote(layout, list(range(n_batches)), config))
        timings["merge_s"] = time.monotonic() - t
        progress.finish("merge", f"{merge.representatives} representatives clustered by "
                                 f"{config.cluster_model} ({_short(merged)})")
    summary = {
        "threshold": None, "threshold_source": f"none: clusters chosen by {config.cluster_model}",
        "parameters": config.to_dict(),
        "model_selection": {"batches": choices, "merge": merged},
        "comparisons": {"all_pairs": len(files) * (len(files) - 1) // 2, "batch_comparisons": 0,
                        "merge_comparisons": 0,
                        "merge_representatives": merge.representatives if merge else 0,
                        "merge_compared": "scikit-learn model over the representatives"
                        if merge else "no merge"},
        "batches": {"total": n_batches, "computed_now": computed, "resumed": len(done_before)},
    }
    return write_results(journal, config, input_uri=input_uri, listing=listing, results=results,
                         final=merge.cluster if merge else None, merge=merge, summary=summary,
                         timings=timings, t_start=t_start, progress=progress)


def _short(chosen: Mapping[str, Any]) -> str:
    params = chosen.get("params")
    return ", ".join(f"{k}={v}" for k, v in params.items()) if isinstance(params, Mapping) \
        else str(chosen.get("note", "best of the grid"))


def ensure_model(input_uri: str, method_params: Mapping[str, Any], train_options: Mapping[str, Any],
                 *, storage: Storage, resources: Any, progress: Progress) -> dict[str, Any]:
    """``method_params`` of ``--method embedding`` with a model to embed with: as given when
    they name a checkpoint or a backbone, else with the checkpoint of an autoencoder trained
    first on the input (the original's flow; ``train_options`` are ``icas train``'s)."""
    params = dict(method_params)
    if params.get("checkpoint") or params.get("backbone"):
        return params
    from icas_ray.params import build
    from icas_ray.train.trainer import TrainConfig, train

    options = dict(train_options)
    if "storage" in options:  # icas train's --storage
        options["storage_uri"] = options.pop("storage")
    config = build(TrainConfig, options, source="the training options (--train-option)")
    if config.storage_uri is None:
        raise ConfigError("--method embedding without --checkpoint or --backbone trains an "
                          "autoencoder first: say where its checkpoints go with "
                          "--train-option storage=URI (or give --checkpoint)")
    logger.warning("no --checkpoint or --backbone: training an autoencoder on %s first "
                   "(icas train; checkpoints in %s)", input_uri, config.storage_uri)
    result = train(input_uri, config, storage=storage, resources=resources, progress=progress)
    logger.warning("trained: checkpoint %s", result.checkpoint)
    params["checkpoint"] = result.checkpoint
    return params
