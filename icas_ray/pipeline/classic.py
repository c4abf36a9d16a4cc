"""``icas cluster``: the classic pipeline on Ray.

1. List the images (sorted by size) and cut them into batches; the listing is saved so that a
   resumed run sees the same files even after some were moved.
2. Ray Data tasks (or an actor pool) read, decode and extract features (one CPU-bound stage:
   decoded pixels never cross the object store, only features do). Rows reach the driver in any
   order; the driver assembles each batch in listing order.
3. Each complete batch goes to a similarity task, beside the feature workers: its graph,
   clusters and representatives are computed and persisted at once (the checkpoint a rerun
   resumes from).
4. A merge actor receives every batch's representatives and merges batch clusters across
   batches (in threads: by then it has its node to itself).
5. Writer tasks copy or move every file into the result layout (idempotently), then the
   manifest, edges, summary and report are written; ``summary.json`` last.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from icas_ray.clustering import (
    UNREADABLE,
    BatchResult,
    MergeResult,
    merge_batches,
    process_batch,
)
from icas_ray.errors import ConfigError, InputError
from icas_ray.features import Features, get_method
from icas_ray.images import ReadConfig
from icas_ray.output import (
    REPORT_PER_PAGE, Layout, TransferPlan, count_results, render_report, report_page_name,
    report_pages, thumbnails, write_tables,
)
from icas_ray.paths import is_inside
from icas_ray.pipeline.config import ClusterConfig
from icas_ray.pipeline.journal import Journal, RunLock, RunState, TransferRecord, transfer_group
from icas_ray.pipeline.read import DecodeImages, read_bytes_batch
from icas_ray.progress import NullProgress, Progress
from icas_ray.runtime import ResourceConfig, cluster_cpus, cluster_gpus, init_ray
from icas_ray.storage import FileInfo, Listing, Storage, is_temp_name

__all__ = ["cluster", "default_output"]

logger = logging.getLogger(__name__)

#: Rows per Ray Data batch for decoding and features.
_ROWS_PER_UDF_CALL = 64


def default_output(input_uri: str) -> str:
    """``<input>_clustered`` next to the input (the original tool's rule)."""
    return input_uri.rstrip("/").rstrip(os.sep) + "_clustered"


def _failpoint(name: str, count: int) -> None:
    """Test hook: ``ICAS_FAILPOINT=name:N`` kills the process when ``count`` reaches N.

    Used by the tests to interrupt a run at an exact point (as a crash or a kill -9 would).
    """
    spec = os.environ.get("ICAS_FAILPOINT", "")
    if spec.startswith(name + ":") and count >= int(spec.split(":", 1)[1]):
        logger.warning("failpoint %s reached after %d: exiting", name, count)
        os._exit(75)


# ---------------------------------------------------------------------------------------------
# Ray Data UDFs (adapters over pure code)


class _FeatureExtractor:
    """Reads, decodes and extracts the features of a batch of listed files (one method
    instance per process).

    Reading and decoding happen here rather than in a map stage of their own: the decoded
    pixels then never leave the process (between two map stages, even fused ones, Ray Data
    turns them into an Arrow block and back), and only the features go on.

    Ray Data runs it as an actor pool (``feature_compute="actors"``: the class is the UDF)
    or in tasks (:func:`_extract_task`: one instance per worker process, kept between tasks).
    """

    def __init__(self, method: str, params: dict[str, Any], storage: Storage, read: ReadConfig) -> None:
        # Extraction is numpy/OpenCV only: importing torch here would cost seconds per actor.
        self.method = get_method(method, params, read)
        self.decode = DecodeImages(read)
        self.storage = storage

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        decoded = self.decode(read_bytes_batch(batch, self.storage))
        ok = np.flatnonzero(decoded["status"] == "ok")
        images = [decoded["image"][i] for i in ok]
        feats = self.method.extract(images) if len(ok) else None
        out = {k: decoded[k] for k in ("uri", "size", "batch", "row", "status", "error")}
        n = len(batch["uri"])
        if feats is None:
            feats = self.method.extract([np.zeros((64, 64, 3), np.uint8)])
            feats = {k: v[:0] for k, v in feats.items()}
        for key, value in feats.items():
            full = np.zeros((n,) + value.shape[1:], value.dtype)
            full[ok] = value
            out[f"f_{key}"] = full
        return out


#: The task path's extractor of this worker process, with the job key it was built for.
_TASK_EXTRACTOR: tuple[tuple[Any, ...], _FeatureExtractor] | None = None


def _extract_task(batch: dict[str, np.ndarray], *, method: str, params: dict[str, Any],
                  storage: Storage, read: ReadConfig) -> dict[str, np.ndarray]:
    """Ray Data task UDF: :class:`_FeatureExtractor` built once per worker process and job
    (Ray reuses task workers, so its tables, e.g. minhash's grid hashes, are built once)."""
    global _TASK_EXTRACTOR
    key = (method, sorted(params.items()), storage.options, read)
    if _TASK_EXTRACTOR is None or _TASK_EXTRACTOR[0] != key:
        _TASK_EXTRACTOR = (key, _FeatureExtractor(method, params, storage, read))
    return _TASK_EXTRACTOR[1](batch)


# ---------------------------------------------------------------------------------------------
# Remote pieces


def _batch_task(batch: int, rows: dict[str, np.ndarray], config: ClusterConfig, threshold: float,
                layout: Layout, use_gpu: bool) -> BatchResult:
    """Cluster one batch and persist its checkpoint."""
    method = config.feature_method()
    ok = rows["status"] == "ok"
    features: Features = {k[2:]: v[ok] for k, v in rows.items() if k.startswith("f_")}
    device = "cuda" if use_gpu else None
    result = process_batch(
        batch, uris=list(rows["uri"]), sizes=rows["size"], status=rows["status"],
        error=rows["error"], features=features, method=method, threshold=threshold,
        strategy=config.strategy, time_limit_s=config.time_limit_s,
        merge_reps=config.representatives_per_cluster(),
        merge_outliers=config.merge_mode == "full", device=device,
    )
    layout.storage.write_bytes(layout.batch_checkpoint(batch), result.to_bytes())
    return result


class _MergeActor:
    """Collects batch results as they finish; merges them when asked."""

    def __init__(self, config: ClusterConfig, threshold: float, use_gpu: bool) -> None:
        self.config = config
        self.threshold = threshold
        self.device = "cuda" if use_gpu else None
        self.results: dict[int, BatchResult] = {}
        # Built now, while the batches run, rather than when the merge is waited for.
        self.method = config.feature_method()

    def add(self, result: BatchResult) -> int:
        self.results[result.batch] = result
        return len(self.results)

    def merge(self) -> MergeResult:
        # The merge runs once the batches are done: it may use every core of its node.
        return merge_batches(list(self.results.values()), self.method, self.threshold,
                             strategy=self.config.strategy,
                             time_limit_s=self.config.time_limit_s, device=self.device,
                             threads=os.cpu_count() or 1)



def _write_task(items: list[tuple[str, str]], mode: str, storage: Storage, existing: dict[str, int],
                records: dict[str, TransferRecord], record_dir: str) -> list[tuple[str, str]]:
    """Transfer files in groups (each group's records are stored before its moved sources are
    deleted: :func:`icas_ray.pipeline.journal.transfer_group`); remote groups in threads."""
    from icas_ray.storage import is_remote, map_io

    remote = bool(items) and (is_remote(items[0][0]) or is_remote(items[0][1]))
    # Remote groups are small so that threads overlap their requests; local ones large so
    # that a record file is written per few hundred files, not per file.
    size = 32 if remote else 256
    groups = [items[i:i + size] for i in range(0, len(items), size)]

    def one(group: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return transfer_group(group, mode, storage, existing=existing, records=records,
                              record_dir=record_dir)

    return [r for part in map_io(one, groups, remote=remote, threads=8) for r in part]


def _thumbs_task(uris: list[str], storage: Storage) -> list[str | None]:
    return thumbnails(uris, storage)


# ---------------------------------------------------------------------------------------------
# Driver


def _normalise_output(output: str) -> str:
    """One form for the output's URIs (plans, listings and records compare them as strings):
    local paths absolute, no trailing separator."""
    if "://" not in output:
        return os.path.abspath(os.path.expanduser(output))
    return output.rstrip("/")


def _check_paths(input_uri: str, output: str, storage: Storage) -> None:
    """Refuse an output inside the input (or the reverse), compared on resolved paths (a
    symlink cannot hide it), before anything is written or Ray starts."""
    if is_inside(input_uri, output):
        raise ConfigError(f"output {output!r} is inside the input {input_uri!r}: "
                          "choose an --output outside the input folder")
    if is_inside(output, input_uri):
        raise ConfigError(f"input {input_uri!r} is inside the output {output!r}: choose another --output")


def _listing(input_uri: str, journal: Journal, config: ClusterConfig, resume: bool,
             progress: Progress) -> tuple[Listing, np.ndarray]:
    progress.start("listing")
    saved = journal.load_listing() if resume else None
    if saved is not None:
        progress.finish("listing", f"{len(saved[0].files)} images (saved listing of the interrupted run)")
        return saved
    listing = journal.storage.scan_images(input_uri, sniff=config.sniff, exclude=(journal.layout.root,))
    if not listing.files:
        raise InputError(f"no images found under {input_uri!r}: expected files with image "
                         "extensions (.png, .jpg, ...); add --sniff to detect images by content")
    # The original's heuristic: similar images have similar sizes, so sort by size.
    listing.files.sort(key=lambda f: (f.size, f.uri))
    batches = np.arange(len(listing.files)) // config.batch_size
    journal.save_listing(listing.files, batches, listing.problems)
    unlisted = f"; {len(listing.problems)} entries could not be listed" if listing.problems else ""
    for uri, why in listing.problems[:10]:
        logger.warning("not listed: %s (%s)", uri, why)
    progress.finish("listing", f"{len(listing.files)} images in {int(batches.max()) + 1} batches{unlisted}")
    return listing, batches


def _suggest_threshold(files: Sequence[FileInfo], config: ClusterConfig, storage: Storage,
                       progress: Progress) -> float:
    from icas_ray.threshold import sample_similarities, suggest_threshold

    progress.start("threshold", min(len(files), config.threshold_sample))
    sims = sample_similarities(files, config, storage=storage)
    suggestion = suggest_threshold(sims.matrix, config.feature_method())
    progress.finish("threshold", f"no --threshold given: using the suggested {suggestion:.4f} "
                                 f"(from {sims.n_images} sampled images; see `icas threshold`)")
    return suggestion


def _run_batches(files: Sequence[FileInfo], batches: np.ndarray, pending: set[int],
                 config: ClusterConfig, threshold: float, layout: Layout, merger: Any,
                 progress: Progress) -> tuple[int, list[Any]]:
    """Features and per-batch clustering of the pending batches; returns their result refs."""
    import ray

    from icas_ray.pipeline.read import listing_dataset

    if not pending:
        return 0, []
    sel = np.flatnonzero(np.isin(batches, sorted(pending)))
    todo = [files[i] for i in sel]
    expected = {b: int(c) for b, c in zip(*np.unique(batches[sel], return_counts=True))}
    cpus = cluster_cpus()
    gpus = cluster_gpus()
    method = config.feature_method()
    use_gpu = gpus >= 1 and method.has_torch
    # Fractional CPUs: a 2-CPU machine must fit feature workers and batch tasks at once
    # (whole-CPU actors deadlock Ray Data there). Half the CPUs go to features; the batch tasks
    # and the driver use the rest. An actor pool is capped (each actor is a process for the job).
    workers = max(1, int(cpus)) if config.feature_compute == "tasks" else max(1, min(16, int(cpus)))
    # Four blocks per worker, of up to 1024 rows: a task per block (the default compute)
    # costs a worker lease and a scheduling round, which on 8000 minhash images made blocks of
    # 250 rows slower than blocks of 1000.
    ds = listing_dataset(todo, columns={"batch": batches[sel], "row": sel}, workers=workers,
                         max_rows=1024, blocks_per_worker=4)
    # Rows come back roughly in listing order (= batch order); the driver buffers partial
    # batches, so strict ordering (which stalls the pipeline) is not needed.
    ds.context.execution_options.preserve_order = False
    job = {"method": config.method, "params": dict(config.method_params),
           "storage": layout.storage, "read": config.read_config()}
    if config.feature_compute == "actors":
        ds = ds.map_batches(_FeatureExtractor, fn_constructor_kwargs=job,
                            batch_size=_ROWS_PER_UDF_CALL, batch_format="numpy", num_cpus=0.5,
                            compute=ray.data.ActorPoolStrategy(size=workers))
    else:
        # Tasks start in Ray's pooled worker processes; each actor of a pool is a new process
        # (2-3 s more per job on a 2-CPU machine: benchmarks/feature_compute.md).
        ds = ds.map_batches(_extract_task, fn_kwargs=job, batch_size=_ROWS_PER_UDF_CALL,
                            batch_format="numpy", num_cpus=0.5,
                            compute=ray.data.TaskPoolStrategy(size=min(workers, ds.num_blocks())))
    batch_fn = ray.remote(_batch_task).options(num_cpus=1, num_gpus=0.25 if use_gpu else 0)
    buffers: dict[int, list[dict[str, np.ndarray]]] = defaultdict(list)
    counts: dict[int, int] = defaultdict(int)
    refs: list[Any] = []
    in_flight: list[Any] = []
    finished = 0
    seen = 0
    progress.start("features", len(todo))
    progress.start("batches", len(pending))

    def submit(b: int) -> None:
        parts = buffers.pop(b)
        rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        # Rows arrive in any order; a batch is clustered in listing order, so that its
        # representatives (hence the merge) do not depend on the order of arrival.
        order = np.argsort(rows.pop("row"), kind="stable")
        rows = {k: v[order] for k, v in rows.items()}
        ref = batch_fn.remote(b, rows, config, threshold, layout, use_gpu)
        refs.append(merger.add.remote(ref))
        in_flight.append(ref)

    def reap(block: bool) -> None:
        """Collect finished batch tasks: all that are done, or (``block``) at least one."""
        nonlocal finished
        while in_flight:
            ready, _ = ray.wait(in_flight, num_returns=1, timeout=None if block else 0)
            if not ready:
                return
            in_flight.remove(ready[0])
            ray.get(ready[0])
            finished += 1
            progress.advance("batches", finished, len(pending))
            _failpoint("batches", finished)
            if block:
                return

    for part in ds.iter_batches(batch_size=_ROWS_PER_UDF_CALL * 4, batch_format="numpy"):
        seen += len(part["uri"])
        progress.advance("features", seen, len(todo))
        for b in np.unique(part["batch"]):
            m = part["batch"] == b
            buffers[int(b)].append({k: v[m] for k, v in part.items()})
            counts[int(b)] += int(m.sum())
            if counts[int(b)] == expected[int(b)]:
                submit(int(b))
        reap(block=False)
        while len(in_flight) > max(2, int(cpus)):
            reap(block=True)
    for b in list(buffers):  # defensive: rows of a batch arrived short
        submit(b)
    while in_flight:
        reap(block=True)
    progress.finish("features", f"{seen} images")
    progress.finish("batches", f"{finished} batches clustered")
    return finished, refs



def _write_files(plan: TransferPlan, mode: str, journal: Journal, plan_name: str,
                 folder: str, config: ClusterConfig, progress: Progress) -> dict[str, str]:
    """Run the transfer plan with Ray tasks; returns ``{dst: outcome}``."""
    import ray

    st = journal.storage
    existing: dict[str, int] = {}
    if st.exists(folder):
        for f in st.list_files(folder):
            if is_temp_name(os.path.basename(f.uri)):
                st.delete(f.uri)  # a copy a kill cut short: never under its final name
            else:
                existing[f.uri] = f.size
    records = journal.records(plan_name)
    # By destination: each task then fills whole folders, and two tasks rarely create files in
    # one folder at once (they would queue on its lock).
    items = sorted(((str(s), str(d)) for s, d in zip(plan.src, plan.dst)), key=lambda item: item[1])
    # Few large tasks: each new worker process costs about a second to start.
    per_task = config.files_per_task or int(np.clip(-(-len(items) // int(cluster_cpus())), 64, 4096))
    chunks = [items[i:i + per_task] for i in range(0, len(items), per_task)]
    task = ray.remote(_write_task).options(num_cpus=0.25)
    pending = [task.remote(c, mode, st, {d: existing[d] for _, d in c if d in existing},
                           {d: records[d] for _, d in c if d in records},
                           journal.records_dir(plan_name)) for c in chunks]
    outcome: dict[str, str] = {}
    progress.start("writing", len(items))
    done_chunks = 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for dst, result in ray.get(ready[0]):
            outcome[dst] = result
        done_chunks += 1
        progress.advance("writing", len(outcome), len(items))
        _failpoint("transfers", done_chunks)
    errors = [v for v in outcome.values() if v.startswith("error")]
    for e in errors[:10]:
        logger.warning("not transferred: %s", e[len("error: "):])
    progress.finish("writing", f"{len(items)} files {mode == 'move' and 'moved' or 'copied'}"
                               f"{f', {len(errors)} failed (see the manifest)' if errors else ''}")
    return outcome


def _report(layout: Layout, summary: dict[str, Any], groups: dict[str, list[str]],
            unreadable: list[tuple[str, str]]) -> str:
    """Write ``report.html`` (and its further pages); returns the first page's URI."""
    import ray

    pages = report_pages(groups)
    wanted = [u for page in pages for title, n in page for u in groups[title][:n]]
    # A few tasks (one per CPU at most): each new worker process costs about a second.
    n_tasks = max(1, min(int(cluster_cpus()), -(-len(wanted) // 64)))
    chunks = [list(c) for c in np.array_split(np.asarray(wanted, dtype=object), n_tasks)]
    task = ray.remote(_thumbs_task).options(num_cpus=0.25)
    thumbs = iter([th for part in ray.get([task.remote(c, layout.storage) for c in chunks if c])
                   for th in part])
    total = sum(1 for t in groups if not t.endswith("outliers"))
    first = 1
    for number, page in enumerate(pages, 1):
        entries = []
        for title, n in page:
            names = [os.path.basename(u.replace("\\", "/")) for u in groups[title][:n]]
            entries.append((title, len(groups[title]), [(name, next(thumbs)) for name in names]))
        shown = sum(1 for title, _ in page if not title.endswith("outliers"))
        layout.storage.write_text(layout.path(report_page_name(number)), render_report(
            summary, entries, unreadable if number == 1 else [], page=number, pages=len(pages),
            clusters=(first, first + shown - 1, total) if total > REPORT_PER_PAGE else None))
        first += shown
    return layout.path(report_page_name(1))


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
    storage = storage or Storage()
    progress = progress or NullProgress()
    output = _normalise_output(output or default_output(input_uri))
    t_start = time.monotonic()
    if not storage.exists(input_uri) and config.option != "merge":
        storage.list_images(input_uri)  # raises the one-line error for a missing path/bucket
    _check_paths(input_uri, output, storage)
    layout = Layout(output, storage)
    journal = Journal(layout)
    journal.check_output()
    with RunLock(layout).held():
        journal.clean_leftovers()
        state = journal.prepare(input_uri, config)
        init_ray(resources)
        return _run(input_uri, journal, state, config, progress, t_start)


def _run(input_uri: str, journal: Journal, state: RunState, config: ClusterConfig,
         progress: Progress, t_start: float) -> dict[str, Any]:
    import ray

    layout, storage = journal.layout, journal.storage
    timings: dict[str, float] = {}
    t = time.monotonic()
    listing, batches = _listing(input_uri, journal, config, state.resume, progress)
    files = listing.files
    timings["listing_s"] = time.monotonic() - t
    n_batches = int(batches.max()) + 1
    if state.threshold is None:
        t = time.monotonic()
        state.threshold = _suggest_threshold(files, config, storage, progress)
        state.threshold_source = "suggested"
        timings["threshold_s"] = time.monotonic() - t
    threshold = float(state.threshold)
    journal.save_state(state, input_uri, config)
    if state.resume and state.batches_done:
        logger.info("resuming: %d of %d batches already done", len(state.batches_done), n_batches)

    merger_cls = ray.remote(_MergeActor).options(num_cpus=0)
    method = config.feature_method()
    merger = merger_cls.remote(config, threshold, cluster_gpus() >= 1 and method.has_torch)
    done_before = set(state.batches_done) & set(range(n_batches))
    pending = set(range(n_batches)) - done_before
    if config.option == "merge" and pending:
        raise ConfigError(f"--option merge needs all {n_batches} batch results in {layout.root!r}, "
                          f"{len(pending)} are missing: rerun with --option dontmerge first")
    t = time.monotonic()
    add_refs = [merger.add.remote(r) for r in journal.load_checkpoints(done_before)]
    computed, refs = _run_batches(files, batches, pending, config, threshold, layout, merger, progress)
    ray.get(add_refs + refs)
    timings["batches_s"] = time.monotonic() - t
    results = journal.load_checkpoints(set(range(n_batches)))

    merge: MergeResult | None = None
    final: dict[int, np.ndarray] | None = None
    if config.option in ("all", "merge"):
        t = time.monotonic()
        progress.start("merge")
        merge = ray.get(merger.merge.remote())
        final = merge.cluster
        timings["merge_s"] = time.monotonic() - t
        progress.finish("merge", f"{merge.representatives} representatives, "
                                 f"{merge.comparisons} comparisons across batches")
    ray.kill(merger)

    # Destinations: final clusters, or per-batch folders for dontmerge.
    uris: list[str] = []
    folders: list[str] = []
    unreadable: list[tuple[str, str]] = []
    for r in results:
        labels = final[r.batch] if final is not None else r.labels
        for i, uri in enumerate(r.uris):
            if labels[i] == UNREADABLE:
                unreadable.append((str(uri), str(r.error[i])))
                continue
            uris.append(str(uri))
            folders.append(layout.cluster_folder(int(labels[i]),
                                                 None if final is not None else r.batch))
    # Where files are now: a previous dontmerge run with move put them in batch folders.
    sources = journal.current_locations(uris)
    plan_name = journal.plan_name(config.option)
    plan = journal.load_or_make_plan(plan_name, uris, folders, sources)
    t = time.monotonic()
    outcome = _write_files(plan, config.transfer, journal, plan_name,
                           layout.path("results" if final is not None else "batches"), config, progress)
    timings["writing_s"] = time.monotonic() - t
    location = {u: d for u, d in zip(uris, plan.dst.astype(str))
                if not outcome.get(str(d), "").startswith("error")}
    failed = {u: outcome[str(d)] for u, d in zip(uris, plan.dst.astype(str))
              if outcome.get(str(d), "").startswith("error")}

    n = len(files)
    summary: dict[str, Any] = {
        "input": input_uri, "output": layout.root, "threshold": threshold,
        "threshold_source": state.threshold_source,
        "parameters": {**config.to_dict(), "threshold": threshold},
        "counts": count_results(results, final, failed, len(listing.problems)),
        "comparisons": _comparisons(n, results, merge, config),
        "batches": {"total": n_batches, "computed_now": computed, "resumed": len(done_before)},
        "timings": {**{k: round(v, 3) for k, v in timings.items()},
                    "total_s": round(time.monotonic() - t_start, 3)},
        "transfer_errors": failed,
        "unlisted": dict(listing.problems),
    }
    write_tables(layout, results, final, location, merge, listing.problems)
    groups: dict[str, list[str]] = defaultdict(list)
    for u, folder in zip(uris, folders):
        groups[layout.relative(folder)].append(location.get(u, u))
    ordered = dict(sorted(groups.items(), key=lambda kv: (kv[0].endswith("outliers"), -len(kv[1]), kv[0])))
    summary["report"] = _report(layout, summary, ordered, unreadable + listing.problems)
    summary["timings"]["total_s"] = round(time.monotonic() - t_start, 3)
    storage.write_text(layout.summary, json.dumps(summary, indent=1, default=str))
    return summary


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
