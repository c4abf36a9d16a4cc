"""Training the autoencoder on Ray Train: the only module of ``icas_ray.train`` that uses Ray.

``train(input_uri, config)`` lists the images (local or ``s3://``), reads and decodes them
with Ray Data (resized to the model's ``S x S`` input; unreadable files are skipped and
counted), and fits the model in a ``TorchTrainer`` of ``config.workers`` workers (one GPU each
with ``gpu=True``, so an autoscaling cluster adds GPU nodes). Adam, ``StepLR(step_size,
gamma)``, and the original's early stop: training ends after ``patience`` epochs without a
lower epoch loss. Rank 0 writes two checkpoints into ``config.storage_uri`` (local or
``s3://``, through :class:`~icas_ray.storage.Storage`) after every epoch:

* ``best.pt``: the model of the lowest epoch loss so far (what ``icas cluster --checkpoint``
  and :func:`~icas_ray.train.checkpoint.load_model` take);
* ``last.pt``: the last epoch with optimizer and scheduler state: a rerun with the same
  storage resumes from it at the next epoch.

Ray Train's own ``RunConfig(storage_path=...)`` gets an absolute local scratch folder
(a relative one fails); no Ray Train checkpoint is reported, the files above are ours.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from icas_ray.errors import ConfigError, IcasError, InputError, ModelLoadError
from icas_ray.params import check_fields
from icas_ray.progress import NullProgress, Progress
from icas_ray.runtime import ResourceConfig
from icas_ray.storage import FileInfo, Storage, absolute_uri

if TYPE_CHECKING:
    import ray.data

__all__ = ["BEST", "LAST", "TrainConfig", "TrainResult", "train"]

logger = logging.getLogger(__name__)

BEST = "best.pt"
LAST = "last.pt"

#: Decoded training images up to this size stay in Ray's object store for all epochs;
#: larger sets are streamed (read and decoded again every epoch).
MATERIALIZE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class TrainConfig:
    """What to train, how long, and where the checkpoints go.

    Args:
        model: registry name (``conv_small``, ``conv_large``) or ``package.module:Class``.
        model_params: the model's parameters (values or CLI strings).
        loss: ``mse``, ``mae`` or ``perceptual``.
        loss_params: the loss's parameters (``perceptual``: ``network``, ``layers``).
        epochs: epochs in total (a resumed run continues up to this many).
        lr: Adam's learning rate.
        batch_size: images per step and worker.
        image_size: input side S in px (None: the model's default, 64 or 256).
        workers: Ray Train workers (data-parallel).
        gpu: each worker asks for one GPU.
        cpus_per_worker: CPUs each worker asks for (and torch threads it uses).
        patience: stop after this many epochs without a lower loss (the original: 10).
        step_size, gamma: ``StepLR``: the learning rate is multiplied by ``gamma`` every
            ``step_size`` epochs (the original: 10, 0.1).
        storage_uri: folder (local or ``s3://``) for ``best.pt`` and ``last.pt``.
        perceptual_weights: file or URI of the VGG19 weights for ``loss="perceptual"``.
        perceptual_random_init: ``perceptual`` with random VGG19 weights, explicitly.
        seed: seeds torch in every worker (None: not seeded).
    """

    model: str = "conv_small"
    model_params: dict[str, Any] = field(default_factory=dict)
    loss: str = "mse"
    loss_params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 32
    image_size: int | None = None
    workers: int = 1
    gpu: bool = False
    cpus_per_worker: float = 1.0
    patience: int = 10
    step_size: int = 10
    gamma: float = 0.1
    storage_uri: str | None = None
    perceptual_weights: str | None = None
    perceptual_random_init: bool = False
    seed: int | None = 0

    def __post_init__(self) -> None:
        from icas_ray.train.losses import check_loss
        from icas_ray.train.models import check_image_size, default_image_size

        check_fields(self)
        for name, low in (("epochs", 1), ("batch_size", 1), ("workers", 1), ("patience", 1),
                          ("step_size", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} {getattr(self, name)} is invalid: expected >= {low}")
        if not self.lr > 0:
            raise ConfigError(f"lr {self.lr} is invalid: expected > 0, e.g. 0.001")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma {self.gamma} is out of range: expected 0 < gamma <= 1")
        if not self.cpus_per_worker > 0:
            raise ConfigError(f"cpus_per_worker {self.cpus_per_worker} is invalid: expected > 0")
        object.__setattr__(self, "model_params", dict(self.model_params))
        object.__setattr__(self, "loss_params", dict(self.loss_params))
        if self.image_size is None:
            object.__setattr__(self, "image_size", default_image_size(self.model))
        check_image_size(self.model, int(self.image_size))  # type: ignore[arg-type]
        if self.loss != "perceptual" and (self.perceptual_weights or self.perceptual_random_init):
            raise ConfigError("--perceptual-weights and --perceptual-random-init are for "
                              f"--loss perceptual, not --loss {self.loss}")
        check_loss(self.loss, self.loss_settings())

    @property
    def size(self) -> int:
        """The input side S in px (``image_size`` after the model's default is applied)."""
        return int(self.image_size)  # type: ignore[arg-type]

    def loss_settings(self) -> dict[str, Any]:
        """The loss's parameters, the perceptual weights options included."""
        out = dict(self.loss_params)
        if self.loss == "perceptual":
            if self.perceptual_weights:
                out["weights"] = self.perceptual_weights
            if self.perceptual_random_init:
                out["random_init"] = True
        return out


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`train`.

    Args:
        checkpoint: URI of ``best.pt`` (lowest epoch loss).
        last_checkpoint: URI of ``last.pt`` (resume state).
        epochs: epochs trained in total, earlier runs included.
        start_epoch: the first epoch this call trained (``epochs + 1`` if nothing was left).
        losses: mean training loss of every epoch, earlier runs included.
        best_loss, best_epoch: the epoch saved in ``best.pt``.
        resumed: this call continued a run found in the storage.
        stopped_early: training ended by the ``patience`` rule.
        images: readable images trained on per epoch; unreadable: files skipped.
        elapsed_s: wall time of this call.
    """

    checkpoint: str
    last_checkpoint: str
    epochs: int
    start_epoch: int
    losses: tuple[float, ...]
    best_loss: float
    best_epoch: int
    resumed: bool
    stopped_early: bool
    images: int
    unreadable: int
    elapsed_s: float

    @property
    def epochs_run(self) -> int:
        """Epochs trained by this call."""
        return self.epochs - self.start_epoch + 1


def _uris(storage: Storage, config: TrainConfig) -> tuple[str, str]:
    if not config.storage_uri:
        raise ConfigError("no checkpoint storage: give --storage URI (a local folder or "
                          "s3://bucket/prefix for best.pt and last.pt)")
    return storage.join(config.storage_uri, BEST), storage.join(config.storage_uri, LAST)


def _spec_of(config: TrainConfig) -> dict[str, Any]:
    """Build the model once in the driver: a bad name, parameter or user class fails here,
    before Ray starts; its stored parameters are what a resumed run must match."""
    from icas_ray.train.models import build_model, model_spec

    return model_spec(build_model(config.model, config.size, **config.model_params))


def _resume_state(last: str, config: TrainConfig, spec: Mapping[str, Any],
                  storage: Storage) -> dict[str, Any] | None:
    from icas_ray.train.checkpoint import read_checkpoint

    if not storage.exists(last):
        return None
    blob = read_checkpoint(last, storage=storage)
    found = {k: blob[k] for k in ("model", "params", "image_size")}
    wanted = {k: spec[k] for k in ("model", "params", "image_size")}
    extra = dict(blob.get("extra") or {})
    if _plain(found) != _plain(wanted) or extra.get("loss_name") != config.loss:
        raise ConfigError(
            f"--storage {config.storage_uri} holds a run of model {found['model']} "
            f"{found['params']} at {found['image_size']} px with loss {extra.get('loss_name')}: "
            "resume it with the same --model/--param/--image-size/--loss, or give a new --storage")
    return {"epoch": int(blob["epoch"]), **extra}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _result(state: Mapping[str, Any], best: str, last: str, *, start_epoch: int, resumed: bool,
            t0: float) -> TrainResult:
    losses = tuple(float(v) for v in state.get("losses", ()))
    return TrainResult(
        checkpoint=best, last_checkpoint=last, epochs=int(state["epoch"]),
        start_epoch=start_epoch, losses=losses, best_loss=float(state.get("best_loss", np.nan)),
        best_epoch=int(state.get("best_epoch", 0)), resumed=resumed,
        stopped_early=bool(state.get("stopped_early", False)),
        images=int(state.get("images", 0)), unreadable=int(state.get("unreadable", 0)),
        elapsed_s=time.monotonic() - t0)


def _finished(state: Mapping[str, Any], config: TrainConfig) -> bool:
    return bool(state.get("stopped_early")) or int(state["epoch"]) >= config.epochs


def train(input_uri: str, config: TrainConfig, *, storage: Storage | None = None,
          resources: ResourceConfig | None = None,
          progress: Progress | None = None) -> TrainResult:
    """Train ``config.model`` on the images under ``input_uri``; resume a run found in
    ``config.storage_uri``.

    Args:
        input_uri: folder (or ``s3://`` prefix) of images, listed recursively.
        config: what and how to train; see :class:`TrainConfig`.
        storage: Storage with the S3 options, for the images and the checkpoints.
        resources: which Ray to use (default: a new embedded local Ray on 127.0.0.1).
        progress: receives one ``advance`` per epoch ("train" phase) with the loss and
            images/s.

    Returns:
        A :class:`TrainResult`; ``result.checkpoint`` is the URI of ``best.pt``.

    Raises:
        ConfigError: bad options, missing perceptual weights, a storage holding another
            run, ``gpu`` on an embedded Ray without GPU.
        InputError: no images, or none of them readable.
        ModelLoadError: perceptual weights or a checkpoint that cannot be loaded.
    """
    t0 = time.monotonic()
    storage = storage or Storage()
    progress = progress or NullProgress()
    resources = resources or ResourceConfig()
    # Ray Train's workers run in a directory of their own: relative paths are the caller's.
    input_uri = absolute_uri(input_uri)
    config = dataclasses.replace(
        config, storage_uri=config.storage_uri and absolute_uri(config.storage_uri),
        perceptual_weights=config.perceptual_weights and absolute_uri(config.perceptual_weights))
    best, last = _uris(storage, config)
    spec = _spec_of(config)
    weights = config.perceptual_weights
    if weights and not storage.exists(weights):
        raise ModelLoadError(f"--perceptual-weights {weights!r} does not exist: check the path")
    state = _resume_state(last, config, spec, storage)
    if state is not None and _finished(state, config):
        logger.info("the run in %s is complete (%d epochs%s): nothing to train", config.storage_uri,
                    state["epoch"], ", stopped early" if state.get("stopped_early") else "")
        return _result(state, best, last, start_epoch=int(state["epoch"]) + 1, resumed=True, t0=t0)
    files = storage.list_images(input_uri)
    if not files:
        raise InputError(f"no images under {input_uri!r}: check the path (image extensions: "
                         "png, jpg, ...)")
    start_epoch = 1 if state is None else int(state["epoch"]) + 1
    if state is not None:
        logger.info("resuming the run in %s at epoch %d", config.storage_uri, start_epoch)

    from icas_ray.runtime import cluster_cpus, cluster_gpus, init_ray

    init_ray(resources)
    if resources.address is None:
        if config.gpu and cluster_gpus() < config.workers:
            raise ConfigError(f"--gpu asks for {config.workers} GPU(s) but the embedded Ray has "
                              f"{cluster_gpus():.0f}: drop --gpu, or join a cluster with GPUs "
                              "using --address")
        need = config.workers * config.cpus_per_worker
        if need > cluster_cpus():
            raise ConfigError(f"--workers {config.workers} need {need:g} CPUs but the embedded "
                              f"Ray has {cluster_cpus():.0f}: use fewer workers")
    dataset = _training_dataset(files, config, storage)
    _fit(dataset, config, storage=storage, resume=state is not None, best=best, last=last,
         total=len(files), start_epoch=start_epoch, progress=progress)
    from icas_ray.train.checkpoint import read_checkpoint

    blob = read_checkpoint(last, storage=storage)
    final = {"epoch": int(blob["epoch"]), **dict(blob.get("extra") or {})}
    return _result(final, best, last, start_epoch=start_epoch, resumed=state is not None, t0=t0)


def training_rows(batch: dict[str, np.ndarray], *, image_size: int) -> dict[str, np.ndarray]:
    """Ray Data UDF: ``bytes``/``status`` rows -> ``image`` ``(N, S, S, 3) uint8`` and ``ok``
    (bool; False for a file that could not be read or decoded, its image all zeros)."""
    from icas_ray.images import DecodeError, ReadConfig, decode

    read = ReadConfig(size=(image_size, image_size))
    n = len(batch["uri"])
    images = np.zeros((n, image_size, image_size, 3), np.uint8)
    ok = np.zeros(n, bool)
    for i in range(n):
        if batch["status"][i] != "ok":
            continue
        try:
            images[i] = decode(batch["bytes"][i], read)
            ok[i] = True
        except DecodeError as e:
            logger.debug("skipping %s: %s", batch["uri"][i], e)
    return {"image": images, "ok": ok}


def _training_dataset(files: Sequence[FileInfo], config: TrainConfig,
                      storage: Storage) -> ray.data.Dataset:
    from icas_ray.pipeline.read import listing_dataset, read_bytes_batch

    # Any: Ray Data's map_batches stubs accept no keyword-only UDF parameters (fn_kwargs).
    read_fn: Any = read_bytes_batch
    rows_fn: Any = training_rows
    ds = listing_dataset(files, workers=config.workers).map_batches(
        read_fn, fn_kwargs={"storage": storage}, batch_format="numpy", num_cpus=0.5,
    ).map_batches(rows_fn, fn_kwargs={"image_size": config.size}, batch_format="numpy",
                  num_cpus=0.5)
    if len(files) * config.size ** 2 * 3 <= MATERIALIZE_BYTES:
        # Small enough to keep decoded: every epoch after the first skips reading and decoding.
        ds = ds.materialize()
    return ds


def _scratch_dir() -> str:
    # Ray Train wants an absolute storage_path ("URI has empty scheme" for a relative one).
    return os.path.abspath(os.path.join(tempfile.gettempdir(), "icas-ray-train"))


def _fit(dataset: ray.data.Dataset, config: TrainConfig, *, storage: Storage, resume: bool,
         best: str, last: str, total: int, start_epoch: int, progress: Progress) -> None:
    """Run the TorchTrainer; report each epoch to ``progress`` while it runs."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    loop_config = {"config": config, "storage": storage, "resume": resume, "best": best,
                   "last": last, "queue": queue}
    per_worker: dict[str, float] = {"CPU": config.cpus_per_worker}
    if config.gpu:
        per_worker["GPU"] = 1
    trainer = TorchTrainer(
        _train_loop, train_loop_config=loop_config, datasets={"train": dataset},
        scaling_config=ray.train.ScalingConfig(num_workers=config.workers, use_gpu=config.gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(name=f"icas-train-{uuid.uuid4().hex[:8]}",
                                       storage_path=_scratch_dir()),
    )
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # noqa: BLE001 -- re-raised in the caller's thread below
            failure.append(e)

    progress.start("train", total=config.epochs)
    thread = threading.Thread(target=fit, name="icas-train-fit", daemon=True)
    thread.start()

    def drain(timeout: float | None) -> None:
        while True:
            try:
                item = queue.get(block=timeout is not None, timeout=timeout)
            except Empty:
                return
            note = (f"loss {item['loss']:.5f}, {item['images_per_s']:.0f} images/s"
                    + (", best" if item["improved"] else ""))
            progress.advance("train", int(item["epoch"]), config.epochs, note=note)
            if timeout is not None:
                return

    try:
        while thread.is_alive():
            drain(0.5)
            thread.join(timeout=0.01)
        drain(None)
    finally:
        queue.shutdown()
    if failure:
        raise _user_error(failure[0]) or failure[0]
    progress.finish("train", f"checkpoint {best}")


def _user_error(error: BaseException) -> IcasError | None:
    """The IcasError a worker raised, found inside Ray Train's wrapping, if any."""
    seen: set[int] = set()
    todo: list[Any] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, IcasError):
            return e
        todo += [getattr(e, "__cause__", None), getattr(e, "__context__", None),
                 getattr(e, "cause", None)]
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, Mapping):
            todo += list(failures.values())
    return None


def _train_loop(cfg: dict[str, Any]) -> None:
    """One Ray Train worker: the epochs from the resume point to ``config.epochs``."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from icas_ray.train.checkpoint import read_checkpoint, save_checkpoint
    from icas_ray.train.losses import build_loss
    from icas_ray.train.models import build_model

    config: TrainConfig = cfg["config"]
    storage: Storage = cfg["storage"]
    # Ray starts workers with one torch thread: use the CPUs this worker asked for.
    torch.set_num_threads(max(1, int(config.cpus_per_worker)))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config.seed is not None:
        torch.manual_seed(config.seed + rank)
    model = build_model(config.model, config.size, **config.model_params)
    history: dict[str, Any] = {"losses": [], "best_loss": None, "best_epoch": 0,
                               "since_best": 0, "stopped_early": False}
    blob: dict[str, Any] | None = None
    start = 1
    if cfg["resume"]:
        blob = read_checkpoint(cfg["last"], storage=storage)
        model.load_state_dict(blob["state_dict"])
        history.update(blob.get("extra") or {})
        start = int(blob["epoch"]) + 1
    model = ray.train.torch.prepare_model(model)  # to the worker's device; DDP if world > 1
    device = ray.train.torch.get_device()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size,
                                                gamma=config.gamma)
    if blob is not None:
        # After the model is on its device: Adam's state is cast to the parameters' device.
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
    criterion = build_loss(config.loss, config.loss_settings(), storage=storage).to(device)
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start, config.epochs + 1):
        model.train()
        t0 = time.monotonic()
        total, seen, bad = 0.0, 0, 0
        for batch in shard.iter_torch_batches(
                batch_size=config.batch_size, local_shuffle_buffer_size=max(4 * config.batch_size,
                                                                            256)):
            ok = batch["ok"].bool()
            bad += int((~ok).sum())
            x = batch["image"][ok.to(batch["image"].device)]
            if len(x) == 0:
                continue
            x = x.to(device).permute(0, 3, 1, 2).float().div_(255.0)
            loss = criterion(model(x), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(x)
            seen += len(x)
        sums = torch.tensor([total, seen, bad], dtype=torch.float64, device=device)
        if world > 1 and dist.is_initialized():
            dist.all_reduce(sums)
        total, seen, bad = float(sums[0]), int(sums[1]), int(sums[2])
        if seen == 0:
            raise InputError("none of the images could be read or decoded: check the input")
        epoch_loss = total / seen
        elapsed = time.monotonic() - t0
        scheduler.step()
        improved = history["best_loss"] is None or epoch_loss < history["best_loss"]
        history["losses"] = [*history["losses"], epoch_loss]
        if improved:
            history.update(best_loss=epoch_loss, best_epoch=epoch, since_best=0)
        else:
            history["since_best"] = int(history["since_best"]) + 1
        history["stopped_early"] = history["since_best"] >= config.patience
        history.update(images=seen, unreadable=bad, loss_name=config.loss)
        if rank == 0:
            if improved:
                save_checkpoint(cfg["best"], model, epoch=epoch, loss=epoch_loss,
                                extra=history, storage=storage)
            # last.pt after best.pt: a run killed in between resumes with both consistent.
            save_checkpoint(cfg["last"], model, epoch=epoch, loss=epoch_loss,
                            optimizer=optimizer, scheduler=scheduler, extra=history,
                            storage=storage)
            cfg["queue"].put({"epoch": epoch, "loss": epoch_loss, "improved": improved,
                              "images_per_s": seen / elapsed if elapsed > 0 else 0.0})
        ray.train.report({"epoch": epoch, "loss": epoch_loss, "images": seen,
                          "unreadable": bad})
        if history["stopped_early"]:
            break
