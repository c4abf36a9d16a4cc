"""Feature kernels against their per-pair references, numpy against torch, graph strategies."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from icas_ray.errors import ConfigError
from icas_ray.features import get_method, method_names
from icas_ray.features.ssim import ssim_matrix, ssim_matrix_torch
from icas_ray.features.tm import tm_matrix, tm_matrix_torch
from icas_ray.graph import build_edges, cluster_labels, components
from icas_ray.images import ReadConfig

RNG = np.random.default_rng(0)


def _images(n: int = 6, size: int = 48) -> np.ndarray:
    base = RNG.integers(0, 256, (n, size, size), dtype=np.uint8)
    base[1] = np.clip(base[0].astype(int) + 7, 0, 255)  # a near-duplicate pair
    return base


def test_registry_lists_and_rejects():  # type: ignore[no-untyped-def]
    assert method_names() == ["embedding", "imagehash", "minhash", "ORB", "SSIM", "TM"]
    assert get_method("ssim").name == "SSIM"  # case-insensitive
    with pytest.raises(ConfigError, match="unknown method 'sift': must be one of embedding, imagehash, minhash, ORB, SSIM, TM"):
        get_method("sift")
    with pytest.raises(ConfigError, match="unknown parameter.*hashsize.*valid parameters are hash_size, highfreq_factor"):
        get_method("imagehash", {"hashsize": 8})
    with pytest.raises(ConfigError, match="win_size=4 .* odd"):
        get_method("SSIM", {"win_size": 4})


@pytest.mark.parametrize("name", [n for n in method_names() if n != "embedding"])
@pytest.mark.parametrize("read", [None, ReadConfig(scale=0.5)])
def test_prepare_then_extract_prepared_is_extract(name, read):  # type: ignore[no-untyped-def]
    """The pipeline prepares each image as it is decoded and extracts the prepared ones: the
    features are extract()'s, bit for bit, with the method's read size or another."""
    m = get_method(name, None, read)
    rng = np.random.default_rng(1)
    side = 96 if read is None else 160
    imgs = [cv2.GaussianBlur(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), (5, 5), 0)
            for _ in range(5)]
    whole = m.extract(imgs)
    parts = m.extract_prepared([m.prepare(im) for im in imgs])
    assert whole.keys() == parts.keys()
    for k in whole:
        assert whole[k].dtype == parts[k].dtype
        np.testing.assert_array_equal(whole[k], parts[k])


def test_ssim_matches_skimage_and_torch():  # type: ignore[no-untyped-def]
    from skimage.metrics import structural_similarity

    g = _images()
    ref = np.array([[structural_similarity(a, b) for b in g] for a in g])
    np.testing.assert_allclose(ssim_matrix(g, g), ref, atol=1e-5)
    np.testing.assert_allclose(ssim_matrix_torch(g, g), ref, atol=1e-5)


def test_tm_matches_opencv_and_torch():  # type: ignore[no-untyped-def]
    g = _images()
    ref = np.array([[1 - cv2.matchTemplate(a, b, cv2.TM_SQDIFF_NORMED)[0, 0] for b in g] for a in g])
    np.testing.assert_allclose(tm_matrix(g, g), ref, atol=1e-5)
    np.testing.assert_allclose(tm_matrix_torch(g, g), ref, atol=1e-5)


def test_imagehash_bits_agree_with_the_library():  # type: ignore[no-untyped-def]
    """ImageHash's phash, with an area-averaging shrink instead of PIL's Lanczos filter: the
    bits agree on nearly every position and the distances follow the library's."""
    import imagehash

    imgs = [np.repeat(g[..., None], 3, 2) for g in _images(size=64)]
    m = get_method("imagehash", {"hash_size": 8})
    feats = m.extract(imgs)
    bits = np.unpackbits(feats["hash"].view(np.uint8), axis=1)[:, :64].astype(bool)
    hashes = [imagehash.phash(Image.fromarray(i), hash_size=8) for i in imgs]
    ref_bits = np.array([h.hash.ravel() for h in hashes])
    agreement = (bits == ref_bits).mean(axis=1)
    assert agreement.mean() >= 0.9 and agreement.min() >= 0.8, agreement  # 0.95 and 0.875 measured
    sim = m.pairwise(feats, feats)
    ref = np.array([[1 - (a - b) / 64 for b in hashes] for a in hashes])
    assert np.abs(sim - ref).mean() < 0.05
    assert sim.min() >= 0 and sim.max() <= 1  # bits, not rows: the original's defect is gone
    np.testing.assert_allclose(np.diag(sim), 1.0)


