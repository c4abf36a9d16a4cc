"""Similarity graphs: threshold -> edges -> connected components, outliers, representatives.

"X and Y are in one cluster if a chain X-A-...-Y of similar pairs exists": clusters are the
connected components of the graph whose edges are the pairs with similarity > threshold.
Components of one image are outliers.

Three strategies build the edges of a set of images:

* ``exhaustive`` compares every pair (vectorized in blocks of rows) and finds every edge.
* ``connected`` gives exactly the clusters of ``exhaustive`` with far fewer comparisons: items
  are visited in order and each is compared only with the later items that are not yet in its
  connected component (a pair inside one component cannot change the components). The edges it
  reports are the ones that joined components (a spanning forest), not every similar pair.
* ``pruned`` is the original tool's shortcut: images are visited in order, each still-active
  image is compared with the active images after it, and an image that matched is dropped from
  all further comparisons (it is reached through the image it matched). Far fewer comparisons,
  but a chain that runs only through a dropped image is missed.

All count the comparisons they made and stop early at a time limit (the original's
``chunk_time_threshold``), reporting that they did. Each can also be restricted to a shortlist
of candidate pairs (:func:`nearest_pairs` over a cheap global descriptor, for a method whose
pair is expensive): pairs off the shortlist are never scored and count as not similar.

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icas_ray.errors import ConfigError

__all__ = [
    "STRATEGIES", "EdgeSet", "build_edges", "candidate_rows", "cluster_labels", "components",
    "find_roots", "nearest_pairs",
]

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
                units: np.ndarray | None = None, threads: int = 1,
                candidates: np.ndarray | None = None) -> EdgeSet:
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
        candidates: optional ``(P, 2)`` integer pairs (either order, repeats allowed), a
            shortlist such as :func:`nearest_pairs` gives: only these pairs are scored, row by
            row, and every other pair counts as not similar. None: every pair. ``possible``
            still counts every pair, so ``comparisons / possible`` shows what the shortlist
            saved.

    Returns:
        The edges and the comparison counts.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}: must be one of {', '.join(STRATEGIES)}")
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    if groups is not None:
        groups = np.asarray(groups)
        _, counts = np.unique(groups, return_counts=True)
        possible = n * (n - 1) // 2 - int((counts * (counts - 1) // 2).sum())
    else:
        possible = n * (n - 1) // 2
    found = _Found()
    if candidates is None:
        idx = np.arange(n)

        def later(i: int) -> np.ndarray:
            cols = idx[i + 1:]
            return cols if groups is None else cols[groups[cols] != groups[i]]
    else:
        ptr, cand = candidate_rows(n, candidates, groups)

        def later(i: int) -> np.ndarray:
            return cand[ptr[i]:ptr[i + 1]]
    if strategy == "exhaustive" and candidates is None:
        _exhaustive_blocks(n, kernel, threshold, groups, deadline, threads, found)
    elif strategy == "exhaustive":
        rows = np.flatnonzero(np.diff(ptr))
        _exhaustive_rows(rows, later, kernel, threshold, deadline, threads, found)
    elif strategy == "connected":
        _connected(n, later, kernel, threshold, units, deadline, found)
    else:
        _pruned(n, later, kernel, threshold, deadline, found)
    return found.edge_set(possible)


@dataclass
class _Found:
    """Edges and counts gathered by one strategy."""

    a: list[np.ndarray] = field(default_factory=list)
    b: list[np.ndarray] = field(default_factory=list)
    s: list[np.ndarray] = field(default_factory=list)
    comparisons: int = 0
    complete: bool = True

    def add(self, a: np.ndarray | int, b: np.ndarray, s: np.ndarray) -> None:
        self.a.append(np.broadcast_to(np.asarray(a, np.int64), b.shape))
        self.b.append(b)
        self.s.append(s)

    def edge_set(self, possible: int) -> EdgeSet:
        if self.a:
            a, b, s = np.concatenate(self.a), np.concatenate(self.b), np.concatenate(self.s)
        else:
            a, b, s = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return EdgeSet(a.astype(np.int64), b.astype(np.int64), s.astype(np.float32),
                       self.comparisons, possible, self.complete)


def candidate_rows(n: int, candidates: np.ndarray, groups: np.ndarray | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The candidate pairs as rows: the items after ``i`` paired with it are
    ``cols[ptr[i]:ptr[i + 1]]``, ascending (self pairs, same-group pairs and repeats dropped)."""
    p = np.asarray(candidates, np.int64).reshape(-1, 2)
    if len(p) and (p.min() < 0 or p.max() >= n):
        raise ValueError(f"candidate pairs must index {n} items, got indices "
                         f"{int(p.min())}..{int(p.max())}")
    a, b = p.min(axis=1), p.max(axis=1)
    keep = a != b
    if groups is not None:
        keep &= groups[a] != groups[b]
    key = np.unique(a[keep] * n + b[keep])  # sorted by row, then column
    rows, cols = key // n, key % n
    return np.searchsorted(rows, np.arange(n + 1)), cols


