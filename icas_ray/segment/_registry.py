"""The registry of segmentation methods and the checks every method shares.

A method is a pure function ``(image, params) -> label map`` registered under a name with its
frozen ``Params`` dataclass and, when small images break it, a ``min_size(params) -> MinSize``
rule. :func:`segment` validates the image (type, then size: an image below the method's
minimum raises :class:`ImageTooSmallError` before any OpenCV call, since some of OpenCV's
calls crash the process on such images), builds the parameters (from defaults, a Params object
or keyword overrides), runs the method and checks its output.

Label maps are ``(H, W) int32``: segments numbered from 1, 0 = edge/cut.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from icas_ray.errors import ConfigError, InputError
from icas_ray.params import coerce

__all__ = ["ImageTooSmallError", "MinSize", "SegmentMethod", "check_image", "get_method",
           "method_names", "register", "segment"]

logger = logging.getLogger(__name__)

MethodFunc = Callable[[np.ndarray, Any], np.ndarray]
F = TypeVar("F", bound=MethodFunc)

_REGISTRY: dict[str, SegmentMethod] = {}
_ALIASES: dict[str, str] = {}  # lower-case name or alias -> canonical name


def _snake(name: str) -> str:
    """``sigmaColor`` -> ``sigma_color``: the seed's camelCase names keep working."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


class ImageTooSmallError(InputError):
    """An image smaller than a method accepts with the given parameters (one per image: in
    ``icas segment`` it becomes that image's error row)."""


@dataclass(frozen=True)
class MinSize:
    """The smallest image a method accepts with some parameters.

    Attributes:
        side: both height and width must be at least this many pixels.
        pixels: ``H * W`` must be at least this.
        because: the parameters that set the limit, e.g. ``"region_size=40, algorithm mslic"``.
        fix: what lets a smaller image through, e.g. ``"a smaller region_size"``.
    """

    side: int = 1
    pixels: int = 1
    because: str = ""
    fix: str = ""

    def check(self, shape: tuple[int, ...], method: str) -> None:
        """Raise :class:`ImageTooSmallError` if an ``(H, W[, C])`` image is below the limit."""
        h, w = int(shape[0]), int(shape[1])
        if min(h, w) >= self.side and h * w >= self.pixels:
            return
        needs = []
        if self.side > 1:
            needs.append(f"both sides >= {self.side} px")
        if self.pixels > 1:
            needs.append(f">= {self.pixels} pixels")
        why = f" with {self.because}" if self.because else ""
        fix = f"use {self.fix} or another method" if self.fix else "use another method"
        raise ImageTooSmallError(f"image of {w}x{h} px is too small for {method}{why}: it needs "
                                 f"{' and '.join(needs)}; {fix}")


@dataclass(frozen=True)
class SegmentMethod:
    """A registered method: its function, its Params type and how to call it.

    Attributes:
        name: canonical name (``chanvese``).
        func: ``func(image, params) -> label map``; image is ``(H, W, 3) uint8`` RGB.
        params_type: the method's frozen Params dataclass; its defaults are the seed's.
        aliases: other accepted names (``chanvase``).
        summary: one line for help texts.
        needs_backend: the method needs a SAM backend (``sam``).
        min_size: ``min_size(params) -> MinSize``, the smallest image the method takes with
            those parameters; None = any image of at least 1x1.
    """

    name: str
    func: MethodFunc
    params_type: type
    aliases: tuple[str, ...] = ()
    summary: str = ""
    needs_backend: bool = False
    min_size: Callable[[Any], MinSize] | None = None

    def minimum(self, params: Any = None) -> MinSize:
        """The :class:`MinSize` of the method with ``params`` (None = the defaults)."""
        p = self.make_params(params)
        return self.min_size(p) if self.min_size is not None else MinSize()

    def param_names(self) -> list[str]:
        return sorted(f.name for f in dataclasses.fields(self.params_type))

    def defaults(self) -> dict[str, Any]:
        """The default parameter values (what ``Params()`` holds)."""
        p = self.params_type()
        return {f.name: getattr(p, f.name) for f in dataclasses.fields(self.params_type)}

    def make_params(self, values: Mapping[str, Any] | Any | None = None, **overrides: Any) -> Any:
        """Params from defaults, a Params object or a mapping, plus keyword overrides.

        Values may be strings (from the CLI): they are converted to each field's type.
        The seed's camelCase names (``sigmaColor``) are accepted for the snake_case fields.

        Raises:
            ConfigError: unknown parameter (the message lists the valid ones) or a bad value.
        """
        if isinstance(values, self.params_type):
            base: dict[str, Any] = {}
            start = values
        else:
            base = dict(values or {})
            start = None
        base.update(overrides)
        if not base and start is not None:
            return start
        fields = {f.name for f in dataclasses.fields(self.params_type)}
        renamed: dict[str, Any] = {}
        for key, value in base.items():
            k = key if key in fields else _snake(key.replace("-", "_"))
            renamed[k] = value
        unknown = sorted(k for k in renamed if k not in fields)
        if unknown:
            raise ConfigError(
                f"unknown parameter {', '.join(repr(u) for u in unknown)} for method {self.name}: "
                f"valid parameters are {', '.join(self.param_names()) or 'none'}"
            )
        hints = typing.get_type_hints(self.params_type)
        converted = {k: coerce(v, hints[k], f"{self.name} parameter {k}")
                     for k, v in renamed.items()}
        try:
            if start is not None:
                return dataclasses.replace(start, **converted)
            return self.params_type(**converted)
        except TypeError as e:  # a value of a type the field cannot take
            raise ConfigError(f"bad parameters for method {self.name}: {e}") from e

    def __call__(self, image: np.ndarray, params: Any = None, **overrides: Any) -> np.ndarray:
        """Segment ``image``; see :func:`segment`."""
        rgb = check_image(image)
        p = self.make_params(params, **overrides)
        if self.min_size is not None:
            self.min_size(p).check(rgb.shape, self.name)
        labels = self.func(rgb, p)
        return _check_labels(labels, rgb.shape[:2], self.name)


