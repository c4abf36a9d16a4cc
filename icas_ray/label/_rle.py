"""COCO run-length encoding in numpy, so that exports need no pycocotools.

COCO's RLE walks the mask in column-major (Fortran) order and alternates run lengths, the
first run counting zeros (it is 0 when the first pixel is set). The compressed string form
is pycocotools' ``rleToString``: each count (from the third on, minus the count two places
before) is written in 5-bit groups, low bits first, as characters ``48 + group`` with bit
``0x20`` meaning "more groups follow" and bit ``0x10`` of the last group the sign.

Example:
    >>> import numpy as np
    >>> m = np.zeros((3, 4), bool); m[1:, 1:3] = True
    >>> rle = encode(m)
    >>> rle
    {'size': [3, 4], 'counts': '42102'}
    >>> bool((decode(rle) == m).all()), area(rle), bbox(m)
    (True, 4, [1, 1, 2, 2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["area", "bbox", "counts_from_string", "counts_to_string", "decode", "encode",
           "run_lengths"]


def run_lengths(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts of a ``(H, W)`` mask (column-major, zeros first)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return [int(r) for r in runs]


def counts_to_string(counts: Sequence[int]) -> str:
    """pycocotools' compressed string of uncompressed counts."""
    out = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as C's on a signed long
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def counts_from_string(s: str) -> list[int]:
    """Uncompressed counts of a compressed COCO string (pycocotools' ``rleFrString``)."""
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("truncated COCO RLE string")
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode(mask: np.ndarray, *, compressed: bool = True) -> dict[str, Any]:
    """COCO RLE of a ``(H, W)`` bool mask: ``{"size": [h, w], "counts": str | list[int]}``.

    Args:
        mask: ``(H, W)``, non-zero = set.
        compressed: the compact string form (pycocotools' own output); False = the list of
            run lengths (COCO's "uncompressed RLE", also read by pycocotools).
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask has shape {m.shape}: expected (H, W)")
    counts = run_lengths(m)
    return {"size": [int(m.shape[0]), int(m.shape[1])],
            "counts": counts_to_string(counts) if compressed else counts}


def _counts(rle: Mapping[str, Any]) -> list[int]:
    c = rle["counts"]
    if isinstance(c, bytes):
        c = c.decode("ascii")
    return counts_from_string(c) if isinstance(c, str) else [int(v) for v in c]


def decode(rle: Mapping[str, Any]) -> np.ndarray:
    """The ``(H, W) bool`` mask of a COCO RLE (compressed or uncompressed counts)."""
    h, w = (int(v) for v in rle["size"])
    counts = _counts(rle)
    if sum(counts) != h * w:
        raise ValueError(f"RLE counts sum to {sum(counts)}: expected {h}x{w} = {h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy()


def area(rle: Mapping[str, Any]) -> int:
    """Set pixels of a COCO RLE."""
    return int(sum(_counts(rle)[1::2]))


def bbox(mask: np.ndarray) -> list[int]:
    """COCO ``[x, y, width, height]`` of a mask's set pixels (``[0, 0, 0, 0]`` if none)."""
    m = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