def _datasketch_minhash(gray):  # type: ignore[no-untyped-def]
    from datasketch import MinHash

    from icas_ray.features.minhash import MinHashParams, corner_indices

    mh = MinHash(num_perm=128, seed=1)
    mh.update_batch([v.tobytes() for v in corner_indices(gray, MinHashParams()).astype("<u4")])
    return mh


def test_corner_indices_are_the_stable_sorts_top_n():  # type: ignore[no-untyped-def]
    """The keyed partition picks what a stable argsort picks: the strongest responses, ties
    (plentiful after the dilation, and among negative responses too) to the larger index."""
    import cv2

    from icas_ray.features.minhash import MinHashParams, corner_indices

    rng = np.random.default_rng(3)
    grays = [g for g in _images(4, 128)]
    grays.append(np.full((128, 128), 7, np.uint8))  # flat: every response ties
    grays.append((rng.random((128, 128)) * 4).astype(np.uint8))  # few levels, many ties
    grays.append(np.tile(np.array([0, 255], np.uint8), (128, 64)))  # stripes: strongly negative
    for top_n in (1, 100, 5000):
        p = MinHashParams(top_n_corners=top_n)
        for gray in grays:
            response = cv2.cornerHarris(gray.astype(np.float32), p.block_size, p.ksize, p.k)
            response = np.asarray(cv2.dilate(response, None)).ravel()
            expected = np.sort(np.argsort(response, kind="stable")[-top_n:])
            np.testing.assert_array_equal(corner_indices(gray, p), expected)


@pytest.mark.parametrize("case", ["spread", "bound-ties", "few-levels", "zeros", "signed-zero", "short"])
def test_top_indices_is_the_stable_sorts_top_n(case):  # type: ignore[no-untyped-def]
    """The candidates' cut (group maxima bound the n-th largest value) keeps what a stable
    argsort picks, where the bound is below it, where it is it (its ties to the last
    occurrences), and where no cut applies (a size not in groups)."""
    from icas_ray.features.minhash import top_indices

    rng = np.random.default_rng(7)
    for trial in range(40):
        size = 1000 if case == "short" else 16384
        if case == "spread":
            values = rng.normal(size=size)
        elif case == "bound-ties":  # a plateau of 9 equal values around each of a few peaks
            values = rng.normal(size=size) * 0.01
            for peak in rng.integers(0, size - 9, 15):
                values[peak:peak + 9] = rng.integers(1, 4)
        elif case == "few-levels":
            values = rng.integers(-3, 4, size) * 0.5
        elif case == "zeros":  # fewer positives than n: the rest are the last zeros
            values = np.zeros(size)
            values[rng.integers(0, size, 30)] = rng.random(30) + 1
        elif case == "signed-zero":  # -0.0 ties with 0.0
            values = np.zeros(size)
            values[rng.integers(0, size, 3000)] = -0.0
            values[rng.integers(0, size, 20)] = 1.0
        else:
            values = rng.integers(0, 5, size).astype(float)
        values = values.astype(np.float32)
        for n in (1, 100, 256, 300):
            expected = np.sort(np.argsort(values, kind="stable")[-n:])
            np.testing.assert_array_equal(top_indices(values, n), expected, err_msg=f"{case} {trial} {n}")


