"""``icas cluster``: the classic pipeline on Ray.

1. List the images (sorted by size) and cut them into batches; the listing is saved so that a
   resumed run sees the same files even after some were moved.
2. Ray tasks over chunks of the listing (or a Ray Data actor pool, for methods that load a
   model) read, decode and extract features (one CPU-bound stage:
   decoded pixels never cross the object store, only features do). Rows reach the driver in any
   order; the driver assembles each batch in listing order.
3. Each complete batch goes to a similarity task, beside the feature workers: its graph,
   clusters and representatives are computed and persisted at once (the checkpoint a rerun
   resumes from).
4. A merge task loads every batch's checkpoint and merges batch clusters across batches (in
   threads: by then it has its node to itself); a lost node costs a retry, not the job.
5. Writer tasks copy or move every file into the result layout (idempotently), then the
   manifest, edges, summary and report are written; ``summary.json`` last.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from icas_ray.clustering import BatchResult, MergeResult, merge_batches, process_batch
from icas_ray.errors import ConfigError
from icas_ray.features import Features
from icas_ray.output import Layout
from icas_ray.pipeline.config import ClusterConfig
from icas_ray.pipeline.journal import Journal, RunState
from icas_ray.pipeline.results import write_results
from icas_ray.pipeline.stages import (
    OpenRun,
    ThresholdSample,
    default_output,
    failpoint,
    open_run,
    pending_batches,
    run_batches,
)
from icas_ray.progress import NullProgress, Progress
from icas_ray.runtime import ResourceConfig
from icas_ray.storage import FileInfo, Storage

__all__ = ["cluster", "default_output"]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Remote pieces


def _batch_task(batch: int, rows: dict[str, np.ndarray], config: ClusterConfig, threshold: float,
                layout: Layout, use_gpu: bool) -> int:
    """Cluster one batch and persist its checkpoint; returns the batch number (the result
    stays on storage, where the merge and the writer read it: returned, 1,000 near-duplicates'
    1.6 MB of edges went through the object store to a driver that only waited on them, and
    every batch's stayed there until the last one was done)."""
    method = config.feature_method()
    ok = rows["status"] == "ok"
    features: Features = {k[2:]: v[ok] for k, v in rows.items() if k.startswith("f_")}
    device = "cuda" if use_gpu else None
    result = process_batch(
        batch, uris=list(rows["uri"]), sizes=rows["size"], status=rows["status"],
        error=rows["error"], features=features, method=method, threshold=threshold,
        strategy=config.pair_strategy(), time_limit_s=config.time_limit_s,
        merge_reps=config.representatives_per_cluster(),
        merge_outliers=config.merge_mode == "full", device=device,
    )
    layout.storage.write_bytes(layout.batch_checkpoint(batch), result.to_bytes())
    return batch


def _merge_task(layout: Layout, batches: list[int], config: ClusterConfig, threshold: float,
                use_gpu: bool) -> MergeResult:
    """The merge, from the batches' checkpoints on storage: a task Ray retries elsewhere when
    its node is lost, rebuilding the merge without a manual rerun."""
    results = Journal(layout).load_checkpoints(set(batches))
    # The merge runs once the batches are done: it may use every core of its node.
    return merge_batches(results, config.feature_method(), threshold, strategy=config.pair_strategy(),
                         time_limit_s=config.time_limit_s, device="cuda" if use_gpu else None,
                         threads=os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------
# Driver


def _threshold_sample(files: Sequence[FileInfo], config: ClusterConfig, journal: Journal,
                      state: RunState, input_uri: str, progress: Progress,
                      timings: dict[str, float]) -> ThresholdSample:
    """The sample the threshold is suggested from, out of the main feature pass; deciding it
    records it in the run's state (a resumed run keeps it)."""
    from icas_ray.pipeline.sample import sample_size
    from icas_ray.threshold import sample_files, similarities, suggest_threshold

    method = config.feature_method()
    chosen = {f.uri for f in sample_files(files, sample_size(method, config))}
    rows = np.array([i for i, f in enumerate(files) if f.uri in chosen], dtype=np.int64)
    progress.start("threshold", len(rows))

    def suggest(uris: list[str], features: Features) -> float:
        t = time.monotonic()
        sims = similarities(uris, features, method, len(files))
        suggestion = suggest_threshold(sims.matrix, method)
        timings["threshold_s"] = round(time.monotonic() - t, 3)
        notes.append(f"from {sims.n_images} sampled images")
        return suggestion

    def record(suggestion: float) -> None:
        state.threshold = suggestion
        state.threshold_source = "suggested"
        journal.save_state(state, input_uri, config)
        progress.finish("threshold", f"no --threshold given: using the suggested {suggestion:.4f} "
                                     f"({notes[-1]}; see `icas threshold`)")

    notes: list[str] = []
    return ThresholdSample(rows=rows, suggest=suggest, record=record)


def cluster(input_uri: str, output: str | None = None, config: ClusterConfig | None = None, *,
            storage: Storage | None = None, resources: ResourceConfig | None = None,
            progress: Progress | None = None) -> dict[str, Any]:
    """Cluster the images under ``input_uri`` into ``output`` (see the module docstring).

    Args:
        input_uri: folder (local path, ``file://`` or ``s3://``) of images, searched recursively.
        output: result folder; default ``<input>_clustered``.
        config: what to compute (method, threshold, batches, ...).
        storage: storage options for S3.
        resources: Ray to use (default: an embedded local Ray on loopback).
        progress: receives progress per phase.

    Returns:
        The summary (also written to ``<output>/summary.json``).

    Raises:
        IcasError: for input the user can fix (missing folder, bad options, an output that is
            not empty or is in use by another run).
    """
    config = config or ClusterConfig()
    t_start = time.monotonic()
    progress = progress or NullProgress()
    with open_run(input_uri, output, config, storage or Storage(), resources, progress) as run:
        if config.cluster_model is not None:
            from icas_ray.pipeline.deep import run_deep

            return run_deep(input_uri, run, config, progress, t_start)
        return _run(input_uri, run, config, progress, t_start)


def _run(input_uri: str, run: OpenRun, config: ClusterConfig, progress: Progress,
         t_start: float) -> dict[str, Any]:
    import ray

    journal, state, listing, batches = run.journal, run.state, run.listing, run.batches
    layout = journal.layout
    files = listing.files
    timings = run.timings()
    n_batches = int(batches.max()) + 1
    journal.save_state(state, input_uri, config)
    done_before, pending = pending_batches(state, config, n_batches, layout.root)
    # Without --threshold, the suggestion comes from the sample's features of this same pass.
    sample = (None if state.threshold is not None else
              _threshold_sample(files, config, journal, state, input_uri, progress, timings))
    t = time.monotonic()
    computed, refs, _ = run_batches(files, batches, pending, config, state.threshold, layout,
                                    progress, batch_task=_batch_task, sample=sample,
                                    timings=timings)
    ray.get(refs)
    timings["batches_s"] = time.monotonic() - t
    if state.threshold is None:  # nothing was pending: the batches of an earlier dontmerge run
        raise ConfigError("--option merge needs the threshold of the earlier run: give --threshold")
    threshold = float(state.threshold)
    results = journal.load_checkpoints(set(range(n_batches)))

    merge: MergeResult | None = None
    final: dict[int, np.ndarray] | None = None
    if config.option in ("all", "merge"):
        t = time.monotonic()
        failpoint("merge", 1)
        progress.start("merge")
        use_gpu = config.gpu and config.feature_method().has_torch
        task = ray.remote(_merge_task).options(num_cpus=1, num_gpus=1 if use_gpu else 0,
                                               max_retries=3)
        merge = ray.get(task.remote(layout, list(range(n_batches)), config, threshold, use_gpu))
        final = merge.cluster
        timings["merge_s"] = time.monotonic() - t
        progress.finish("merge", f"{merge.representatives} representatives, "
                                 f"{merge.comparisons} comparisons across batches")

    summary = {
        "threshold": threshold, "threshold_source": state.threshold_source,
        "parameters": {**config.to_dict(), "threshold": threshold},
        "comparisons": _comparisons(len(files), results, merge, config),
        "batches": {"total": n_batches, "computed_now": computed, "resumed": len(done_before)},
    }
    return write_results(journal, config, input_uri=input_uri, listing=listing, results=results,
                         final=final, merge=merge, summary=summary, timings=timings,
                         t_start=t_start, progress=progress)


def _comparisons(n: int, results: Sequence[BatchResult], merge: MergeResult | None,
                 config: ClusterConfig) -> dict[str, Any]:
    """The summary's account of the comparisons made against all pairs."""
    reps = config.representatives_per_cluster()
    compared = ("no merge" if merge is None else
                "first member of each batch cluster"
                + (f" plus up to {reps} spread over large clusters" if reps > 1 else "")
                + (", and every batch outlier" if config.merge_mode == "full" else
                   "; batch outliers were not compared (merge mode original)")
                + "; pairs from the same batch skipped")
    return {
        "all_pairs": n * (n - 1) // 2,
        "batch_comparisons": int(sum(r.comparisons for r in results)),
        "batch_possible_pairs": int(sum(r.possible for r in results)),
        "batches_complete": all(r.complete for r in results),
        "merge_representatives": merge.representatives if merge else 0,
        "merge_comparisons": merge.comparisons if merge else 0,
        "merge_possible_pairs": merge.possible if merge else 0,
        "merge_complete": merge.complete if merge else True,
        "merge_compared": compared,
    }