def register(name: str, params: type, *, aliases: tuple[str, ...] = (), summary: str = "",
             needs_backend: bool = False,
             min_size: Callable[[Any], MinSize] | None = None) -> Callable[[F], F]:
    """Decorator: register a method function under ``name`` (and ``aliases``).

    ``min_size(params)`` gives the smallest image the method accepts (see :class:`MinSize`);
    images below it are refused before ``func`` runs.

    Raises:
        ValueError: the name or an alias is already registered (a programming error).
    """

    def deco(func: F) -> F:
        keys = [name.lower(), *(a.lower() for a in aliases)]
        for key in keys:
            if key in _ALIASES:
                raise ValueError(f"segmentation method {key!r} is already registered")
        if not dataclasses.is_dataclass(params):
            raise TypeError(f"Params of method {name!r} must be a dataclass")
        method = SegmentMethod(name=name, func=func, params_type=params, aliases=aliases,
                               summary=summary or (func.__doc__ or "").strip().splitlines()[0],
                               needs_backend=needs_backend, min_size=min_size)
        _REGISTRY[name] = method
        for key in keys:
            _ALIASES[key] = name
        return func

    return deco


def method_names() -> list[str]:
    """Canonical names of the registered methods, sorted (aliases not included)."""
    return sorted(_REGISTRY)


def get_method(name: str) -> SegmentMethod:
    """The method registered as ``name`` or one of its aliases (case-insensitive).

    Raises:
        ConfigError: unknown name; the message lists the valid names.
    """
    key = _ALIASES.get(str(name).strip().lower())
    if key is None:
        raise ConfigError(f"unknown segmentation method {name!r}: must be one of "
                          f"{', '.join(method_names())}")
    return _REGISTRY[key]


def segment(image: np.ndarray, method: str, params: Any = None, **overrides: Any) -> np.ndarray:
    """Segment an image with a registered method.

    Args:
        image: ``(H, W, 3) uint8`` RGB (a ``(H, W)`` grey image is accepted too).
        method: a name from :func:`method_names` (or an alias such as ``chanvase``).
        params: the method's Params object or a mapping of parameter values; None = defaults.
        **overrides: parameter values that replace those of ``params``.

    Returns:
        ``(H, W) int32`` label map: segments numbered from 1, 0 = edge/cut.

    Raises:
        ConfigError: unknown method or bad parameters. InputError: not an image array.
        ImageTooSmallError: the image is below the method's minimum size (an InputError).

    Example:
        >>> import numpy as np
        >>> img = np.zeros((40, 60, 3), np.uint8); img[:, 30:] = 255
        >>> labels = segment(img, "felzenszwalb", min_segment_size=10)
        >>> labels.shape, labels.dtype.name, int(labels.min()) >= 1
        ((40, 60), 'int32', True)
    """
    return get_method(method)(image, params, **overrides)


def check_image(image: Any) -> np.ndarray:
    """``image`` as a C-contiguous ``(H, W, 3) uint8`` RGB array (grey images are repeated).

    Raises:
        InputError: not a 2-D grey or 3-channel uint8 array.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or min(arr.shape[:2]) < 1:
        raise InputError(f"image has shape {arr.shape} and dtype {arr.dtype}: expected an "
                         "(H, W, 3) uint8 RGB array, e.g. from icas_ray.images.decode")
    return np.ascontiguousarray(arr)


def _check_labels(labels: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    out = np.ascontiguousarray(labels, dtype=np.int32)
    if out.shape != tuple(shape) or (out.size and int(out.min()) < 0):
        # A bug in the method, not a user error.
        raise RuntimeError(f"method {name} returned labels of shape {out.shape} "
                           f"(min {out.min() if out.size else None}); "
                           f"expected {tuple(shape)}, >= 0")
    return out