@pytest.mark.parametrize("read", [None, ReadConfig(scale=1.0)], ids=["grid", "scale"])
def test_minhash_matches_datasketch_jaccard(read):  # type: ignore[no-untyped-def]
    """On the default 128x128 grid (positions as signatures) and without one (hash values),
    the similarity is datasketch's Jaccard estimate."""
    imgs = [np.repeat(g[..., None], 3, 2) for g in _images(4, 128)]
    imgs[2] = imgs[2][:64, :96]  # another size: brought to the grid, or kept as it is
    m = get_method("minhash", read=read)
    feats = m.extract(imgs)
    assert feats["signature"].dtype == (np.uint16 if read is None else np.uint32)
    sim = m.pairwise(feats, m.extract(imgs[::-1]))[:, ::-1]
    grays = [img[..., 0] if read is not None or img.shape[:2] == (128, 128)
             else cv2.resize(img, (128, 128), interpolation=cv2.INTER_LINEAR)[..., 0] for img in imgs]
    mhs = [_datasketch_minhash(g) for g in grays]
    ref = np.array([[a.jaccard(b) for b in mhs] for a in mhs])
    np.testing.assert_allclose(sim, ref, atol=1e-6)
    assert sim[0, 1] > 0.5 and sim[0, 2] < 0.1  # the near-duplicate pair, and not the others


def test_minhash_signatures_are_datasketchs():  # type: ignore[no-untyped-def]
    """Signatures are datasketch's own MinHash values bit for bit, or (on a grid) the positions
    whose hashes they are."""
    from datasketch import MinHash

    imgs = [np.repeat(g[..., None], 3, 2) for g in _images(6, 128)]
    grid, values = get_method("minhash"), get_method("minhash", read=ReadConfig(scale=1.0))
    first, again = values.extract(imgs)["signature"], values.extract(imgs[::-1])["signature"][::-1]
    ids = grid.extract(imgs)["signature"]
    for img, sig, sig2, pos in zip(imgs, first, again, ids):
        mh = _datasketch_minhash(img[..., 0])
        assert np.array_equal(sig, mh.hashvalues) and np.array_equal(sig2, mh.hashvalues)
        of_position = []
        for k, p in enumerate(pos):
            one = MinHash(num_perm=128, seed=1)
            one.update(np.uint32(p).astype("<u4").tobytes())
            of_position.append(one.hashvalues[k])
        assert np.array_equal(of_position, mh.hashvalues)


