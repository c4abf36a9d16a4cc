"""HDBSCAN's flat clusters of a dense precomputed distance matrix, in numpy.

The threshold's suggestion asks HDBSCAN for the groups of a sample of at most about a thousand
images. scikit-learn's ``HDBSCAN(metric="precomputed")`` answers in milliseconds, but importing
``sklearn.cluster`` costs about a second of CPU (0.95 s on this project's 2-core machine): in a
run without ``--threshold`` that second was spent beside the embedded Ray's start and delayed
it by as much (to Ray ready 2.9-3.2 s against 1.9-2.2 s with a threshold given, in one
benchmark run). This module is the same computation for the one case the suggestion uses:

* ``algorithm="brute"`` on a dense matrix (what ``"auto"`` picks for ``"precomputed"``),
  ``min_samples = min_cluster_size``, ``alpha = 1``;
* the excess-of-mass selection, ``allow_single_cluster=False``,
  ``cluster_selection_epsilon = 0``, no ``max_cluster_size``.

It follows scikit-learn 1.9's code step by step (``_reachability.pyx``, ``_linkage.pyx``,
``_tree.pyx``), ties included: Prim's algorithm records each edge from the node added last,
the edges are ordered by ``np.argsort`` (not a stable sort), the condensed tree is built in the
same breadth-first order, so that the labels are the same, not just similar
(``tests/test_hdbscan.py`` compares them with scikit-learn's on the samples of every method).
"""

from __future__ import annotations

import math

import numpy as np

from icas_ray.graph import find_roots

__all__ = ["hdbscan_labels"]


