"""``icas segment``: pre-segment every image of a folder (local or S3) with Ray Data.

Listing -> read bytes (Ray tasks) -> decode, segment and store (a pool of actors) -> rows
with a status per image -> ``manifest.jsonl`` and ``summary.json``. Images whose label map is
already stored are skipped, so a rerun finishes an interrupted job; files that cannot be read,
decoded or segmented (below the method's minimum size, say) become ``status="error"`` rows
with a reason, never a failed job.

``method="sam"`` takes a SAM backend (the HTTP client of ``icas serve``) or, with
:class:`SamModel`, runs SAM in the job's own actors: then ``gpu=True`` gives each actor a GPU
(Ray is asked for one, so an autoscaling cluster adds GPU nodes) and without it SAM runs on
CPUs, even on a node that has GPUs. The other methods are OpenCV/scikit-image code on CPUs.

A worker process that dies (a crash inside OpenCV kills it: no exception to catch) is
restarted and its block tried ``max_retries`` more times, then the block is dropped instead of
failing the job (Ray's default retries a crashed actor's task forever: the job would hang).
The images of dropped blocks are tried once more one per block, so that only the image that
kills the worker ends up as an error row. See :mod:`icas_ray.segment.store` for the output
layout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icas_ray.errors import ConfigError, IcasError, InputError, ModelLoadError
from icas_ray.images import ReadConfig
from icas_ray.pipeline.read import (
    MAX_ROWS_PER_BLOCK,
    STATUS_ERROR,
    STATUS_OK,
    DecodeImages,
    listing_dataset,
    read_bytes_batch,
)
from icas_ray.progress import NullProgress, Progress
from icas_ray.runtime import ResourceConfig, check_gpu_request, cluster_cpus, cluster_gpus, init_ray
from icas_ray.segment import SegmentMethod, get_method
from icas_ray.segment.store import (
    LABELS_NPZ,
    LABELS_PNG,
    PresegLayout,
    decode_labels,
    default_output,
    encode_labels,
    encode_preview,
)
from icas_ray.storage import FileInfo, Storage, absolute_uri

__all__ = [
    "PresegmentConfig", "PresegmentPlan", "PresegmentSummary", "SamModel", "SegmentImages",
    "params_record", "plan_presegment", "presegment",
]

logger = logging.getLogger(__name__)

STATUS_SKIPPED = "skipped"


def params_record(method: str, params: Any) -> dict[str, Any]:
    """JSON-able ``{"method": ..., "params": {...}}`` (the SAM backend is described, not stored)."""
    values = {}
    for f in dataclasses.fields(params):
        v = getattr(params, f.name)
        if f.name == "backend":
            v = None if v is None else type(v).__name__
        values[f.name] = v
    return json.loads(json.dumps({"method": method, "params": values}, default=list))


@dataclass(frozen=True)
class SamModel:
    """SAM run inside the job's actors (``icas segment --method sam --sam-checkpoint``): each
    actor loads the checkpoint once.

    Args:
        checkpoint: segment_anything ``.pth`` file, local path or ``s3://`` URI (every node
            must reach it: use ``s3://`` on a cluster).
        model_type: its architecture: ``vit_b``, ``vit_l``, ``vit_h`` (``tiny`` for tests).
    """

    checkpoint: str
    model_type: str = "vit_b"

    def __post_init__(self) -> None:
        from icas_ray.sam import spec_for  # no torch import

        spec_for(self.model_type)


@dataclass(frozen=True)
class PresegmentConfig:
    """What ``icas segment`` does.

    Args:
        input: folder (or single image) URI, local or ``s3://``.
        method: segmentation method name (aliases accepted).
        params: mapping of method parameters (strings are converted) or a Params object.
        output: output root; None = ``<input>_segmented``.
        overwrite: redo images that are already done (also needed to change parameters).
        read: how images are decoded (full size by default: labels match the image).
        preview_side: longest side of the preview JPEGs.
        actors: segmentation actors; None = one per CPU of the cluster (SAM in the job: one
            per GPU with ``gpu``, else one per 4 CPUs: each holds a model).
        cpus_per_actor: CPUs reserved per actor; fractional so that read tasks still fit on
            a small machine (a full CPU per actor deadlocks Ray Data on 2 CPUs).
        max_retries: times a block is tried again after its worker process died.
        sam: run SAM in the actors (``method="sam"`` without a backend); see :class:`SamModel`.
        gpu: the actors that run SAM (``sam``) ask Ray for a GPU each and use ``cuda``; False
            = no GPU is requested or used, even where one is present. Only ``sam`` uses one.
    """

    input: str
    method: str
    params: Any = None
    output: str | None = None
    overwrite: bool = False
    read: ReadConfig = field(default_factory=ReadConfig)
    preview_side: int = 256
    actors: int | None = None
    cpus_per_actor: float = 0.5
    max_retries: int = 1
    sam: SamModel | None = None
    gpu: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.max_retries <= 10:
            raise ConfigError(f"max_retries={self.max_retries} is invalid: expected 0 to 10")
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"actors={self.actors} is invalid: expected >= 1")
        if not 0 < self.cpus_per_actor <= 64:
            raise ConfigError(f"cpus_per_actor={self.cpus_per_actor} is invalid: "
                              "expected 0 < c <= 64")
        if self.preview_side < 16:
            raise ConfigError(f"preview_side={self.preview_side} is invalid: expected >= 16")


@dataclass
class PresegmentSummary:
    """Counts of one run; ``errors`` lists ``{"uri", "error"}`` of the images that failed."""

    method: str
    input: str
    output: str
    images: int = 0
    segmented: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SegmentImages:
    """Ray Data actor: decode, segment and store a batch; one result row per image.

    Built once per actor (``sam``: the SAM model is loaded here, on ``device``), then called
    on batches with ``uri``, ``bytes``, ``status`` and ``error`` columns.
    """

    def __init__(self, method: str, params: Any, layout: PresegLayout, storage: Storage,
                 read: ReadConfig, preview_side: int, *, sam: SamModel | None = None,
                 device: str = "cpu", threads: int = 1) -> None:
        import cv2

        cv2.setNumThreads(1)  # parallelism comes from the actors
        self.method = get_method(method)
        self.params = self.method.make_params(params)
        if sam is not None:
            import torch

            from icas_ray.sam import LocalSam

            torch.set_num_threads(threads)
            # The device is explicit: an actor without a GPU reservation still sees a node's
            # GPUs (Ray leaves CUDA_VISIBLE_DEVICES alone for num_gpus=0).
            backend = LocalSam.from_checkpoint(sam.model_type, sam.checkpoint, storage=storage,
                                               device=device, cache_bytes=0)
            self.params = dataclasses.replace(self.params, backend=backend)
        self.layout, self.storage, self.preview_side = layout, storage, preview_side
        self.decode = DecodeImages(read)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import cv2

        rows = self.decode(batch)
        n = len(rows["uri"])
        status, error = rows["status"].copy(), rows["error"].copy()
        segments = np.zeros(n, np.int64)
        labels_uri = np.full(n, "", dtype=object)
        seconds = np.zeros(n, np.float64)
        for i in range(n):
            if status[i] != STATUS_OK:
                continue
            uri, image = str(rows["uri"][i]), rows["image"][i]
            t0 = time.perf_counter()
            try:
                labels = self.method(image, self.params)
                data, suffix = encode_labels(labels)
                self.storage.write_bytes(self.layout.preview_uri(uri),
                                         encode_preview(image, labels, self.preview_side))
                # The label map is written last: its presence marks the image as done.
                labels_uri[i] = self.layout.labels_uri(uri, suffix)
                self.storage.write_bytes(labels_uri[i], data)
                segments[i] = len(np.unique(labels[labels > 0]))
            except (IcasError, cv2.error) as e:
                reason = str(e).strip().splitlines()[-1]
                status[i], error[i] = STATUS_ERROR, f"segmentation failed: {reason}"
            seconds[i] = time.perf_counter() - t0
        return {"uri": rows["uri"], "status": status, "error": error, "segments": segments,
                "labels_uri": labels_uri, "seconds": seconds}


@dataclass
class PresegmentPlan:
    """What a run will do, decided before Ray starts (see :func:`plan_presegment`)."""

    method: SegmentMethod
    params: Any
    layout: PresegLayout
    record: dict[str, Any]
    files: list[FileInfo]
    done: set[str]
    todo: list[FileInfo]


def plan_presegment(config: PresegmentConfig, storage: Storage) -> PresegmentPlan:
    """Validate the configuration, list the images and find those already done.

    Raises:
        ConfigError: unknown method, bad parameters, no SAM backend (or two), ``gpu`` for a
            method that uses none, the output is the input, or stored labels were made with
            other parameters (use ``overwrite``).
        InputError: the input does not exist or holds no images.
    """
    method = get_method(config.method)
    params = method.make_params(config.params)
    backend = getattr(params, "backend", None)
    if config.sam is not None and not method.needs_backend:
        raise ConfigError(f"--sam-checkpoint runs SAM in the job: it needs --method sam, not "
                          f"{method.name}")
    if config.sam is not None and backend is not None:
        raise ConfigError("method sam: give --sam-url (SAM in `icas serve`) or --sam-checkpoint "
                          "(SAM in the job), not both")
    if method.needs_backend and backend is None and config.sam is None:
        raise ConfigError("method sam needs a SAM backend: give --sam-url URL of `icas serve`, "
                          "or --sam-checkpoint URI to run SAM in the job")
    if config.sam is not None and not storage.exists(config.sam.checkpoint):
        raise ModelLoadError(f"SAM checkpoint {config.sam.checkpoint!r} does not exist: give the "
                             "path or s3:// URI of a segment_anything .pth file")
    if config.gpu and config.sam is None:
        if method.needs_backend:
            raise ConfigError("--gpu: with --sam-url, SAM runs in the `icas serve` service, not in "
                              "this job: give the service GPUs (`icas serve --gpu`), or run SAM in "
                              "the job with --sam-checkpoint")
        raise ConfigError(f"--gpu: method {method.name} runs on CPUs only (only sam with "
                          "--sam-checkpoint uses a GPU): drop --gpu")
    source = absolute_uri(config.input)
    output = absolute_uri(config.output or default_output(config.input))
    if output == source:
        raise ConfigError(f"--output {config.output!r} is the input folder: choose another folder "
                          "(the default is INPUT_segmented)")
    layout = PresegLayout(source, output, method.name)
    record = params_record(method.name, params)
    if config.sam is not None:
        record["params"]["backend"] = "LocalSam"
        record["model"] = {"model_type": config.sam.model_type,
                           "checkpoint": config.sam.checkpoint}
    if storage.exists(layout.params_uri) and not config.overwrite:
        previous = json.loads(storage.read_text(layout.params_uri))
        if previous != record:
            raise ConfigError(f"{layout.folder} holds labels made with other parameters "
                              f"({previous['params']}): add --overwrite or choose another --output")
    # The output may lie inside the input: its previews and PNG label maps are not inputs.
    files = storage.list_images(source, exclude=(output,))
    if not files:
        raise InputError(f"no images found under {config.input!r}: check the path")
    done = set() if config.overwrite else layout.done(storage)
    todo = [f for f in files if layout.relative(f.uri) not in done]
    return PresegmentPlan(method, params, layout, record, files, done, todo)


def _segment_dataset(files: list[FileInfo], segmenter: type, kwargs: dict[str, Any], *,
                     workers: int, rows_per_block: int | None, retries: int,
                     cpus_per_actor: float, gpus_per_actor: float, storage: Storage) -> Any:
    """The Ray Data pipeline over ``files``: read tasks, then a pool of ``segmenter`` actors
    (each reserving ``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs).

    A crashed actor is restarted (``max_restarts=-1``: the pool must not run out of actors)
    but each task is retried only ``retries`` times; a block that still fails is dropped
    (``max_errored_blocks=-1`` on this dataset's own context) and its rows are missing.
    """
    import ray

    ds = listing_dataset(files, workers=workers, min_rows=1,
                         max_rows=rows_per_block or MAX_ROWS_PER_BLOCK).map_batches(
        read_bytes_batch, fn_kwargs={"storage": storage}, batch_format="numpy",
        batch_size=4, num_cpus=0.25,
    )
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for an actor pool's retries: the remote args it
        # deprecates are still the only way (Ray's own docs use map_batches(max_restarts=0)).
        warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
        ds = ds.map_batches(
            segmenter, fn_constructor_kwargs=kwargs,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
            num_cpus=cpus_per_actor, num_gpus=gpus_per_actor, batch_size=1, batch_format="numpy",
            max_restarts=-1, max_task_retries=retries,
        )
    ds.context.max_errored_blocks = -1
    return ds


def _stored_row(storage: Storage, layout: PresegLayout, uri: str) -> dict[str, Any] | None:
    """The manifest row of an image whose label map was stored by a block that was dropped
    later (its worker died on another image), or None."""
    for suffix in (LABELS_PNG, LABELS_NPZ):
        labels_uri = layout.labels_uri(uri, suffix)
        if storage.exists(labels_uri):
            labels = decode_labels(storage.read_bytes(labels_uri))
            return {"uri": uri, "status": STATUS_OK, "error": "",
                    "segments": len(np.unique(labels[labels > 0])), "labels_uri": labels_uri}
    return None


def _pool(config: PresegmentConfig, images: int) -> dict[str, Any]:
    """The actor pool: its most actors and what each reserves and uses (``_segment_dataset``
    and :class:`SegmentImages` keywords)."""
    if config.sam is None:
        size = config.actors or int(cluster_cpus())
        return {"workers": max(1, min(images, size)), "cpus_per_actor": config.cpus_per_actor,
                "gpus_per_actor": 0.0, "actor": {}}
    if config.gpu:
        # One actor per GPU of the cluster now, at least one: on an autoscaling cluster that
        # starts without GPU nodes the first actor's demand is what brings one.
        size = config.actors or int(cluster_gpus())
        return {"workers": max(1, min(images, size)), "cpus_per_actor": config.cpus_per_actor,
                "gpus_per_actor": 1.0,
                "actor": {"sam": config.sam, "device": "cuda", "threads": 1}}
    # SAM on CPUs: a model (up to ~4 GB at work for vit_h) and 4 torch threads per actor.
    size = config.actors or int(cluster_cpus()) // 4
    return {"workers": max(1, min(images, size)), "cpus_per_actor": config.cpus_per_actor,
            "gpus_per_actor": 0.0, "actor": {"sam": config.sam, "device": "cpu", "threads": 4}}


def presegment(config: PresegmentConfig, *, storage: Storage | None = None,
               resources: ResourceConfig | None = None, progress: Progress | None = None,
               segmenter: type = SegmentImages) -> PresegmentSummary:
    """Pre-segment every image under ``config.input``; see the module docstring.

    Args:
        segmenter: the Ray Data actor class that segments a batch (:class:`SegmentImages`
            or a subclass), built with its keyword arguments.

    Raises:
        ConfigError, InputError: as :func:`plan_presegment`, before any Ray work starts.
    """
    storage = storage or Storage()
    t0 = time.perf_counter()
    plan = plan_presegment(config, storage)
    method, params, layout, files, done, todo = (plan.method, plan.params, plan.layout,
                                                 plan.files, plan.done, plan.todo)
    summary = PresegmentSummary(method=method.name, input=config.input, output=layout.output,
                                images=len(files), skipped=len(files) - len(todo))
    if todo:
        init_ray(resources, lean=True)
        check_gpu_request(config.gpu, resources)
    storage.write_text(layout.params_uri, json.dumps(plan.record, indent=2))
    logger.info("segmenting %d image(s) with %s (%d already done)", len(todo), method.name,
                summary.skipped)
    manifest = [{"uri": f.uri, "status": STATUS_SKIPPED, "error": "", "segments": None,
                 "labels_uri": None} for f in files if layout.relative(f.uri) in done]
    seen: set[str] = set()
    progress = progress or NullProgress()

    def record(row: dict[str, Any]) -> None:
        uri = str(row["uri"])
        if uri in seen:  # a retried block may deliver a row twice
            return
        seen.add(uri)
        ok = row["status"] == STATUS_OK
        summary.segmented += int(ok)
        if not ok:
            summary.failed += 1
            summary.errors.append({"uri": uri, "error": str(row["error"])})
        manifest.append({"uri": uri, "status": str(row["status"]), "error": str(row["error"]),
                         "segments": int(row["segments"]) if ok else None,
                         "labels_uri": str(row["labels_uri"]) if ok else None})
        progress.advance("segment", len(seen), len(todo))

    if todo:
        pool = _pool(config, len(todo))
        kwargs = {"method": method.name, "params": params, "layout": layout, "storage": storage,
                  "read": config.read, "preview_side": config.preview_side, **pool.pop("actor")}
        if config.sam is not None:
            logger.info("SAM %s in %d actor(s) on %s", config.sam.model_type, pool["workers"],
                        "GPUs" if config.gpu else "CPUs")
        progress.start("segment", len(todo))
        run = {**pool, "storage": storage}
        for row in _segment_dataset(todo, segmenter, kwargs, rows_per_block=None,
                                    retries=config.max_retries, **run).iter_rows():
            record(row)
        lost = [f for f in todo if f.uri not in seen]
        if lost:
            logger.warning("%d image(s) were in blocks whose worker died: trying them one at "
                           "a time", len(lost))
            for f in lost:
                stored = _stored_row(storage, layout, f.uri)
                if stored is not None:
                    record(stored)
            lost = [f for f in lost if f.uri not in seen]
        if lost:
            for row in _segment_dataset(lost, segmenter, kwargs, rows_per_block=1, retries=0,
                                        **run).iter_rows():
                record(row)
            tries = config.max_retries + 2
            for f in lost:
                if f.uri not in seen:
                    record({"uri": f.uri, "status": STATUS_ERROR, "segments": 0,
                            "labels_uri": "",
                            "error": f"the worker process died on this image ({tries} tries): "
                                     f"a crash in {method.name}'s library code or out of "
                                     "memory; try other parameters or another method"})
        progress.finish("segment", f"{summary.segmented} segmented, {summary.failed} failed")
    summary.seconds = round(time.perf_counter() - t0, 3)
    manifest.sort(key=lambda r: r["uri"])
    storage.write_text(layout.manifest_uri, "".join(json.dumps(r) + "\n" for r in manifest))
    storage.write_text(layout.summary_uri, json.dumps(summary.to_dict(), indent=2))
    logger.info("segmented %d, skipped %d, failed %d in %.1f s -> %s", summary.segmented,
                summary.skipped, summary.failed, summary.seconds, layout.folder)
    return summary
