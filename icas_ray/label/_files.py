"""Small settings files (labels, keymaps): read a mapping from JSON, TOML or YAML.

The format is chosen by the file's extension (``.json``, ``.toml``, ``.yaml``/``.yml``); the
callers handle their own extra formats (the labels file's CSV) before coming here.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from icas_ray.errors import ConfigError, InputError
from icas_ray.storage import Storage

__all__ = ["extension", "parse_mapping", "read_text"]

MAPPING_EXTENSIONS = (".json", ".toml", ".yaml", ".yml")


def extension(path_or_uri: str) -> str:
    """The lower-case extension of a path or URI, with its dot (``""`` if none)."""
    return posixpath.splitext(path_or_uri.replace("\\", "/"))[1].lower()


def read_text(path_or_uri: str, storage: Storage | None, what: str) -> str:
    """The text of a settings file; a missing or undecodable file is a one-line error."""
    storage = storage or Storage()
    if not storage.exists(path_or_uri):
        raise InputError(f"{what} {path_or_uri!r} does not exist: check the path")
    try:
        return storage.read_text(path_or_uri)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path_or_uri!r} is not UTF-8 text: {e.reason} at byte "
                          f"{e.start}") from e


def parse_mapping(text: str, ext: str, source: str, what: str) -> dict[str, Any]:
    """The top-level mapping of a JSON, TOML or YAML text.

    Args:
        text: the file's content.
        ext: its extension (``.json``, ``.toml``, ``.yaml``, ``.yml``).
        source: the path shown in messages.
        what: what the file is, for messages (``labels file``, ``keymap file``).

    Raises:
        ConfigError: unknown extension, a syntax error (with its line), or not a mapping.
    """
    data: Any
    if ext == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{what} {source} line {e.lineno}: invalid JSON: {e.msg}") from e
    elif ext == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10: the same parser is the tomli package
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ImportError as e:
                raise ConfigError(f"{what} {source} is TOML, which needs Python 3.11 or tomli: "
                                  "pip install tomli, or write it as JSON") from e
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{what} {source}: invalid TOML: {e}") from e
    elif ext in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:  # pyyaml is not a base dependency
            raise ConfigError(f"{what} {source} is YAML, which needs pyyaml: pip install pyyaml, "
                              "or write it as JSON or TOML") from e
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{what} {source}{where}: invalid YAML: {problem}") from e
    else:
        raise ConfigError(f"{what} {source} has extension {ext or '(none)'!r}: expected one of "
                          f"{', '.join(MAPPING_EXTENSIONS)}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {source} holds a {type(data).__name__}: expected a mapping "
                          "at the top level")
    return data
