"""The cluster-model interface, its registry and parameter grids.

A cluster model is a scikit-learn family (k-means, agglomerative, DBSCAN, Gaussian mixture,
HDBSCAN) with a grid of parameters: every field of its ``Grid`` dataclass is a tuple of values,
and the grid points are their Cartesian product (in field order).
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np

from icas_ray.errors import ConfigError
from icas_ray.params import coerce

__all__ = ["ClusterModel", "get_model", "make_grid", "model_names", "register"]

_REGISTRY: dict[str, type[ClusterModel]] = {}
_ALIASES: dict[str, str] = {}

M = TypeVar("M", bound="type[ClusterModel]")


def register(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`ClusterModel` under ``name`` (case-insensitive).

    Raises:
        ValueError: ``name`` is registered already (in any case).
    """

    def deco(cls: M) -> M:
        key = name.lower()
        if key in _ALIASES:
            raise ValueError(f"cluster model {name!r} is already registered")
        _ALIASES[key] = name
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return deco


def model_names() -> list[str]:
    """Registered model names, sorted case-insensitively (for CLI choices and errors)."""
    return sorted(_REGISTRY, key=str.lower)


def get_model(name: str) -> ClusterModel:
    """The model registered as ``name`` (any case).

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    key = _ALIASES.get(str(name).lower())
    if key is None:
        raise ConfigError(f"unknown cluster model {name!r}: must be one of {', '.join(model_names())}")
    return _REGISTRY[key]()


def make_grid(model: str, values: Mapping[str, Any] | None = None) -> Any:
    """The ``Grid`` of ``model`` with ``values`` overriding its defaults.

    Values may be sequences, single values or CLI strings (``"2,4,8"``); each is coerced to the
    field's type. Use this at the CLI boundary to validate a grid before any work starts.

    Raises:
        ConfigError: unknown model, unknown grid key (the valid ones are listed), bad value.
    """
    return get_model(model).grid(values)


def check_values(where: str, values: Sequence[Any], *, minimum: float, integer: bool = True,
                 strict: bool = False) -> None:
    """Raise a one-line ConfigError unless ``values`` is non-empty and every value >= minimum
    (> minimum when ``strict``)."""
    if not values:
        raise ConfigError(f"{where} is empty: give at least one value, e.g. {where.split()[-1]}=2,4,8")
    for v in values:
        bad = v <= minimum if strict else v < minimum
        if bad:
            op = ">" if strict else ">="
            kind = "integers" if integer else "numbers"
            raise ConfigError(f"{where}={v!r} is invalid: expected {kind} {op} {minimum:g}")


class ClusterModel(ABC):
    """A scikit-learn clustering family with a parameter grid.

    Subclasses set ``Grid`` (a frozen dataclass whose fields are tuples of values, validated in
    ``__post_init__``) and implement :meth:`fit_predict`; :meth:`skip` names the grid points that
    cannot run on ``n`` samples.
    """

    name: ClassVar[str] = ""
    Grid: ClassVar[type] = type(None)

    def grid(self, values: Mapping[str, Any] | None = None) -> Any:
        """A ``Grid`` from loose values (see :func:`make_grid`)."""
        values = dict(values or {})
        fields = {f.name for f in dataclasses.fields(self.Grid)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(f"unknown grid parameter(s) {', '.join(unknown)} for cluster model "
                              f"{self.name}: valid parameters are {', '.join(sorted(fields))}")
        hints = typing.get_type_hints(self.Grid)
        out = {}
        for k, v in values.items():
            if not isinstance(v, (str, list, tuple, np.ndarray)):
                v = [v]  # one value is a grid of one point
            out[k] = coerce(v, hints[k], f"{self.name} grid parameter {k}")
        return self.Grid(**out)

    def points(self, grid: Any) -> list[dict[str, Any]]:
        """Every grid point as a dict, in field order (the first field varies slowest)."""
        names = [f.name for f in dataclasses.fields(grid)]
        values = [getattr(grid, n) for n in names]
        return [dict(zip(names, combo)) for combo in itertools.product(*values)]

    def skip(self, point: Mapping[str, Any], n: int) -> str | None:
        """Why ``point`` cannot run on ``n`` samples (None: it can)."""
        return None

    @abstractmethod
    def fit_predict(self, x: np.ndarray, point: Mapping[str, Any], seed: int) -> np.ndarray:
        """Labels of ``x`` (``(N, D) float32``) under ``point``: ``(N,)`` ints, -1 = noise."""
