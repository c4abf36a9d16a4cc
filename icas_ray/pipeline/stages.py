"""Ray stages shared by the pipelines of ``icas cluster`` (classic and deep).

* :func:`open_run`: the checks before anything is written (paths, a foreign output), the
  output's lock, leftovers of a killed run, resume or fresh start, then the listing while Ray
  starts;
* :func:`list_inputs`: the listing, saved in the journal (a resumed run sees the same files);
* :class:`FeatureExtractor` / :func:`extract_task`: read, decode and extract features in Ray
  tasks (pooled worker processes), or a Ray Data actor pool for methods that load a model;
* :func:`run_batches`: that stage, and a task per complete batch that clusters it;
* :func:`failpoint`: the tests' hook to die at an exact point.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from icas_ray.errors import ConfigError, IcasError, InputError
from icas_ray.features import Features, get_method, method_class
from icas_ray.images import ReadConfig
from icas_ray.output import Layout
from icas_ray.paths import is_inside
from icas_ray.pipeline.journal import Journal, RunLock, RunState
from icas_ray.pipeline.read import STATUS_OK, DecodeImages, read_bytes_batch
from icas_ray.progress import Progress
from icas_ray.runtime import ResourceConfig, check_gpu_request, cluster_cpus, init_ray, is_embedded
from icas_ray.storage import FileInfo, Listing, Storage, absolute_uri

__all__ = [
    "FeatureExtractor",
    "ThresholdSample",
    "check_paths",
    "default_output",
    "extract_task",
    "failpoint",
    "list_inputs",
    "open_run",
    "pending_batches",
    "run_batches",
]

logger = logging.getLogger(__name__)


def default_output(input_uri: str) -> str:
    """``<input>_clustered`` next to the input (the original tool's rule)."""
    return input_uri.rstrip("/").rstrip(os.sep) + "_clustered"


def failpoint(name: str, count: int) -> None:
    """Test hook: ``ICAS_FAILPOINT=name:N`` kills the process when ``count`` reaches N.

    Used by the tests to interrupt a run at an exact point (as a crash or a kill -9 would).
    """
    spec = os.environ.get("ICAS_FAILPOINT", "")
    if spec.startswith(name + ":") and count >= int(spec.split(":", 1)[1]):
        logger.warning("failpoint %s reached after %d: exiting", name, count)
        os._exit(75)


# ---------------------------------------------------------------------------------------------
# Feature extraction in Ray (adapters over pure code)


class FeatureExtractor:
    """Reads, decodes and extracts the features of a batch of listed files (one method
    instance per process).

    Reading and decoding happen here rather than in a map stage of their own: the decoded
    pixels then never leave the process (between two map stages, even fused ones, Ray Data
    turns them into an Arrow block and back), and only the features go on.

    Ray Data runs it as an actor pool (``feature_compute="actors"``: the class is the UDF);
    feature tasks use it through :func:`extract_task` (one instance per worker process, kept
    between tasks).
    """

    def __init__(self, method: str, params: dict[str, Any], storage: Storage, read: ReadConfig) -> None:
        import cv2

        # One OpenCV thread: the parallelism is one task (or actor) per CPU, and OpenCV's own
        # threads, one per core in each process, only contend with the other tasks' for a
        # decode or a resize of a few hundred microseconds.
        cv2.setNumThreads(1)
        # Extraction is numpy/OpenCV only: importing torch here would cost seconds per actor.
        self.method = get_method(method, params, read)
        # Each image is prepared as soon as it is decoded: only what the method keeps of it
        # stays in memory until the batch's extraction.
        self.decode = DecodeImages(read, prepare=self.method.prepare)
        self.storage = storage

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.extract_read(read_bytes_batch(batch, self.storage))

    def extract_read(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`__call__` on a batch already read (its ``bytes``, ``status``, ``error``)."""
        decoded = self.decode(batch)
        ok = np.flatnonzero(decoded["status"] == "ok")
        prepared = [decoded["image"][i] for i in ok]
        feats = self.method.extract_prepared(prepared) if len(ok) else None
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
_TASK_EXTRACTOR: tuple[tuple[Any, ...], FeatureExtractor] | None = None


def extract_task(batch: dict[str, np.ndarray], *, method: str, params: dict[str, Any],
                  storage: Storage, read: ReadConfig) -> dict[str, np.ndarray]:
    """:class:`FeatureExtractor` built once per worker process and job (Ray reuses task
    workers, so its tables, e.g. minhash's grid hashes, are built once)."""
    return _task_extractor(method, params, storage, read)(batch)


def _task_extractor(method: str, params: dict[str, Any], storage: Storage,
                    read: ReadConfig) -> FeatureExtractor:
    """This worker process's :class:`FeatureExtractor` for the job, built on first use."""
    global _TASK_EXTRACTOR
    key = (method, sorted(params.items()), storage.options, read)
    if _TASK_EXTRACTOR is None or _TASK_EXTRACTOR[0] != key:
        _TASK_EXTRACTOR = (key, FeatureExtractor(method, params, storage, read))
    return _TASK_EXTRACTOR[1]


def feature_job(config: Any, storage: Storage) -> dict[str, Any]:
    """What a feature task needs of the run: :func:`extract_task`'s keyword arguments."""
    return {"method": config.method, "params": dict(config.method_params), "storage": storage,
            "read": config.read_config()}


#: Rows per call of the feature extractor (decoded pixels held at once), and per feature task
#: at least and at most (see :func:`_chunk_rows`).
_ROWS_PER_UDF_CALL = 64
_MIN_ROWS_PER_TASK = 16
_MAX_ROWS_PER_TASK = 2048
#: Complete batches handed to batch tasks not yet finished, at most: their rows (features
#: included) wait in Ray's object store meanwhile.
_MAX_BATCH_BYTES_IN_FLIGHT = 512 * 2**20
_MAX_BATCHES_IN_FLIGHT = 256
#: A cluster that may grow (``--address``) is cut into chunks as if it had at least this many
#: CPUs (an autoscaler adds workers while the job runs).
_MIN_GROWING_SLOTS = 8


def _extract_chunk(uris: list[str], sizes: np.ndarray, columns: dict[str, np.ndarray],
                   job: dict[str, Any]) -> tuple[float, dict[str, np.ndarray]]:
    """Task: the features of a chunk of the listing, extracted ``_ROWS_PER_UDF_CALL`` rows at
    a time (bounding the decoded pixels held at once), and when the task started (epoch
    seconds: the stage's wait for its first worker is timed from it)."""
    started = time.time()
    rows = {"uri": np.asarray(uris, dtype=object), "size": np.asarray(sizes), **columns}
    out = [extract_task({k: v[i:i + _ROWS_PER_UDF_CALL] for k, v in rows.items()}, **job)
           for i in range(0, len(uris), _ROWS_PER_UDF_CALL)]
    return started, {k: np.concatenate([o[k] for o in out]) for k in out[0]}


def _chunk_rows(pos: int, total: int, first: int, slots: int) -> int:
    """The rows of the next feature task, the listing's rows before ``pos`` being sent.

    The first ``first`` rows (the threshold's sample) go in equal chunks, one per slot: all of
    them arrive as early as they can. The rest is cut by guided self-scheduling: each chunk is
    the unsent rows over the slots, between ``_MIN_ROWS_PER_TASK`` and ``_MAX_ROWS_PER_TASK``,
    so that chunks are large while much is left and small at the end, where the slots must
    finish together. A task costs a scheduling round and a copy of its results: on 2 CPUs,
    20,000 imagehash images took 3.25-3.5 s in fixed chunks of 512 rows (the size before),
    3.0-3.1 s in chunks of 1,024 or 2,500, whose last one then kept one CPU busy alone for up
    to its time.
    """
    if pos < first:
        size, left = -(-first // slots), first - pos
    else:
        left = total - pos
        size = -(-left // slots)
    return int(min(left, np.clip(size, _MIN_ROWS_PER_TASK, _MAX_ROWS_PER_TASK)))


def _task_parts(todo: Sequence[FileInfo], columns: dict[str, np.ndarray], job: dict[str, Any],
                *, grows: bool, first: int = 0, started: list[float] | None = None,
                ) -> Iterator[dict[str, np.ndarray]]:
    """The features of ``todo`` from Ray tasks over chunks of it (:func:`_chunk_rows`; its
    first ``first`` rows on their own), in order of completion (``started`` receives each
    task's start, epoch seconds).

    Plain tasks, not a Ray Data stage: Ray Data starts two actors and a streaming executor per
    job, which on a 2-core machine doubled the feature phase of 2,000 images (7.5-11.8 s
    against 14.9-22.6 s, side by side); a task here costs a scheduling round (milliseconds).
    Tasks run in Ray's pooled worker processes (kept between jobs of the same driver). Two
    tasks per CPU are in flight (one running, one queued), with the count read again as the
    cluster grows; a task lost with its node is retried by Ray elsewhere. With no CPU yet (a
    0-CPU head before the autoscaler's first worker: Ray then reports none, and
    ``cluster_cpus()`` says 1) two tasks are queued: the demand for a CPU worker. A cluster that
    may grow is cut into chunks for at least ``_MIN_GROWING_SLOTS`` CPUs: cut for the CPUs at
    the start (one, with none yet) a job of 2,000 images had four chunks, hence four tasks at
    most however far the cluster grew.
    """
    import ray

    slots = max(1, int(cluster_cpus()))
    task = ray.remote(_extract_chunk).options(num_cpus=1, max_retries=3)
    job_ref = ray.put(job)
    i = 0
    in_flight: list[Any] = []
    while True:
        while len(in_flight) < 2 * slots and i < len(todo):
            step = _chunk_rows(i, len(todo), first,
                               max(slots, _MIN_GROWING_SLOTS) if grows else slots)
            chunk = todo[i:i + step]
            in_flight.append(task.remote([f.uri for f in chunk], np.array([f.size for f in chunk]),
                                         {k: np.asarray(v[i:i + step]) for k, v in columns.items()},
                                         job_ref))
            i += step
        if not in_flight:
            return
        ready, in_flight = ray.wait(in_flight, num_returns=1)
        t_start, part = ray.get(ready[0])
        if started is not None:
            started.append(t_start)
        yield part
        if grows:
            slots = max(1, int(cluster_cpus()))


def _actor_pool_parts(todo: Sequence[FileInfo], columns: dict[str, np.ndarray],
                      job: dict[str, Any], *, cpus: float, grows: bool, gpu: bool,
                      ) -> Iterator[dict[str, np.ndarray]]:
    """The features of ``todo`` from a Ray Data actor pool of :class:`FeatureExtractor`
    (methods that load a model: each actor loads it once)."""
    import ray

    from icas_ray.pipeline.read import listing_dataset

    # Fractional CPUs: a 2-CPU machine must fit the actors and the batch tasks at once (actors
    # holding every CPU deadlock the job: the driver waits on a batch task that cannot start).
    # Each actor is a process for the job: the pool is capped.
    workers = max(1, min(16, int(cpus)))
    ds = listing_dataset(todo, columns=columns, max_rows=1024, blocks_per_worker=4,
                         workers=max(workers, len(todo) // (4 * 128)) if grows else workers)
    # Rows come back roughly in listing order (= batch order); the driver buffers partial
    # batches, so strict ordering (which stalls the pipeline) is not needed.
    ds.context.execution_options.preserve_order = False
    # On a cluster the pool grows with it, up to 16 actors.
    pool = (ray.data.ActorPoolStrategy(min_size=workers, max_size=max(workers, 16)) if grows
            else ray.data.ActorPoolStrategy(size=workers))
    ds = ds.map_batches(FeatureExtractor, fn_constructor_kwargs=job, batch_size=_ROWS_PER_UDF_CALL,
                        batch_format="numpy", num_cpus=0.5, num_gpus=0.5 if gpu else 0, compute=pool)
    yield from ds.iter_batches(batch_size=_ROWS_PER_UDF_CALL * 4, batch_format="numpy")


@dataclass
class ThresholdSample:
    """The images a threshold is suggested from, taken from the main feature pass (their
    rows go first), and the rule that decides it once all of them are extracted.

    Attributes:
        rows: the sample's indices in the listing.
        suggest: ``(uris, features) -> threshold``, given the readable sampled images; it runs
            in a thread of the driver, beside the feature stage, and touches nothing shared.
        record: keeps the threshold decided (the run's state, progress), in the driver's loop.
    """

    rows: np.ndarray
    suggest: Callable[[list[str], Features], float]
    record: Callable[[float], None]


class _SampleCollector:
    """Keeps the sampled rows' features as they arrive, until all of them have."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = np.asarray(rows)
        self.parts: list[dict[str, np.ndarray]] = []
        self.missing = len(self.rows)

    def add(self, part: dict[str, np.ndarray]) -> None:
        m = np.isin(part["row"], self.rows)
        if m.any():
            self.parts.append({k: v[m] for k, v in part.items()})
            self.missing -= int(m.sum())

    def features(self) -> tuple[list[str], Features]:
        """The readable sampled images (in listing order) and their features."""
        if not self.parts:
            return [], {}
        rows = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        keep = np.flatnonzero(rows["status"] == "ok")
        keep = keep[np.argsort(rows["row"][keep], kind="stable")]
        return ([str(u) for u in rows["uri"][keep]],
                {k[2:]: v[keep] for k, v in rows.items() if k.startswith("f_")})


def run_batches(files: Sequence[FileInfo], batches: np.ndarray, pending: set[int], config: Any,
                threshold: float | None, layout: Layout, progress: Progress, *,
                batch_task: Callable[..., Any], sample: ThresholdSample | None = None,
                timings: dict[str, float] | None = None) -> tuple[int, list[Any], float | None]:
    """Features (Ray tasks over chunks of the listing, or a Ray Data actor pool) and per-batch
    clustering (``batch_task`` in a Ray task per complete batch, beside the feature work) of
    the pending batches.

    With ``sample`` (and no ``threshold``), the sampled images are extracted first and the
    threshold is suggested from their features as soon as all have arrived (in a thread,
    while the other images' features are extracted); batches complete before then wait for
    it. Every file is read and extracted once.

    Args:
        files, batches: the listing and each file's batch number.
        pending: the batches to compute.
        config: the run's options (method, feature compute, ...).
        threshold: passed on to ``batch_task`` (None: decided from ``sample``, or none used).
        layout: where the batches' checkpoints go.
        progress: receives the features and batches phases.
        batch_task: ``(batch, rows, config, threshold, layout, use_gpu) -> batch``; it
            persists the batch's checkpoint (where the merge reads it).
        sample: the threshold's sample, when the threshold is to be suggested.
        timings: receives ``features_s``, the feature stage's seconds (to its last image;
            the per-batch clustering runs beside it), and with feature tasks
            ``features_wait_s``, the part of it before the first task started (Ray's workers
            still starting: their processes start once Ray is up, and a first task waits for
            one).

    Returns:
        The number of batches computed, the refs to wait for, and the threshold.
    """
    import ray

    if not pending:
        return 0, [], threshold
    sel = np.flatnonzero(np.isin(batches, sorted(pending)))
    collector = None
    if sample is not None and threshold is None:
        collector = _SampleCollector(np.intersect1d(sample.rows, sel))
        # The sample first: its threshold is needed before any batch can be clustered.
        first = np.isin(sel, collector.rows)
        sel = np.concatenate([sel[first], sel[~first]])
    todo = [files[i] for i in sel]
    expected = {b: int(c) for b, c in zip(*np.unique(batches[sel], return_counts=True))}
    # A cluster (--address) may grow while the job runs; an embedded Ray keeps its size.
    grows = not is_embedded()
    method = config.feature_method()
    # --gpu: the stages that use a GPU ask for one (so an autoscaling cluster adds GPU nodes);
    # without it nothing assumes a GPU, even where one is present.
    use_gpu = bool(config.gpu) and method.has_torch
    job = feature_job(config, layout.storage)
    columns = {"batch": batches[sel], "row": sel}
    task_starts: list[float] = []
    if config.feature_compute == "actors":
        parts = _actor_pool_parts(todo, columns, job, cpus=cluster_cpus(), grows=grows,
                                  gpu=bool(config.gpu) and method.loads_model)
    else:
        parts = _task_parts(todo, columns, job, grows=grows, started=task_starts,
                            first=0 if collector is None else len(collector.rows))
    batch_fn = ray.remote(batch_task).options(num_cpus=1, num_gpus=0.25 if use_gpu else 0)
    buffers: dict[int, list[dict[str, np.ndarray]]] = defaultdict(list)
    counts: dict[int, int] = defaultdict(int)
    refs: list[Any] = []
    in_flight: list[Any] = []
    held: dict[Any, int] = {}  # bytes of rows each batch task in flight was given
    waiting: list[int] = []  # complete batches waiting for the threshold
    finished = 0
    seen = 0
    progress.start("features", len(todo))
    progress.start("batches", len(pending))
    t_features, t_features_epoch = time.monotonic(), time.time()

    def submit(b: int) -> None:
        if collector is not None and threshold is None:
            waiting.append(b)
            return
        parts = buffers.pop(b)
        rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        # Rows arrive in any order; a batch is clustered in listing order, so that its
        # representatives (hence the merge) do not depend on the order of arrival.
        order = np.argsort(rows.pop("row"), kind="stable")
        rows = {k: v[order] for k, v in rows.items()}
        ref = batch_fn.remote(b, rows, config, threshold, layout, use_gpu)
        refs.append(ref)
        in_flight.append(ref)
        held[ref] = sum(v.nbytes for v in rows.values()) + 100 * len(order)  # + the strings

    def reap(block: bool) -> None:
        """Collect finished batch tasks: all that are done, or (``block``) at least one."""
        nonlocal finished
        while in_flight:
            ready, _ = ray.wait(in_flight, num_returns=1, timeout=None if block else 0)
            if not ready:
                return
            in_flight.remove(ready[0])
            held.pop(ready[0], None)
            ray.get(ready[0])
            finished += 1
            progress.advance("batches", finished, len(pending))
            failpoint("batches", finished)
            if block:
                return

    def decided(block: bool) -> None:
        """Once the suggestion is ready (``block``: wait for it), the batches waiting for it go."""
        nonlocal threshold
        if suggestion is None or threshold is not None or not (block or suggestion.done()):
            return
        threshold = float(suggestion.result())
        sample.record(threshold)  # type: ignore[union-attr]
        for b in waiting:
            submit(b)
        waiting.clear()

    # The suggestion (the sample's matrix and HDBSCAN: 0.1 s for 1,000 imagehash images, over
    # a second for ORB's matching) runs in a thread while this loop keeps the feature tasks
    # coming: run here, it left the tasks' queue to run dry and the CPUs idle.
    suggestion: Future[float] | None = None
    suggester = ThreadPoolExecutor(1, thread_name_prefix="icas-threshold")
    try:
        for part in parts:
            seen += len(part["uri"])
            progress.advance("features", seen, len(todo))
            if collector is not None and suggestion is None:
                collector.add(part)
                if collector.missing == 0:
                    suggestion = suggester.submit(sample.suggest, *collector.features())  # type: ignore[union-attr]
            decided(block=False)
            for b in np.unique(part["batch"]):
                m = part["batch"] == b
                buffers[int(b)].append({k: v[m] for k, v in part.items()})
                counts[int(b)] += int(m.sum())
                if counts[int(b)] == expected[int(b)]:
                    submit(int(b))
            reap(block=False)
            # While feature tasks are queued, Ray keeps their workers for them: a batch task
            # gets a CPU when the queue runs dry. Waiting for batch tasks here (as a cap on
            # their number did) emptied the queue several times a job, each time leaving CPUs
            # idle; only the rows they hold are capped.
            while in_flight and (sum(held.values()) > _MAX_BATCH_BYTES_IN_FLIGHT
                                 or len(in_flight) > _MAX_BATCHES_IN_FLIGHT):
                reap(block=True)
        if timings is not None:
            timings["features_s"] = round(time.monotonic() - t_features, 3)
            if task_starts:  # clipped: a worker's clock on another node may differ a little
                wait = min(task_starts) - t_features_epoch
                timings["features_wait_s"] = round(min(max(wait, 0.0), timings["features_s"]), 3)
        if collector is not None and suggestion is None:  # defensive: sampled rows arrived short
            suggestion = suggester.submit(sample.suggest, *collector.features())  # type: ignore[union-attr]
        decided(block=True)
    finally:
        suggester.shutdown(wait=True, cancel_futures=True)
    for b in list(buffers):  # rows of a batch arrived short (defensive)
        submit(b)
    while in_flight:
        reap(block=True)
    progress.finish("features", f"{seen} images")
    progress.finish("batches", f"{finished} batches clustered")
    return finished, refs, threshold


# ---------------------------------------------------------------------------------------------
# Opening a run


def check_paths(input_uri: str, output: str) -> None:
    """Refuse an output inside the input (or the reverse), compared on resolved paths (a
    symlink cannot hide it), before anything is written or Ray starts."""
    if is_inside(input_uri, output):
        raise ConfigError(f"output {output!r} is inside the input {input_uri!r}: "
                          "choose an --output outside the input folder")
    if is_inside(output, input_uri):
        raise ConfigError(f"input {input_uri!r} is inside the output {output!r}: choose another --output")


def list_inputs(input_uri: str, journal: Journal, config: Any, resume: bool,
                progress: Progress) -> tuple[Listing, np.ndarray]:
    """The images to cluster, sorted by size and cut into batches (saved in the journal), or
    the saved listing of the run being resumed."""
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
    failpoint("listing", 1)
    unlisted = f"; {len(listing.problems)} entries could not be listed" if listing.problems else ""
    for uri, why in listing.problems[:10]:
        logger.warning("not listed: %s (%s)", uri, why)
    progress.finish("listing", f"{len(listing.files)} images in {int(batches.max()) + 1} batches{unlisted}")
    return listing, batches


def pending_batches(state: RunState, config: Any, n_batches: int, root: str) -> tuple[set[int], set[int]]:
    """``(done before, to compute)`` batch numbers of a run (``--option merge`` needs none left)."""
    done = set(state.batches_done) & set(range(n_batches))
    pending = set(range(n_batches)) - done
    if state.resume and done:
        logger.info("resuming: %d of %d batches already done", len(done), n_batches)
    if config.option == "merge" and pending:
        raise ConfigError(f"--option merge needs all {n_batches} batch results in {root!r}, "
                          f"{len(pending)} are missing: rerun with --option dontmerge first")
    return done, pending


def _import_driver_modules(config: Any) -> None:
    """Import what the driver needs once Ray is up (the tables' writer, the threshold's
    suggestion, Ray Data for an actor pool, scikit-learn for a cluster model: seconds on a
    small machine) while ``ray.init`` waits for Ray's processes.

    Only what the run uses: these imports share the machine's CPUs with Ray's start
    (``sklearn.cluster`` alone is about a second of CPU, which delayed a 2-core machine's
    embedded Ray by as much; the threshold's HDBSCAN no longer needs it)."""
    import importlib

    names = ["pyarrow.parquet", "icas_ray.pipeline.results"]
    if getattr(config, "feature_compute", None) == "actors":
        names.append("ray.data")
    if getattr(config, "threshold", None) is None:
        names.append("icas_ray.threshold")
    if getattr(config, "cluster_model", None):
        names.append("sklearn.cluster")
    for name in names:
        importlib.import_module(name)


def _warm_worker(job: dict[str, Any] | None) -> None:
    """Import the feature stage in a Ray worker, as its first task would: this module (numpy,
    OpenCV, the methods) when the task is unpickled, then the batch clustering; with ``job``,
    also build the worker's :class:`FeatureExtractor` and run it once on a generated image
    (the method's tables, e.g. minhash's grid hashes, and the decoder's and OpenCV's first
    calls: 20-50 ms that a worker's first feature task would otherwise spend)."""
    import icas_ray.clustering  # noqa: F401

    if job is None:
        return
    import cv2

    before = _TASK_EXTRACTOR
    extractor = _task_extractor(**job)
    if _TASK_EXTRACTOR is before:  # an earlier warm-up of this worker built and ran it
        return
    side = 256
    ramp = np.add.outer(np.arange(side), np.arange(side)).astype(np.uint8)
    _, png = cv2.imencode(".png", np.dstack([ramp, ramp.T, 255 - ramp]))
    one = np.zeros(1, np.int64)
    extractor.extract_read({"uri": np.array(["warm-up.png"], dtype=object), "size": one,
                            "batch": one, "row": one, "bytes": np.array([png.tobytes()], dtype=object),
                            "status": np.array([STATUS_OK], dtype=object),
                            "error": np.array([""], dtype=object)})


def warm_workers(config: Any, storage: Storage) -> None:
    """Have Ray's idle workers import the feature stage while the driver still lists the
    inputs (fire and forget: a worker that is busy or gone costs nothing); with feature tasks
    of a method that loads no model, each also builds its extractor for the job."""
    import ray

    tasks = config.feature_compute == "tasks"
    # A model-loading method's extractor (a network: seconds) is left to the first task.
    warm = tasks and not method_class(config.method).loads_model
    job = feature_job(config, storage) if warm else None
    task = ray.remote(_warm_worker).options(num_cpus=1 if tasks else 0.25)
    for _ in range(max(1, int(2 * cluster_cpus()))):
        task.remote(job)


@dataclass
class OpenRun:
    """A run opened by :func:`open_run`: its journal and state, and the listing (with each
    file's batch number)."""

    journal: Journal
    state: RunState
    listing: Listing
    batches: np.ndarray
    listing_s: float  # the listing's own seconds (it runs beside Ray's start)
    listing_wait_s: float  # the part of them the run waited for once Ray was up

    def timings(self) -> dict[str, float]:
        """The run's timings so far (summary.json's ``timings`` starts from them)."""
        return {"listing_s": self.listing_s, "listing_wait_s": self.listing_wait_s}


@contextmanager
def open_run(input_uri: str, output: str | None, config: Any, storage: Storage,
             resources: ResourceConfig | None, progress: Progress) -> Iterator[OpenRun]:
    """Check paths and the output, hold the output's lock, clean what a killed run left,
    decide fresh run or resume, then list the inputs while Ray starts.

    Everything a user can fix fails here, with one line, before Ray starts (bar an input
    with no images: the listing runs beside Ray's start, which takes seconds).
    """
    # One form for the output's URIs (plans, listings and records compare them as strings).
    output = absolute_uri(output or default_output(input_uri))
    check_paths(input_uri, output)
    journal = Journal(Layout(output, storage))
    journal.check_output()
    # A move can empty the input (on S3 an empty prefix does not exist): an unfinished run
    # resumes from its saved listing all the same.
    if not storage.exists(input_uri) and config.option != "merge" and journal.state() is None:
        storage.list_images(input_uri)  # raises the one-line error for a missing path/bucket
    fresh = not storage.exists(output)
    opened = False
    try:
        with _opened(journal, input_uri, config, resources, progress) as run:
            opened = True
            yield run
    except IcasError:
        # Refused before it began (--option merge with no batches, no images, a GPU asked of
        # a machine without): an output this run created holds nothing but its lock and state.
        if fresh and not opened and storage.exists(output):
            storage.delete_tree(output)
        raise


@contextmanager
def _opened(journal: Journal, input_uri: str, config: Any, resources: ResourceConfig | None,
            progress: Progress) -> Iterator[OpenRun]:
    """The part of :func:`open_run` under the output's lock."""
    with RunLock(journal.layout).held():
        journal.clean_leftovers()
        state = journal.prepare(input_uri, config)
        # Ray starts in this (the main) thread, where it sets its signal handlers.
        with ThreadPoolExecutor(1, thread_name_prefix="icas-listing") as pool:
            def timed_listing() -> tuple[Listing, np.ndarray, float]:
                t = time.monotonic()
                listing, batches = list_inputs(input_uri, journal, config, state.resume, progress)
                listing_s = time.monotonic() - t
                _import_driver_modules(config)
                return listing, batches, listing_s

            listed = pool.submit(timed_listing)
            try:
                init_ray(resources, lean=True)
            except BaseException:
                listed.cancel()
                raise
            warm_workers(config, journal.layout.storage)
            t_wait = time.monotonic()
            listing, batches, listing_s = listed.result()
            listing_wait_s = time.monotonic() - t_wait
        check_gpu_request(bool(getattr(config, "gpu", False)), resources)
        yield OpenRun(journal, state, listing, batches, round(listing_s, 3),
                      round(listing_wait_s, 3))
