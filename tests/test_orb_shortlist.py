"""ORB's shortlist: only each image's nearest images by bag of visual words are matched.

Against matching every pair, on the generated near-duplicates (ORB's use: crops, rotations,
re-encodes) the shortlist finds the edges and gives the same clusters. On the digits, where a
class has more members than the shortlist has places, it finds fewer edges but the same
components where the edges join only images of one digit; where matching every pair also links
different digits, it leaves most of those links out and scores better against the truth.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import manifest_ari
from sklearn.metrics import adjusted_rand_score

from icas_ray.clustering import merge_batches, process_batch
from icas_ray.datasets import read_truth
from icas_ray.errors import ConfigError
from icas_ray.features import Features, get_method
from icas_ray.features.orb import ORBMethod, bag_of_words, word_weights
from icas_ray.graph import build_edges, cluster_labels, components, nearest_pairs
from icas_ray.images import decode


class _Scored(ORBMethod):
    """ORB whose pairs are read from the matrix ORB's kernel computed once for every pair
    (each pair is matched once for all the comparisons of a test)."""

    def __init__(self, shortlist: int, matrix: np.ndarray) -> None:
        super().__init__(get_method("ORB", {"shortlist": shortlist}).params)
        self.matrix = matrix

    def pairwise(self, a: Features, b: Features) -> np.ndarray:
        return self.matrix[np.ix_(a["index"], b["index"])]


def _load(folder: str):  # type: ignore[no-untyped-def]
    """ORB features (plus each image's ``index``), the matrix of every pair and the labels of a
    generated data set's readable images, sorted by file size (the pipeline's batch order)."""
    method = get_method("ORB")
    truth = read_truth(folder)
    names = sorted((n for n in truth if truth[n] != "broken"),
                   key=lambda n: (os.path.getsize(os.path.join(folder, n)), n))
    images = []
    for n in names:
        with open(os.path.join(folder, n), "rb") as f:
            images.append(decode(f.read(), method.read))
    feats = method.extract(images)
    matrix = method.pairwise(feats, feats)
    feats["index"] = np.arange(len(names))
    return feats, matrix, np.array([truth[n] for n in names])


def _cluster(feats, method, threshold: float, batch_size: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Final cluster per image (outliers numbered apart) through the batches and the merge,
    with ORB's default strategy."""
    n = len(feats["count"])
    results = []
    for b, s in enumerate(range(0, n, batch_size)):
        part = {k: v[s:s + batch_size] for k, v in feats.items()}
        m = len(part["count"])
        results.append(process_batch(b, uris=[str(i) for i in range(s, s + m)],
                                     sizes=np.zeros(m, np.int64), status=np.full(m, "ok", object),
                                     error=np.full(m, "", object), features=part, method=method,
                                     threshold=threshold, strategy=method.default_strategy,
                                     merge_reps=method.merge_reps))
    merged = merge_batches(results, method, threshold, strategy=method.default_strategy)
    cluster = np.concatenate([merged.cluster[r.batch] for r in results])
    return np.where(cluster >= 0, cluster, -2 - np.arange(n))


