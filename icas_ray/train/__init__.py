"""Autoencoder training for the deep pipeline (``icas train``).

``models`` and ``losses`` are registries of pure torch modules; ``checkpoint`` is the file
format (``save_checkpoint`` / ``load_model``); ``trainer`` is the only module that uses Ray
Train. Names are served lazily: ``import icas_ray.train`` imports neither torch nor Ray.

Example:
    >>> from icas_ray.train import TrainConfig
    >>> TrainConfig(model="conv_small", image_size=64, epochs=2).loss
    'mse'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icas_ray._lazy import lazy_getattr

if TYPE_CHECKING:
    from icas_ray.train.checkpoint import load_model, read_checkpoint, save_checkpoint
    from icas_ray.train.losses import build_loss, loss_names
    from icas_ray.train.models import build_model, model_names
    from icas_ray.train.trainer import TrainConfig, TrainResult, train

__all__ = [
    "TrainConfig", "TrainResult", "build_loss", "build_model", "load_model", "loss_names",
    "model_names", "read_checkpoint", "save_checkpoint", "train",
]

_WHERE = {
    "load_model": "icas_ray.train.checkpoint",
    "read_checkpoint": "icas_ray.train.checkpoint",
    "save_checkpoint": "icas_ray.train.checkpoint",
    "build_loss": "icas_ray.train.losses",
    "loss_names": "icas_ray.train.losses",
    "build_model": "icas_ray.train.models",
    "model_names": "icas_ray.train.models",
    "TrainConfig": "icas_ray.train.trainer",
    "TrainResult": "icas_ray.train.trainer",
    "train": "icas_ray.train.trainer",
}

__getattr__ = lazy_getattr(__name__, _WHERE)
