"""The labelling page's keys: action -> ``KeyboardEvent.key`` values, rebindable from a file.

The defaults keep the original's keys (q quit, n next, p previous, space save and next, z undo,
r reset, t template painting, f finish GrabCut/SAM) and add what users of other labelling tools
expect: the arrow keys and A/D for previous/next. ``d`` cannot be both "next" and the original's
"debug view"; navigation is pressed on every image and the debug view rarely, so ``d`` goes to
next (with ``a``, as in labelImg and CVAT-style tools) and the debug view moves to ``v``
("view segments"). A file with ``{"debug": "d"}`` gives the original's binding back (see below).

Keys are ``KeyboardEvent.key`` values: ``" "`` for space, ``"ArrowLeft"``, ``"Escape"``...;
single letters are lower case and the page compares them case-insensitively
(``e.key.length === 1 ? e.key.toLowerCase() : e.key``), so Caps Lock does not change a
binding. Files may also spell keys ``space``, ``left``, ``right``, ``up``, ``down``, ``esc``,
``enter``, ``tab``, ``backspace``, ``delete``.

Example:
    >>> DEFAULT_KEYMAP["next"]
    ['n', 'd', 'ArrowRight']
    >>> key_actions(DEFAULT_KEYMAP)[" "]
    'save_next'
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from icas_ray.errors import ConfigError
from icas_ray.label._files import extension, parse_mapping, read_text
from icas_ray.storage import Storage

__all__ = ["ACTIONS", "DEFAULT_KEYMAP", "RESERVED_KEYS", "key_actions", "load_keymap",
           "merge_keymap", "normalise_key"]

#: Every action, with what it does; the keys of :data:`DEFAULT_KEYMAP`.
ACTIONS: dict[str, str] = {
    "quit": "quit (asks before dropping unsaved work)",
    "next": "next image, without saving",
    "previous": "previous image, without saving",
    "save_next": "save the masks and go to the next image",
    "undo": "undo the last action (in SAM mode: remove the last prompt)",
    "reset": "reset the image (or the GrabCut/SAM annotations)",
    "debug": "debug view: segments and painted pixels",
    "template": "template painting with the template folders",
    "finish": "finish GrabCut/SAM and pass the result to painting",
    "grabcut": "GrabCut mode",
    "sam": "SAM prompt mode",
    "automatic": "SAM automatic mode",
    "escape": "back to painting; end a cut line",
    "help": "show or hide the keys",
}

DEFAULT_KEYMAP: dict[str, list[str]] = {
    "quit": ["q"],
    "next": ["n", "d", "ArrowRight"],
    "previous": ["p", "a", "ArrowLeft"],
    "save_next": [" "],
    "undo": ["z"],
    "reset": ["r"],
    "debug": ["v"],
    "template": ["t"],
    "finish": ["f"],
    "grabcut": ["g"],
    "sam": ["s"],
    "automatic": ["e"],
    "escape": ["Escape"],
    "help": ["?"],
}

#: Keys the page keeps for itself: the digits pick the palette's colours.
RESERVED_KEYS = frozenset("123456789")

_ALIASES = {
    "space": " ", "spacebar": " ", "left": "ArrowLeft", "right": "ArrowRight", "up": "ArrowUp",
    "down": "ArrowDown", "esc": "Escape", "escape": "Escape", "enter": "Enter",
    "return": "Enter", "tab": "Tab", "backspace": "Backspace", "delete": "Delete",
    "del": "Delete", "home": "Home", "end": "End", "pageup": "PageUp", "pagedown": "PageDown",
}


def normalise_key(key: str) -> str:
    """The ``KeyboardEvent.key`` value a binding means: aliases resolved, letters lower case.

    Example:
        >>> normalise_key("Space"), normalise_key("A"), normalise_key("left"), normalise_key("F2")
        (' ', 'a', 'ArrowLeft', 'F2')
    """
    if key == " ":
        return key
    k = key.strip()
    if len(k) == 1:
        return k.lower()
    alias = _ALIASES.get(k.lower().replace("_", "").replace("-", ""))
    if alias is not None:
        return alias
    lower = k.lower()
    if lower.startswith("arrow") and lower[5:] in ("left", "right", "up", "down"):
        return "Arrow" + lower[5:].capitalize()
    return k


def key_actions(keymap: Mapping[str, list[str]]) -> dict[str, str]:
    """The inverse map, key -> action, that a page's key handler looks keys up in."""
    return {key: action for action, keys in keymap.items() for key in keys}


def _keys(action: str, value: object, source: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"keymap file {source}: {action} = {value!r} is not a key or a list "
                          "of keys, e.g. \"n\" or [\"n\", \"ArrowRight\"]")
    out: list[str] = []
    for v in values:
        k = normalise_key(str(v))
        if not k:
            raise ConfigError(f"keymap file {source}: {action} has an empty key")
        if k in RESERVED_KEYS:
            raise ConfigError(f"keymap file {source}: {action} = {k!r}: the keys 1-9 pick "
                              "colours and cannot be bound")
        if k not in out:
            out.append(k)
    return out


def merge_keymap(overrides: Mapping[str, object], source: str = "(given)") -> dict[str, list[str]]:
    """:data:`DEFAULT_KEYMAP` with ``{action: key or [keys]}`` applied.

    An action named in ``overrides`` gets exactly the keys given (``[]`` unbinds it); a key the
    overrides bind is taken away from the default actions that had it, so ``{"debug": "d"}``
    alone moves ``d`` from next to debug.

    Raises:
        ConfigError: an unknown action (the message lists the valid ones), a bad value, or one
            key bound to two actions by the overrides.
    """
    unknown = sorted(set(overrides) - set(ACTIONS))
    if unknown:
        raise ConfigError(f"keymap file {source}: unknown action {unknown[0]!r}: valid actions "
                          f"are {', '.join(ACTIONS)}")
    given = {action: _keys(action, value, source) for action, value in overrides.items()}
    owner: dict[str, str] = {}
    for action, keys in given.items():
        for k in keys:
            if k in owner:
                raise ConfigError(f"keymap file {source}: key {k!r} is bound to both "
                                  f"{owner[k]!r} and {action!r}: give each key one action "
                                  f"(valid actions: {', '.join(ACTIONS)})")
            owner[k] = action
    out: dict[str, list[str]] = {}
    for action, keys in DEFAULT_KEYMAP.items():
        out[action] = given[action] if action in given else [k for k in keys if k not in owner]
    return out


def load_keymap(path: str | None, storage: Storage | None = None) -> dict[str, list[str]]:
    """The keymap: :data:`DEFAULT_KEYMAP` overridden by a JSON, TOML or YAML file.

    The file maps actions to a key or a list of keys, e.g. JSON
    ``{"debug": "d", "next": ["n", "ArrowRight"]}`` or TOML ``debug = "d"``. See
    :func:`merge_keymap` for how the file and the defaults combine.

    Args:
        path: the file (local or ``s3://``); None = the defaults.
        storage: file access for ``s3://``.

    Raises:
        InputError: the file does not exist.
        ConfigError: a syntax error, an unknown action or a key bound twice (one line).
    """
    if path is None:
        return {action: list(keys) for action, keys in DEFAULT_KEYMAP.items()}
    text = read_text(path, storage, "keymap file")
    source = os.fspath(path)
    return merge_keymap(parse_mapping(text, extension(path), source, "keymap file"), source)
