"""Colours as ``(r, g, b)`` int tuples, and their spellings in files and names."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["Colour", "as_colour", "colour_text", "parse_colour"]

Colour = tuple[int, int, int]

_HEX = re.compile(r"#([0-9a-fA-F]{6}|[0-9a-fA-F]{3})")
_TRIPLE = re.compile(r"\(?\s*(\d{1,3})\s*[,; ]\s*(\d{1,3})\s*[,; ]\s*(\d{1,3})\s*\)?")


def parse_colour(text: str) -> Colour | None:
    """The colour a string spells, or None.

    Accepted: ``"204,0,0"``, ``"(204, 0, 0)"``, ``"204 0 0"``, ``"#cc0000"``, ``"#c00"``.

    Example:
        >>> parse_colour("#cc0000"), parse_colour("204, 0, 0"), parse_colour("300,0,0")
        ((204, 0, 0), (204, 0, 0), None)
    """
    s = text.strip()
    m = _TRIPLE.fullmatch(s)
    if m:
        c = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        return c if all(v <= 255 for v in c) else None
    m = _HEX.fullmatch(s)
    if m:
        h = m.group(1)
        if len(h) == 3:
            h = "".join(ch * 2 for ch in h)
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    return None


def as_colour(value: Iterable[int]) -> Colour:
    """``(r, g, b)`` ints from any 3-sequence of 0..255 integers.

    Raises:
        ValueError: not three values in 0..255.
    """
    c = tuple(int(v) for v in value)
    if len(c) != 3 or not all(0 <= v <= 255 for v in c):
        raise ValueError(f"colour {tuple(value)!r} is not (R, G, B) with 0..255 values")
    return c[0], c[1], c[2]


def colour_text(colour: Colour) -> str:
    """``"R,G,B"``, the default class name of a colour and its key in labels files."""
    return f"{colour[0]},{colour[1]},{colour[2]}"
