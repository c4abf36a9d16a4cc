"""The threshold's HDBSCAN in numpy gives scikit-learn's labels, and a run without --threshold
does not import scikit-learn."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from sklearn.cluster import HDBSCAN

from icas_ray._hdbscan import hdbscan_labels
from icas_ray.features import get_method
from icas_ray.images import DecodeError, decode
from icas_ray.threshold import _finite_similarities, _group_distances, _sample_matrix, sample_files

METHODS = ["imagehash", "minhash", "TM", "SSIM", "ORB"]


def _sklearn(dist: np.ndarray, size: int) -> np.ndarray:
    return HDBSCAN(min_cluster_size=size, metric="precomputed", copy=True).fit(dist).labels_


def _symmetric(rng: np.random.Generator, n: int, levels: int = 0) -> np.ndarray:
    d = rng.uniform(0, 1, (n, n))
    if levels:  # few distinct values: ties everywhere, as imagehash's Hamming distances
        d = np.round(d * (levels - 1)) / (levels - 1)
    d = np.triu(d, 1)
    return d + d.T


@pytest.mark.parametrize("n,levels,size", [
    (3, 0, 2), (4, 0, 2), (5, 3, 2), (12, 0, 3), (40, 0, 5), (200, 0, 5), (300, 65, 5),
    (300, 5, 5), (150, 2, 4), (500, 17, 5),
])
def test_labels_equal_sklearns_on_random_matrices(n: int, levels: int, size: int) -> None:
    rng = np.random.default_rng(n * 100 + levels)
    for _ in range(3):
        d = _symmetric(rng, n, levels)
        assert np.array_equal(hdbscan_labels(d, size), _sklearn(d, size))


def test_labels_equal_sklearns_on_groups_with_duplicates() -> None:
    """Groups of identical images (distance 0: core distances 0, lambdas infinite) beside
    spread ones, and a matrix of one value."""
    rng = np.random.default_rng(7)
    groups = np.repeat(np.arange(12), rng.integers(1, 15, 12))
    centres = rng.uniform(0, 10, (12, 2))
    spread = np.where(groups % 3 == 0, 0.0, 0.3)[:, None]  # every third group: exact duplicates
    points = centres[groups] + rng.normal(0, 1, (len(groups), 2)) * spread
    d = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    for size in (2, 3, 5):
        assert np.array_equal(hdbscan_labels(d, size), _sklearn(d, size))
    flat = np.ones((20, 20)) - np.eye(20)
    assert np.array_equal(hdbscan_labels(flat, 5), _sklearn(flat, 5))


def _sample_distances(folder: str, method_name: str, n: int) -> tuple[np.ndarray, int]:
    """What the suggestion gives HDBSCAN for ``n`` images of ``folder`` sampled as a run
    samples them."""
    from icas_ray.storage import Storage

    method, storage = get_method(method_name), Storage()
    images = []
    for f in sample_files(storage.scan_images(folder, sniff=False, exclude=()).files, n):
        try:
            images.append(decode(storage.read_bytes(f.uri), method.read))
        except DecodeError:  # the broken files of the generated sets
            continue
    sim = _finite_similarities(_sample_matrix(method.extract(images), method))
    assert sim is not None
    return _group_distances(sim)


@pytest.mark.parametrize("method", METHODS)
def test_labels_equal_sklearns_on_the_samples_of_every_method(method: str, digits1000: str,
                                                              near_dup_dir: str) -> None:
    for folder, n in ((digits1000, 1000 if get_method(method).cheap else 300), (near_dup_dir, 100)):
        dist, size = _sample_distances(folder, method, n)
        mine, theirs = hdbscan_labels(dist, size), _sklearn(dist, size)
        assert np.array_equal(mine, theirs)
        if folder == digits1000:
            assert theirs.max() >= 1  # the digits' samples do have groups


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="square"):
        hdbscan_labels(np.zeros((3, 2)), 2)
    with pytest.raises(ValueError, match="NaN"):
        hdbscan_labels(np.full((3, 3), np.nan), 2)
    with pytest.raises(ValueError, match="min_cluster_size"):
        hdbscan_labels(np.zeros((3, 3)), 4)


def test_a_run_without_threshold_does_not_import_sklearn(digits200: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The suggestion's path (listing, sample, suggestion, clustering, results) leaves
    scikit-learn unimported: its import is a second of CPU beside the embedded Ray's start."""
    code = ("import sys\n"
            "from icas_ray.pipeline.classic import cluster\n"
            "from icas_ray.pipeline.config import ClusterConfig\n"
            f"s = cluster({digits200!r}, {str(tmp_path / 'out')!r}, ClusterConfig(method='imagehash', batch_size=100))\n"
            "assert s['threshold_source'] == 'suggested', s\n"
            "print('SKLEARN', sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn')[:5])\n")
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": tempfile.mkdtemp(prefix="icas-", dir="/tmp")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "SKLEARN []" in r.stdout, r.stdout
