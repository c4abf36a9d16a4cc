"""Label-map helpers shared by the methods: region labelling, components, relabelling.

All functions take and return numpy arrays; label maps are ``(H, W) int32`` with segments
numbered from 1 and 0 = edge/cut.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "components", "fill_unlabelled", "label_regions", "partition_labels", "relabel_consecutive",
]

_K3 = np.ones((3, 3), np.uint8)
#: Zero pixels searched per step when looking for the next unlabelled pixel; amortises the
#: search to O(H*W) over the whole image instead of O(H*W) per segment.
_SEARCH_CHUNK = 4096


def label_regions(edges: np.ndarray) -> np.ndarray:
    """Label the regions between edges exactly as the seed's flood-fill loop does.

    The seed scans for the first unlabelled pixel in raster order, flood-fills its
    4-connected region with the next id, grows that region by one pixel (a 3x3 dilation,
    which overwrites edge pixels and diagonal neighbours) and repeats. Edge pixels reached by
    no growth stay 0. This does the same, with one OpenCV flood fill and a dilation limited to
    the region's bounding box per segment, instead of a full-image flood fill, ``np.where``
    and dilation per segment; the result is identical (``scripts/bench_segment.py`` compares).

    Args:
        edges: ``(H, W) bool``, True on edge pixels.

    Returns:
        ``(H, W) int32`` label map, segments from 1, 0 = edge.

    Example:
        >>> e = np.zeros((3, 5), bool); e[:, 2] = True
        >>> label_regions(e)
        array([[1, 1, 2, 2, 2],
               [1, 1, 2, 2, 2],
               [1, 1, 2, 2, 2]], dtype=int32)
    """
    edges = np.asarray(edges, dtype=bool)
    h, w = edges.shape
    # float32 holds ids exactly up to 2**24 and is a type cv2.floodFill accepts.
    work = np.where(edges, np.float32(-1), np.float32(0))
    flat = work.reshape(-1)
    free = np.flatnonzero(~edges.reshape(-1))
    ff_mask = np.zeros((h + 2, w + 2), np.uint8)
    flags = 4 | cv2.FLOODFILL_FIXED_RANGE
    sid, i, n = 0, 0, len(free)
    while i < n:
        candidates = flat[free[i:i + _SEARCH_CHUNK]] == 0
        j = int(np.argmax(candidates))
        if not candidates[j]:
            i += _SEARCH_CHUNK
            continue
        i += j
        sid += 1
        r, c = divmod(int(free[i]), w)
        _, _, _, (x, y, rw, rh) = cv2.floodFill(work, ff_mask, (c, r), float(sid), 0, 0, flags)
        y0, y1, x0, x1 = max(y - 1, 0), min(y + rh + 1, h), max(x - 1, 0), min(x + rw + 1, w)
        sub = work[y0:y1, x0:x1]
        grown = cv2.dilate((sub == sid).astype(np.uint8), _K3).astype(bool)
        sub[grown] = sid
    work[work < 0] = 0
    return work.astype(np.int32)


def components(mask: np.ndarray, start: int = 1) -> tuple[np.ndarray, int]:
    """4-connected components of ``mask`` numbered from ``start`` in raster order.

    Returns:
        ``(labels, next_id)``: ``(H, W) int32`` with 0 outside ``mask``, and the first unused id.
    """
    n, lab = cv2.connectedComponents(np.asarray(mask, dtype=np.uint8), connectivity=4,
                                     ltype=cv2.CV_32S)
    out = np.where(lab > 0, lab + (start - 1), 0).astype(np.int32)
    return out, start + n - 1


def partition_labels(foreground: np.ndarray) -> np.ndarray:
    """Label a binary partition: foreground components from 1, then background components.

    Args:
        foreground: ``(H, W) bool``.

    Returns:
        ``(H, W) int32`` label map with no 0 (a binary partition has no edges).
    """
    fg = np.asarray(foreground, dtype=bool)
    fg_lab, nxt = components(fg, 1)
    bg_lab, _ = components(~fg, nxt)
    return fg_lab + bg_lab


def fill_unlabelled(labels: np.ndarray) -> np.ndarray:
    """Give every 0 pixel of ``labels`` a new id per 4-connected component (after the max)."""
    labels = np.asarray(labels, dtype=np.int32)
    start = int(labels.max(initial=0)) + 1
    extra, _ = components(labels == 0, start)
    return labels + extra


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Renumber the labels > 0 as 1..N keeping their order; 0 stays 0."""
    labels = np.asarray(labels)
    values, inverse = np.unique(labels, return_inverse=True)
    offset = 0 if values[0] == 0 else 1
    return (inverse.reshape(labels.shape) + offset).astype(np.int32)
