"""cluster: the whole `icas cluster` job per method and size, against a port of the original's per-pair loop.

    .venv/bin/python scripts/bench.py cluster [--methods imagehash,minhash,SSIM,TM,ORB]
        [--sizes 500,2000,8000] [--dataset digits] [--batch-size 250] [--quick] [--hash-sizes]

Per method and image count N (generated data set with truth.csv):

* icas, whole job: ``icas_ray.pipeline.classic.cluster`` on an embedded Ray (2 CPUs), wall
  time, images/s, peak memory (RSS of the driver and every Ray process, sampled), comparisons,
  adjusted Rand index (ARI) and pair F1 of ``manifest.parquet`` against truth.csv (outliers
  count as singletons).
* icas, pairwise phase: the same batches (files sorted by size, cut every ``--batch-size``)
  clustered in this process with ``process_batch`` + ``merge_batches`` on features extracted
  beforehand: the vectorized similarity, the graph and the merge, without Ray or I/O.
* reference: a straightforward port of the original tool's per-pair Python loop, kept here only
  (``itertools.combinations`` of file names per batch, ``list.index`` for each pair, the
  ``bools`` pruning matrix, one similarity call per pair, the list-based chain clustering, the
  merge on the first image of each batch cluster skipping same-batch pairs, then a copy of every
  file into its result folder). It reads images as the original did (native size, grey for
  SSIM/TM/ORB/minhash; imagehash phash hash_size=64, highfreq_factor=16 with the *corrected*
  similarity 1 - distance/bits). Threads are not used (the per-pair work holds the GIL anyway).
  When the whole reference would exceed ``--ref-budget`` seconds, it runs on the first k batches
  (with their own merge) and the whole job is extrapolated: features and copies per image,
  batch loops per pair combination, the merge from the measured templates per batch and cost
  per template pair. Its ARI is then the ARI on those k batches' images, and the table says so.

Writes ``benchmarks/cluster.json`` and ``benchmarks/cluster.md``. ``--hash-sizes`` runs the
imagehash hash-size study instead (``benchmarks/imagehash_hash_size.json`` / ``.md``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bench import BENCHMARKS, machine

#: Thresholds on digits (exhaustive, batch 250) and near-duplicates.
THRESHOLDS = {
    "digits": {"imagehash": 0.84, "minhash": 0.4, "SSIM": 0.9, "TM": 0.98, "ORB": 0.985},
    "near-duplicates": {"imagehash": 0.84, "minhash": 0.3, "SSIM": 0.5, "TM": 0.9, "ORB": 0.5},
}
DEFAULT_METHODS = "imagehash,minhash,SSIM,TM,ORB"
#: ORB's per-pair matching (~1 ms a pair on 2 cores) makes large N take hours: capped.
ORB_MAX_N = 500
#: Runs of the in-process pairwise measurement (the median counts).
PAIRWISE_RUNS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})")
    parser.add_argument("--sizes", default="500,2000,8000", help="image counts (default 500,2000,8000)")
    parser.add_argument("--hash-extra-sizes", default="", help="extra sizes for imagehash/minhash, e.g. 16000")
    parser.add_argument("--dataset", default="digits", choices=("digits", "near-duplicates"))
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--strategy", default="default",
                        choices=("default", "exhaustive", "connected", "pruned"),
                        help="icas strategy; default = each method's own (connected for SSIM/ORB)")
    parser.add_argument("--ref-budget", type=float, default=40.0,
                        help="seconds the reference may take per method and size before it is measured on "
                             "k batches and extrapolated (default 40)")
    parser.add_argument("--ref-icas-size", default="SSIM,TM",
                        help="methods that get an extra reference row at icas's read size (default SSIM,TM)")
    parser.add_argument("--orb-max", type=int, default=ORB_MAX_N, help=f"largest N for ORB (default {ORB_MAX_N})")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "icas_bench_data"),
                        help="where generated data sets are cached")
    parser.add_argument("--out", default=BENCHMARKS, help="output folder (default benchmarks/)")
    parser.add_argument("--quick", action="store_true", help="fast smoke run: N=300, imagehash and TM, small budget")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite cluster.md from an existing cluster.json in --out")
    parser.add_argument("--hash-sizes", action="store_true",
                        help="run the imagehash hash-size study (8, 16, 32, 64) instead of the cluster table")
    parser.add_argument("--study-count", type=int, default=1000, help="images per data set in the hash-size study")
    parser.add_argument("--feature-compute", default="tasks", choices=("tasks", "actors"),
                        help="how icas jobs run feature extraction (default tasks, icas's default)")
    parser.add_argument("--compute-study", action="store_true",
                        help="time whole jobs with feature extraction in tasks and in an actor pool, "
                             "alternately (--methods, --sizes, --study-reps) instead of the cluster table")
    parser.add_argument("--study-reps", type=int, default=5, help="jobs per variant in the compute study")


# -- helpers -------------------------------------------------------------------------------------
def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


class MemorySampler:
    """Peak RSS (bytes) of this process (and its descendants: the Ray processes) while active.

    ``root``: the process whose tree is sampled instead of this one (e.g. a child started with
    ``subprocess.Popen``: ``bench_e2e`` samples each tool's whole process tree).
    """

    def __init__(self, tree: bool, period: float = 0.1, root: int | None = None) -> None:
        self.tree, self.period, self.root = tree, period, root
        self.peak = self.base = 0
        self._stop = threading.Event()

    def _pids(self) -> list[int]:
        root = os.getpid() if self.root is None else self.root
        return _descendants(root) if self.tree else [root]

    def _now(self) -> int:
        return sum(_rss(p) for p in self._pids())

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._now())
            self._stop.wait(self.period)

    def __enter__(self) -> MemorySampler:
        self.base = self.peak = self._now()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._now())


def partition_scores(truth: dict[str, str], pred: dict[str, Any]) -> dict[str, float]:
    """ARI and pair precision/recall/F1 of ``pred`` (file -> cluster id, None = outlier)."""
    from sklearn.metrics import adjusted_rand_score
    from sklearn.metrics.cluster import pair_confusion_matrix

    names = sorted(pred)
    y = [truth[n] for n in names]
    p = [pred[n] if pred[n] is not None else f"__single_{i}" for i, n in enumerate(names)]
    (tn, fp), (fn, tp) = pair_confusion_matrix(y, p)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"ari": round(float(adjusted_rand_score(y, p)), 4), "pair_precision": round(float(prec), 4),
            "pair_recall": round(float(rec), 4), "pair_f1": round(float(f1), 4)}


def ensure_dataset(root: str, kind: str, n: int) -> str:
    from icas_ray.datasets import make_dataset

    path = os.path.join(root, f"{kind}_{n}")
    if not os.path.exists(os.path.join(path, "truth.csv")):
        shutil.rmtree(path, ignore_errors=True)
        make_dataset(kind, path, count=n, seed=0)
    return path


def sorted_files(path: str) -> list[str]:
    """Image file names sorted as both tools do: by file size (ties by name)."""
    names = [f for f in os.listdir(path) if f.lower().endswith((".png", ".jpg", ".jpeg"))]
    return sorted(names, key=lambda f: (os.stat(os.path.join(path, f)).st_size, f))


# -- the reference: the original's per-pair loop, ported -----------------------------------------
class RefMethod:
    """Features and per-pair similarity as the original computed them."""

    def __init__(self, name: str, size: tuple[int, int] | None = None) -> None:
        import cv2

        self.name, self.size = name, size
        self._bf = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
        self._orb = cv2.ORB_create()

    def _grey(self, path: str) -> np.ndarray:
        import cv2

        g = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if self.size is not None:
            return cv2.resize(g, self.size, interpolation=cv2.INTER_AREA)
        return cv2.resize(g, (0, 0), fx=1.0, fy=1.0)  # the original's scale 1.0

    def feature(self, path: str) -> Any:
        import cv2

        if self.name in ("SSIM", "TM"):
            return self._grey(path)
        if self.name == "minhash":
            from datasketch import MinHash

            corners = cv2.dilate(cv2.cornerHarris(self._grey(path), 2, 3, 0.04), None).flatten()
            idx = sorted(np.argpartition(corners, -100)[-100:])
            mh = MinHash()
            mh.update_batch(idx)
            return mh
        if self.name == "imagehash":
            import imagehash
            from PIL import Image

            img = Image.open(path)
            img = img.resize((int(img.size[0] * 1.0), int(img.size[1] * 1.0)))
            return imagehash.phash(img, hash_size=64, highfreq_factor=16)
        if self.name == "ORB":
            return self._orb.detectAndCompute(self._grey(path), None)[1]
        raise ValueError(self.name)

    def similarity(self, a: Any, b: Any) -> float:
        import cv2

        if self.name == "SSIM":
            from skimage.metrics import structural_similarity

            return structural_similarity(a, b, full=True)[0]
        if self.name == "minhash":
            return a.jaccard(b)
        if self.name == "imagehash":
            return 1 - (a - b) / a.hash.size  # corrected: the original divided by len(a.hash) (rows)
        if self.name == "ORB":
            matches = sorted(self._bf.match(a, b), key=lambda m: m.distance)
            good = [m for m in matches if m.distance < 0.75 * max(matches, key=lambda m: m.distance).distance]
            return len(good) / len(matches)
        if self.name == "TM":
            return 1 - float(np.min(cv2.matchTemplate(a, b, cv2.TM_SQDIFF_NORMED)))
        raise ValueError(self.name)


def ref_chain_cluster(sorted_sims: list, threshold: float) -> tuple[list[list[str]], list[str]]:
    """The original's list-based chain clustering (list membership tests, O(n) each)."""
    added: list[str] = []
    clusters: list[list[str]] = []
    for (x, y), s in sorted_sims:
        if s < threshold:
            continue
        if x not in added and y not in added:
            added += [x, y]
            clusters.append([x, y])
        elif x in added and y in added:
            cx = next(c for c in clusters if x in c)
            cy = next(c for c in clusters if y in c)
            if cx is not cy:
                clusters.remove(cx)
                clusters.remove(cy)
                clusters.append(cx + cy)
        elif y in added:
            for c in clusters:
                if y in c:
                    c.append(x)
                    added.append(x)
        else:
            for c in clusters:
                if x in c:
                    c.append(y)
                    added.append(y)
    return clusters, added


def ref_pair_loop(files: list[str], comb: list[tuple[str, str]], feats: dict[str, Any], method: RefMethod,
                  threshold: float) -> tuple[dict, int]:
    """The per-pair loop: ``bools`` check, similarity, store and prune row/column j when similar."""
    sims: dict[tuple[str, str], float] = {}
    bools = np.ones((len(files), len(files)), dtype=np.int8)
    computed = 0
    for pair in comb:
        i, j = files.index(pair[0]), files.index(pair[1])
        if bools[i][j]:
            try:
                s = method.similarity(feats[pair[0]], feats[pair[1]])
            except Exception:  # the original scored failures -inf (shape mismatch, no descriptors)
                s = -np.inf
            computed += 1
            if s > threshold:
                sims[pair] = s
                bools[j, :] = 0
                bools[:, j] = 0
    return sims, computed


def run_reference(path: str, files: list[str], method: RefMethod, threshold: float, batch_size: int,
                  budget: float, keep_in: str | None = None) -> dict[str, Any]:
    """The original pipeline on ``files`` (sorted by size), or on its first k batches within ``budget``.

    Its copies are deleted before it returns, or, with ``keep_in``, left in a new folder there (for
    the caller to delete once nothing is timed: see ``bench_e2e.retire``)."""
    warm = [method.feature(os.path.join(path, f)) for f in files[:2]]  # warm-up (imports), not timed
    try:
        method.similarity(warm[0], warm[1])
    except Exception:
        pass
    t_all = time.perf_counter()
    t = time.perf_counter()
    listed = sorted_files(path)  # listing: os.listdir + a stat per file, sorted by size
    listing_s = time.perf_counter() - t
    assert listed == files
    n = len(files)
    n_batches = math.ceil(n / batch_size)
    batch_files = [files[s:s + batch_size] for s in range(0, n, batch_size)]
    feat_s = loop_s = clus_s = 0.0
    combos = computed = 0
    feat_imgs = 0
    done: list[tuple[list[list[str]], list[str]]] = []
    with MemorySampler(tree=False) as mem:
        for b, bf in enumerate(batch_files):
            t = time.perf_counter()
            feats = {f: method.feature(os.path.join(path, f)) for f in bf}
            feat_s += time.perf_counter() - t
            feat_imgs += len(bf)
            t = time.perf_counter()
            comb = list(itertools.combinations(bf, 2))
            sims, c = ref_pair_loop(bf, comb, feats, method, threshold)
            loop_s += time.perf_counter() - t
            combos += len(comb)
            computed += c
            t = time.perf_counter()
            clusters, added = ref_chain_cluster(sorted(sims.items(), key=lambda x: x[1], reverse=True), threshold)
            outliers = list(set(bf).difference(set(added)))
            clus_s += time.perf_counter() - t
            done.append((clusters, outliers))
            if time.perf_counter() - t_all > budget and b + 1 < n_batches and b >= 0:
                break
        k = len(done)
        # merge: the first image of each batch cluster, features recomputed, same-batch pairs skipped
        t = time.perf_counter()
        template_batch = {}
        template_cluster = {}
        for b, (clusters, _) in enumerate(done):
            for c in clusters:
                template_batch[c[0]] = b
                template_cluster[c[0]] = c
        templates = sorted(template_batch)
        t_feat = time.perf_counter()
        tfeats = {f: method.feature(os.path.join(path, f)) for f in templates}
        tfeat_s = time.perf_counter() - t_feat
        t_loop = time.perf_counter()
        per_batch: dict[int, list[str]] = {}
        for f in templates:
            per_batch.setdefault(template_batch[f], []).append(f)
        discarded: list[tuple[str, str]] = []
        for group in per_batch.values():
            if len(group) > 1:
                discarded = discarded + list(itertools.combinations(group, 2))
        mcomb = list(set(itertools.combinations(templates, 2)).difference(set(discarded)))
        msims, mcomputed = ref_pair_loop(templates, mcomb, tfeats, method, threshold)
        mclusters, _ = ref_chain_cluster(sorted(msims.items(), key=lambda x: x[1], reverse=True), threshold)
        mloop_s = time.perf_counter() - t_loop
        merge_s = time.perf_counter() - t
        # final partition (outliers: None)
        pred: dict[str, Any] = {}
        merged = set()
        cid = 0
        for mc in mclusters:
            for tpl in mc:
                merged.add(tpl)
                for f in template_cluster[tpl]:
                    pred[f] = cid
            cid += 1
        for tpl in templates:
            if tpl not in merged:
                for f in template_cluster[tpl]:
                    pred[f] = cid
                cid += 1
        for _, outliers in done:
            for f in outliers:
                pred[f] = None
        # writing: copy every file into its result folder (the original copied twice: batch and result)
        out = tempfile.mkdtemp(prefix="icas_ref_out_", dir=keep_in)
        t = time.perf_counter()
        for f, c in pred.items():
            d = os.path.join(out, "outliers" if c is None else f"cluster_{c}")
            os.makedirs(d, exist_ok=True)
            shutil.copy(os.path.join(path, f), d)
        write_s = time.perf_counter() - t
        if keep_in is None:
            shutil.rmtree(out, ignore_errors=True)
    measured_s = time.perf_counter() - t_all
    n_done = sum(len(bf) for bf in batch_files[:k])
    res: dict[str, Any] = {
        "batches_measured": k, "batches": n_batches, "images_measured": n_done,
        "extrapolated": k < n_batches, "measured_wall_s": round(measured_s, 3),
        "combinations": combos, "similarities_computed": computed,
        "merge_templates": len(templates), "merge_combinations": len(mcomb),
        "merge_similarities_computed": mcomputed, "peak_rss_increase_mib": round((mem.peak - mem.base) / 2**20, 1),
        "pred": pred,
    }
    if k == n_batches:
        res.update(listing_s=listing_s, features_s=feat_s, batch_loops_s=loop_s + clus_s,
                   merge_s=merge_s, writing_s=write_s,
                   pairwise_s=loop_s + clus_s + merge_s - tfeat_s,
                   total_s=listing_s + feat_s + loop_s + clus_s + merge_s + write_s)
    else:
        all_combos = sum(len(bf) * (len(bf) - 1) // 2 for bf in batch_files)
        per_combo = (loop_s + clus_s) / max(1, combos)
        tpl_per_batch = len(templates) / k
        T = tpl_per_batch * n_batches
        m_combos = (T * T - n_batches * tpl_per_batch**2) / 2
        per_mcombo = mloop_s / len(mcomb) if len(mcomb) >= 50 else per_combo
        per_tfeat = feat_s / max(1, feat_imgs)
        est_merge_loop = per_mcombo * m_combos
        est = {
            "listing_s": listing_s, "features_s": feat_s / feat_imgs * n,
            "batch_loops_s": per_combo * all_combos,
            "merge_s": est_merge_loop + per_tfeat * T,
            "writing_s": write_s / max(1, len(pred)) * n,
        }
        est["pairwise_s"] = est["batch_loops_s"] + est_merge_loop
        est["total_s"] = sum(v for key, v in est.items() if key != "pairwise_s")
        res.update(est)
        res["extrapolation"] = (f"measured on {k} of {n_batches} batches ({n_done} images, with their own merge); "
                                f"batch loops scaled per pair combination, merge from {tpl_per_batch:.1f} "
                                f"templates/batch at {per_mcombo * 1e6:.1f} us per template combination")
    for key in ("listing_s", "features_s", "batch_loops_s", "merge_s", "writing_s", "pairwise_s", "total_s"):
        res[key] = round(float(res[key]), 3)
    return res


# -- icas ----------------------------------------------------------------------------------------
def manifest_pred(out: str, path: str) -> dict[str, Any]:
    """The partition in ``<out>/manifest.parquet``: file name relative to ``path`` -> cluster id
    (None for outliers and unreadable files)."""
    import pyarrow.parquet as pq

    table = pq.read_table(os.path.join(out, "manifest.parquet")).to_pydict()
    pred = {}
    for uri, c in zip(table["uri"], table["cluster"]):
        name = os.path.relpath(uri.removeprefix("file://"), path)
        pred[name] = None if c is None or (isinstance(c, (int, np.integer)) and c < 0) else int(c)
    return pred


def run_icas_job(path: str, method: str, threshold: float, batch_size: int, strategy: str,
                 params: dict | None = None, feature_compute: str = "tasks") -> dict[str, Any]:
    from icas_ray.pipeline.classic import cluster
    from icas_ray.pipeline.config import ClusterConfig
    from icas_ray.runtime import ResourceConfig

    out = tempfile.mkdtemp(prefix="icas_bench_out_")
    cfg = ClusterConfig(method=method, method_params=params or {}, threshold=threshold,
                        batch_size=batch_size, strategy=None if strategy == "default" else strategy,
                        overwrite=True, feature_compute=feature_compute)
    t = time.perf_counter()
    with MemorySampler(tree=True) as mem:
        summary = cluster(path, out, cfg, resources=ResourceConfig(num_cpus=2))
    wall = time.perf_counter() - t
    pred = manifest_pred(out, path)
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": round(wall, 3), "timings": summary["timings"], "comparisons": summary["comparisons"],
            "counts": summary["counts"], "peak_rss_mib": round(mem.peak / 2**20, 1),
            "peak_rss_increase_mib": round((mem.peak - mem.base) / 2**20, 1), "pred": pred}


def run_icas_pairwise(path: str, files: list[str], method: str, threshold: float, batch_size: int,
                      strategy: str) -> dict[str, Any]:
    """Features first (timed apart), then process_batch per batch + merge_batches, in this
    process (the median of PAIRWISE_RUNS runs)."""
    from icas_ray.clustering import merge_batches, process_batch
    from icas_ray.features import get_method
    from icas_ray.images import decode

    m = get_method(method)
    if strategy == "default":
        strategy = m.default_strategy
    batches = [files[s:s + batch_size] for s in range(0, len(files), batch_size)]
    # warm-up (imports, first-call costs) on a few images, not timed
    w = m.extract([decode(open(os.path.join(path, f), "rb").read(), m.default_read) for f in files[:8]])
    process_batch(0, uris=files[:8], sizes=np.zeros(8, np.int64), status=np.full(8, "ok", object),
                  error=np.full(8, "", object), features=w, method=m, threshold=threshold, strategy=strategy)
    t = time.perf_counter()
    feats = []
    for bf in batches:
        imgs = [decode(open(os.path.join(path, f), "rb").read(), m.default_read) for f in bf]
        feats.append(m.extract(imgs))
    feat_s = time.perf_counter() - t
    # The pairwise phase takes about 0.1 s for the hash methods: one run is at the mercy of
    # the machine's noise, so it runs PAIRWISE_RUNS times and the median counts.
    batch_times, merge_times = [], []
    for _ in range(PAIRWISE_RUNS):
        t = time.perf_counter()
        results = []
        for b, (bf, fe) in enumerate(zip(batches, feats)):
            k = len(bf)
            results.append(process_batch(b, uris=bf, sizes=np.zeros(k, np.int64),
                                         status=np.full(k, "ok", object), error=np.full(k, "", object),
                                         features=fe, method=m, threshold=threshold, strategy=strategy,
                                         merge_reps=m.merge_reps, merge_outliers=True))
        batch_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        merge = merge_batches(results, m, threshold, strategy=strategy)
        merge_times.append(time.perf_counter() - t)
    order = np.argsort(np.add(batch_times, merge_times))
    mid = int(order[len(order) // 2])
    batch_s, merge_s = batch_times[mid], merge_times[mid]
    pred = {}
    for r in results:
        for uri, c in zip(r.uris, merge.cluster[r.batch]):
            pred[str(uri)] = int(c) if c >= 0 else None
    return {"features_s": round(feat_s, 3), "batches_s": round(batch_s, 3), "merge_s": round(merge_s, 3),
            "pairwise_s": round(batch_s + merge_s, 3),
            "comparisons": int(sum(r.comparisons for r in results)) + int(merge.comparisons), "pred": pred}


# -- the cluster table ---------------------------------------------------------------------------
def _fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def run_cluster_table(args: argparse.Namespace) -> int:
    import ray

    from icas_ray.datasets import read_truth
    from icas_ray.features import get_method
    from icas_ray.runtime import ResourceConfig, init_ray

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    extra = [int(s) for s in args.hash_extra_sizes.split(",") if s]
    budget = args.ref_budget
    if args.quick:
        methods = [m for m in methods if m in ("imagehash", "TM")] or methods[:1]
        sizes, extra, budget = [300], [], 5.0
    init_ray(ResourceConfig(num_cpus=2))
    # One small unmeasured job first: Ray's worker pool is started (as after any earlier job);
    # every measured job still runs its own Ray Data stage (and, with actors, its own actors).
    run_icas_job(ensure_dataset(args.data, args.dataset, 300), "imagehash",
                 THRESHOLDS[args.dataset]["imagehash"], args.batch_size, "default")
    rows: list[dict[str, Any]] = []
    t_bench = time.perf_counter()
    for method in methods:
        name = get_method(method).name
        m_sizes = list(sizes) + (extra if name in ("imagehash", "minhash") else [])
        if name == "ORB":
            m_sizes = [n for n in m_sizes if n <= args.orb_max] or [min(m_sizes)]
        for n in m_sizes:
            path = ensure_dataset(args.data, args.dataset, n)
            truth = read_truth(path)
            files = sorted_files(path)
            thr = THRESHOLDS[args.dataset][name]
            print(f"[{time.perf_counter() - t_bench:7.1f}s] {name} N={n} threshold={thr}", flush=True)
            # In-process first, while Ray is idle (right after a job its processes still wind
            # down, which shows in a 0.1 s measurement).
            pw = run_icas_pairwise(path, files, name, thr, args.batch_size, args.strategy)
            job = run_icas_job(path, name, thr, args.batch_size, args.strategy,
                               feature_compute=args.feature_compute)
            refs = [("original reading (native size)", RefMethod(name))]
            if name in [s.strip() for s in args.ref_icas_size.split(",")]:
                rs = get_method(name).default_read.size
                refs.append((f"icas read size {rs[0]}x{rs[1]}", RefMethod(name, size=rs)))
            ref_results = []
            for label, rm in refs:
                r = run_reference(path, files, rm, thr, args.batch_size, budget)
                sub = set(r["pred"])
                r["scores"] = partition_scores({f: truth[f] for f in sub}, r["pred"])
                r["scores_on"] = "all images" if not r["extrapolated"] else f"the {len(sub)} measured images"
                r["read"] = label
                ref_results.append(r)
            row = {"method": name, "n": n, "threshold": thr, "strategy": (get_method(name).default_strategy if args.strategy == "default" else args.strategy),
                   "icas_read": str(get_method(name).default_read),
                   "icas_job": {k: v for k, v in job.items() if k != "pred"},
                   "icas_job_scores": partition_scores(truth, job["pred"]),
                   "icas_pairwise": {k: v for k, v in pw.items() if k != "pred"},
                   "icas_pairwise_scores": partition_scores(truth, pw["pred"]),
                   "reference": []}
            if ref_results and ref_results[0]["extrapolated"]:
                sub = set(ref_results[0]["pred"])
                # icas's partition restricted to the reference's measured images, for a like-for-like ARI
                row["icas_scores_on_ref_subset"] = partition_scores({f: truth[f] for f in sub},
                                                                    {f: job["pred"][f] for f in sub})
            for r in ref_results:
                r.pop("pred")
                r["speedup_pairwise"] = round(r["pairwise_s"] / max(pw["pairwise_s"], 1e-6), 1)
                r["speedup_job"] = round(r["total_s"] / max(job["wall_s"], 1e-6), 1)
                row["reference"].append(r)
            rows.append(row)
            ref0 = row["reference"][0]
            print(f"    icas job {job['wall_s']:.1f}s ARI {row['icas_job_scores']['ari']} | pairwise "
                  f"{pw['pairwise_s']:.2f}s | ref total {ref0['total_s']:.1f}s pairwise {ref0['pairwise_s']:.1f}s "
                  f"ARI {ref0['scores']['ari']} ({ref0['scores_on']}) | x{ref0['speedup_pairwise']} pairwise, "
                  f"x{ref0['speedup_job']} job", flush=True)
            _write(args, rows, time.perf_counter() - t_bench, budget)
    ray.shutdown()
    return 0


def _write(args: argparse.Namespace, rows: list[dict[str, Any]], elapsed: float, budget: float,
           saved: dict[str, Any] | None = None) -> None:
    result = saved or {"benchmark": "cluster", "dataset": args.dataset, "batch_size": args.batch_size,
              "strategy": args.strategy, "feature_compute": args.feature_compute, "ray_cpus": 2,
              "reference_budget_s": budget,
              "machine": machine(), "date": time.strftime("%Y-%m-%d"), "elapsed_s": round(elapsed, 1),
              "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    if saved is None:
        with open(os.path.join(args.out, "cluster.json"), "w") as f:
            json.dump(result, f, indent=1, default=str)
    mach = result["machine"]
    md = [
        f"# `icas cluster` vs the original's per-pair loop ({args.dataset}, batches of {args.batch_size})",
        "",
        f"Machine: {mach.get('cpu')}, {mach.get('cpus')} CPUs, {mach.get('memory_gib')} GiB, GPU: "
        f"{mach.get('gpu')}; Python {mach.get('python')}; {result['date']}. Produced by "
        f"`.venv/bin/python scripts/bench.py cluster` in {elapsed / 60:.1f} min."
        + (f" Note: {result['note']}." if result.get("note") else ""),
        "",
        "**Numbers are noisy**: the machine has 2 cores and other engineers ran tests on it at the same "
        "time. icas runs on an embedded Ray with 2 CPUs; the reference runs sequentially in one process "
        "(the original's threads share the GIL for this per-pair work).",
        "",
        "* **icas job**: `cluster()` wall time for the whole job (listing, decode, features, batches, merge, "
        "copying files, manifest/report), with icas's default strategy and read size per method (column "
        "*strategy*: connected gives exhaustive's clusters without comparing pairs already joined). "
        "Ray is started once for the benchmark (not timed) and warmed by one small unmeasured job; every "
        f"measured job runs its own Ray Data stage, its feature extraction in {result.get('feature_compute', 'actors')} "
        "(tasks: in Ray's pooled worker processes; actors: a pool of new processes per job; see "
        "feature_compute.md). Peak memory: RSS of the driver plus all Ray processes.",
        "* **icas pairwise**: the same batches clustered in-process, on one core (`process_batch` + "
        f"`merge_batches`) on features extracted beforehand: vectorized similarity, graph, merge; the median "
        f"of {PAIRWISE_RUNS} runs, measured before the job while Ray is idle.",
        "* **ref**: a port of the original's per-pair loop (combinations, `list.index`, `bools` pruning, one "
        "similarity call per pair, list-based chain clustering, merge on one template per batch cluster, "
        "outliers never merged, copy of every file). Reference pairwise = batch loops + clustering + merge "
        "loop (no feature extraction). Imagehash similarity uses the corrected 1 - d/bits. "
        "`ref read`: native = the original's reading (256x256 grey for digits; imagehash phash 64/16).",
        "* Where the reference would exceed the budget it ran on its first k batches (with their own merge) "
        "and its times are **extrapolated** (column *ref measured*); its ARI is then the ARI on those images, "
        "next to icas's ARI on the same images (icas partition restricted to them). Batches hold files "
        "sorted by size, so the first batches hold the smallest files (in digits mostly one digit): the "
        "reference's pruning skips more pairs there than on average, so its extrapolated time is, if "
        "anything, an underestimate and the speed-ups of extrapolated rows lower bounds. The reference merge, "
        "when the measured batches compared few template pairs, is priced at the batch loop's cost per "
        "combination (which includes pruned pairs): also an underestimate.",
        "* ARI / F1: adjusted Rand index and pair F1 against truth.csv, outliers as singletons.",
        "",
        "| method | N | thr | strategy | icas job s | img/s | peak MiB (+Δ) | comparisons | icas ARI | icas F1 "
        "| icas pairwise s | ref read | ref measured | ref pairwise s | ref job s | ref ARI (on) "
        "| icas ARI on same | pairwise speed-up | job speed-up |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        job, js = row["icas_job"], row["icas_job_scores"]
        comps = job["comparisons"]["batch_comparisons"] + job["comparisons"]["merge_comparisons"]
        for i, r in enumerate(row["reference"]):
            first = i == 0
            measured = ("all" if not r["extrapolated"] else
                        f"{r['batches_measured']}/{r['batches']} batches, extrapolated")
            same = row.get("icas_scores_on_ref_subset", js)["ari"] if r["extrapolated"] else js["ari"]
            md.append("| " + " | ".join([
                row["method"] if first else "", str(row["n"]) if first else "", _fmt(row["threshold"], 3) if first else "",
                row.get("strategy", "exhaustive") if first else "",
                _fmt(job["wall_s"], 1) if first else "", _fmt(row["n"] / job["wall_s"], 0) if first else "",
                f"{job['peak_rss_mib']:.0f} (+{job['peak_rss_increase_mib']:.0f})" if first else "",
                f"{comps} / {job['comparisons']['all_pairs']}" if first else "",
                _fmt(js["ari"], 3) if first else "", _fmt(js["pair_f1"], 3) if first else "",
                _fmt(row["icas_pairwise"]["pairwise_s"], 2) if first else "",
                r["read"], measured, _fmt(r["pairwise_s"], 1), _fmt(r["total_s"], 1),
                f"{r['scores']['ari']:.3f} ({'all' if not r['extrapolated'] else r['images_measured']})",
                _fmt(same, 3), f"{r['speedup_pairwise']:.1f}x", f"{r['speedup_job']:.1f}x",
            ]) + " |")
    md += ["", "Reference work per row (pairs the loop iterated / similarities it computed, merge templates):", ""]
    for row in rows:
        for r in row["reference"]:
            md.append(f"* {row['method']} N={row['n']} ({r['read']}): {r['combinations']} combinations, "
                      f"{r['similarities_computed']} similarities, merge {r['merge_templates']} templates / "
                      f"{r['merge_similarities_computed']} similarities; "
                      + (r.get("extrapolation", "run whole") or ""))
    md.append("")
    with open(os.path.join(args.out, "cluster.md"), "w") as f:
        f.write("\n".join(md))


# -- the imagehash hash-size study ---------------------------------------------------------------
def _write_study(out_dir: str, name: str, data: dict[str, Any], md: list[str]) -> None:
    """``<out_dir>/<name>.json`` and ``<name>.md`` of a study."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write("\n".join(md + [""]))
    print(f"wrote {os.path.join(out_dir, name + '.json')} and {name}.md")


def run_hash_study(args: argparse.Namespace) -> int:
    from icas_ray.datasets import read_truth
    from icas_ray.features import get_method
    from icas_ray.graph import cluster_labels, components
    from icas_ray.images import decode

    count = 300 if args.quick else args.study_count
    configs = [(8, 4), (16, 4), (32, 4), (64, 16)]
    grid = [round(x, 2) for x in np.arange(0.40, 0.99, 0.02)]
    rows = []
    for kind in ("digits", "near-duplicates"):
        path = ensure_dataset(args.data, kind, count)
        truth = read_truth(path)
        files = sorted_files(path)
        data = [open(os.path.join(path, f), "rb").read() for f in files]
        for hs, hf in configs:
            m = get_method("imagehash", {"hash_size": hs, "highfreq_factor": hf})
            m.extract([decode(d, m.default_read) for d in data[:4]])  # warm-up (imports), not timed
            t = time.perf_counter()
            imgs = [decode(d, m.default_read) for d in data]
            decode_s = time.perf_counter() - t
            t = time.perf_counter()
            feats = m.extract(imgs)
            feat_s = time.perf_counter() - t
            t = time.perf_counter()
            sim = m.pairwise(feats, feats)
            pair_s = time.perf_counter() - t
            iu = np.triu_indices(len(files), 1)
            tri = sim[iu]
            best = None
            curve = []
            for thr in grid:
                hit = tri > thr
                labels = cluster_labels(components(len(files), iu[0][hit], iu[1][hit]))
                pred = {f: (int(c) if c >= 0 else None) for f, c in zip(files, labels)}
                sc = partition_scores(truth, pred)
                curve.append({"threshold": thr, **sc})
                if best is None or sc["ari"] > best["ari"]:
                    best = {"threshold": thr, **sc}
            rows.append({"dataset": kind, "n": count, "hash_size": hs, "highfreq_factor": hf, "bits": hs * hs,
                         "decode_ms_per_image": round(decode_s / count * 1e3, 3),
                         "feature_ms_per_image": round(feat_s / count * 1e3, 3),
                         "pairwise_s_all_pairs": round(pair_s, 3), "best": best, "curve": curve})
            print(f"{kind} hash {hs} hf {hf}: {feat_s / count * 1e3:.2f} ms/img, best ARI {best['ari']} at "
                  f"{best['threshold']}", flush=True)
    mach = machine()
    out = {"benchmark": "imagehash_hash_size", "machine": mach, "date": time.strftime("%Y-%m-%d"),
           "read": "icas imagehash default read (max side 512)", "grid": grid,
           "grouping": "exhaustive single linkage over all pairs (one batch), similarity 1 - d/bits",
           "rows": rows}
    md = ["# imagehash: hash size study", "",
          f"Machine: {mach.get('cpu')}, {mach.get('cpus')} CPUs, {mach.get('memory_gib')} GiB; {out['date']}. "
          "Produced by `.venv/bin/python scripts/bench.py cluster --hash-sizes` (numbers noisy: 2 cores "
          "shared with other test runs).", "",
          f"{count} images of each generated data set, read as icas does (max side 512), phash with the given "
          "hash size and high-frequency factor (64/16 = the original's), similarity 1 - Hamming/bits, all pairs "
          f"in one batch grouped by single linkage; ARI and pair F1 against truth.csv at the best threshold of "
          f"{grid[0]}..{grid[-1]} step 0.02.", "",
          "| data set | hash size | hf | bits | feature ms/image | pairwise s (all pairs) | best thr | ARI | pair F1 |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = r["best"]
        md.append(f"| {r['dataset']} | {r['hash_size']} | {r['highfreq_factor']} | {r['bits']} | "
                  f"{r['feature_ms_per_image']:.2f} | {r['pairwise_s_all_pairs']:.3f} | {b['threshold']:.2f} | "
                  f"{b['ari']:.3f} | {b['pair_f1']:.3f} |")
    _write_study(args.out, "imagehash_hash_size", out, md)
    return 0


def run_compute_study(args: argparse.Namespace) -> int:
    """Whole jobs with feature extraction in Ray Data tasks and in an actor pool, alternately
    (the machine's noise then hits both alike)."""
    from icas_ray.datasets import read_truth
    from icas_ray.features import get_method
    from icas_ray.runtime import ResourceConfig, init_ray

    methods = [get_method(m.strip()).name for m in args.methods.split(",") if m.strip()]
    sizes = [int(x) for x in args.sizes.split(",") if x]
    reps = 1 if args.quick else args.study_reps
    if args.quick:
        methods, sizes = methods[:1], [300]
    init_ray(ResourceConfig(num_cpus=2))
    run_icas_job(ensure_dataset(args.data, args.dataset, 300), "imagehash",
                 THRESHOLDS[args.dataset]["imagehash"], args.batch_size, "default")  # warm-up
    variants = ("tasks", "actors")
    rows = []
    for method in methods:
        for n in sizes:
            path = ensure_dataset(args.data, args.dataset, n)
            truth = read_truth(path)
            thr = THRESHOLDS[args.dataset][method]
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for rep in range(reps):
                for v in variants:
                    job = run_icas_job(path, method, thr, args.batch_size, args.strategy, feature_compute=v)
                    ari = partition_scores(truth, job["pred"])["ari"]
                    runs[v].append({"wall_s": job["wall_s"], "timings": job["timings"], "ari": ari})
                    print(f"{method} N={n} {v} #{rep + 1}: {job['wall_s']:.2f} s "
                          f"(batches {job['timings'].get('batches_s')} s, writing "
                          f"{job['timings'].get('writing_s')} s), ARI {ari}", flush=True)
            summary = {}
            for v in variants:
                walls = sorted(r["wall_s"] for r in runs[v])
                feats = sorted(r["timings"].get("batches_s", 0.0) for r in runs[v])
                summary[v] = {"median_s": round(float(np.median(walls)), 2), "min_s": walls[0],
                              "max_s": walls[-1], "median_batches_s": round(float(np.median(feats)), 2),
                              "ari": sorted({r["ari"] for r in runs[v]})}
            rows.append({"method": method, "n": n, "threshold": thr, "runs": runs, "summary": summary})
    mach = machine()
    out = {"benchmark": "feature_compute", "machine": mach, "date": time.strftime("%Y-%m-%d"),
           "dataset": args.dataset, "batch_size": args.batch_size, "reps": reps, "rows": rows}
    md = ["# Feature extraction: Ray Data tasks or an actor pool", "",
          f"Machine: {mach.get('cpu')}, {mach.get('cpus')} CPUs, {mach.get('memory_gib')} GiB; {out['date']}. "
          "Produced by `.venv/bin/python scripts/bench.py cluster --compute-study "
          f"--methods {','.join(methods)} --sizes {','.join(map(str, sizes))} --study-reps {reps}`.", "",
          f"Whole `cluster()` jobs on {args.dataset} (batches of {args.batch_size}), {reps} per variant, the "
          "variants alternating; Ray started once and warmed by one small job, as in cluster.md. *tasks*: "
          "Ray Data tasks in Ray's pooled worker processes (icas's default); *actors*: a Ray Data actor "
          "pool, whose actors are new processes started for each job. *batches s*: features and batch "
          "clustering (the phase the variants differ in).", "",
          "| method | N | variant | median s | min s | max s | median batches s | ARI |",
          "|---|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        for v in variants:
            sm = r["summary"][v]
            md.append(f"| {r['method']} | {r['n']} | {v} | {sm['median_s']:.2f} | {sm['min_s']:.2f} | "
                      f"{sm['max_s']:.2f} | {sm['median_batches_s']:.2f} | "
                      f"{', '.join(f'{a:.3f}' for a in sm['ari'])} |")
    _write_study(args.out, "feature_compute", out, md)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.render:
        with open(os.path.join(args.out, "cluster.json")) as f:
            saved = json.load(f)
        args.dataset, args.batch_size, args.strategy = saved["dataset"], saved["batch_size"], saved["strategy"]
        _write(args, saved["rows"], saved["elapsed_s"], saved["reference_budget_s"], saved)
        return 0
    if args.hash_sizes:
        return run_hash_study(args)
    if args.compute_study:
        return run_compute_study(args)
    return run_cluster_table(args)
