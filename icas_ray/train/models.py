"""The autoencoders of the deep pipeline, behind a registry, plus user classes by import path.

Every model maps ``(N, 3, S, S) float32`` images in [0, 1] to a reconstruction of the same
shape and range (``forward``) and to ``(N, D) float32`` features (``embed``), where ``S`` is
the model's input size (the data pipeline resizes every image to it) and ``D`` its
``embed_dim``. Sizes are parameters, so tests build tiny models through the same code path.
The registry imports torch only when a model is built (``icas --help`` stays light); the
layers are in :mod:`icas_ray.train._conv`.

==========  ==========================================  ================================
name        input size S                                shapes (defaults)
==========  ==========================================  ================================
conv_small  32, 64 or 128 px (power of two)             3 stride-2 convs (32, 64, 128
                                                        channels) -> S/8 x S/8 map ->
                                                        linear to D=128; mirrored decoder
conv_large  256 px and above, a power of two            5x5 stride-2 stem, then stride-2
                                                        stages doubling channels from 32
                                                        (at most 256) down to an 8x8 map
                                                        -> linear to D=256; mirrored
==========  ==========================================  ================================

A user's own model is given as ``package.module:Class``: an ``nn.Module`` with ``forward``
and ``embed`` as above, built as ``Class(image_size=S, **params)`` when ``__init__`` takes
``image_size``, else ``Class(**params)``; parameters are coerced to the type hints of
``__init__``. The module must be importable wherever training or embedding runs.

Example:
    >>> import torch
    >>> m = build_model("conv_small", 32, channels="4,8", embed_dim=8)
    >>> tuple(m(torch.rand(2, 3, 32, 32)).shape), tuple(m.embed(torch.rand(2, 3, 32, 32)).shape)
    ((2, 3, 32, 32), (2, 8))
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from icas_ray.errors import ConfigError
from icas_ray.params import coerce

if TYPE_CHECKING:
    from torch import nn

    from icas_ray.train._conv import ConvAutoencoder

__all__ = [
    "REGISTRY",
    "ModelSpec",
    "build_model",
    "check_image_size",
    "default_image_size",
    "is_import_path",
    "model_names",
    "model_spec",
    "register",
]

logger = logging.getLogger(__name__)

B = TypeVar("B", bound=Callable[..., "nn.Module"])

#: Attribute set on every built model: what a checkpoint needs to build it again.
SPEC_ATTR = "icas_spec"


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder, its parameters and the input sizes it accepts.

    Args:
        name: registry name.
        build: ``build(image_size, params) -> nn.Module``.
        Params: frozen dataclass of the parameters, with defaults.
        sizes: the accepted input sizes, in words (for errors and ``--help``).
        accepts: ``accepts(image_size) -> bool``.
        default_size: the input size used when none is given.
    """

    name: str
    build: Callable[[int, Any], nn.Module]
    Params: type
    sizes: str
    accepts: Callable[[int], bool]
    default_size: int


REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, *, params: type, sizes: str, accepts: Callable[[int], bool],
             default_size: int) -> Callable[[B], B]:
    """Decorator: register ``build(image_size, params) -> nn.Module`` under ``name``.

    Raises:
        ValueError: ``name`` is already registered (a programming error).
    """

    def deco(build: B) -> B:
        if name in REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        REGISTRY[name] = ModelSpec(name, build, params, sizes, accepts, default_size)
        return build

    return deco


def model_names() -> list[str]:
    """Registered model names, sorted (for CLI choices and errors)."""
    return sorted(REGISTRY)


def is_import_path(name: str) -> bool:
    """True for ``package.module:Class`` (a user's model class)."""
    module, _, attr = name.partition(":")
    return bool(module) and bool(attr) and all(p.isidentifier() for p in module.split(".")) \
        and attr.isidentifier()


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class SmallParams:
    """``conv_small``: one stride-2 conv per entry of ``channels``; ``embed_dim`` = D."""

    channels: tuple[int, ...] = (32, 64, 128)
    embed_dim: int = 128

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) < 1 or len(self.channels) > 5:
            raise ConfigError(f"conv_small parameter channels={self.channels!r} is invalid: "
                              "expected 1 to 5 positive integers, e.g. 32,64,128")
        if self.embed_dim < 1:
            raise ConfigError(f"conv_small parameter embed_dim={self.embed_dim} is invalid: "
                              "expected >= 1")


@register("conv_small", params=SmallParams, sizes="32, 64 or 128 px",
          accepts=lambda s: _power_of_two(s) and 32 <= s <= 128, default_size=64)
def _conv_small(image_size: int, params: SmallParams) -> ConvAutoencoder:
    from icas_ray.train._conv import build_autoencoder

    return build_autoencoder(image_size, params.channels, params.embed_dim, stem_kernel=3,
                              refine=False)


@dataclass(frozen=True)
class LargeParams:
    """``conv_large``: a 5x5 stem then stages doubling ``base_channels`` (at most
    ``max_channels``) until the feature map is ``bottleneck`` px; ``embed_dim`` = D."""

    base_channels: int = 32
    max_channels: int = 256
    bottleneck: int = 8
    embed_dim: int = 256

    def __post_init__(self) -> None:
        for name in ("base_channels", "max_channels", "embed_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"conv_large parameter {name}={getattr(self, name)} is "
                                  "invalid: expected >= 1")
        if not _power_of_two(self.bottleneck) or not 2 <= self.bottleneck <= 64:
            raise ConfigError(f"conv_large parameter bottleneck={self.bottleneck} is invalid: "
                              "expected a power of two from 2 to 64")


