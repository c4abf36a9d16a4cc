"""The deep pipeline: embeddings clustered by scikit-learn models chosen over a grid, through
the classic machinery (journal, result layout, resume), and embeddings with the threshold."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest

from conftest import manifest_ari
from icas_ray.errors import ConfigError

pytestmark = pytest.mark.usefixtures("ray_session")


def _truth(folder: str) -> dict[str, str]:
    t = pd.read_csv(os.path.join(folder, "truth.csv"))
    return dict(zip(t.iloc[:, 0], t.iloc[:, 1].astype(str)))


def _input(src: str, tmp_path) -> str:  # type: ignore[no-untyped-def]
    dst = str(tmp_path / "in")
    shutil.copytree(src, dst)
    os.remove(os.path.join(dst, "truth.csv"))
    return dst


def test_cluster_model_needs_vector_features_and_no_threshold():
    from icas_ray.pipeline.config import ClusterConfig

    with pytest.raises(ConfigError, match="use --method embedding"):
        ClusterConfig(method="imagehash", cluster_model="kmeans")
    with pytest.raises(ConfigError, match="--grid needs --cluster-model"):
        ClusterConfig(cluster_grid={"n_clusters": [2]})


def _backbone_params() -> dict[str, str]:
    return {"backbone": "resnet18", "weights": "random"}


@pytest.mark.parametrize("model, grid", [
    ("kmeans", {"n_clusters": [4, 8]}),
    ("HDBSCAN", {"min_cluster_size": [2, 3]}),
], ids=["kmeans", "HDBSCAN"])
def test_deep_pipeline_layout_and_every_file_accounted(near_dup_dir, tmp_path, model, grid):
    from icas_ray.pipeline.classic import cluster
    from icas_ray.pipeline.config import ClusterConfig

    src = _input(near_dup_dir, tmp_path)
    n_files = len([f for f in os.listdir(src)])
    out = str(tmp_path / "out")
    config = ClusterConfig(method="embedding", method_params=_backbone_params(), batch_size=20,
                           cluster_model=model, cluster_grid=grid, size=(64, 64))
    summary = cluster(src, out, config)
    assert summary["threshold"] is None and model in summary["threshold_source"]
    chosen = summary["model_selection"]
    assert len(chosen["batches"]) == summary["batches"]["total"] >= 2
    m = pd.read_parquet(os.path.join(out, "manifest.parquet"))
    assert len(m) == n_files  # every input has a row, the broken ones as unreadable
    copied = [f for _, _, names in os.walk(os.path.join(out, "results")) for f in names]
    assert len(copied) == int((m.status == "ok").sum())
    assert summary["counts"]["clusters"] >= 1
    assert os.path.exists(os.path.join(out, "report.html"))


def test_deep_pipeline_resumes_after_a_kill(digits200, tmp_path):
    import subprocess
    import sys

    src = _input(digits200, tmp_path)
    out = str(tmp_path / "out")
    args = [sys.executable, "-m", "icas_ray", "cluster", src, "--output", out,
            "--method", "embedding", "--backbone", "resnet18", "--weights", "random",
            "--size", "32x32", "--cluster-model", "kmeans", "--grid", "n_clusters=8,12",
            "--batch-size", "50", "--num-cpus", "2"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "ICAS_FAILPOINT": "batches:2"})
    assert r.returncode == 75, r.stderr[-3000:]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming:" in r.stderr and "clusters chosen by kmeans" in r.stdout
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["batches"]["resumed"] >= 2 and summary["counts"]["images"] == 200


def test_embedding_with_the_threshold_uses_the_classic_machinery(near_dup_dir, tmp_path):
    from icas_ray.pipeline.classic import cluster
    from icas_ray.pipeline.config import ClusterConfig

    src = _input(near_dup_dir, tmp_path)
    out = str(tmp_path / "out")
    summary = cluster(src, out, ClusterConfig(method="embedding", method_params=_backbone_params(),
                                              threshold=0.95, batch_size=20, size=(64, 64)))
    assert summary["threshold"] == 0.95 and summary["comparisons"]["batch_comparisons"] > 0
    m = pd.read_parquet(os.path.join(out, "edges.parquet"))
    assert (m.similarity > 0.95).all()


@pytest.mark.slow
def test_train_then_cluster_digits_by_embeddings(digits1000, tmp_path):
    """The issue's measure: a few epochs on 1000 digits, then kmeans over the embeddings."""
    from icas_ray.pipeline.classic import cluster
    from icas_ray.pipeline.config import ClusterConfig
    from icas_ray.pipeline.deep import ensure_model
    from icas_ray.progress import NullProgress
    from icas_ray.storage import Storage

    params = ensure_model(digits1000, {}, {"storage": str(tmp_path / "models"), "epochs": 8,
                                           "image_size": 32, "model": "conv_small"},
                          storage=Storage(), resources=None, progress=NullProgress())
    aris = {}
    for model, grid in (("HDBSCAN", {}), ("kmeans", {"n_clusters": [8, 10, 12, 16]})):
        out = str(tmp_path / f"out-{model}")
        cluster(digits1000, out, ClusterConfig(method="embedding", method_params=params,
                                               batch_size=500, cluster_model=model,
                                               cluster_grid=grid))
        aris[model] = manifest_ari(pd.read_parquet(os.path.join(out, "manifest.parquet")),
                                   _truth(digits1000))
    print(f"digits 1000, autoencoder embeddings: ARI {aris}")
    assert aris["HDBSCAN"] > 0.7 and aris["kmeans"] > 0.5
