"""Similarity graphs: threshold -> edges -> connected components, outliers, representatives.

"X and Y are in one cluster if a chain X-A-...-Y of similar pairs exists": clusters are the
connected components of the graph whose edges are the pairs with similarity > threshold.
Components of one image are outliers.

Two strategies build the edges of a set of images:

* ``exhaustive`` compares every pair (vectorized in blocks of rows) and finds every edge.
* ``connected`` gives exactly the clusters of ``exhaustive`` with far fewer comparisons: items
  are visited in order and each is compared only with the later items that are not yet in its
  connected component (a pair inside one component cannot change the components). The edges it
  reports are the ones that joined components (a spanning forest), not every similar pair.
* ``pruned`` is the original tool's shortcut: images are visited in order, each still-active
  image is compared with the active images after it, and an image that matched is dropped from
  all further comparisons (it is reached through the image it matched). Far fewer comparisons,
  but a chain that runs only through a dropped image is missed.

Both count the comparisons they made and stop early at a time limit (the original's
``chunk_time_threshold``), reporting that they did.

Example:
    >>> import numpy as np
    >>> components(4, np.array([0]), np.array([2]))
    array([0, 1, 0, 2], dtype=int32)
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from icas_ray.errors import ConfigError

__all__ = ["STRATEGIES", "EdgeSet", "build_edges", "cluster_labels", "components", "find_roots"]

STRATEGIES = ("exhaustive", "connected", "pruned")

#: A kernel scoring rows ``ia`` against columns ``ib`` of one feature set: -> (len(ia), len(ib)).
#: ``ia`` and ``ib`` are integer index arrays or slices (the exhaustive strategy's contiguous
#: blocks).
Kernel = Callable[[np.ndarray | slice, np.ndarray | slice], np.ndarray]

#: Pairs scored per kernel call in the exhaustive strategy (bounds memory and time checks).
_PAIRS_PER_CALL = 1 << 16


@dataclass
class EdgeSet:
    """Edges found among ``n`` items (indices into the item list), and the work done.

    Attributes:
        a, b: ``(E,) int64`` endpoints with ``a < b``.
        similarity: ``(E,) float32``.
        comparisons: pairs actually scored.
        possible: pairs that could be scored (``n (n - 1) / 2`` less masked-out pairs).
        complete: False if the time limit stopped the comparisons early.
    """

    a: np.ndarray
    b: np.ndarray
    similarity: np.ndarray
    comparisons: int
    possible: int
    complete: bool = True


def _in_order(fn: Callable[[int], Any], items: Sequence[int], threads: int,
              deadline: float | None) -> Iterator[Any]:
    """``fn`` over ``items``, results in order, up to ``threads`` at a time; nothing new is
    started after ``deadline``."""
    def expired() -> bool:
        return deadline is not None and time.monotonic() > deadline

    if threads <= 1:
        for item in items:
            if expired():
                return
            yield fn(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: collections.deque[Any] = collections.deque()
        it = iter(items)
        for item in it:
            if expired():
                break
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@functools.lru_cache(maxsize=8)
def _upper(k: int) -> np.ndarray:
    """``(k, k)`` bool, True on and above the diagonal (read-only, cached)."""
    m = np.triu(np.ones((k, k), bool))
    m.flags.writeable = False
    return m


def find_roots(parent: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Roots of ``x`` in a union-find forest (vectorized; halves paths as it goes)."""
    root: np.ndarray = parent[x]
    while True:
        up: np.ndarray = parent[root]
        if np.array_equal(up, root):
            return root
        parent[root] = parent[up]
        root = up


