"""Pure clustering logic of the classic pipeline: one batch, then the merge of batches.

Nothing here knows about Ray or storage; :mod:`icas_ray.pipeline.classic` runs these functions
in Ray tasks and actors and persists their results.

Labels inside a batch: ``>= 0`` batch cluster id, ``-1`` outlier, ``-2`` unreadable file.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from icas_ray.features import FeatureMethod, Features, concat_features, take_features
from icas_ray.graph import Kernel, build_edges, cluster_labels, components

__all__ = [
    "MERGE_MODES",
    "BatchResult",
    "MergeResult",
    "process_batch",
    "batch_from_labels",
    "merge_batches",
    "merge_by_labels",
    "representatives",
]

logger = logging.getLogger(__name__)

OUTLIER = -1
UNREADABLE = -2
MERGE_MODES = ("full", "original")


@dataclass
class BatchResult:
    """Everything the merge and the writer need from one finished batch (its checkpoint).

    Attributes:
        batch: batch number.
        uris, sizes, status, error: one entry per file of the batch, in batch order.
        labels: batch cluster id per file (-1 outlier, -2 unreadable).
        edge_a, edge_b, edge_sim: similar pairs found (indices into the batch).
        comparisons, possible, complete: work done in the batch (see :class:`EdgeSet`).
        rep_index: indices of the representatives carried into the merge.
        rep_unit: merge unit of each representative: a batch cluster id, or for an outlier
            ``n_clusters + its index among outliers``.
        rep_features: features of the representatives.
    """

    batch: int
    uris: np.ndarray
    sizes: np.ndarray
    status: np.ndarray
    error: np.ndarray
    labels: np.ndarray
    edge_a: np.ndarray
    edge_b: np.ndarray
    edge_sim: np.ndarray
    comparisons: int
    possible: int
    complete: bool
    rep_index: np.ndarray
    rep_unit: np.ndarray
    rep_features: Features = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max() + 1) if len(self.labels) and self.labels.max() >= 0 else 0

    def units(self) -> np.ndarray:
        """Merge unit of every file: its cluster id, or ``n_clusters + k`` for the k-th outlier,
        or -1 for an unreadable file."""
        units = self.labels.astype(np.int64).copy()
        outliers = np.flatnonzero(self.labels == OUTLIER)
        units[outliers] = self.n_clusters + np.arange(len(outliers))
        units[self.labels == UNREADABLE] = -1
        return units

    # -- persistence ---------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        # Indices into the batch in the fewest bits that hold it (16 for batches up to 32,767
        # images): a batch of 1,000 near-duplicates (82,000 similar pairs) compressed in 3.4 ms
        # to 110 KB with 16-bit indices, 5.4 ms to 172 KB with 32-bit ones (64-bit in memory).
        index = np.int16 if len(self.uris) <= np.iinfo(np.int16).max else np.int32
        arrays = {
            "batch": np.array(self.batch), "uris": self.uris.astype(str), "sizes": self.sizes,
            "status": self.status.astype(str), "error": self.error.astype(str),
            "labels": self.labels, "edge_a": self.edge_a.astype(index),
            "edge_b": self.edge_b.astype(index), "edge_sim": self.edge_sim,
            "work": np.array([self.comparisons, self.possible, int(self.complete)], np.int64),
            "rep_index": self.rep_index, "rep_unit": self.rep_unit,
        }
        arrays.update({f"feat_{k}": v for k, v in self.rep_features.items()})
        return _npz(arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> BatchResult:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            work = z["work"]
            return cls(
                batch=int(z["batch"]), uris=z["uris"].astype(object), sizes=z["sizes"],
                status=z["status"].astype(object), error=z["error"].astype(object),
                labels=z["labels"], edge_a=z["edge_a"].astype(np.int64),
                edge_b=z["edge_b"].astype(np.int64),
                edge_sim=z["edge_sim"], comparisons=int(work[0]), possible=int(work[1]),
                complete=bool(work[2]), rep_index=z["rep_index"], rep_unit=z["rep_unit"],
                rep_features={k[5:]: z[k] for k in z.files if k.startswith("feat_")},
            )


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez_compressed``'s format (``np.load`` reads it) at zlib's fastest level: a
    batch's checkpoint of 1,000 near-duplicates (71,000 similar pairs) took 30 ms at
    savez_compressed's level 6, 8 ms at level 1, for 175 KB instead of 110 KB; it is
    written beside the feature work, on the same cores."""
    import zipfile

    from numpy.lib import format as npy_format

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                npy_format.write_array(f, np.asanyarray(value), allow_pickle=False)
    return buf.getvalue()