@register("conv_large", params=LargeParams, sizes="256 px or more, a power of two",
          accepts=lambda s: _power_of_two(s) and s >= 256, default_size=256)
def _conv_large(image_size: int, params: LargeParams) -> ConvAutoencoder:
    from icas_ray.train._conv import build_autoencoder

    stages = max(1, (image_size // params.bottleneck).bit_length() - 1)
    channels = tuple(min(params.base_channels << i, params.max_channels) for i in range(stages))
    return build_autoencoder(image_size, channels, params.embed_dim, stem_kernel=5, refine=True)


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"unknown model {name!r}: must be one of {', '.join(sorted(REGISTRY))}, "
                       "or a class given as package.module:Class")


def _import_class(path: str) -> type[nn.Module]:
    from torch import nn

    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"model {path!r}: cannot import module {module_name!r} ({e}): check "
                          "the name and that it is installed where training runs") from e
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"model {path!r}: module {module_name!r} has no attribute {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"model {path!r} is not a torch.nn.Module subclass")
    if not callable(getattr(cls, "embed", None)):
        raise ConfigError(f"model {path!r} has no embed(x) method: a model needs forward(x) -> "
                          "reconstruction and embed(x) -> (N, D) features")
    return cls


def _user_params(path: str, cls: type[nn.Module], image_size: int,
                 params: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    sig = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except (NameError, TypeError):
        hints = {}
    names = [n for n, p in sig.parameters.items() if n != "self"
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    unknown = sorted(set(params) - set(names)) if not takes_any else []
    if unknown:
        valid = ", ".join(n for n in names if n != "image_size") or "none"
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for model {path}: "
                          f"valid parameters are {valid}")
    coerced = {k: coerce(v, hints.get(k, Any), f"model {path} parameter {k}")
               for k, v in params.items()}
    return coerced, "image_size" in names


def default_image_size(name_or_path: str) -> int:
    """The input size of model ``name_or_path`` when none is given.

    Raises:
        ConfigError: unknown model, or a user class (which has no default: give the size).
    """
    if is_import_path(name_or_path):
        raise ConfigError(f"model {name_or_path} needs --image-size: a user class has no "
                          "default input size")
    spec = REGISTRY.get(name_or_path)
    if spec is None:
        raise _unknown(name_or_path)
    return spec.default_size


def check_image_size(name_or_path: str, image_size: int) -> None:
    """Raise a one-line ConfigError unless model ``name_or_path`` accepts ``image_size``
    (user classes accept any size: they check it themselves)."""
    if is_import_path(name_or_path):
        return
    spec = REGISTRY.get(name_or_path)
    if spec is None:
        raise _unknown(name_or_path)
    if not spec.accepts(int(image_size)):
        raise ConfigError(f"--image-size {image_size} does not fit model {spec.name}: expected "
                          f"{spec.sizes}")


def build_model(name_or_path: str, image_size: int, **params: Any) -> nn.Module:
    """A new model with random weights.

    Args:
        name_or_path: a registered name (see :data:`REGISTRY`) or ``package.module:Class``.
        image_size: the input side ``S`` in px (images are ``(N, 3, S, S)``).
        **params: model parameters, as values or CLI strings (``channels="16,32"``).

    Returns:
        The ``nn.Module``, in training mode, with :func:`model_spec` describing it.

    Raises:
        ConfigError: unknown model, size the model does not accept, bad parameter.
    """
    image_size = int(image_size)
    if image_size < 1:
        raise ConfigError(f"--image-size {image_size} is invalid: expected >= 1")
    if is_import_path(name_or_path):
        cls = _import_class(name_or_path)
        values, takes_size = _user_params(name_or_path, cls, image_size, params)
        model = cls(image_size=image_size, **values) if takes_size else cls(**values)
        stored = dict(values)
    else:
        check_image_size(name_or_path, image_size)
        spec = REGISTRY[name_or_path]
        fields = {f.name for f in dataclasses.fields(spec.Params)}
        unknown = sorted(set(params) - fields)
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for model "
                              f"{spec.name}: valid parameters are {', '.join(sorted(fields))}")
        hints = typing.get_type_hints(spec.Params)
        p = spec.Params(**{k: coerce(v, hints[k], f"model {spec.name} parameter {k}")
                           for k, v in params.items()})
        model = spec.build(image_size, p)
        stored = dataclasses.asdict(p)
    object.__setattr__(model, SPEC_ATTR, {"model": name_or_path, "params": stored,
                                          "image_size": image_size})
    return model


def model_spec(model: nn.Module) -> dict[str, Any]:
    """``{"model", "params", "image_size"}`` of a model made by :func:`build_model`."""
    spec = getattr(model, SPEC_ATTR, None)
    if not isinstance(spec, dict):
        raise TypeError("model was not built by icas_ray.train.build_model")
    return dict(spec)