def build_edges(n: int, kernel: Kernel, threshold: float, *, strategy: str = "exhaustive",
                groups: np.ndarray | None = None, time_limit_s: float | None = None,
                units: np.ndarray | None = None, threads: int = 1) -> EdgeSet:
    """Edges among ``n`` items whose similarity is greater than ``threshold``.

    Args:
        n: number of items.
        kernel: ``kernel(rows, cols)`` -> similarity matrix of those items (vectorized).
        threshold: link pairs with similarity > threshold.
        strategy: ``exhaustive``, ``connected`` or ``pruned`` (see the module docstring).
        groups: optional ``(n,)`` group ids; pairs within one group are skipped (the merge
            skips pairs from the same batch).
        time_limit_s: stop comparing after this many seconds (None = no limit).
        units: ``connected`` only: ``(n,)`` ids of what the components are made of when items
            are already grouped (the merge's batch clusters: representatives of one unit start
            connected). Default: every item is its own unit.
        threads: ``exhaustive`` only: score this many blocks at once (numpy releases the GIL
            in its loops); for a phase that has the machine to itself, such as the merge.

    Returns:
        The edges and the comparison counts.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}: must be one of {', '.join(STRATEGIES)}")
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    if groups is not None:
        _, counts = np.unique(groups, return_counts=True)
        possible = n * (n - 1) // 2 - int((counts * (counts - 1) // 2).sum())
    else:
        possible = n * (n - 1) // 2
    ea: list[np.ndarray] = []
    eb: list[np.ndarray] = []
    es: list[np.ndarray] = []
    comparisons = 0
    complete = True
    idx = np.arange(n)
    if strategy == "exhaustive":
        # Blocks of rows against the columns after the block's first row: small blocks waste
        # little of the lower triangle, large ones amortise the per-call cost. Rows and
        # columns go to the kernel as slices, so features are sliced without copies.
        rows_per_call = max(1, min(_PAIRS_PER_CALL // max(1, n), -(-n // 8)))
        starts = range(0, n - 1, rows_per_call)

        def score(s: int) -> tuple[int, int, np.ndarray]:
            e = min(n - 1, s + rows_per_call)
            return s, e, kernel(slice(s, e), slice(s + 1, n))

        for s, e, sim in _in_order(score, starts, threads, deadline):
            k = e - s
            hit = sim > threshold
            # Column j of the block is item s + 1 + j: pair (s + i, s + 1 + j) is above the
            # diagonal when j >= i, so only the block's first k columns hold pairs to drop.
            hit[:, :k] &= _upper(k)
            if groups is None:
                comparisons += k * (n - 1 - s) - k * (k - 1) // 2
            else:
                valid = groups[s:e, None] != groups[None, s + 1:n]
                valid[:, :k] &= _upper(k)
                comparisons += int(np.count_nonzero(valid))
                hit &= valid
            r, c = np.nonzero(hit)
            ea.append(r + s)
            eb.append(c + s + 1)
            es.append(sim[r, c])
        complete = len(ea) == len(starts)
    elif strategy == "connected":
        unit = np.arange(n) if units is None else np.asarray(units, np.int64)
        _, unit = np.unique(unit, return_inverse=True)
        parent = np.arange(int(unit.max()) + 1 if n else 0)
        for i in range(n):
            if deadline is not None and time.monotonic() > deadline:
                complete = False
                break
            cols = idx[i + 1:]
            if groups is not None:
                cols = cols[groups[cols] != groups[i]]
            if len(cols) == 0:
                continue
            ri = find_roots(parent, unit[i:i + 1])[0]
            cols = cols[find_roots(parent, unit[cols]) != ri]
            if len(cols) == 0:
                continue
            # Slices where possible: the kernel then reads the features without copying them.
            span = slice(i + 1, n) if len(cols) == n - i - 1 else cols
            sim = kernel(slice(i, i + 1), span)[0]
            comparisons += len(cols)
            hit = np.flatnonzero(sim > threshold)
            if len(hit) == 0:
                continue
            # Keep one edge per component joined (the first), then merge them all into i's.
            roots = find_roots(parent, unit[cols[hit]])
            _, first = np.unique(roots, return_index=True)
            keep = hit[np.sort(first)]
            ea.append(np.full(len(keep), i))
            eb.append(cols[keep])
            es.append(sim[keep])
            parent[np.unique(roots)] = ri
    else:
        active = np.ones(n, bool)
        for i in range(n):
            if not active[i]:
                continue
            if deadline is not None and time.monotonic() > deadline:
                complete = False
                break
            cols = idx[i + 1:][active[i + 1:]]
            if groups is not None:
                cols = cols[groups[cols] != groups[i]]
            if len(cols) == 0:
                continue
            sim = kernel(np.array([i]), cols)[0]
            comparisons += len(cols)
            hit = sim > threshold
            matched = cols[hit]
            ea.append(np.full(len(matched), i))
            eb.append(matched)
            es.append(sim[hit])
            active[matched] = False
    if ea:
        a, b, s_ = np.concatenate(ea), np.concatenate(eb), np.concatenate(es)
    else:
        a, b, s_ = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return EdgeSet(a.astype(np.int64), b.astype(np.int64), s_.astype(np.float32), comparisons,
                   possible, complete)


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component id of each of ``n`` nodes given edges ``a[k] - b[k]``.

    Components are numbered 0.. in order of their smallest node.

    Union-find on the edge arrays: every edge whose ends have different roots hooks the larger
    root under the smaller, then paths are compressed, until no edge joins two roots. Each
    round removes at least one root; on real graphs a few rounds do. (scipy's csgraph costs
    more in building its sparse matrix than this on a batch's few thousand edges.) Unlike
    :func:`find_roots`, which looks up a few roots at a time for the connected strategy, every
    round here compresses the whole forest at once, which costs less than finding the edges'
    roots one by one.
    """
    parent = np.arange(n)
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    while len(a):
        ra, rb = parent[a], parent[b]
        joins = ra != rb
        if not joins.any():
            break
        a, b, ra, rb = a[joins], b[joins], ra[joins], rb[joins]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:  # compress: every node to its root (roots are their own parents)
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
    # Roots are the smallest node of their component: numbering the roots in order numbers
    # the components by smallest node.
    _, labels = np.unique(parent, return_inverse=True)
    return labels.astype(np.int32)


def cluster_labels(comp: np.ndarray) -> np.ndarray:
    """Component ids -> cluster ids: components of 2+ items numbered 0.. by first item,
    singletons -1 (outliers)."""
    if len(comp) == 0:
        return comp.astype(np.int32)
    counts = np.bincount(comp)
    keep = counts[comp] >= 2
    out = np.full(len(comp), -1, np.int32)
    if keep.any():
        kept = comp[keep]
        _, first = np.unique(kept, return_index=True)
        order = np.argsort(first)
        remap = np.full(counts.size, -1, np.int32)
        uniq = np.unique(kept)
        remap[uniq[order]] = np.arange(len(uniq), dtype=np.int32)
        out[keep] = remap[kept]
    return out
