"""Typed parameters from loose input: one coercion for every registry and config object.

CLI strings (``--param hash_size=16``, ``-p superpixel=false``), config files (TOML, JSON,
YAML) and Python callers all end up in frozen dataclasses whose fields carry type hints.
:func:`coerce` turns a value into the hinted type (``"false"`` -> ``False``, ``"10,20"`` ->
``(10, 20)``) or raises a one-line :class:`~icas_ray.errors.ConfigError` naming the key and the
type expected; :func:`build` and :func:`check_fields` apply it to whole dataclasses.

Example:
    >>> coerce("false", bool, "merge")
    False
    >>> coerce("10,20", tuple[int, int], "size")
    (10, 20)
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, Union

import numpy as np

from icas_ray.errors import ConfigError

__all__ = ["build", "check_fields", "coerce", "type_name"]

T = TypeVar("T")


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert ``value`` (often a CLI string) to the type ``hint`` of a Params field."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        text = value.strip().lower() if isinstance(value, str) else None
        if value is None or text in ("", "none", "null"):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return coerce(value, inner[0], where)
        return value
    if hint is Any or hint is object:
        return value
    if isinstance(value, str) and (origin in (tuple, list) or hint in (tuple, list)
                                   or origin in (dict, Mapping) or hint is dict):
        text = value.strip()
        try:
            value = json.loads(text) if text[:1] in "[{(" else [v for v in text.split(",") if v]
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}={value!r} is not valid: expected comma-separated values "
                              "or JSON, e.g. 10,20,200,220") from e
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple, np.ndarray)):
            raise ConfigError(f"{where}={value!r} is not a sequence: e.g. 10,20,200,220")
        if args and args[-1] is Ellipsis:
            return tuple(coerce(v, args[0], where) for v in value)
        if args:
            if len(value) != len(args):
                raise ConfigError(f"{where}={value!r} needs {len(args)} values, got {len(value)}")
            return tuple(coerce(v, a, where) for v, a in zip(value, args))
        return tuple(value)
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}={value!r} is not a mapping: use JSON, e.g. {{\"key\": 1}}")
        return dict(value)
    if hint is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}={value!r} is not a boolean: use true or false")
    if hint in (int, float, str):
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}={value!r} is not an integer")
        if isinstance(value, bool) and hint is not str:
            raise ConfigError(f"{where}={value!r} is not {type_name(hint)}")
        if hint is not str and not isinstance(value, (str, int, float, np.number)):
            raise ConfigError(f"{where}={value!r} is not {type_name(hint)}")
        try:
            return hint(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}={value!r} is not {type_name(hint)}") from e
    return value


def type_name(hint: Any) -> str:
    """A reader's name for a type hint (``an integer``, ``a number``, ``true or false``)."""
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if hint in names:
        return names[hint]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (Union, types.UnionType) and len(args) == 1:
        return type_name(args[0])
    return str(hint).replace("typing.", "")


def build(cls: type[T], values: Mapping[str, Any], *, source: str | None = None) -> T:
    """``cls(**values)`` with every value coerced to its field's hint; an unknown key is a
    one-line error listing the valid ones. ``source`` ("config file x.toml") prefixes the
    errors, so that the user knows where the bad value came from."""
    fields = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(values) - fields)
    where = f"{source}: " if source else ""
    if unknown:
        raise ConfigError(f"{where}unknown key {', '.join(repr(u) for u in unknown)}: "
                          f"valid keys are {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    try:
        return cls(**{k: coerce(v, hints[k], k) for k, v in values.items()})
    except ConfigError as e:
        if not source:
            raise
        raise ConfigError(f"{where}{e}") from e


def check_fields(obj: Any) -> None:
    """Coerce every field of a frozen dataclass instance to its hint, in place (for
    ``__post_init__``): ``ClusterConfig(batch_size="x")`` fails with one line naming the key."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        hint = hints.get(f.name, Any)
        fixed = coerce(value, hint, f.name)
        if fixed is not value:
            object.__setattr__(obj, f.name, fixed)
