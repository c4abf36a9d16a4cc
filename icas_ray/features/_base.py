"""The feature-method interface and its registry."""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np

from icas_ray.errors import ConfigError
from icas_ray.params import coerce
from icas_ray.images import ReadConfig

#: Stacked features of N images: every array has N as its first axis.
Features = dict[str, np.ndarray]

_REGISTRY: dict[str, type[FeatureMethod]] = {}
_ALIASES: dict[str, str] = {}

M = TypeVar("M", bound="type[FeatureMethod]")


def register(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`FeatureMethod` under ``name`` (case-insensitive)."""

    def deco(cls: M) -> M:
        key = name.lower()
        if key in _ALIASES:
            raise ValueError(f"feature method {name!r} is already registered")
        _ALIASES[key] = name
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return deco


def method_names() -> list[str]:
    """Registered method names, sorted case-insensitively (for CLI choices and errors)."""
    return sorted(_REGISTRY, key=str.lower)


def get_method(name: str, params: dict[str, Any] | None = None,
               read: ReadConfig | None = None) -> FeatureMethod:
    """An instance of the method ``name`` with ``params`` overriding its defaults, for images
    read with ``read`` (None: the method's ``default_read``).

    Raises:
        ConfigError: unknown method or unknown/invalid parameter.
    """
    cls = method_class(name)
    return cls(cls.make_params(params or {}), read)


def method_class(name: str) -> type[FeatureMethod]:
    """The class of the method ``name`` (case-insensitive), without building one.

    Raises:
        ConfigError: unknown method.
    """
    key = _ALIASES.get(str(name).lower())
    if key is None:
        raise ConfigError(f"unknown method {name!r}: must be one of {', '.join(method_names())}")
    return _REGISTRY[key]


class FeatureMethod(ABC):
    """A clustering feature: extraction plus a vectorized pairwise similarity.

    Subclasses set ``Params`` (a frozen dataclass), ``default_read`` and ``cheap``, and
    implement :meth:`extract` and :meth:`pairwise`.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = type(None)
    #: How images are decoded for this method unless the user sets --size/--scale (which
    #: keep its ``grey``: the methods that use only the luma decode straight to grey).
    default_read: ClassVar[ReadConfig] = ReadConfig(max_side=512)
    #: Cheap kernels can afford a larger threshold sample.
    cheap: ClassVar[bool] = True
    #: Representatives per batch cluster in the merge (cheap kernels afford many).
    merge_reps: ClassVar[int] = 32
    #: Threshold range accepted for this method (inclusive).
    threshold_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    #: Strategy when the user gives none: row-by-row "connected" pays off where a pair is
    #: expensive; cheap kernels are fastest on whole blocks.
    default_strategy: ClassVar[str] = "exhaustive"
    #: Whether a torch kernel exists (used on GPU nodes).
    has_torch: ClassVar[bool] = False
    #: Features are one float vector per image (``{"vector": (N, D)}`` or a single array),
    #: which scikit-learn models can cluster (``--cluster-model``).
    vector_features: ClassVar[bool] = False
    #: Extraction loads a model (weights): Ray Data runs it in an actor pool by default, so
    #: that the model is loaded once per actor.
    loads_model: ClassVar[bool] = False

    def __init__(self, params: Any, read: ReadConfig | None = None) -> None:
        self.params = params
        #: How this instance's images are read: the job's --size/--scale, else ``default_read``.
        self.read = read if read is not None else self.default_read

    @classmethod
    def make_params(cls, values: dict[str, Any]) -> Any:
        fields = {f.name: f for f in dataclasses.fields(cls.Params)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            valid = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for method {cls.name}: "
                              f"valid parameters are {valid}")
        hints = typing.get_type_hints(cls.Params)
        return cls.Params(**{k: coerce(v, hints[k], f"{cls.name} parameter {k}")
                             for k, v in values.items()})

    @abstractmethod
    def extract(self, images: Sequence[np.ndarray]) -> Features:
        """Features of images read with ``self.read``: ``(H, W, 3) uint8`` RGB, or ``(H, W)``
        grey where ``self.read.grey`` (such a method takes RGB images too)."""

    def prepare(self, image: np.ndarray) -> Any:
        """The per-image first step of :meth:`extract`, which the pipeline runs on each image
        as soon as it is decoded: what it returns is all a batch keeps of the image until
        :meth:`extract_prepared`. A method that shrinks its images (imagehash: to a 64x64
        grey) then never holds a batch's full-size pixels: holding 64 decoded 256x256 RGB
        images before hashing them made decoding and hashing about 8% slower in one process
        (the pixels written, then read back from beyond the CPU's caches).

        ``extract(images) == extract_prepared([prepare(im) for im in images])``, for every
        method (tested). Default: the image itself.
        """
        return image

    def extract_prepared(self, prepared: Sequence[Any]) -> Features:
        """The features of images given as :meth:`prepare` left them (default: :meth:`extract`)."""
        return self.extract(prepared)

    @abstractmethod
    def pairwise(self, a: Features, b: Features) -> np.ndarray:
        """``(len(a), len(b)) float32`` similarity matrix (numpy)."""

    def pairwise_torch(self, a: Features, b: Features, device: str) -> np.ndarray:
        """The same matrix computed with torch on ``device``; defaults to :meth:`pairwise`."""
        return self.pairwise(a, b)

    def candidates(self, features: Features, *, groups: np.ndarray | None = None,
                   ) -> np.ndarray | None:
        """A shortlist of the pairs worth scoring among ``features``' images, for methods whose
        pair is expensive: ``(P, 2) int64`` indices (see
        :func:`icas_ray.graph.nearest_pairs`); pairs left out count as not similar. ``groups``:
        ``(N,)`` ids whose pairs within one group will not be scored (the merge's batches), so
        the shortlist should look past them. Default None: every pair is scored.
        """
        return None

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, **dataclasses.asdict(self.params)}


def n_items(features: Features) -> int:
    return len(next(iter(features.values())))


def take_features(features: Features, index: np.ndarray | Sequence[int] | slice) -> Features:
    """The features of a subset of images."""
    return {k: v[index] for k, v in features.items()}


def concat_features(parts: Sequence[Features]) -> Features:
    """Stack feature dicts of several groups of images."""
    parts = [p for p in parts if p and n_items(p)]
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def positive_int(cls_name: str, name: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise ConfigError(f"parameter {name}={value} of method {cls_name} is invalid: expected >= {minimum}")