def hdbscan_labels(distance: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """HDBSCAN's labels of ``distance`` (``(n, n)``, symmetric, finite; -1 is noise).

    Args:
        distance: pairwise distances (its diagonal is ignored).
        min_cluster_size: the smallest cluster (and ``min_samples``); at most ``n``.

    Raises:
        ValueError: a matrix that is not square, has fewer than 2 rows or a NaN, or a
            ``min_cluster_size`` outside ``[2, n]``.
    """
    d = np.array(distance, dtype=np.float64)
    n = len(d)
    if d.ndim != 2 or d.shape[1] != n or n < 2:
        raise ValueError(f"expected a square matrix of at least 2 rows, got shape {d.shape}")
    if np.isnan(d).any():
        raise ValueError("the distance matrix has NaN values")
    if not 2 <= min_cluster_size <= n:
        raise ValueError(f"min_cluster_size must be in [2, {n}], got {min_cluster_size}")
    tree = _single_linkage(_prim_edges(_mutual_reachability(d, min_cluster_size)))
    condensed = _condense(tree, n, min_cluster_size)
    return _eom_labels(condensed, n)


def _mutual_reachability(d: np.ndarray, min_samples: int) -> np.ndarray:
    """``max(core_i, core_j, d_ij)``, the core distance being the ``min_samples``-th smallest
    of a row (the point itself, at distance 0, counting as the first)."""
    core = np.partition(d, min_samples - 1, axis=1)[:, min_samples - 1]
    return np.maximum(np.maximum(core[:, None], core[None, :]), d)


def _prim_edges(mr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's Prim's algorithm on the dense mutual reachability: ``(a, b, weight)``.

    As there, each edge is recorded from the node added last (``a``), not from the tree node
    whose link is the shortest, and the first of equal candidates (in node order) is taken.
    """
    n = len(mr)
    a, b, w = np.empty(n - 1, np.int64), np.empty(n - 1, np.int64), np.empty(n - 1, np.float64)
    labels = np.arange(n)
    reach = np.full(n, np.inf)
    current = 0
    for i in range(n - 1):
        keep = labels != current
        labels = labels[keep]
        reach = np.minimum(reach[keep], mr[current, labels])
        j = int(np.argmin(reach))
        a[i], b[i], w[i] = current, labels[j], reach[j]
        current = int(labels[j])
    return a, b, w


def _single_linkage(edges: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[tuple[int, int, float, int]]:
    """The dendrogram of the spanning tree's edges (scipy's linkage layout: cluster ``n + i``
    is made by row ``i``), the edges taken in ``np.argsort`` order of their weights."""
    a, b, w = edges
    order = np.argsort(w)
    n = len(w) + 1
    parent = np.arange(2 * n - 1)
    size = [1] * n + [0] * (n - 1)
    tree = []
    for label, k in enumerate(order.tolist(), start=n):
        left, right = find_roots(parent, np.array((a[k], b[k]))).tolist()
        size[label] = size[left] + size[right]
        tree.append((left, right, float(w[k]), size[label]))
        parent[left] = parent[right] = label
    return tree


def _subtree(tree: list[tuple[int, int, float, int]], n: int, root: int) -> list[int]:
    """The nodes under ``root`` (itself included), breadth first, as scikit-learn lists them."""
    out: list[int] = []
    queue = [root]
    while queue:
        out.extend(queue)
        queue = [child for node in queue if node >= n for child in tree[node - n][:2]]
    return out


def _condense(tree: list[tuple[int, int, float, int]], n: int,
              min_size: int) -> list[tuple[int, int, float, int]]:
    """The condensed tree: ``(parent, child, lambda, child size)`` rows, clusters numbered from
    ``n`` (the root) in the order they are found, points falling out of a cluster as children
    of size 1."""
    root = 2 * (n - 1)
    relabel = {root: n}
    next_label = n + 1
    ignore = set()
    rows: list[tuple[int, int, float, int]] = []

    def count(node: int) -> int:
        return tree[node - n][3] if node >= n else 1

    def fall_out(parent: int, node: int, lam: float) -> None:
        for sub in _subtree(tree, n, node):
            if sub < n:
                rows.append((parent, sub, lam, 1))
            ignore.add(sub)

    for node in _subtree(tree, n, root):
        if node < n or node in ignore:
            continue
        left, right, dist, _ = tree[node - n]
        lam = 1.0 / dist if dist > 0.0 else math.inf
        here = relabel[node]
        big_left, big_right = count(left) >= min_size, count(right) >= min_size
        if big_left and big_right:
            for child in (left, right):
                relabel[child] = next_label
                next_label += 1
                rows.append((here, relabel[child], lam, count(child)))
        elif not big_left and not big_right:
            fall_out(here, left, lam)
            fall_out(here, right, lam)
        elif not big_left:
            relabel[right] = here
            fall_out(here, left, lam)
        else:
            relabel[left] = here
            fall_out(here, right, lam)
    return rows


def _eom_labels(rows: list[tuple[int, int, float, int]], n: int) -> np.ndarray:
    """The excess-of-mass selection over the condensed tree, and each point's label."""
    births: dict[int, float] = {n: 0.0}
    for _, child, lam, _ in rows:
        births[child] = lam
    stability: dict[int, float] = {}
    for parent, _, lam, size in rows:
        stability[parent] = stability.get(parent, 0.0) + (lam - births[parent]) * size
    children: dict[int, list[int]] = {}
    for parent, child, _, size in rows:
        if size > 1:
            children.setdefault(parent, []).append(child)
    selected = {c: True for c in sorted(stability, reverse=True)[:-1]}  # all but the root
    for node in list(selected):  # children (larger labels) before their parents
        below = float(np.sum([stability.get(c, 0.0) for c in children.get(node, [])]))
        if below > stability[node]:
            selected[node] = False
            stability[node] = below
        else:
            below_node = list(children.get(node, []))  # none of its descendants is a cluster
            while below_node:
                child = below_node.pop()
                selected[child] = False
                below_node.extend(children.get(child, []))
    clusters = sorted(c for c, keep in selected.items() if keep)
    label_of = {c: k for k, c in enumerate(clusters)}
    up = {child: parent for parent, child, _, _ in rows}
    labels = np.full(n, -1, np.int64)
    for point in range(n):  # the nearest selected cluster above the point, if any
        above = up.get(point)
        while above is not None and above not in label_of:
            above = up.get(above)
        if above is not None:
            labels[point] = label_of[above]
    return labels
