"""Grid search and model selection by silhouette, Davies-Bouldin and Calinski-Harabasz.

Every grid point of the model is fitted; each labelling that the three scores can judge
(at least 2 and at most N - 1 distinct labels) gets them, each score is min-max normalised over
the judged points (a score that is the same everywhere normalises to 0 instead of dividing by
zero), and the point with the highest ``silhouette - davies_bouldin + calinski_harabasz`` wins
(the original's rule; ties go to the earlier point in grid order). Noise (label -1 of DBSCAN and
HDBSCAN) is scored as one more group, as the original passed the labels to the scores: a
scattered noise group lowers all three, so a labelling that leaves much as noise scores low.

Labellings the scores cannot judge (a single cluster, all noise, one cluster per sample) and
points skipped for too few samples stay in the table with a note; when no point can be judged,
the labelling that puts the most samples in clusters is returned (a single cluster, or every
sample an outlier).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icas_ray.cluster_models._base import get_model
from icas_ray.errors import InputError

__all__ = ["GridScore", "Selection", "normalise", "select_model"]

logger = logging.getLogger(__name__)

#: Above this many samples the silhouette (O(N^2) distances) is estimated on a seeded sample.
SILHOUETTE_SAMPLE = 4000


@dataclass(frozen=True)
class GridScore:
    """One row of the grid-search table.

    Args:
        params: the grid point.
        n_clusters: clusters found (noise not counted); 0 when skipped.
        n_noise: samples labelled -1.
        silhouette, davies_bouldin, calinski_harabasz: raw scores (None: not judged).
        score: the combined normalised score (None: not judged).
        note: why the point was skipped or not judged ("" when it was scored).
    """

    params: dict[str, Any]
    n_clusters: int = 0
    n_noise: int = 0
    silhouette: float | None = None
    davies_bouldin: float | None = None
    calinski_harabasz: float | None = None
    score: float | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)
class Selection:
    """The outcome of :func:`select_model`.

    Args:
        model: the model's registered name.
        labels: ``(N,) int32``; clusters numbered from 0, -1 = noise/outlier.
        params: the chosen grid point ({} when there was nothing to fit: N < 2, or every point
            skipped).
        scores: one :class:`GridScore` per grid point, in grid order.
        reason: how the labels were chosen ("best score", "only point scored", or why no point
            could be scored).
    """

    model: str
    labels: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    scores: tuple[GridScore, ...] = ()
    reason: str = "best score"

    @property
    def n_clusters(self) -> int:
        """Clusters in :attr:`labels` (noise not counted)."""
        return len(np.unique(self.labels[self.labels >= 0]))

    @property
    def n_noise(self) -> int:
        return int(np.count_nonzero(self.labels < 0))

    def table(self) -> list[dict[str, Any]]:
        """The grid-search table as rows of plain values (for parquet, JSON or a report)."""
        return [s.as_dict() for s in self.scores]

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: model, chosen params, clusters, noise, score, reason."""
        chosen = next((s for s in self.scores if s.params == self.params and s.score is not None), None)
        return {"model": self.model, "params": dict(self.params), "n_samples": len(self.labels),
                "n_clusters": self.n_clusters, "n_noise": self.n_noise,
                "score": None if chosen is None else chosen.score,
                "grid_points": len(self.scores),
                "scored": sum(s.score is not None for s in self.scores), "reason": self.reason}


def normalise(values: Sequence[float]) -> np.ndarray:
    """Min-max normalise to [0, 1]; a constant (or empty) sequence gives zeros.

    >>> normalise([1.0, 3.0, 2.0]).tolist()
    [0.0, 1.0, 0.5]
    >>> normalise([5.0, 5.0]).tolist()
    [0.0, 0.0]
    """
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return v
    span = float(v.max() - v.min())
    if not np.isfinite(span) or span <= 0.0:
        return np.zeros_like(v)
    out: np.ndarray = (v - v.min()) / span
    return out


