"""Threshold selection: the sorted similarity curve of a sample, a suggestion, an HTML plot.

The original tool plotted, for a small sample, the sorted pairwise similarities (y: threshold,
x: number of pairs above it) in a matplotlib window. Here the same curve is computed on a
sample spread over the size-sorted listing (every k-th file, so that all sizes - and so all
kinds of images - are represented; the original took the smallest files, which on mixed data
are often all of one kind), and written as a self-contained interactive HTML page.

Suggestion rule: clusters are connected components of the graph of pairs above the threshold
(single linkage), so every threshold between two consecutive weights of the sample's maximum
spanning tree gives the same partition of the sample. HDBSCAN (density-based, robust to the
chance links that chain single linkage's clusters together, ``min_cluster_size`` 5) finds the
sample's groups; the suggestion is the middle of the gap whose single-linkage partition agrees
best with them (adjusted Rand index), among those leaving between 2 and n/2 groups. Where
HDBSCAN finds no group at all, the widest gap is taken instead. An earlier rule (the widest gap
alone) failed where the similarities have no clear gap (minhash) or the sample is sparser than
the collection (SSIM on 300 of 1000 digits): groups in a sparse sample join at lower
similarities than in the whole collection, so the widest gap lies between merges of groups.
See :func:`suggest_threshold`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from icas_ray.features import FeatureMethod, take_features
from icas_ray.graph import candidate_rows, find_roots
from icas_ray.storage import FileInfo

__all__ = ["RULE", "SampleSimilarities", "sample_files", "similarities", "suggest_threshold",
           "threshold_curve", "render_threshold_html"]

logger = logging.getLogger(__name__)

@dataclass
class SampleSimilarities:
    """Pairwise similarities of a sample.

    Attributes:
        values: ``(P,) float32`` similarity of every pair of readable sampled images.
        nearest: ``(n,) float32`` each image's highest similarity to another sampled image.
        matrix: ``(n, n) float32`` the full matrix (diagonal = -inf).
        uris: the sampled images that could be read.
        n_images: number of images in the sample.
        n_total: number of images in the whole listing.
    """

    values: np.ndarray
    nearest: np.ndarray
    matrix: np.ndarray
    uris: list[str]
    n_images: int
    n_total: int


def sample_files(files: Sequence[FileInfo], n: int) -> list[FileInfo]:
    """``n`` files spread evenly over the size-sorted listing."""
    ordered = sorted(files, key=lambda f: (f.size, f.uri))
    if len(ordered) <= n:
        return ordered
    idx = np.unique(np.linspace(0, len(ordered) - 1, n).round().astype(int))
    return [ordered[i] for i in idx]


def similarities(uris: Sequence[str], features: dict[str, np.ndarray], method: FeatureMethod,
                 n_total: int) -> SampleSimilarities:
    """Similarities of all pairs of the sampled images whose ``features`` were extracted.

    Args:
        uris: the sampled images that could be read, in the order of ``features``.
        features: their features (``method``'s extraction).
        method: scores the pairs.
        n_total: number of images in the whole listing.

    Raises:
        InputError: fewer than two images could be read.
    """
    if len(uris) < 2:
        _raise_few(len(uris))
    matrix = _sample_matrix(features, method)
    np.fill_diagonal(matrix, -np.inf)
    iu = np.triu_indices(len(uris), 1)
    return SampleSimilarities(values=matrix[iu], nearest=matrix.max(axis=1), matrix=matrix,
                              uris=list(uris), n_images=len(uris), n_total=n_total)


def _sample_matrix(features: dict[str, np.ndarray], method: FeatureMethod) -> np.ndarray:
    """The sample's similarity matrix, scored as the batches score pairs: every pair, or only
    the method's shortlist (:meth:`FeatureMethod.candidates`; pairs off it count 0, as in the
    batches). ORB's shortlist scores 300 images' 9,000 nearest pairs instead of 44,850."""
    candidates = method.candidates(features)
    if candidates is None:
        return method.pairwise(features, features).astype(np.float32)
    n = len(next(iter(features.values())))
    ptr, cols = candidate_rows(n, candidates)
    matrix = np.zeros((n, n), np.float32)
    for i in np.flatnonzero(np.diff(ptr)).tolist():
        later = cols[ptr[i]:ptr[i + 1]]
        row = method.pairwise(take_features(features, [i]), take_features(features, later))[0]
        matrix[i, later] = matrix[later, i] = row
    return matrix


def _raise_few(n: int) -> None:
    from icas_ray.errors import InputError

    raise InputError(f"only {n} readable image(s) in the sample: a threshold needs at least 2 "
                     "readable images (give --threshold explicitly)")


#: Smallest group the suggestion looks for in a sample (HDBSCAN's ``min_cluster_size``). Chosen
#: on the generated digits and near-duplicates (every method, samples of 120-1000 images): 5 was
#: right on all of them; 3 let chance pairs count as groups, 8 missed groups on small samples.
_MIN_GROUP = 5


def _spanning_tree(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The maximum spanning tree of a (finite, symmetric) similarity matrix.

    Prim's algorithm on the dense matrix, one vectorized row update per node added: a sample's
    matrix is dense, and scipy's sparse spanning tree spent 0.11 s converting a 1,000-image one
    where this takes about 0.02 s (the suggestion runs while the features are extracted).

    Returns ``(a, b, weight)``, its edges from the strongest to the weakest.
    """
    n = len(sim)
    best = np.array(sim[0], dtype=np.float64)  # each node's strongest link to the tree so far
    link = np.zeros(n, np.int64)  # ... and the tree node it links to
    best[0] = -np.inf
    out = np.ones(n, bool)
    out[0] = False
    a, b, w = np.empty(n - 1, np.int64), np.empty(n - 1, np.int64), np.empty(n - 1, np.float64)
    for k in range(n - 1):
        j = int(np.argmax(best))
        a[k], b[k], w[k] = link[j], j, best[j]
        out[j] = False
        best[j] = -np.inf
        closer = out & (sim[j] > best)
        best[closer] = sim[j, closer]
        link[closer] = j
    order = np.argsort(-w, kind="stable")
    return a[order], b[order], w[order]


