"""Threshold suggestion, the interactive HTML plot (in headless Chromium), and its use."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from icas_ray.features import get_method
from icas_ray.threshold import render_threshold_html, suggest_threshold, threshold_curve


def test_suggestion_finds_the_gap_between_groups():  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 8)
    sim = np.where(labels[:, None] == labels[None, :], rng.uniform(0.85, 0.95, (40, 40)),
                   rng.uniform(0.2, 0.6, (40, 40)))
    sim = (sim + sim.T) / 2
    t = suggest_threshold(sim, get_method("imagehash"))
    assert 0.6 < t < 0.85


def test_suggestion_separates_close_groups_beside_a_far_one():  # type: ignore[no-untyped-def]
    """Four groups close to each other and one far away: the widest gap in the spanning tree
    (the rule before) lies between the far group and the rest; the groups lie above it."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), 12)
    same = labels[:, None] == labels[None, :]
    far = (labels[:, None] == 4) != (labels[None, :] == 4)
    sim = np.where(same, rng.uniform(0.85, 0.95, (60, 60)),
                   np.where(far, rng.uniform(0.0, 0.1, (60, 60)), rng.uniform(0.5, 0.7, (60, 60))))
    sim = (sim + sim.T) / 2
    t = suggest_threshold(sim, get_method("imagehash"))
    assert 0.7 < t < 0.85


def test_agreement_by_cut_equals_sklearn_on_every_cut():  # type: ignore[no-untyped-def]
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from sklearn.metrics import adjusted_rand_score

    from icas_ray.threshold import _agreement_by_cut, _spanning_tree

    rng = np.random.default_rng(0)
    for n, k_groups in [(3, 1), (20, 4), (45, 45), (60, 6)]:
        sim = rng.uniform(0, 1, (n, n))
        sim = (sim + sim.T) / 2
        a, b, _ = _spanning_tree(sim)
        groups = rng.integers(0, k_groups, n)
        cuts = [connected_components(coo_matrix((np.ones(k + 1), (a[:k + 1], b[:k + 1])),
                                                shape=(n, n)), directed=False)[1]
                for k in range(n - 1)]
        expected = [adjusted_rand_score(groups, c) for c in cuts]
        assert np.allclose(_agreement_by_cut(a, b, groups), expected)


