"""Reconstruction losses of the autoencoder, behind a registry.

Every loss is an ``nn.Module`` called as ``loss(reconstruction, images)`` on two
``(N, 3, S, S) float32`` batches in [0, 1], returning a scalar tensor.

==========  ======================================================================
name        value
==========  ======================================================================
mse         ``torch.nn.MSELoss``: mean squared pixel difference
mae         ``torch.nn.L1Loss``: mean absolute pixel difference
perceptual  mean ABSOLUTE difference of the features of both batches through a
            frozen feature network (torchvision VGG19 ``features`` by default, on
            ImageNet-normalised input). The original took the plain mean of the
            difference, which can go negative and reward any shift of the features.
==========  ======================================================================

No weights are ever downloaded: ``perceptual`` with VGG19 needs ``weights`` (a file or
``s3://`` URI holding a ``state_dict`` of torchvision's ``vgg19`` or of its ``features``),
or an explicit ``random_init=True``. The registry itself imports no torch (``icas --help``).

Example:
    >>> import torch
    >>> loss = build_loss("mae")
    >>> float(loss(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)))
    1.0
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from icas_ray.errors import ConfigError
from icas_ray.params import coerce

if TYPE_CHECKING:
    from torch import nn

    from icas_ray.storage import Storage

__all__ = ["LOSSES", "LossSpec", "PerceptualParams", "build_loss", "check_loss", "loss_names",
           "register_loss"]

F = TypeVar("F", bound=Callable[..., "nn.Module"])

#: How to pass VGG19 weights; part of every missing-weights error.
WEIGHTS_HINT = (
    "pass --perceptual-weights FILE_OR_URI (a state_dict of torchvision's vgg19, saved on a "
    "machine with internet by torch.save(torchvision.models.vgg19(weights='IMAGENET1K_V1')"
    ".state_dict(), 'vgg19.pth')), or --perceptual-random-init to use random weights; "
    "nothing is downloaded at run time"
)


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: ``build(params, storage) -> nn.Module`` and its ``Params``."""

    name: str
    build: Callable[[Any, Storage | None], nn.Module]
    Params: type


LOSSES: dict[str, LossSpec] = {}


@dataclass(frozen=True)
class NoParams:
    """Losses without parameters."""


def register_loss(name: str, *, params: type = NoParams) -> Callable[[F], F]:
    """Decorator: register ``build(params, storage) -> nn.Module`` under ``name``.

    Raises:
        ValueError: ``name`` is already registered (a programming error).
    """

    def deco(build: F) -> F:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        LOSSES[name] = LossSpec(name, build, params)
        return build

    return deco


def loss_names() -> list[str]:
    """Registered loss names, sorted (for CLI choices and errors)."""
    return sorted(LOSSES)


@register_loss("mse")
def _mse(params: NoParams, storage: Storage | None) -> nn.Module:
    from torch import nn

    return nn.MSELoss()


@register_loss("mae")
def _mae(params: NoParams, storage: Storage | None) -> nn.Module:
    from torch import nn

    return nn.L1Loss()


@dataclass(frozen=True)
class PerceptualParams:
    """``perceptual``: the frozen feature network and where its weights come from.

    Args:
        network: ``vgg19`` (torchvision's VGG19 ``features``, input normalised with the
            ImageNet mean and std) or ``package.module:factory``, a callable returning an
            ``nn.Module`` that maps ``(N, 3, S, S)`` in [0, 1] to a feature tensor.
        layers: keep only the first ``layers`` modules of VGG19's ``features`` (None = all
            37; 18 ends at relu3_4, 27 at relu4_4: cheaper on large images).
        weights: file or URI of the network's ``state_dict`` (a whole ``vgg19`` or its
            ``features``); required for VGG19 unless ``random_init``.
        random_init: use the network with random weights (asked for explicitly).
    """

    network: str = "vgg19"
    layers: int | None = None
    weights: str | None = None
    random_init: bool = False

    def __post_init__(self) -> None:
        if self.layers is not None and not 1 <= self.layers <= 37:
            raise ConfigError(f"perceptual parameter layers={self.layers} is out of range: "
                              "expected 1 to 37 (the modules of VGG19's features)")
        if self.weights and self.random_init:
            raise ConfigError("--perceptual-weights and --perceptual-random-init exclude each "
                              "other: give one")
        if self.network == "vgg19" and not self.weights and not self.random_init:
            raise ConfigError(f"--loss perceptual needs VGG19 weights: {WEIGHTS_HINT}")
        if self.network != "vgg19" and ":" not in self.network:
            raise ConfigError(f"perceptual parameter network={self.network!r} is invalid: "
                              "expected vgg19 or package.module:factory")


@register_loss("perceptual", params=PerceptualParams)
def _perceptual(params: PerceptualParams, storage: Storage | None) -> nn.Module:
    from icas_ray.train._perceptual import PerceptualLoss, feature_network

    return PerceptualLoss(feature_network(params, storage=storage))


def check_loss(name: str, params: Mapping[str, Any] | None = None) -> Any:
    """The loss's ``Params`` from loose values, validated; no torch, no file access.

    Raises:
        ConfigError: unknown loss, unknown or invalid parameter, missing VGG19 weights.
    """
    spec = LOSSES.get(name)
    if spec is None:
        raise ConfigError(f"unknown loss {name!r}: must be one of {', '.join(loss_names())}")
    values = dict(params or {})
    fields = {f.name for f in dataclasses.fields(spec.Params)}
    unknown = sorted(set(values) - fields)
    if unknown:
        valid = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for loss {name}: "
                          f"valid parameters are {valid}")
    hints = typing.get_type_hints(spec.Params)
    return spec.Params(**{k: coerce(v, hints[k], f"loss {name} parameter {k}")
                          for k, v in values.items()})


def build_loss(name: str, params: Mapping[str, Any] | None = None, *,
               storage: Storage | None = None) -> nn.Module:
    """The loss ``name`` as an ``nn.Module``: ``loss(reconstruction, images) -> scalar``.

    Args:
        name: ``mse``, ``mae`` or ``perceptual`` (see :data:`LOSSES`).
        params: the loss's parameters (``PerceptualParams`` fields for ``perceptual``).
        storage: reads the perceptual network's weights (local or ``s3://``).

    Raises:
        ConfigError: see :func:`check_loss`.
        ModelLoadError: the weights file is missing, corrupt, or does not fit the network.
    """
    checked = check_loss(name, params)
    return LOSSES[name].build(checked, storage)
