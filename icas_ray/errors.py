"""One exception hierarchy for everything a user can fix.

The CLI turns an :class:`IcasError` into a one-line message and exit code 1; any other
exception is a bug and keeps its traceback. Messages name the value, what was expected and
the fix, e.g. ``"--threshold 1.7 is out of range: expected 0 <= T <= 1 for imagehash"``.
"""

from __future__ import annotations

__all__ = ["IcasError", "ConfigError", "InputError", "StorageError", "ModelLoadError"]


class IcasError(Exception):
    """Base class: an error the user can fix; ``str(e)`` is the whole message."""


class ConfigError(IcasError):
    """A bad option or parameter value."""


class InputError(IcasError):
    """Bad input data: a missing folder, no images, an unreadable listing."""


class StorageError(IcasError):
    """A storage backend refused an operation (missing bucket, credentials, permissions)."""


class ModelLoadError(IcasError):
    """A model checkpoint could not be found or loaded."""


def missing_extra(package: str, extra: str) -> ConfigError:
    """The error for an optional dependency that is not installed."""
    return ConfigError(f"{package} is not installed: pip install -e '.[{extra}]' in the icas-ray checkout")
