"""Parameter checks shared by the method modules: one-line ConfigErrors."""

from __future__ import annotations

from typing import Any

from icas_ray.errors import ConfigError


def require(ok: bool, method: str, name: str, value: Any, expected: str) -> None:
    """Raise ``ConfigError`` naming the parameter, its value and what is expected."""
    if not ok:
        raise ConfigError(f"{method} parameter {name}={value!r} is invalid: expected {expected}")


def choice(method: str, name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{method} parameter {name}={value!r} is invalid: must be one of "
                          f"{', '.join(sorted(valid))}")
