"""manifest.parquet and edges.parquet as a reader sees them: plain columns, every pair named."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from icas_ray.clustering import OUTLIER, BatchResult, MergeResult
from icas_ray.output import Layout, write_tables
from icas_ray.storage import Storage


def _batch(b: int, names: list[str], labels: list[int], edges: list[tuple[int, int, float]],
           ) -> BatchResult:
    n = len(names)
    return BatchResult(
        batch=b, uris=np.array(names, dtype=object), sizes=np.arange(n) + 10,
        status=np.array(["ok"] * n, dtype=object), error=np.array([""] * n, dtype=object),
        labels=np.array(labels), edge_a=np.array([a for a, _, _ in edges], np.int64),
        edge_b=np.array([e for _, e, _ in edges], np.int64),
        edge_sim=np.array([s for _, _, s in edges], np.float32), comparisons=n * (n - 1) // 2,
        possible=n * (n - 1) // 2, complete=True, rep_index=np.array([0]), rep_unit=np.array([0]))


def test_edges_name_both_images_of_every_pair_as_plain_strings(tmp_path: Path) -> None:
    root = str(tmp_path / "out")
    os.makedirs(root)
    layout = Layout(root, Storage())
    b0 = [f"/in/b0_{i}.png" for i in range(4)]
    b1 = [f"/in/b1_{i}.png" for i in range(3)]
    results = [_batch(0, b0, [0, 0, 1, OUTLIER], [(0, 1, 0.9), (1, 0, 0.8), (2, 3, 0.5)]),
               _batch(1, b1, [0, 0, OUTLIER], [(2, 0, 0.7)])]
    merge = MergeResult(cluster={0: np.array([0, 0, 1, -1]), 1: np.array([0, 0, -1])},
                        edge_uri_a=np.array([b0[0]], dtype=object),
                        edge_uri_b=np.array([b1[1]], dtype=object),
                        edge_sim=np.array([0.95], np.float32), comparisons=1, possible=1,
                        complete=True, representatives=2)
    write_tables(layout, results, merge.cluster, {b1[2]: "/out/results/outliers/b1_2.png"},
                 merge, unlisted=[("/in/bad", "permission denied")])

    edges = pq.read_table(os.path.join(root, "edges.parquet"))
    # Plain types for every reader (no Arrow dictionary or categorical columns).
    assert edges.schema.types == [pa.string(), pa.string(), pa.float32(), pa.string()]
    assert edges.to_pylist() == [
        {"a": b0[0], "b": b0[1], "similarity": 0.8999999761581421, "phase": "batch"},
        {"a": b0[1], "b": b0[0], "similarity": 0.800000011920929, "phase": "batch"},
        {"a": b0[2], "b": b0[3], "similarity": 0.5, "phase": "batch"},
        {"a": b1[2], "b": b1[0], "similarity": 0.699999988079071, "phase": "batch"},
        {"a": b0[0], "b": b1[1], "similarity": 0.949999988079071, "phase": "merge"},
    ]

    manifest = pq.read_table(os.path.join(root, "manifest.parquet")).to_pydict()
    assert manifest["uri"] == b0 + b1 + ["/in/bad"]
    assert manifest["cluster"] == [0, 0, 1, None, 0, 0, None, None]
    assert manifest["batch_cluster"] == [0, 0, 1, None, 0, 0, None, None]
    assert manifest["status"] == ["ok"] * 7 + ["unlisted"]
    assert manifest["location"] == b0 + b1[:2] + ["/out/results/outliers/b1_2.png", "/in/bad"]


def test_no_edges_and_no_merge_still_write_an_edges_table(tmp_path: Path) -> None:
    root = str(tmp_path / "out")
    os.makedirs(root)
    layout = Layout(root, Storage())
    write_tables(layout, [_batch(0, ["/in/a.png"], [OUTLIER], [])], None, {}, None)
    edges = pq.read_table(os.path.join(root, "edges.parquet"))
    assert edges.num_rows == 0
    assert edges.schema.names == ["a", "b", "similarity", "phase"]
    assert edges.schema.types == [pa.string(), pa.string(), pa.float32(), pa.string()]
