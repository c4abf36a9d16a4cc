"""Cluster models: registry, grids, grid search and selection, the degenerate cases."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from icas_ray.cluster_models import (
    ClusterModel,
    Selection,
    get_model,
    make_grid,
    model_names,
    normalise,
    register,
    select_model,
)
from icas_ray.errors import ConfigError, InputError

FAMILIES = ["kmeans", "hierarchy", "DBSCAN", "gaussian", "HDBSCAN"]


def _blobs(k: int = 4, per: int = 40, dim: int = 32, noise: float = 0.05,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embedding-like blobs: ``k`` groups around random unit vectors, L2-normalised (as the
    embedding feature gives them): within a group distances ~0.4, between groups ~1.4."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(k), per)
    x = centres[truth] + rng.normal(0, noise, (k * per, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(len(x))
    return x[order].astype(np.float32), truth[order]


def _valid(sel: Selection, n: int) -> None:
    assert isinstance(sel, Selection)
    assert sel.labels.dtype == np.int32 and sel.labels.shape == (n,)
    assert sel.labels.min(initial=-1) >= -1
    kept = np.unique(sel.labels[sel.labels >= 0])
    assert kept.tolist() == list(range(len(kept)))  # numbered from 0 without gaps
    assert isinstance(sel.describe()["reason"], str)


def test_registry_names_case_and_errors():  # type: ignore[no-untyped-def]
    assert model_names() == ["DBSCAN", "gaussian", "HDBSCAN", "hierarchy", "kmeans"]
    for name in FAMILIES:
        assert get_model(name.upper()).name == name
        assert get_model(name.lower()).name == name
    with pytest.raises(ConfigError, match="unknown cluster model 'spectral': must be one of "
                       "DBSCAN, gaussian, HDBSCAN, hierarchy, kmeans"):
        get_model("spectral")
    with pytest.raises(ValueError, match="already registered"):
        @register("KMEANS")
        class Again(ClusterModel):  # pragma: no cover - never instantiated
            def fit_predict(self, x, point, seed):  # type: ignore[no-untyped-def]
                return np.zeros(len(x), np.int32)


def test_grids_coerce_and_validate():  # type: ignore[no-untyped-def]
    g = make_grid("kmeans", {"n_clusters": "2,3,5", "max_iter": 50})
    assert g.n_clusters == (2, 3, 5) and g.max_iter == (50,)
    assert make_grid("DBSCAN", {"eps": [0.2, "0.4"]}).eps == (0.2, 0.4)
    assert make_grid("hdbscan").max_cluster_size == (0,)
    with pytest.raises(ConfigError, match="unknown grid parameter.*k for cluster model kmeans: "
                       "valid parameters are max_iter, n_clusters"):
        make_grid("kmeans", {"k": [2]})
    with pytest.raises(ConfigError, match="n_clusters=1 is invalid: expected integers >= 2"):
        make_grid("gaussian", {"n_clusters": [1, 2]})
    with pytest.raises(ConfigError, match="eps=0.0 is invalid: expected numbers > 0"):
        make_grid("DBSCAN", {"eps": [0.0]})
    with pytest.raises(ConfigError, match="n_clusters is empty"):
        make_grid("hierarchy", {"n_clusters": []})
    with pytest.raises(ConfigError, match="linkage='median' is invalid"):
        make_grid("hierarchy", {"linkage": "median"})
    with pytest.raises(ConfigError, match="is not an integer"):
        make_grid("HDBSCAN", {"min_cluster_size": "two"})
    # every default grid is valid and has points
    for name in FAMILIES:
        m = get_model(name)
        assert m.points(m.grid())


GRIDS = {  # grids that bracket the truth (4 blobs of 40)
    "kmeans": {"n_clusters": [2, 3, 4, 6, 8]},
    "hierarchy": {"n_clusters": [2, 3, 4, 6, 8], "linkage": ["ward", "average"]},
    "DBSCAN": {"eps": [0.1, 0.5, 0.9], "min_samples": [2, 5]},
    "gaussian": {"n_clusters": [2, 3, 4, 6, 8]},
    "HDBSCAN": {"min_cluster_size": [2, 5, 10], "max_cluster_size": [0, 100]},
}


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_recovers_blobs(name):  # type: ignore[no-untyped-def]
    x, truth = _blobs()
    sel = select_model(x, name, GRIDS[name], seed=1)
    _valid(sel, len(x))
    assert adjusted_rand_score(truth, sel.labels) >= 0.9, sel.table()
    assert sel.n_clusters == 4
    assert len(sel.scores) == len(get_model(name).points(make_grid(name, GRIDS[name])))
    assert sel.reason == "best score"
    d = sel.describe()
    assert d["model"] == name and d["n_clusters"] == 4 and d["params"] == sel.params
    assert d["scored"] >= 2 and d["grid_points"] == len(sel.scores)


@pytest.mark.parametrize("name", FAMILIES)
def test_default_grids_recover_embedding_blobs(name):  # type: ignore[no-untyped-def]
    x, truth = _blobs(k=8, per=25)
    sel = select_model(x, name)
    _valid(sel, len(x))
    assert adjusted_rand_score(truth, sel.labels) >= 0.9, sel.table()


def test_selection_prefers_the_right_k():  # type: ignore[no-untyped-def]
    x, _ = _blobs(k=5, per=30)
    for name in ("kmeans", "hierarchy", "gaussian"):
        sel = select_model(x, name, {"n_clusters": list(range(2, 10))})
        assert sel.params["n_clusters"] == 5, (name, sel.table())
        best = max(s.score for s in sel.scores if s.score is not None)
        assert dict(sel.describe())["score"] == best
        # the combined score is silhouette - DB + CH, each min-max normalised over the grid
        rows = [s for s in sel.scores if s.score is not None]
        combo = (normalise([r.silhouette for r in rows]) - normalise([r.davies_bouldin for r in rows])
                 + normalise([r.calinski_harabasz for r in rows]))
        np.testing.assert_allclose([r.score for r in rows], combo)


def test_normalise_constant_and_ordinary():  # type: ignore[no-untyped-def]
    assert normalise([3.0, 3.0, 3.0]).tolist() == [0.0, 0.0, 0.0]
    assert normalise([]).tolist() == []
    assert normalise([2.0, 4.0, 3.0]).tolist() == [0.0, 1.0, 0.5]


def test_constant_scores_over_the_grid_choose_the_first_point():  # type: ignore[no-untyped-def]
    x, truth = _blobs(k=3, per=20)
    # max_iter does not change a converged k-means: three equal labellings, equal scores
    sel = select_model(x, "kmeans", {"n_clusters": [3], "max_iter": [100, 200, 300]})
    assert [s.score for s in sel.scores] == [0.0, 0.0, 0.0]
    assert sel.params == {"n_clusters": 3, "max_iter": 100}
    assert adjusted_rand_score(truth, sel.labels) == 1.0


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_samples(name, n):  # type: ignore[no-untyped-def]
    sel = select_model(np.zeros((n, 8), np.float32), name)
    _valid(sel, n)
    assert sel.labels.tolist() == [0] * n and sel.params == {}
    assert "nothing to fit" in sel.reason and all(s.score is None for s in sel.scores)


@pytest.mark.parametrize("name", FAMILIES)
def test_equal_embeddings_are_one_cluster(name):  # type: ignore[no-untyped-def]
    sel = select_model(np.ones((12, 4), np.float32), name)
    _valid(sel, 12)
    assert sel.labels.tolist() == [0] * 12 and "equal" in sel.reason


def test_single_label_is_one_cluster():  # type: ignore[no-untyped-def]
    x, _ = _blobs(k=1, per=30)
    # one dense group: DBSCAN finds a single cluster at every point, which the scores cannot judge
    sel = select_model(x, "DBSCAN", {"eps": [0.9, 1.2], "min_samples": [2]})
    _valid(sel, 30)
    assert sel.labels.tolist() == [0] * 30
    assert all(s.note == "a single cluster" and s.score is None for s in sel.scores)
    assert sel.params == {"eps": 0.9, "min_samples": 2}
    assert sel.reason.startswith("no grid point could be scored")


@pytest.mark.parametrize("name,grid", [
    ("DBSCAN", {"eps": [0.01], "min_samples": [2, 3]}),
    ("HDBSCAN", {"min_cluster_size": [20]}),
])
def test_all_noise_is_all_outliers(name, grid):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(20, 16)).astype(np.float32)  # no structure at all
    sel = select_model(x, name, grid)
    _valid(sel, 20)
    assert sel.labels.tolist() == [-1] * 20
    assert {s.note for s in sel.scores} == {"all noise"}
    assert sel.describe()["n_noise"] == 20 and sel.describe()["n_clusters"] == 0


@pytest.mark.parametrize("name", ["kmeans", "hierarchy", "gaussian"])
def test_more_clusters_than_samples_are_skipped(name):  # type: ignore[no-untyped-def]
    x, truth = _blobs(k=2, per=3)
    sel = select_model(x, name, {"n_clusters": [2, 8, 16]})
    _valid(sel, 6)
    notes = [s.note for s in sel.scores]
    assert notes[1:] == ["skipped: n_clusters=8 > 6 samples", "skipped: n_clusters=16 > 6 samples"]
    assert sel.params["n_clusters"] == 2 and sel.reason == "only point scored"
    assert adjusted_rand_score(truth, sel.labels) == 1.0
    # every point skipped: nothing ran, every sample is an outlier
    none = select_model(x, name, {"n_clusters": [7, 9]})
    _valid(none, 6)
    assert none.labels.tolist() == [-1] * 6 and none.params == {}
    assert "no grid point could run" in none.reason


def test_hdbscan_skips_sizes_beyond_the_samples():  # type: ignore[no-untyped-def]
    x, _ = _blobs(k=2, per=4)
    sel = select_model(x, "HDBSCAN", {"min_cluster_size": [3, 50], "max_cluster_size": [0, 2]})
    notes = [s.note for s in sel.scores]
    assert notes[1] == "skipped: max_cluster_size=2 < min_cluster_size=3"
    assert notes[2:] == ["skipped: min_cluster_size=50 > 8 samples"] * 2
    assert sel.params == {"min_cluster_size": 3, "max_cluster_size": 0}


def test_one_cluster_per_sample_is_not_judged():  # type: ignore[no-untyped-def]
    x, _ = _blobs(k=2, per=2)
    sel = select_model(x, "kmeans", {"n_clusters": [2, 4]})
    assert [s.note for s in sel.scores] == ["", "one cluster per sample"]
    assert sel.params["n_clusters"] == 2


def test_noise_counts_as_a_group_in_the_scores():  # type: ignore[no-untyped-def]
    x, truth = _blobs(k=3, per=20)
    far = np.eye(32, dtype=np.float32)[-3:]  # three isolated points
    sel = select_model(np.concatenate([x, far]), "DBSCAN", {"eps": [0.6], "min_samples": [2]})
    assert sel.n_clusters == 3 and sel.n_noise == 3
    assert sel.labels[-3:].tolist() == [-1, -1, -1]
    assert adjusted_rand_score(truth, sel.labels[:-3]) == 1.0


def test_bad_embeddings_are_input_errors():  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=r"shape \(4,\) are invalid: expected \(N, D\)"):
        select_model(np.zeros(4, np.float32), "kmeans")
    bad = np.zeros((4, 2), np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(InputError, match="NaN or infinity"):
        select_model(bad, "kmeans")


def test_selection_is_frozen_and_seeded():  # type: ignore[no-untyped-def]
    x, _ = _blobs(k=3, per=15)
    a = select_model(x, "gaussian", {"n_clusters": [2, 3, 4]}, seed=7)
    b = select_model(x, "gaussian", {"n_clusters": [2, 3, 4]}, seed=7)
    assert a.labels.tolist() == b.labels.tolist() and a.table() == b.table()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.model = "x"  # type: ignore[misc]
    assert set(a.table()[0]) == {"params", "n_clusters", "n_noise", "silhouette", "davies_bouldin",
                                 "calinski_harabasz", "score", "note"}