def test_minhash_positions_stand_for_values_only_where_they_can():  # type: ignore[no-untyped-def]
    from icas_ray.features import minhash

    assert minhash._grid_hashes(128 * 128) is not None  # distinct hashes over the default grid
    big = get_method("minhash", read=ReadConfig(size=(300, 300)))  # over 16 bits
    assert big.extract([np.zeros((300, 300, 3), np.uint8)])["signature"].dtype == np.uint32
    minhash._grid_hashes.cache_clear()
    real = minhash._element_hashes
    try:  # two positions with one hash: signatures fall back to the values themselves
        minhash._element_hashes = lambda pos: real(np.asarray(pos) // 2)  # type: ignore[assignment]
        m = get_method("minhash")
        img = np.repeat(_images(2, 128)[0][..., None], 3, 2)
        sig = m.extract([img])["signature"]
        assert sig.dtype == np.uint32
    finally:
        minhash._element_hashes = real  # type: ignore[assignment]
        minhash._grid_hashes.cache_clear()


def test_orb_similarity_identical_and_different():  # type: ignore[no-untyped-def]
    import skimage.data

    cam = skimage.data.camera()[::2, ::2]
    other = skimage.data.coins()[:256, :256]
    imgs = [np.repeat(x[..., None], 3, 2) for x in (cam, cam.copy(), other)]
    m = get_method("ORB")
    sim = m.pairwise(m.extract(imgs), m.extract(imgs))
    assert sim[0, 1] == pytest.approx(1.0)  # the original scored an image 0 against itself
    assert sim[0, 1] > sim[0, 2]


def test_orb_kernel_is_the_cross_checked_bfmatcher():  # type: ignore[no-untyped-def]
    import cv2
    import skimage.data

    imgs = [np.repeat(x[..., None], 3, 2) for x in (
        skimage.data.camera()[::2, ::2], skimage.data.camera()[10:250, 20:260],
        skimage.data.coins()[:256, :256], np.full((64, 64), 200, np.uint8))]
    m = get_method("ORB")
    feats = m.extract(imgs)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    want = np.zeros((4, 4), np.float32)
    for i in range(4):
        for j in range(4):
            da, db = (feats["desc"][k][:feats["count"][k]] for k in (i, j))
            d = np.array([x.distance for x in matcher.match(da, db)]) if len(da) and len(db) else []
            want[i, j] = np.mean((d < 0.75 * d.max()) | (d == 0)) if len(d) else 0.0
    assert feats["count"][3] == 0  # a flat image has no keypoints: similarity 0
    np.testing.assert_allclose(m.pairwise(feats, dict(feats)), want, atol=1e-6)
    # a set against itself is matched once per pair and mirrored
    np.testing.assert_allclose(m.pairwise(feats, feats), want, atol=1e-6)


def test_ssim_brings_sizes_together_instead_of_minus_inf():  # type: ignore[no-untyped-def]
    from icas_ray.images import ReadConfig, decode
    import io

    def png(w: int, h: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    m = get_method("SSIM")
    a, b = decode(png(100, 100), m.default_read), decode(png(101, 100), m.default_read)
    sim = m.pairwise(m.extract([a]), m.extract([b]))
    assert np.isfinite(sim).all() and sim[0, 0] == pytest.approx(1.0)


def _kernel(x: np.ndarray):  # type: ignore[no-untyped-def]
    return lambda r, c: 1.0 - np.abs(x[r][:, None] - x[c][None, :])


def test_exhaustive_finds_every_edge_and_counts():  # type: ignore[no-untyped-def]
    x = np.array([0.0, 0.05, 0.1, 0.5, 0.52, 0.9])
    e = build_edges(len(x), _kernel(x), 0.88)
    assert e.comparisons == e.possible == 15
    pairs = set(zip(e.a.tolist(), e.b.tolist()))
    assert pairs == {(0, 1), (0, 2), (1, 2), (3, 4)}
    labels = cluster_labels(components(len(x), e.a, e.b))
    assert labels.tolist() == [0, 0, 0, 1, 1, -1]


def test_pruned_skips_matched_items_but_keeps_chains():  # type: ignore[no-untyped-def]
    x = np.array([0.0, 0.05, 0.1, 0.5, 0.52, 0.9])
    e = build_edges(len(x), _kernel(x), 0.88, strategy="pruned")
    assert e.comparisons < 15
    labels = cluster_labels(components(len(x), e.a, e.b))
    assert labels.tolist() == [0, 0, 0, 1, 1, -1]


def test_groups_skip_same_group_pairs():  # type: ignore[no-untyped-def]
    x = np.array([0.0, 0.01, 0.02, 0.03])
    e = build_edges(4, _kernel(x), 0.5, groups=np.array([0, 0, 1, 1]))
    assert e.possible == 4 and e.comparisons == 4
    assert all((a < 2) != (b < 2) for a, b in zip(e.a, e.b))


def test_time_limit_stops_early():  # type: ignore[no-untyped-def]
    import time

    def slow(r, c):  # type: ignore[no-untyped-def]
        time.sleep(0.05)
        return np.zeros((len(r), len(c)))

    e = build_edges(50, slow, 0.5, strategy="pruned", time_limit_s=0.1)
    assert not e.complete and e.comparisons < e.possible


@pytest.mark.parametrize("seed", range(5))
def test_connected_strategy_gives_the_exhaustive_components(seed):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n = int(rng.integers(2, 60))
        x = rng.random(n)
        t = float(rng.uniform(0.8, 0.99))
        groups = rng.integers(0, 3, n) if rng.random() < 0.5 else None
        units = rng.integers(0, n // 2 + 1, n) if rng.random() < 0.5 else None
        full = build_edges(n, _kernel(x), t, groups=groups)
        fast = build_edges(n, _kernel(x), t, groups=groups, strategy="connected", units=units)
        u = np.arange(n) if units is None else units
        nu = int(u.max()) + 1
        assert (components(nu, u[full.a], u[full.b]) == components(nu, u[fast.a], u[fast.b])).all()
        assert fast.comparisons <= full.comparisons
        assert (fast.similarity > t).all()


@pytest.mark.parametrize("num_perm", [8, 100, 128, 256, 1000])
def test_signature_similarity_any_length(num_perm):  # type: ignore[no-untyped-def]
    from icas_ray.features.minhash import signature_similarity

    sig = np.random.default_rng(num_perm).integers(0, 3, (40, num_perm)).astype(np.uint64)
    ref = (sig[:, None, :] == sig[None]).mean(axis=2)
    np.testing.assert_allclose(signature_similarity(sig, sig), ref, atol=1e-6)


def _scipy_components(n, a, b):  # type: ignore[no-untyped-def]
    """The reference: scipy's connected components, numbered by first node."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]


@pytest.mark.parametrize("seed", range(4))
def test_components_match_scipy(seed):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    cases = [(1, np.zeros(0, int), np.zeros(0, int)), (5, np.array([3, 3]), np.array([3, 3]))]
    for n in (2, 7, 50, 300, 3000):
        for m in (0, n // 3, n, 4 * n):
            cases.append((n, rng.integers(0, n, m), rng.integers(0, n, m)))
    chain = rng.permutation(3000)  # one long path through the nodes in random order
    cases.append((3000, chain[:-1], chain[1:]))
    cases.append((3000, np.arange(2999, 0, -1), np.arange(2998, -1, -1)))  # a path, descending
    cases.append((3000, np.zeros(2999, int), np.arange(1, 3000)))  # a star
    for n, a, b in cases:
        got = components(n, a, b)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, _scipy_components(n, a, b))


@pytest.mark.parametrize("per_cluster", [1, 2, 3, 8, 32])
def test_representatives_spread_over_each_cluster(per_cluster):  # type: ignore[no-untyped-def]
    from icas_ray.clustering import representatives

    rng = np.random.default_rng(per_cluster)
    labels = rng.integers(-1, 12, 400).astype(np.int32)
    labels[labels == 11] = 3  # one large cluster
    idx, unit = representatives(labels, per_cluster=per_cluster, include_outliers=True)
    n_clusters = int(labels.max()) + 1
    expect_idx, expect_unit = [], []
    for c in range(n_clusters):
        members = np.flatnonzero(labels == c)
        k = min(per_cluster, len(members))
        pick = members[np.unique(np.linspace(0, len(members) - 1, k).round().astype(int))]
        assert pick[0] == members[0] and (k == 1 or pick[-1] == members[-1])
        expect_idx.append(pick)
        expect_unit.append(np.full(len(pick), c))
    outliers = np.flatnonzero(labels == -1)
    expect_idx.append(outliers)
    expect_unit.append(n_clusters + np.arange(len(outliers)))
    np.testing.assert_array_equal(idx, np.concatenate(expect_idx))
    np.testing.assert_array_equal(unit, np.concatenate(expect_unit))
    idx, unit = representatives(labels, per_cluster=per_cluster, include_outliers=False)
    np.testing.assert_array_equal(idx, np.concatenate(expect_idx[:-1]))
    none = representatives(np.full(5, -1, np.int32), per_cluster=per_cluster, include_outliers=False)
    assert len(none[0]) == len(none[1]) == 0