def representatives(labels: np.ndarray, *, per_cluster: int, include_outliers: bool,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Indices and merge units of the representatives of a batch.

    Each batch cluster is represented by up to ``per_cluster`` members: all of them when it is
    small, else its first member and further members spread evenly over it (``per_cluster=1``
    is the original's first member only). With ``include_outliers`` every outlier is its own
    representative.
    """
    n_clusters = int(labels.max() + 1) if len(labels) and labels.max() >= 0 else 0
    idx: list[np.ndarray] = []
    unit: list[np.ndarray] = []
    if n_clusters:
        members = np.argsort(labels, kind="stable")  # by cluster, members in batch order
        members = members[labels[members] >= 0]
        size = np.bincount(labels[members], minlength=n_clusters)
        start = np.concatenate([[0], np.cumsum(size)[:-1]])
        k = np.minimum(per_cluster, size)
        # The j-th of k picks sits at round(j (size - 1) / (k - 1)) of its cluster, the last
        # at its end (as np.linspace spaces them; k <= size, so no two picks coincide); one
        # pick is the first member.
        c = np.repeat(np.arange(n_clusters), k)
        j = np.arange(len(c)) - np.repeat(np.cumsum(k) - k, k)
        step = (size - 1) / np.maximum(k - 1, 1)
        pos = np.where((j == k[c] - 1) & (k[c] > 1), size[c] - 1, np.round(j * step[c])).astype(np.int64)
        idx.append(members[start[c] + pos])
        unit.append(c)
    if include_outliers:
        outliers = np.flatnonzero(labels == OUTLIER)
        idx.append(outliers)
        unit.append(n_clusters + np.arange(len(outliers)))
    if not idx:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(idx).astype(np.int64), np.concatenate(unit).astype(np.int64)


def _kernel(method: FeatureMethod, features: Features, device: str | None) -> Kernel:
    def kernel(rows: np.ndarray | slice, cols: np.ndarray | slice) -> np.ndarray:
        a, b = take_features(features, rows), take_features(features, cols)
        if device is not None and method.has_torch:
            return method.pairwise_torch(a, b, device)
        return method.pairwise(a, b)

    return kernel


def process_batch(batch: int, *, uris: Sequence[str], sizes: np.ndarray, status: np.ndarray,
                  error: np.ndarray, features: Features, method: FeatureMethod, threshold: float,
                  strategy: str = "exhaustive", time_limit_s: float | None = None,
                  merge_reps: int = 1, merge_outliers: bool = True,
                  device: str | None = None) -> BatchResult:
    """Cluster one batch.

    Args:
        batch: batch number.
        uris, sizes, status, error: per file of the batch; ``status != "ok"`` files have no
            features and are labelled unreadable.
        features: features of the readable files only, in batch order.
        method: the feature method (its kernel scores pairs).
        threshold: pairs with similarity > threshold are linked.
        strategy, time_limit_s: see :func:`icas_ray.graph.build_edges`.
        merge_reps: most representatives per batch cluster.
        merge_outliers: carry outliers into the merge as their own representatives.
        device: torch device for methods with a torch kernel (None = numpy).
    """
    status = np.asarray(status, dtype=object)
    ok = np.flatnonzero(status == "ok")
    edges = build_edges(len(ok), _kernel(method, features, device), threshold,
                        strategy=strategy, time_limit_s=time_limit_s,
                        candidates=method.candidates(features) if len(ok) > 1 else None)
    labels = np.full(len(uris), UNREADABLE, np.int32)
    labels[ok] = cluster_labels(components(len(ok), edges.a, edges.b))
    rep_local, rep_unit = representatives(labels[ok], per_cluster=merge_reps,
                                          include_outliers=merge_outliers)
    # representatives() saw only readable files: map back to batch indices.
    if not edges.complete:
        logger.warning("batch %d: time limit reached after %d of %d comparisons", batch,
                       edges.comparisons, edges.possible)
    return BatchResult(
        batch=batch, uris=np.asarray(uris, dtype=object), sizes=np.asarray(sizes, np.int64),
        status=status, error=np.asarray(error, dtype=object), labels=labels,
        edge_a=ok[edges.a], edge_b=ok[edges.b], edge_sim=edges.similarity,
        comparisons=edges.comparisons, possible=edges.possible, complete=edges.complete,
        rep_index=ok[rep_local], rep_unit=rep_unit,
        rep_features=take_features(features, rep_local) if len(rep_local) else
        {k: v[:0] for k, v in features.items()},
    )


def batch_from_labels(batch: int, *, uris: Sequence[str], sizes: np.ndarray, status: np.ndarray,
                      error: np.ndarray, labels: np.ndarray, features: Features,
                      merge_outliers: bool = True) -> BatchResult:
    """A batch clustered by a model (the deep pipeline) as a :class:`BatchResult`.

    Args:
        labels: ``(R,) int`` the model's label of each readable file (in batch order),
            ``-1`` for noise. Clusters of one file become outliers, and clusters are
            renumbered by first member, as connected components are.
        features: features of the readable files, in batch order (vectors).
        merge_outliers: carry outliers into the merge as their own representatives.

    Each batch cluster is represented in the merge by one vector, the mean of its members'
    (its first member names it): a model clustering the representatives then places each
    batch cluster once, where several members apiece would chain clusters together through
    members that land in different groups.
    """
    status = np.asarray(status, dtype=object)
    ok = np.flatnonzero(status == "ok")
    model = np.asarray(labels, np.int64)
    # Noise gets a label of its own per file, so that it stays alone.
    comp = np.where(model >= 0, model, model.max(initial=-1) + 1 + np.arange(len(model)))
    out = np.full(len(uris), UNREADABLE, np.int32)
    out[ok] = cluster_labels(np.unique(comp, return_inverse=True)[1])
    rep_local, rep_unit = representatives(out[ok], per_cluster=1, include_outliers=merge_outliers)
    rep_features = take_features(features, rep_local) if len(rep_local) else \
        {k: v[:0] for k, v in features.items()}
    n_clusters = int(out[ok].max(initial=-1)) + 1
    for key, value in rep_features.items():
        if n_clusters and np.issubdtype(value.dtype, np.floating):
            sums = np.zeros((n_clusters,) + value.shape[1:], np.float64)
            member = out[ok] >= 0
            np.add.at(sums, out[ok][member], features[key][member])
            centroids = sums / np.bincount(out[ok][member], minlength=n_clusters).reshape(
                (-1,) + (1,) * (value.ndim - 1))
            value = value.copy()
            is_cluster = rep_unit < n_clusters
            value[is_cluster] = centroids[rep_unit[is_cluster]].astype(value.dtype)
            rep_features[key] = value
    empty = np.zeros(0, np.int64)
    return BatchResult(
        batch=batch, uris=np.asarray(uris, dtype=object), sizes=np.asarray(sizes, np.int64),
        status=status, error=np.asarray(error, dtype=object), labels=out,
        edge_a=empty, edge_b=empty, edge_sim=np.zeros(0, np.float32),
        comparisons=0, possible=0, complete=True,
        rep_index=ok[rep_local], rep_unit=rep_unit, rep_features=rep_features,
    )


@dataclass
class MergeResult:
    """Final clusters over all batches.

    Attributes:
        cluster: per batch (by batch number), the final cluster id of each file (-1 outlier,
            -2 unreadable); clusters are numbered by size, largest first.
        edge_uri_a, edge_uri_b, edge_sim: similar representative pairs found across batches.
        comparisons, possible, complete: work done in the merge.
        representatives: number of representatives compared.
    """

    cluster: dict[int, np.ndarray]
    edge_uri_a: np.ndarray
    edge_uri_b: np.ndarray
    edge_sim: np.ndarray
    comparisons: int
    possible: int
    complete: bool
    representatives: int


def _units(results: Sequence[BatchResult]) -> tuple[dict[int, int], int, np.ndarray]:
    """Each batch's offset into the global merge units, their number, and the global unit of
    every representative (in batch order)."""
    unit_offset: dict[int, int] = {}
    total_units = 0
    for r in results:
        unit_offset[r.batch] = total_units
        total_units += r.n_clusters + int((r.labels == OUTLIER).sum())
    rep_units = np.concatenate([r.rep_unit + unit_offset[r.batch] for r in results]) \
        if results else np.zeros(0, np.int64)
    return unit_offset, total_units, rep_units


def _final_clusters(results: Sequence[BatchResult], unit_offset: dict[int, int], total_units: int,
                    unit_a: np.ndarray, unit_b: np.ndarray) -> dict[int, np.ndarray]:
    """Final cluster of every file, per batch, from links between merge units: a cluster is a
    component of units with 2+ readable files in all, numbered by size (largest first)."""
    unit_comp = components(total_units, unit_a, unit_b)
    comp_size = np.zeros(max(1, total_units), np.int64)
    per_batch_units = {}
    for r in results:
        u = r.units()
        readable = u >= 0
        g = u[readable] + unit_offset[r.batch]
        np.add.at(comp_size, unit_comp[g], 1)
        per_batch_units[r.batch] = (u, readable)
    clustered = np.flatnonzero(comp_size >= 2)
    # Number clusters by size (largest first), ties by component id (= first appearance).
    order = clustered[np.lexsort((clustered, -comp_size[clustered]))]
    final_id = np.full(max(1, total_units), OUTLIER, np.int32)
    final_id[order] = np.arange(len(order), dtype=np.int32)
    cluster: dict[int, np.ndarray] = {}
    for r in results:
        u, readable = per_batch_units[r.batch]
        out = np.full(len(u), UNREADABLE, np.int32)
        out[readable] = final_id[unit_comp[u[readable] + unit_offset[r.batch]]]
        cluster[r.batch] = out
    return cluster


def merge_by_labels(results: Sequence[BatchResult], rep_labels: np.ndarray) -> MergeResult:
    """Merge batch clusters (and carried outliers) whose representatives got one label from a
    model that clustered all representatives together (the deep pipeline's merge).

    Args:
        results: the batches' results, whose representatives (in batch order, as
            :func:`representatives` chose them) were clustered.
        rep_labels: ``(R,) int`` label of every representative; ``-1`` (noise) joins nothing.
    """
    results = sorted(results, key=lambda r: r.batch)
    unit_offset, total_units, rep_units = _units(results)
    rep_labels = np.asarray(rep_labels, np.int64)
    if len(rep_labels) != len(rep_units):
        raise ValueError(f"{len(rep_labels)} labels for {len(rep_units)} representatives")
    keep = np.flatnonzero(rep_labels >= 0)
    order = keep[np.argsort(rep_labels[keep], kind="stable")]
    same = rep_labels[order[1:]] == rep_labels[order[:-1]]  # chain the members of each label
    a, b = order[:-1][same], order[1:][same]
    rep_uris = np.concatenate([r.uris[r.rep_index] for r in results]) if results else \
        np.zeros(0, object)
    return MergeResult(
        cluster=_final_clusters(results, unit_offset, total_units, rep_units[a], rep_units[b]),
        edge_uri_a=rep_uris[:0], edge_uri_b=rep_uris[:0], edge_sim=np.zeros(0, np.float32),
        comparisons=0, possible=0, complete=True, representatives=len(rep_units),
    )


def merge_batches(results: Sequence[BatchResult], method: FeatureMethod, threshold: float, *,
                  strategy: str = "exhaustive", time_limit_s: float | None = None,
                  device: str | None = None, threads: int = 1) -> MergeResult:
    """Merge batch clusters (and carried outliers) whose representatives are similar.

    Pairs of representatives from the same batch are not compared (their batch already did).
    With no merge at all (one batch), the batch clusters are the final clusters.

    The ``connected`` strategy compares representatives exhaustively here: representatives of
    different batches are rarely joined before they are compared (on the digits it would skip
    8% of the pairs), and whole blocks of pairs score faster than row-by-row calls. The
    components are the same either way. ``threads`` blocks are scored at once (the merge runs
    when the batches are done and has the machine to itself).
    """
    if strategy == "connected":
        strategy = "exhaustive"
    results = sorted(results, key=lambda r: r.batch)
    unit_offset, total_units, rep_units = _units(results)
    feats = concat_features([r.rep_features for r in results])
    groups = np.concatenate([np.full(len(r.rep_index), r.batch) for r in results]) \
        if results else np.zeros(0, np.int64)
    rep_uris = np.concatenate([r.uris[r.rep_index] for r in results]) \
        if results else np.zeros(0, object)
    n_reps = len(rep_units)
    if len(results) > 1 and n_reps > 1:
        edges = build_edges(n_reps, _kernel(method, feats, device), threshold, strategy=strategy,
                            groups=groups, time_limit_s=time_limit_s, units=rep_units,
                            threads=threads if device is None else 1,
                            candidates=method.candidates(feats, groups=groups))
    else:
        edges = build_edges(0, lambda r, c: np.zeros((0, 0)), threshold)  # no items, no calls
    cluster = _final_clusters(results, unit_offset, total_units,
                              rep_units[edges.a], rep_units[edges.b])
    return MergeResult(
        cluster=cluster, edge_uri_a=rep_uris[edges.a], edge_uri_b=rep_uris[edges.b],
        edge_sim=edges.similarity, comparisons=edges.comparisons, possible=edges.possible,
        complete=edges.complete, representatives=n_reps,
    )
