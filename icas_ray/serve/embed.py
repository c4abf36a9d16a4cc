"""``icas serve embed``: pre-compute SAM image embeddings of a folder or bucket with Ray Data.

Rows flow: listing -> read bytes (Ray tasks) -> :class:`EmbedImages` actors (with ``gpu``, one
GPU each: Ray is asked for them, so an autoscaling cluster adds GPU nodes; without it CPU actors
with fractional CPUs that use no GPU, even where one is present) -> an :class:`EmbeddingStore`.
Each image is keyed by the sha256 of its bytes, so a rerun skips what is stored and the Serve
app finds the embedding of an image it is sent, whatever its name.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from icas_ray.errors import ConfigError, InputError
from icas_ray.images import DecodeError, ReadConfig, decode
from icas_ray.runtime import ResourceConfig
from icas_ray.storage import Storage

__all__ = ["EmbedConfig", "EmbedImages", "EmbedSummary", "embed_folder", "model_id_for"]

logger = logging.getLogger(__name__)

_CHUNK = 8 * 2**20


@dataclass(frozen=True)
class EmbedConfig:
    """What ``icas serve embed`` computes and where it puts it.

    Args:
        model_type: ``vit_b``, ``vit_l``, ``vit_h`` (``tiny`` for tests).
        checkpoint: local path or ``s3://`` URI; None = random weights (tests only).
        output: URI of the embedding store.
        actors: size of the actor pool (None = one per GPU of the cluster with ``gpu``, at
            least one; else one per 2 free CPUs).
        batch_size: images per actor call.
        max_pixels: larger images are skipped as errors.
        seed: seed of random weights when no checkpoint is given.
        gpu: each actor asks Ray for a GPU and encodes on ``cuda``; False = CPUs only, even on
            a node with GPUs.
    """

    model_type: str
    checkpoint: str | None
    output: str
    actors: int | None = None
    batch_size: int = 4
    max_pixels: int = 50_000_000
    seed: int | None = 0
    gpu: bool = False

    def __post_init__(self) -> None:
        from icas_ray.sam import spec_for

        spec_for(self.model_type)
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"actors {self.actors} is invalid: expected >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size {self.batch_size} is invalid: expected >= 1")


@dataclass
class EmbedSummary:
    """Counts of one run; ``failed`` lists ``(uri, reason)``."""

    store: str
    model_id: str
    total: int = 0
    embedded: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def model_id_for(model_type: str, checkpoint: str | None, storage: Storage) -> str:
    """The model identity :func:`icas_ray.sam.build_sam` gives, hashing the file in chunks."""
    if checkpoint is None:
        return f"{model_type}-random"
    from icas_ray.errors import ModelLoadError

    if not storage.exists(checkpoint):
        raise ModelLoadError(f"checkpoint {checkpoint!r} does not exist: give the path or s3:// "
                             "URI of a segment_anything .pth file")
    fs, path = storage.fs(checkpoint)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return f"{model_type}-{h.hexdigest()[:16]}"


class EmbedImages:
    """Ray Data actor: ``uri, bytes, status, error`` rows -> ``uri, id, status, error`` rows.

    ``status`` becomes ``embedded``, ``skipped`` (already stored) or ``error``.
    """

    def __init__(self, config: EmbedConfig, storage: Storage, done: set[str],
                 model_id: str, threads: int) -> None:
        import torch

        from icas_ray.sam import LocalSam
        from icas_ray.serve.store import EmbeddingStore

        torch.set_num_threads(threads)
        # The device is explicit: an actor without a GPU reservation still sees a node's GPUs
        # (Ray leaves CUDA_VISIBLE_DEVICES alone for num_gpus=0).
        self.sam = LocalSam.from_checkpoint(config.model_type, config.checkpoint, storage=storage,
                                            device="cuda" if config.gpu else "cpu",
                                            cache_bytes=0, seed=config.seed)
        if self.sam.model_id != model_id:
            raise ConfigError(f"checkpoint changed while embedding: {self.sam.model_id} != {model_id}")
        self.store = EmbeddingStore(config.output, storage)
        self.done = done
        self.read_config = ReadConfig(max_pixels=config.max_pixels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from icas_ray.sam import content_id

        n = len(batch["uri"])
        ids = np.full(n, "", dtype=object)
        status = np.asarray(batch["status"], dtype=object).copy()
        error = np.asarray(batch["error"], dtype=object).copy()
        for i in range(n):
            if status[i] != "ok":
                status[i] = "error"
                continue
            data = batch["bytes"][i]
            ids[i] = image_id = content_id(data)
            if image_id in self.done or self.store.has(image_id):
                status[i] = "skipped"
                continue
            try:
                image = decode(data, self.read_config)
            except DecodeError as e:
                status[i], error[i] = "error", str(e)
                continue
            self.store.put(image_id, self.sam.encode(image))
            status[i] = "embedded"
        return {"uri": batch["uri"], "id": ids, "status": status, "error": error}


def _pool(actors: int | None, gpu: bool) -> tuple[int, float, float]:
    """``(pool size, CPUs per actor, GPUs per actor)`` for the running cluster."""
    import ray

    from icas_ray.runtime import cluster_gpus

    if gpu:
        # One actor per GPU of the cluster now, at least one: on an autoscaling cluster that
        # starts without GPU nodes the first actor's demand is what brings one.
        return actors or max(1, int(cluster_gpus())), 1.0, 1.0
    # What is free now: a Serve replica or another job may hold part of the cluster.
    cpus = float(ray.available_resources().get("CPU", 1.0))
    n = actors or max(1, int(cpus // 2))
    # Leave room for the read tasks (0.5 CPU each): a pool holding every CPU deadlocks.
    per_actor = max(0.25, min(float(max(1, int(cpus // n))), (cpus - 0.5) / n))
    return n, per_actor, 0.0


def embed_folder(input_uri: str, config: EmbedConfig, *, storage: Storage | None = None,
                 resources: ResourceConfig | None = None) -> EmbedSummary:
    """Embed every image under ``input_uri`` into the store at ``config.output``.

    Starts or joins Ray as ``resources`` says (None = an embedded local Ray), unless this
    process is connected already (see :func:`icas_ray.runtime.init_ray`).

    Raises:
        InputError: no images under ``input_uri``.
        ModelLoadError: the checkpoint is missing.
        ConfigError: the store holds embeddings of another model; ``gpu`` on an embedded Ray
            without a GPU.
    """
    import ray

    from icas_ray.pipeline.read import listing_dataset, read_bytes_batch
    from icas_ray.runtime import check_gpu_request, init_ray
    from icas_ray.serve.store import EmbeddingStore

    t0 = time.perf_counter()
    storage = storage or Storage()
    model_id = model_id_for(config.model_type, config.checkpoint, storage)
    store = EmbeddingStore(config.output, storage)
    store.open_for(config.model_type, model_id, create=True, checkpoint=config.checkpoint)
    files = storage.list_images(input_uri, exclude=(config.output,))
    if not files:
        raise InputError(f"no images under {input_uri!r}: check the path")
    done = store.ids()
    init_ray(resources)
    check_gpu_request(config.gpu, resources)
    n, cpus, gpus = _pool(config.actors, config.gpu)
    logger.info("embedding %d images with %d %s actor(s) (%d already stored) into %s",
                len(files), n, "GPU" if gpus else "CPU", len(done), config.output)
    ds = listing_dataset(files, workers=n, min_rows=1).map_batches(
        read_bytes_batch, fn_kwargs={"storage": storage}, batch_format="numpy", num_cpus=0.5,
        batch_size=config.batch_size,
    ).map_batches(
        EmbedImages,
        fn_constructor_kwargs={"config": config, "storage": storage, "done": done,
                               "model_id": model_id, "threads": max(1, int(cpus))},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=n),
        num_cpus=cpus, num_gpus=gpus, batch_size=config.batch_size, batch_format="numpy",
    )
    summary = EmbedSummary(store=config.output, model_id=model_id)
    for row in ds.iter_rows():
        summary.total += 1
        if row["status"] == "embedded":
            summary.embedded += 1
        elif row["status"] == "skipped":
            summary.skipped += 1
        else:
            summary.failed.append((str(row["uri"]), str(row["error"])))
    summary.seconds = time.perf_counter() - t0
    return summary


