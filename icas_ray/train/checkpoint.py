"""The autoencoder checkpoint: one ``torch.save`` file, local or on S3.

A checkpoint is a dict of plain values and tensors (it loads with ``weights_only=True``):

================  ==============================================================
key               value
================  ==============================================================
format            ``"icas-ray/autoencoder"``; ``version`` 1
model             registry name (``conv_small``) or ``package.module:Class``
params            the model's parameters (``dict``), enough to build it again
image_size        input side S in px: images are resized to S x S
state_dict        the model's weights
epoch             epochs trained (1-based count of the last finished epoch)
loss              that epoch's mean training loss
extra             training state: losses per epoch, best loss and epoch, epochs
                  without improvement, loss name, ...
optimizer         optimizer ``state_dict`` (resume only; may be absent)
scheduler         LR scheduler ``state_dict`` (resume only; may be absent)
================  ==============================================================

Example:
    >>> import tempfile, os, torch
    >>> from icas_ray.train.models import build_model
    >>> m = build_model("conv_small", 32, channels="4", embed_dim=4)
    >>> uri = os.path.join(tempfile.mkdtemp(), "best.pt")
    >>> save_checkpoint(uri, m, epoch=1, loss=0.5)
    >>> model, meta = load_model(uri)
    >>> meta["image_size"], meta["epoch"], model.training
    (32, 1, False)
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from icas_ray.errors import ConfigError, IcasError, InputError, ModelLoadError, StorageError
from icas_ray.storage import Storage

__all__ = ["FORMAT", "load_model", "read_checkpoint", "save_checkpoint"]

logger = logging.getLogger(__name__)

FORMAT = "icas-ray/autoencoder"
VERSION = 1
_REQUIRED = ("model", "params", "image_size", "state_dict")


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel (Ray Train with several workers) keeps the model in .module.
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def save_checkpoint(uri: str, model: nn.Module, *, epoch: int, loss: float,
                    optimizer: Any = None, scheduler: Any = None,
                    extra: Mapping[str, Any] | None = None,
                    storage: Storage | None = None) -> None:
    """Write ``model`` (built by :func:`~icas_ray.train.models.build_model`) to ``uri``.

    Args:
        uri: a local path or ``s3://`` URI; written atomically (see ``Storage.write_bytes``).
        model: the model (a DDP wrapper is unwrapped); its weights are saved on the CPU.
        epoch: epochs trained so far.
        loss: the loss of that epoch.
        optimizer, scheduler: saved too when given (for resuming training).
        extra: more plain values (lists, numbers, strings) stored under ``extra``.
        storage: the Storage to write with (S3 options); default ``Storage()``.
    """
    from icas_ray.train.models import model_spec

    model = _unwrap(model)
    spec = model_spec(model)
    blob: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, **spec,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": int(epoch), "loss": float(loss), "extra": dict(extra or {}),
    }
    if optimizer is not None:
        blob["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        blob["scheduler"] = scheduler.state_dict()
    buf = io.BytesIO()
    torch.save(blob, buf)
    (storage or Storage()).write_bytes(uri, buf.getvalue())


def _torch_load(data: bytes, corrupt: str) -> Any:
    """``torch.load`` of ``data`` on the CPU with ``weights_only``; a file it cannot load
    raises ModelLoadError(``corrupt`` with ``{error}`` the exception's type: torch's own
    message is many lines about weights_only)."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            AttributeError, TypeError) as e:
        raise ModelLoadError(corrupt.replace("{error}", type(e).__name__)) from e


def read_checkpoint(uri: str, *, storage: Storage | None = None) -> dict[str, Any]:
    """The whole checkpoint dict at ``uri``, tensors on the CPU.

    Raises:
        ModelLoadError: missing, unreadable, corrupt, or not an icas-ray checkpoint.
    """
    storage = storage or Storage()
    try:
        data = storage.read_bytes(uri)
    except (InputError, StorageError, OSError) as e:
        if isinstance(e, FileNotFoundError) or not _exists(storage, uri):
            raise ModelLoadError(f"checkpoint {uri!r} does not exist: check the path, or train "
                                 "one with `icas train INPUT --storage URI`") from e
        raise ModelLoadError(f"checkpoint {uri!r} cannot be read: {e}") from e
    blob = _torch_load(data, f"checkpoint {uri!r} is corrupt or not an icas-ray checkpoint "
                             "({error}): point it at a best.pt written by `icas train`")
    if not isinstance(blob, dict) or any(k not in blob for k in _REQUIRED):
        raise ModelLoadError(f"{uri!r} is not an icas-ray autoencoder checkpoint (no model/params/"
                             "image_size/state_dict): point it at a best.pt written by `icas train`")
    return blob


def read_state_dict(uri: str, *, storage: Storage | None = None, what: str = "weights",
                    hint: str = "") -> dict[str, Any]:
    """A torch ``state_dict`` from a file or URI, loaded on the CPU with ``weights_only``
    (a ``{"state_dict": ...}`` wrapper is unwrapped).

    Args:
        uri: local path or ``s3://`` URI.
        storage: storage to read with (default ``Storage()``).
        what: names the file in errors ("backbone weights").
        hint: how to get a right file, appended to errors.

    Raises:
        ModelLoadError: the file cannot be read, is corrupt, or holds no state_dict.
    """
    storage = storage or Storage()
    try:
        data = storage.read_bytes(uri)
    except (InputError, StorageError, OSError) as e:
        raise ModelLoadError(f"{what} {uri!r} cannot be read ({e}): {hint}") from e
    state = _torch_load(data, f"{what} {uri!r} are corrupt or not a torch state_dict "
                              f"({{error}}): {hint}")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{what} {uri!r} are not a state_dict: {hint}")
    return state


def _exists(storage: Storage, uri: str) -> bool:
    try:
        return storage.exists(uri)
    except (IcasError, OSError):
        return False


def load_model(uri: str, *, storage: Storage | None = None,
               device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the model saved at ``uri`` and load its weights, device-safely.

    The file is read through :class:`~icas_ray.storage.Storage` (local or ``s3://``), loaded
    with ``map_location="cpu", weights_only=True`` and only then moved to ``device``, so a
    checkpoint written on a GPU loads on a CPU-only machine.

    Args:
        uri: the checkpoint (``best.pt`` of an ``icas train --storage`` folder).
        storage: Storage with the S3 options; default ``Storage()``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...

    Returns:
        ``(model, meta)``: the model in eval mode on ``device``; ``meta`` holds ``model``,
        ``params``, ``image_size`` (int, px), ``epoch``, ``loss`` and ``extra``.

    Raises:
        ModelLoadError: missing or corrupt file, or weights that do not fit the model.
    """
    from icas_ray.train.models import build_model

    blob = read_checkpoint(uri, storage=storage)
    try:
        model = build_model(str(blob["model"]), int(blob["image_size"]), **dict(blob["params"]))
    except ConfigError as e:
        raise ModelLoadError(f"checkpoint {uri!r} names a model that cannot be built: {e}") from e
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelLoadError(f"checkpoint {uri!r}: the weights do not fit model {blob['model']} "
                             f"({first[:160]})") from e
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as e:
        raise ModelLoadError(f"cannot move the model to device {device!r} ({e}): use "
                             "device='cpu' or a device this machine has") from e
    model.eval()
    meta = {k: v for k, v in blob.items() if k not in ("state_dict", "optimizer", "scheduler")}
    meta["image_size"] = int(meta["image_size"])
    return model, meta