def test_spanning_tree_is_a_maximum_one_with_the_same_cuts_as_scipys():  # type: ignore[no-untyped-def]
    """The dense spanning tree against scipy's (on the matrix it used to be given): the same
    total weight, and at every distinct weight the same partition (ties may pick other edges,
    and the suggestion only cuts between distinct weights)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

    from icas_ray.threshold import _spanning_tree

    def components(a, b, n):  # type: ignore[no-untyped-def]
        return connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)),
                                    directed=False)[1]

    rng = np.random.default_rng(1)
    for n, levels in [(2, 0), (3, 0), (50, 0), (200, 0), (300, 65)]:  # 65 levels: imagehash's ties
        sim = rng.uniform(0, 1, (n, n))
        if levels:
            sim = np.round(sim * (levels - 1)) / (levels - 1)
        sim = (sim + sim.T) / 2
        a, b, w = _spanning_tree(sim)
        assert len(a) == n - 1 and np.all(np.diff(w) <= 0)
        assert np.allclose(sim[a, b], w)
        assert components(a, b, n).max() == 0  # spans every node
        dist = (sim.max() + 1.0) - sim
        np.fill_diagonal(dist, 0.0)
        tree = minimum_spanning_tree(dist).tocoo()
        assert np.isclose(w.sum(), ((sim.max() + 1.0) - tree.data).sum())
        for t in np.unique(w):
            keep, ref = w >= t, sim[tree.row, tree.col] >= t
            mine = components(a[keep], b[keep], n)
            theirs = components(tree.row[ref], tree.col[ref], n)
            assert adjusted_rand(mine, theirs) == 1.0


def adjusted_rand(x, y):  # type: ignore[no-untyped-def]
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(x, y) if len(set(x)) > 1 or len(set(y)) > 1 else 1.0


def test_curve_counts_pairs_and_images():  # type: ignore[no-untyped-def]
    values = np.array([0.9, 0.8, 0.5, 0.1])
    nearest = np.array([0.9, 0.9, 0.8, 0.5])
    curve = threshold_curve(values, nearest, 400, points=10)
    at = {round(p["threshold"], 2): p for p in curve}
    assert at[0.5]["pairs"] == 2 and at[0.5]["clustered"] == 3 and at[0.5]["clustered_estimate"] == 300


@pytest.fixture(scope="module")
def threshold_page(ray_session, digits1000, tmp_path_factory):  # type: ignore[no-untyped-def]
    from icas_ray.cli import cli

    html = str(tmp_path_factory.mktemp("thr") / "plot.html")
    r = CliRunner().invoke(cli, ["threshold", digits1000, "--method", "imagehash", "--html", html])
    assert r.exit_code == 0, r.output
    suggested = float(r.output.split("imagehash: ")[1].split()[0])
    return html, suggested


def _cluster_with_suggestion(src: str, out: str, method: str, batch: int) -> tuple[dict, float]:  # type: ignore[type-arg]
    """``icas cluster`` without a threshold: its summary and the ARI against truth.csv."""
    import pyarrow.parquet as pq

    from conftest import manifest_ari
    from icas_ray.datasets import read_truth
    from icas_ray.pipeline.classic import cluster
    from icas_ray.pipeline.config import ClusterConfig

    summary = cluster(src, out, ClusterConfig(method=method, batch_size=batch))
    assert summary["threshold_source"] == "suggested"
    m = pq.read_table(os.path.join(out, "manifest.parquet")).to_pandas()
    return summary, manifest_ari(m, read_truth(src))


def test_suggested_threshold_clusters_the_digits(ray_session, digits1000, threshold_page, tmp_path):  # type: ignore[no-untyped-def]
    """`icas cluster` without --threshold uses `icas threshold`'s suggestion, which clusters well."""
    _, suggested = threshold_page
    summary, ari = _cluster_with_suggestion(digits1000, str(tmp_path / "out"), "imagehash", 250)
    assert summary["threshold"] == pytest.approx(suggested, abs=1e-3)
    assert ari >= 0.95


# The ARI floors (those of the accuracy tests in test_cluster.py), reached with the
# suggestion instead of a hand-picked threshold; ORB on the small set as there.
@pytest.mark.parametrize("method,data,batch,min_ari", [
    ("minhash", "digits1000", 250, 0.5),
    ("SSIM", "digits1000", 250, 0.85),
    ("TM", "digits1000", 250, 0.95),
    ("ORB", "digits200", 50, 0.25),
], ids=["minhash", "SSIM", "TM", "ORB"])
def test_suggested_threshold_clusters_the_digits_with_every_method(  # type: ignore[no-untyped-def]
        ray_session, request, tmp_path, method, data, batch, min_ari):
    summary, ari = _cluster_with_suggestion(request.getfixturevalue(data), str(tmp_path / "out"),
                                            method, batch)
    assert ari >= min_ari, (summary["threshold"], ari)


@pytest.mark.browser
def test_html_plot_hover_and_click_in_chromium(threshold_page):  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    from conftest import CHROMIUM, CHROMIUM_ARGS

    html, suggested = threshold_page
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.goto("file://" + html)
        assert page.text_content("#suggested") == f"{suggested:.4f}"
        box = page.locator("#plot").bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
        text = page.text_content("#hover") or ""
        assert text.startswith("threshold ") and "similar pairs in the sample" in text
        assert "of all 1000 images" in text
        page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
        command = page.text_content("#command") or ""
        threshold = text.split()[1].rstrip(":")
        assert command.startswith("icas cluster ") and f"--threshold {threshold}" in command
        page.screenshot(path=html + ".png")
        browser.close()


def test_render_is_self_contained():  # type: ignore[no-untyped-def]
    page = render_threshold_html(curve=[{"threshold": 0.5, "pairs": 1, "clustered": 2,
                                         "clustered_estimate": 2}], suggested=0.5, method="TM",
                                 title="</script>x", n=2, total=2, pairs=1, command="icas cluster x --threshold {T}",
                                 rule="r")
    assert "<script src" not in page and "<link" not in page and "https://" not in page
    assert "</script>x" not in page  # escaped