def _group_distances(sim: np.ndarray) -> tuple[np.ndarray, int]:
    """The distances HDBSCAN groups a (finite) sample by, and its ``min_cluster_size``."""
    dist = sim.max() - sim
    np.fill_diagonal(dist, 0.0)
    return dist, min(_MIN_GROUP, max(2, len(sim) // 4))


def _groups_of_sample(sim: np.ndarray) -> np.ndarray | None:
    """HDBSCAN's groups of the sample (``(n,)`` labels, noise as singletons), or None if none.

    :func:`icas_ray._hdbscan.hdbscan_labels`, scikit-learn's labels without importing
    scikit-learn (a second of CPU beside the embedded Ray's start)."""
    from icas_ray._hdbscan import hdbscan_labels

    labels = hdbscan_labels(*_group_distances(sim))
    if labels.max() < 0:
        return None
    return np.where(labels >= 0, labels, labels.max() + 1 + np.arange(len(labels)))


def _agreement_by_cut(a: np.ndarray, b: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Adjusted Rand index between ``groups`` and each single-linkage cut of the tree.

    Entry ``k`` compares with the partition given by the tree edges ``a[:k+1] - b[:k+1]``
    (strongest first). The pair counts are updated as each edge joins two components (a
    component keeps how many members of each group it holds), so all ``n - 1`` cuts cost one
    pass, not one clustering and one ARI each. Groups with one member hold no pair and take
    no column.
    """
    n = len(groups)
    real = np.flatnonzero(np.bincount(groups) > 1)
    column = np.full(groups.max() + 1, -1)
    column[real] = np.arange(len(real))
    held = np.zeros((n, len(real)), np.int64)  # members of each group per component root
    rows = np.flatnonzero(column[groups] >= 0)
    held[rows, column[groups[rows]]] = 1
    size = np.ones(n, np.int64)
    parent = np.arange(n)
    together = np.empty(len(a), np.float64)  # pairs in one component and one group
    linked = np.empty(len(a), np.float64)  # pairs in one component
    both = linked_sum = 0
    for k, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
        rx, ry = find_roots(parent, np.array((x, y))).tolist()  # a tree edge joins two components
        both += int(held[rx] @ held[ry])
        linked_sum += int(size[rx] * size[ry])
        parent[ry] = rx
        held[rx] += held[ry]
        size[rx] += size[ry]
        together[k], linked[k] = both, linked_sum
    counts = np.bincount(groups)
    grouped = float((counts * (counts - 1) // 2).sum())  # pairs in one group
    pairs = n * (n - 1) / 2
    expected = grouped * linked / pairs
    top = (grouped + linked) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        ari = (together - expected) / (top - expected)
    return np.where(top == expected, 1.0, ari)  # both partitions trivial: they agree


def _finite_similarities(matrix: np.ndarray) -> np.ndarray | None:
    """The sample's matrix as the suggestion reads it (float64, a non-finite value as the
    lowest similarity, the diagonal as the highest), or None below 3 images or with no finite
    pair."""
    sim = np.array(matrix, dtype=np.float64)
    np.fill_diagonal(sim, np.nan)
    finite = np.isfinite(sim)
    if len(sim) < 3 or not finite.any():
        return None
    sim[~finite] = np.nanmin(sim[finite])
    np.fill_diagonal(sim, np.nanmax(sim))
    return sim


def suggest_threshold(matrix: np.ndarray, method: FeatureMethod) -> float:
    """A threshold from a sample's similarity matrix (the rule of the module docstring).

    Args:
        matrix: ``(n, n)`` pairwise similarities of the sample (diagonal ignored).
        method: the feature method (for its valid range).

    Returns:
        The suggested threshold, within the method's range.
    """
    lo, hi = method.threshold_range
    sim = _finite_similarities(matrix)
    if sim is None:
        return float(hi)
    n = len(sim)
    a, b, weights = _spanning_tree(sim)
    groups = _groups_of_sample(sim)
    # Cut k keeps the k+1 strongest tree edges: n-k-1 components, thresholds between
    # weights[k] and weights[k+1].
    k = np.arange(len(weights) - 1)
    parts = n - (k + 1)
    usable = (parts >= 2) & (parts <= n / 2) & (weights[:-1] != weights[1:])
    if not usable.any():
        return float(np.clip(np.median(weights), lo, hi))
    if groups is None:  # no group stands out: fall back to the most stable partition
        score = weights[:-1] - weights[1:]
    else:
        score = _agreement_by_cut(a, b, groups)[:-1]
    best = int(np.flatnonzero(usable)[np.argmax(score[usable])])
    return float(np.clip((weights[best] + weights[best + 1]) / 2, lo, hi))


RULE = ("the single-linkage cut that best matches the sample's HDBSCAN groups, at the middle "
        "of its gap in the maximum spanning tree")


def threshold_curve(values: np.ndarray, nearest: np.ndarray, n_total: int, *,
                    points: int = 400) -> list[dict[str, float]]:
    """Points of the sorted similarity curve with what each threshold would give.

    Each point: ``threshold``, ``pairs`` (sampled pairs with similarity > threshold),
    ``clustered`` (sampled images with a neighbour above it) and ``clustered_estimate`` (that
    share of the whole listing).
    """
    srt = np.sort(values[np.isfinite(values)])[::-1]
    nn = np.sort(nearest[np.isfinite(nearest)])
    if len(srt) == 0:
        return []
    ts = np.unique(np.quantile(srt, np.linspace(0, 1, points)))[::-1]
    out = []
    n = max(1, len(nearest))
    for t in ts:
        pairs = int(np.searchsorted(-srt, -t, side="left"))  # values > t
        clustered = int(len(nn) - np.searchsorted(nn, t, side="right"))
        out.append({"threshold": float(t), "pairs": pairs, "clustered": clustered,
                    "clustered_estimate": int(round(clustered / n * n_total))})
    return out


_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>icas threshold: __TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
#plot{border:1px solid #ccc;cursor:crosshair;display:block}
#hover,#picked{font-size:14px;margin:.5em 0;min-height:1.4em}
code{background:#f3f3f3;padding:2px 6px;display:inline-block;margin-top:.3em}
.muted{color:#777;font-size:13px}
</style></head><body>
<h1>Threshold for __METHOD__ on __TITLE__</h1>
<p class="muted">Sorted similarities of all __PAIRS__ pairs of __N__ sampled images (of __TOTAL__).
Y: threshold; X: number of sampled pairs above it. Hover to see what a threshold gives; click to pick it.
Suggested: <b id="suggested">__SUGGESTED__</b> (__RULE__).</p>
<svg id="plot" width="760" height="420"></svg>
<div id="hover">hover over the curve</div>
<div id="picked"></div>
<script>
const DATA = __DATA__;
const svg = document.getElementById('plot'), W = 760, H = 420, L = 60, R = 20, T = 20, B = 40;
const pts = DATA.curve;
const maxX = Math.max(1, ...pts.map(p => p.pairs));
const ys = pts.map(p => p.threshold);
const minY = Math.min(...ys), maxY = Math.max(...ys);
const sx = x => L + (W - L - R) * (Math.log10(1 + x) / Math.log10(1 + maxX));
const sy = y => T + (H - T - B) * (1 - (y - minY) / Math.max(1e-9, maxY - minY));
const NS = 'http://www.w3.org/2000/svg';
function el(name, attrs, text) { const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]); if (text) e.textContent = text; svg.appendChild(e); return e; }
el('line', {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: '#444'});
el('line', {x1: L, y1: T, x2: L, y2: H - B, stroke: '#444'});
el('text', {x: W / 2, y: H - 8, 'text-anchor': 'middle', 'font-size': 12}, 'similar pairs in the sample (log scale)');
el('text', {x: 14, y: H / 2, 'font-size': 12, transform: `rotate(-90 14 ${H / 2})`, 'text-anchor': 'middle'}, 'threshold');
for (let i = 0; i <= 4; i++) { const v = minY + (maxY - minY) * i / 4;
  el('text', {x: L - 6, y: sy(v) + 4, 'text-anchor': 'end', 'font-size': 11}, v.toFixed(3)); }
el('polyline', {points: pts.map(p => `${sx(p.pairs)},${sy(p.threshold)}`).join(' '), fill: 'none', stroke: '#1f6feb', 'stroke-width': 2});
const sug = DATA.suggested;
el('line', {x1: L, x2: W - R, y1: sy(sug), y2: sy(sug), stroke: '#d29922', 'stroke-dasharray': '4 3'});
const cross = el('line', {x1: L, x2: W - R, y1: -10, y2: -10, stroke: '#888'});
const dot = el('circle', {cx: -10, cy: -10, r: 4, fill: '#cf222e'});
function nearest(evt) { const r = svg.getBoundingClientRect(); const y = evt.clientY - r.top;
  let best = pts[0], bd = 1e9; for (const p of pts) { const d = Math.abs(sy(p.threshold) - y); if (d < bd) { bd = d; best = p; } } return best; }
function describe(p) { return `threshold ${p.threshold.toFixed(4)}: ${p.pairs} similar pairs in the sample, ` +
  `${p.clustered} of ${DATA.n} sampled images clustered (about ${p.clustered_estimate} of all ${DATA.total} images)`; }
svg.addEventListener('mousemove', evt => { const p = nearest(evt);
  cross.setAttribute('y1', sy(p.threshold)); cross.setAttribute('y2', sy(p.threshold));
  dot.setAttribute('cx', sx(p.pairs)); dot.setAttribute('cy', sy(p.threshold));
  document.getElementById('hover').textContent = describe(p); });
svg.addEventListener('click', evt => { const p = nearest(evt);
  document.getElementById('picked').innerHTML = 'picked: ' + describe(p) +
    '<br><code id="command">' + DATA.command.replace('{T}', p.threshold.toFixed(4)) + '</code>'; });
</script></body></html>
"""


def render_threshold_html(*, curve: list[dict[str, float]], suggested: float, method: str,
                          title: str, n: int, total: int, pairs: int, command: str,
                          rule: str) -> str:
    """The interactive plot page (self-contained, works offline).

    ``command`` is the ``icas cluster`` command line with ``{T}`` where the threshold goes.
    """
    import html

    data = {"curve": curve, "suggested": suggested, "n": n, "total": total, "command": command}
    page = _HTML
    for key, value in (("__TITLE__", html.escape(title)), ("__METHOD__", html.escape(method)),
                       ("__PAIRS__", str(pairs)), ("__N__", str(n)), ("__TOTAL__", str(total)),
                       ("__SUGGESTED__", f"{suggested:.4f}"), ("__RULE__", html.escape(rule))):
        page = page.replace(key, value)
    return page.replace("__DATA__", json.dumps(data).replace("</", "<\\/"))