def _judge(x: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, float, float] | str:
    """The three raw scores of a labelling, or why it cannot be judged."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    n = len(labels)
    groups = len(np.unique(labels))
    if np.all(labels < 0):
        return "all noise"
    if groups < 2:
        return "a single cluster"
    if groups > n - 1:
        return "one cluster per sample"
    sample = SILHOUETTE_SAMPLE if n > SILHOUETTE_SAMPLE else None
    sil = float(silhouette_score(x, labels, sample_size=sample, random_state=seed))
    db = float(davies_bouldin_score(x, labels))
    ch = float(calinski_harabasz_score(x, labels))
    if not all(np.isfinite([sil, db, ch])):
        return "non-finite score"
    return sil, db, ch


def _compact(labels: np.ndarray) -> np.ndarray:
    """Cluster ids renumbered 0..K-1 in order of first appearance; -1 stays -1 (int32)."""
    out = np.full(len(labels), -1, np.int32)
    keep = labels >= 0
    _, first, inverse = np.unique(labels[keep], return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int32)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first), dtype=np.int32)
    out[keep] = rank[inverse]
    return out


def select_model(embeddings: np.ndarray, model: str, grid: Mapping[str, Sequence[Any]] | None = None,
                 *, seed: int = 0) -> Selection:
    """Fit ``model`` at every point of its grid and keep the best labelling.

    Args:
        embeddings: ``(N, D)`` float (float32 is usual), finite.
        model: a registered name, any case: kmeans, hierarchy, DBSCAN, gaussian, HDBSCAN.
        grid: values overriding the model's default grid, e.g. ``{"n_clusters": [2, 4, 8]}``
            (sequences, single values or CLI strings such as ``"2,4,8"``).
        seed: random state of k-means, the mixture and the silhouette sample.

    Returns:
        The :class:`Selection`: labels ``(N,) int32`` numbered from 0 in order of first
        appearance, -1 = noise; N < 2 gives one cluster (or none) without fitting.

    Raises:
        ConfigError: unknown model or bad grid.
        InputError: embeddings not 2-D or not finite.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = np.concatenate([rng.normal(c, 0.1, (20, 2)) for c in (0, 5)]).astype(np.float32)
        >>> s = select_model(x, "kmeans", {"n_clusters": [2, 3, 4]})
        >>> s.params["n_clusters"], s.n_clusters
        (2, 2)
    """
    m = get_model(model)
    g = m.grid(grid)
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise InputError(f"embeddings of shape {x.shape} are invalid: expected (N, D)")
    if x.size and not np.all(np.isfinite(x)):
        raise InputError("embeddings contain NaN or infinity: check the feature extractor's output")
    x = x.astype(np.float32, copy=False)
    n = len(x)
    points = m.points(g)
    if n < 2 or not np.any(x != x[0]):
        # One sample, or all equal: one cluster (the scores cannot judge it, and agglomerative
        # clustering would split equal points arbitrarily).
        why = f"{n} sample(s): nothing to fit" if n < 2 else "all embeddings are equal: one cluster"
        return Selection(m.name, np.zeros(n, np.int32),
                         scores=tuple(GridScore(p, note=why) for p in points), reason=why)

    rows: list[GridScore] = []
    fitted: list[np.ndarray | None] = []
    for p in points:
        skip = m.skip(p, n)
        if skip is not None:
            rows.append(GridScore(p, note=f"skipped: {skip}"))
            fitted.append(None)
            continue
        with warnings.catch_warnings():
            # k-means and the mixture warn when they find fewer distinct clusters than asked
            # (duplicate embeddings) or stop at max_iter: the table's scores say what matters.
            from sklearn.exceptions import ConvergenceWarning

            warnings.simplefilter("ignore", ConvergenceWarning)
            try:
                labels = np.asarray(m.fit_predict(x, p, seed))
            except ValueError as e:  # e.g. a mixture whose covariance collapses
                rows.append(GridScore(p, note=f"failed: {e}".splitlines()[0]))
                fitted.append(None)
                continue
            judged = _judge(x, labels, seed)
        n_noise = int(np.count_nonzero(labels < 0))
        k = len(np.unique(labels[labels >= 0]))
        if isinstance(judged, str):
            rows.append(GridScore(p, n_clusters=k, n_noise=n_noise, note=judged))
        else:
            sil, db, ch = judged
            rows.append(GridScore(p, n_clusters=k, n_noise=n_noise, silhouette=sil,
                                  davies_bouldin=db, calinski_harabasz=ch))
        fitted.append(labels)

    scored = [i for i, r in enumerate(rows) if r.silhouette is not None]
    if scored:
        sil_n = normalise([rows[i].silhouette or 0.0 for i in scored])
        db_n = normalise([rows[i].davies_bouldin or 0.0 for i in scored])
        ch_n = normalise([rows[i].calinski_harabasz or 0.0 for i in scored])
        combined = sil_n - db_n + ch_n
        for j, i in enumerate(scored):
            rows[i] = dataclasses.replace(rows[i], score=float(combined[j]))
        best = scored[int(np.argmax(combined))]  # argmax: the first of equal scores
        reason = "best score" if len(scored) > 1 else "only point scored"
    else:
        ran = [i for i, lab in enumerate(fitted) if lab is not None]
        if not ran:
            return Selection(m.name, np.full(n, -1, np.int32), scores=tuple(rows),
                             reason="no grid point could run: every sample is an outlier")
        # Nothing could be judged: keep the labelling with the most samples in clusters.
        clustered = {i: int(np.count_nonzero(np.asarray(fitted[i]) >= 0)) for i in ran}
        best = max(ran, key=lambda i: (clustered[i], -i))
        reason = f"no grid point could be scored: kept {rows[best].note}"
    chosen = fitted[best]
    assert chosen is not None  # scored and ran points were fitted
    logger.debug("%s: chose %s (%s)", m.name, points[best], reason)
    return Selection(m.name, _compact(chosen), dict(points[best]), tuple(rows), reason)
