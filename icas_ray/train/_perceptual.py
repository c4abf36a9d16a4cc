"""The perceptual loss and its frozen feature network (VGG19 ``features`` or a user's)."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch
from torch import nn

from icas_ray.errors import ConfigError, ModelLoadError
from icas_ray.storage import Storage
from icas_ray.train.losses import WEIGHTS_HINT, PerceptualParams

__all__ = ["PerceptualLoss", "feature_network"]

logger = logging.getLogger(__name__)

# The statistics VGG19's ImageNet weights were trained with (torchvision's transforms).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class _Normalize(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PerceptualLoss(nn.Module):
    """``mean(|F(reconstruction) - F(images)|)`` through a frozen network ``F``.

    ``F`` stays in eval mode with ``requires_grad=False`` whatever ``train()`` is called
    on this module; gradients still flow through it to the reconstruction.

    Args:
        network: ``(N, 3, S, S) float32`` in [0, 1] -> a feature tensor of any shape.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network.eval()
        for p in self.network.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.network.eval()  # frozen: batch-norm statistics and dropout never change
        return self

    def forward(self, reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = (self.network(reconstruction) - self.network(images)).abs().mean()
        return out


def _read_state_dict(uri: str, storage: Storage | None) -> dict[str, torch.Tensor]:
    from icas_ray.train.checkpoint import read_state_dict

    return read_state_dict(uri, storage=storage, what="perceptual weights", hint=WEIGHTS_HINT)


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], uri: str, *,
               prefix: str = "") -> None:
    """Load ``state`` (keys of the whole model, e.g. ``features.0.weight``, or of ``net``
    itself) into ``net``: every key ``net`` has must be there; extra keys are ignored, so a
    whole-vgg19 file fits a truncated ``features``."""
    if prefix and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    wanted = net.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ModelLoadError(f"perceptual weights {uri!r} do not fit the network: missing "
                             f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    try:
        net.load_state_dict({k: state[k] for k in wanted})
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise ModelLoadError(f"perceptual weights {uri!r} do not fit the network "
                             f"({first[:160]})") from e


def _vgg19_features(layers: int | None) -> nn.Sequential:
    # make_layers builds only the convolutional part (20M parameters) without the classifier
    # (124M) that a whole torchvision.models.vgg19() would allocate and never use here.
    from torchvision.models.vgg import cfgs, make_layers

    features: nn.Sequential = make_layers(cfgs["E"], batch_norm=False)
    return features if layers is None else features[:layers]


def feature_network(params: PerceptualParams, *, storage: Storage | None = None) -> nn.Module:
    """The frozen network of the perceptual loss, weights loaded as ``params`` says.

    Raises:
        ConfigError: a ``package.module:factory`` that cannot be imported or called.
        ModelLoadError: the weights cannot be read or do not fit.
    """
    if params.network == "vgg19":
        features = _vgg19_features(params.layers)
        if params.weights:
            _load_into(features, _read_state_dict(params.weights, storage), params.weights,
                       prefix="features.")
        else:
            logger.warning("perceptual loss: VGG19 with random weights (asked for)")
        return nn.Sequential(_Normalize(_IMAGENET_MEAN, _IMAGENET_STD), features)
    module_name, _, attr = params.network.partition(":")
    try:
        factory: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"perceptual network {params.network!r} cannot be imported ({e}): "
                          "expected vgg19 or package.module:factory") from e
    net = factory()
    if not isinstance(net, nn.Module):
        raise ConfigError(f"perceptual network {params.network!r} returned "
                          f"{type(net).__name__}, not a torch.nn.Module")
    if params.weights:
        _load_into(net, _read_state_dict(params.weights, storage), params.weights)
    return net