def _exhaustive_blocks(n: int, kernel: Kernel, threshold: float, groups: np.ndarray | None,
                       deadline: float | None, threads: int, found: _Found) -> None:
    """Every pair, in blocks of rows against the columns after the block's first row."""
    # Small blocks waste little of the lower triangle, large ones amortise the per-call cost.
    # Rows and columns go to the kernel as slices, so features are sliced without copies.
    rows_per_call = max(1, min(_PAIRS_PER_CALL // max(1, n), -(-n // 8)))
    starts = range(0, n - 1, rows_per_call)

    def score(s: int) -> tuple[int, int, np.ndarray]:
        e = min(n - 1, s + rows_per_call)
        return s, e, kernel(slice(s, e), slice(s + 1, n))

    done = 0
    for s, e, sim in _in_order(score, starts, threads, deadline):
        done += 1
        k = e - s
        hit = sim > threshold
        # Column j of the block is item s + 1 + j: pair (s + i, s + 1 + j) is above the
        # diagonal when j >= i, so only the block's first k columns hold pairs to drop.
        hit[:, :k] &= _upper(k)
        if groups is None:
            found.comparisons += k * (n - 1 - s) - k * (k - 1) // 2
        else:
            valid = groups[s:e, None] != groups[None, s + 1:n]
            valid[:, :k] &= _upper(k)
            found.comparisons += int(np.count_nonzero(valid))
            hit &= valid
        r, c = np.nonzero(hit)
        found.add(r + s, c + s + 1, sim[r, c])
    found.complete = done == len(starts)


def _exhaustive_rows(rows: np.ndarray, later: Callable[[int], np.ndarray], kernel: Kernel,
                     threshold: float, deadline: float | None, threads: int,
                     found: _Found) -> None:
    """Every candidate pair, one row of candidates per kernel call."""
    def score(i: int) -> tuple[int, np.ndarray, np.ndarray]:
        cols = later(i)
        return i, cols, kernel(slice(i, i + 1), cols)[0]

    done = 0
    for i, cols, sim in _in_order(score, rows.tolist(), threads, deadline):
        done += 1
        found.comparisons += len(cols)
        hit = np.flatnonzero(sim > threshold)
        found.add(i, cols[hit], sim[hit])
    found.complete = done == len(rows)


def _connected(n: int, later: Callable[[int], np.ndarray], kernel: Kernel, threshold: float,
               units: np.ndarray | None, deadline: float | None, found: _Found) -> None:
    """Each item against the later items not yet in its component (the same components as
    every pair; the edges are a spanning forest)."""
    unit = np.arange(n) if units is None else np.asarray(units, np.int64)
    _, unit = np.unique(unit, return_inverse=True)
    parent = np.arange(int(unit.max()) + 1 if n else 0)
    for i in range(n):
        if deadline is not None and time.monotonic() > deadline:
            found.complete = False
            return
        cols = later(i)
        if len(cols) == 0:
            continue
        ri = find_roots(parent, unit[i:i + 1])[0]
        cols = cols[find_roots(parent, unit[cols]) != ri]
        if len(cols) == 0:
            continue
        # Slices where possible: the kernel then reads the features without copying them.
        span = slice(i + 1, n) if len(cols) == n - i - 1 else cols
        sim = kernel(slice(i, i + 1), span)[0]
        found.comparisons += len(cols)
        hit = np.flatnonzero(sim > threshold)
        if len(hit) == 0:
            continue
        # Keep one edge per component joined (the first), then merge them all into i's.
        roots = find_roots(parent, unit[cols[hit]])
        _, first = np.unique(roots, return_index=True)
        keep = hit[np.sort(first)]
        found.add(i, cols[keep], sim[keep])
        parent[np.unique(roots)] = ri


def _pruned(n: int, later: Callable[[int], np.ndarray], kernel: Kernel, threshold: float,
            deadline: float | None, found: _Found) -> None:
    """The original's shortcut: an item that matched is dropped from further comparisons."""
    active = np.ones(n, bool)
    for i in range(n):
        if not active[i]:
            continue
        if deadline is not None and time.monotonic() > deadline:
            found.complete = False
            return
        cols = later(i)
        cols = cols[active[cols]]
        if len(cols) == 0:
            continue
        sim = kernel(np.array([i]), cols)[0]
        found.comparisons += len(cols)
        hit = sim > threshold
        matched = cols[hit]
        found.add(i, matched, sim[hit])
        active[matched] = False


def nearest_pairs(vectors: np.ndarray, k: int, *, groups: np.ndarray | None = None,
                  block: int = 1024) -> np.ndarray:
    """A shortlist: each item paired with its ``k`` nearest others by dot product.

    Args:
        vectors: ``(N, D)`` float, one global descriptor per item, L2-normalised for cosine
            similarity.
        k: neighbours per item (fewer where fewer items are eligible).
        groups: optional ``(N,)`` group ids: neighbours come from other groups only (the
            merge never scores pairs within one batch, so they should not take up the k).
        block: rows per matrix product (bounds memory to ``block * N`` floats).

    Returns:
        ``(P, 2) int64`` pairs ``i < j``, each once, sorted; ``P <= N k``. A pair is in it
        when either item is among the other's ``k`` nearest.

    Example:
        >>> v = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> nearest_pairs(v, 1).tolist()
        [[0, 1], [2, 3]]
    """
    x = np.asarray(vectors, np.float32)
    n = len(x)
    k = min(int(k), n - 1)
    if k <= 0:
        return np.zeros((0, 2), np.int64)
    g = None if groups is None else np.asarray(groups)
    pa: list[np.ndarray] = []
    pb: list[np.ndarray] = []
    for s in range(0, n, block):
        e = min(n, s + block)
        sim = x[s:e] @ x.T
        rows = np.arange(s, e)
        sim[rows - s, rows] = -np.inf
        if g is not None:
            sim[g[s:e, None] == g[None, :]] = -np.inf
        near = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        ok = np.isfinite(np.take_along_axis(sim, near, axis=1))  # not self, not same group
        pa.append(np.broadcast_to(rows[:, None], near.shape)[ok])
        pb.append(near[ok])
    a, b = np.concatenate(pa).astype(np.int64), np.concatenate(pb).astype(np.int64)
    key = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
    return np.stack([key // n, key % n], axis=1)


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