def _recall(feats, matrix: np.ndarray, shortlist: int, threshold: float) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Share of the pairs above ``threshold`` (matching every pair) on the shortlist."""
    a, b = np.nonzero(np.triu(matrix > threshold, 1))
    short = get_method("ORB", {"shortlist": shortlist}).candidates(feats)
    on_list = np.zeros(matrix.shape, bool)
    on_list[short[:, 0], short[:, 1]] = True
    return float(on_list[a, b].mean()), len(a)


@pytest.fixture(scope="module")
def near_dups(near_dup_dir):  # type: ignore[no-untyped-def]
    return _load(near_dup_dir)


def test_shortlist_finds_the_all_pairs_edges_and_clusters(near_dups):  # type: ignore[no-untyped-def]
    feats, matrix, truth = near_dups
    # 48 images, 8 of each photo: 7 places on the shortlist find each image's edges
    recall, n_edges = _recall(feats, matrix, 7, 0.95)
    assert n_edges > 50 and recall >= 0.95
    # 5 places (fewer than the variants of a photo) still join them; batches of 20, so the
    # merge's shortlist is used as well
    full = _cluster(feats, _Scored(0, matrix), 0.95, 20)
    got = _cluster(feats, _Scored(5, matrix), 0.95, 20)
    assert adjusted_rand_score(full, got) >= 0.98
    assert abs(adjusted_rand_score(truth, got) - adjusted_rand_score(truth, full)) <= 0.02
    assert adjusted_rand_score(truth, got) >= 0.8


def test_shortlist_on_digits_against_every_pair(digits200):  # type: ignore[no-untyped-def]
    feats, matrix, truth = _load(digits200)
    full = {t: _cluster(feats, _Scored(0, matrix), t, 100) for t in (0.98, 0.99)}
    # 20 images a digit, about 10 in each batch of 100. At 0.99 every pair above the
    # threshold shows one digit: a shortlist of 20 finds the same components.
    got = _cluster(feats, _Scored(20, matrix), 0.99, 100)
    assert adjusted_rand_score(full[0.99], got) >= 0.98
    assert adjusted_rand_score(truth, got) >= adjusted_rand_score(truth, full[0.99]) - 0.02
    # At 0.98 matching every pair also links different digits and chains them together; a
    # shortlist of 10 leaves most of those links out.
    got = _cluster(feats, _Scored(10, matrix), 0.98, 100)
    assert adjusted_rand_score(truth, got) >= adjusted_rand_score(truth, full[0.98]) + 0.1


def test_shortlist_compares_fewer_pairs(near_dups):  # type: ignore[no-untyped-def]
    feats, _, _ = near_dups
    m = get_method("ORB", {"shortlist": 5})
    pairs = m.candidates(feats)
    n = len(feats["count"])
    assert len(pairs) <= 5 * n and (pairs[:, 0] < pairs[:, 1]).all()
    assert get_method("ORB", {"shortlist": 0}).candidates(feats) is None


def test_shortlist_param_is_checked():  # type: ignore[no-untyped-def]
    assert get_method("ORB", {"shortlist": "0"}).params.shortlist == 0
    with pytest.raises(ConfigError, match="shortlist=-1 of method ORB is invalid: expected >= 0"):
        get_method("ORB", {"shortlist": -1})


def test_bag_of_words_counts_every_descriptor_once_per_table():  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    desc = rng.integers(0, 256, (3, 20, 32), dtype=np.uint8)
    bags = bag_of_words(desc, np.array([20, 7, 0]))
    assert bags.shape == (3, 1024) and bags.sum(axis=1).tolist() == [80, 28, 0]
    # padding past count is ignored; the same descriptors give the same words
    desc[1, 7:] = 0
    np.testing.assert_array_equal(bag_of_words(desc[1:2], np.array([7]))[0], bags[1])
    w = word_weights(bags)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), [1, 1, 0], atol=1e-6)


def test_nearest_pairs_are_symmetric_top_k_and_skip_groups():  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    got = nearest_pairs(x, 3, block=7)  # blocks of 7 rows give the one-block answer
    np.testing.assert_array_equal(got, nearest_pairs(x, 3))
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    near = np.argsort(-sim, axis=1)[:, :3]
    want = {(min(i, j), max(i, j)) for i in range(30) for j in near[i].tolist()}
    assert set(map(tuple, got.tolist())) == want
    groups = np.arange(30) % 3
    cross = nearest_pairs(x, 3, groups=groups)
    assert (groups[cross[:, 0]] != groups[cross[:, 1]]).all() and len(cross) >= 30 * 3 // 2
    assert nearest_pairs(x[:1], 3).shape == (0, 2)


def _kernel(x: np.ndarray):  # type: ignore[no-untyped-def]
    return lambda r, c: 1.0 - np.abs(x[r][:, None] - x[c][None, :])


@pytest.mark.parametrize("strategy", ["exhaustive", "connected", "pruned"])
def test_candidates_restrict_every_strategy(strategy):  # type: ignore[no-untyped-def]
    x = np.array([0.0, 0.05, 0.1, 0.5, 0.52, 0.9])
    # (0, 2) and (3, 4) only, in either order and repeated: pair (0, 1) is similar but not
    # a candidate
    cand = np.array([[2, 0], [3, 4], [4, 3], [0, 2], [5, 5]])
    e = build_edges(len(x), _kernel(x), 0.88, strategy=strategy, candidates=cand)
    assert set(zip(e.a.tolist(), e.b.tolist())) == {(0, 2), (3, 4)}
    assert e.comparisons == 2 and e.possible == 15 and e.complete
    assert cluster_labels(components(6, e.a, e.b)).tolist() == [0, -1, 0, 1, 1, -1]


@pytest.mark.parametrize("seed", range(3))
def test_connected_on_candidates_gives_exhaustive_components(seed):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    for _ in range(30):
        n = int(rng.integers(2, 50))
        x = rng.random(n)
        cand = rng.integers(0, n, (int(rng.integers(0, 3 * n)), 2))
        groups = rng.integers(0, 3, n) if rng.random() < 0.5 else None
        full = build_edges(n, _kernel(x), 0.9, groups=groups, candidates=cand)
        fast = build_edges(n, _kernel(x), 0.9, groups=groups, candidates=cand,
                           strategy="connected")
        assert (components(n, full.a, full.b) == components(n, fast.a, fast.b)).all()
        assert fast.comparisons <= full.comparisons
        on_list = {(min(a, b), max(a, b)) for a, b in cand.tolist() if a != b}
        assert set(zip(full.a.tolist(), full.b.tolist())) <= on_list
        if groups is not None:
            assert (groups[full.a] != groups[full.b]).all()


def test_candidates_out_of_range_raise():  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="candidate pairs must index 3 items"):
        build_edges(3, _kernel(np.zeros(3)), 0.5, candidates=np.array([[0, 3]]))


@pytest.mark.usefixtures("ray_session")
def test_cluster_orb_groups_near_duplicates_by_photo(near_dup_dir, tmp_path):  # type: ignore[no-untyped-def]
    from icas_ray.pipeline.classic import cluster
    from icas_ray.pipeline.config import ClusterConfig

    out = str(tmp_path / "out")
    summary = cluster(near_dup_dir, out, ClusterConfig(method="ORB", threshold=0.95, batch_size=24,
                                                       method_params={"shortlist": 8}))
    m = pq.read_table(os.path.join(out, "manifest.parquet")).to_pandas()
    assert manifest_ari(m, read_truth(near_dup_dir)) >= 0.85
    work = summary["comparisons"]
    assert 0 < work["batch_comparisons"] < work["batch_possible_pairs"]


def test_threshold_sample_scores_the_shortlist_as_the_batches_do(near_dups):  # type: ignore[no-untyped-def]
    """The threshold sample's matrix holds the shortlist's pairs scored as the batches score
    them (each pair matched once) and 0 off it; shortlist=0 scores every pair."""
    from icas_ray.threshold import similarities, suggest_threshold

    feats, matrix, truth = near_dups
    uris = [f"img{i}.png" for i in range(len(truth))]
    counted = []

    class Counting(_Scored):
        def pairwise(self, a: Features, b: Features) -> np.ndarray:
            counted.append(len(a["index"]) * len(b["index"]))
            return super().pairwise(a, b)

    method = Counting(5, matrix)
    sims = similarities(uris, feats, method, len(uris))
    pairs = np.sort(method.candidates(feats), axis=1)
    on = np.zeros_like(matrix, bool)
    on[pairs[:, 0], pairs[:, 1]] = on[pairs[:, 1], pairs[:, 0]] = True
    np.fill_diagonal(on, False)
    got = sims.matrix.copy()
    np.fill_diagonal(got, 0)
    assert np.allclose(got[on], matrix[on]) and not got[~on].any()
    assert sum(counted) == on.sum() // 2 < len(uris) * (len(uris) - 1) // 2
    full = similarities(uris, feats, _Scored(0, matrix), len(uris))
    iu = np.triu_indices(len(uris), 1)
    assert np.allclose(full.values, matrix[iu])
    # the shortlisted sample still finds the photos' groups
    assert 0.0 < suggest_threshold(sims.matrix, method) <= 1.0
