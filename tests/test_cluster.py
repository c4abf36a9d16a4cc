"""``icas cluster`` end to end on the session Ray: accuracy, layout, S3, options, resume, bad input."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from conftest import manifest_ari
from icas_ray.datasets import make_dataset, read_truth
from icas_ray.errors import ConfigError, InputError
from icas_ray.pipeline.classic import cluster
from icas_ray.pipeline.config import ClusterConfig

pytestmark = pytest.mark.usefixtures("ray_session")


def _manifest(output: str, storage=None):  # type: ignore[no-untyped-def]
    if storage is None:
        return pq.read_table(os.path.join(output, "manifest.parquet")).to_pandas()
    return pq.read_table(io.BytesIO(storage.read_bytes(storage.join(output, "manifest.parquet")))).to_pandas()


def _clusters(output: str) -> set[frozenset[str]]:
    """The manifest's clusters, each as the set of its members' URIs."""
    m = _manifest(output)
    return {frozenset(g.uri) for _, g in m[m.cluster.notna()].groupby("cluster")}


def _result_files(output: str) -> list[str]:
    found = []
    for root, _, files in os.walk(os.path.join(output, "results")):
        found += [os.path.join(root, f) for f in files]
    return found


def _check_all_accounted(input_dir: str, output: str, expected: int) -> None:
    files = _result_files(output)
    assert len(files) == expected
    # every result file is a byte-identical copy of one input file, each input used once
    names = Counter(os.path.basename(f) for f in files)
    assert max(names.values()) == 1


# Thresholds chosen once on these generated digits (exhaustive strategy, batches of 250).
@pytest.mark.parametrize("method,threshold,min_ari", [
    ("imagehash", 0.84, 0.95),
    ("minhash", 0.4, 0.5),
    ("SSIM", 0.9, 0.85),
    ("TM", 0.98, 0.95),
], ids=["imagehash", "minhash", "SSIM", "TM"])
def test_digits_1000_accuracy(digits1000, tmp_path, method, threshold, min_ari):  # type: ignore[no-untyped-def]
    out = str(tmp_path / "out")
    summary = cluster(digits1000, out, ClusterConfig(method=method, threshold=threshold, batch_size=250,
                                                     strategy="exhaustive"))
    assert summary["batches"]["total"] == 4 and summary["comparisons"]["merge_comparisons"] > 0
    m = _manifest(out)
    assert len(m) == 1000 and m.uri.is_unique
    ari = manifest_ari(m, read_truth(digits1000))
    assert ari >= min_ari, f"{method}: ARI {ari:.3f} < {min_ari}"
    _check_all_accounted(digits1000, out, 1000)
    c = summary["counts"]
    assert c["clustered_images"] + c["outliers"] + c["unreadable"] == 1000


def test_job_is_deterministic_and_matches_in_process_clustering(digits1000, tmp_path):  # type: ignore[no-untyped-def]
    """Rows reach the driver in any order; each batch must still be clustered in listing order
    (its representatives, hence the merge, depend on it), exactly as in-process."""
    from icas_ray.clustering import merge_batches, process_batch
    from icas_ray.features import get_method
    from icas_ray.images import decode
    from icas_ray.storage import Storage

    out = str(tmp_path / "out")
    cluster(digits1000, out, ClusterConfig(method="minhash", threshold=0.3, batch_size=250))
    m = _manifest(out)
    files = Storage().list_images(digits1000)
    files.sort(key=lambda f: (f.size, f.uri))
    assert list(m.uri.str.removeprefix("file://")) == [f.uri.removeprefix("file://") for f in files]
    method = get_method("minhash")
    results = []
    for b in range(4):
        part = files[b * 250:(b + 1) * 250]
        feats = method.extract([decode(open(f.uri.removeprefix("file://"), "rb").read(), method.default_read)
                                for f in part])
        results.append(process_batch(b, uris=[f.uri for f in part], sizes=np.zeros(250, np.int64),
                                     status=np.full(250, "ok", object), error=np.full(250, "", object),
                                     features=feats, method=method, threshold=0.3,
                                     merge_reps=method.merge_reps))
    merged = merge_batches(results, method, 0.3)
    expected = np.concatenate([merged.cluster[b] for b in range(4)])
    got = m.cluster.fillna(-1).astype(int).to_numpy()
    assert adjusted_rand_score(expected, got) == 1.0


@pytest.mark.parametrize("method,threshold,min_ari", [
    ("ORB", 0.98, 0.25),
], ids=["ORB"])
def test_digits_small_accuracy(digits200, tmp_path, method, threshold, min_ari):  # type: ignore[no-untyped-def]
    out = str(tmp_path / "out")
    cluster(digits200, out, ClusterConfig(method=method, threshold=threshold, batch_size=50,
                                          strategy="exhaustive"))
    m = _manifest(out)
    ari = manifest_ari(m, read_truth(digits200))
    assert ari >= min_ari, f"{method}: ARI {ari:.3f} < {min_ari}"
    _check_all_accounted(digits200, out, 200)


def _variants(input_dir: str, tmp_path, option: str, values: tuple[str, ...], **config):  # type: ignore[no-untyped-def]
    """One job per value of ``option`` on ``input_dir``: ``{value: (summary, clusters)}``."""
    runs = {}
    for value in values:
        out = str(tmp_path / value)
        summary = cluster(input_dir, out, ClusterConfig(batch_size=50, **config, **{option: value}))
        assert summary["parameters"][option] == value
        _check_all_accounted(input_dir, out, summary["counts"]["images"])
        runs[value] = (summary, _clusters(out))
    return runs


def test_connected_strategy_gives_the_exhaustive_partition(digits200, tmp_path):  # type: ignore[no-untyped-def]
    runs = _variants(digits200, tmp_path, "strategy", ("exhaustive", "connected"), method="SSIM",
                     threshold=0.9)
    assert runs["exhaustive"][1] == runs["connected"][1]
    ce, cc = (runs[k][0]["comparisons"] for k in ("exhaustive", "connected"))
    assert cc["batch_comparisons"] + cc["merge_comparisons"] < ce["batch_comparisons"] + ce["merge_comparisons"]


def test_actor_pool_gives_the_tasks_partition(digits200, tmp_path):  # type: ignore[no-untyped-def]
    """--feature-compute actors (a Ray Data actor pool) computes what the default tasks do."""
    runs = _variants(digits200, tmp_path, "feature_compute", ("tasks", "actors"), method="imagehash",
                     threshold=0.84)
    assert runs["tasks"][1] == runs["actors"][1] and len(runs["tasks"][1]) > 5
    with pytest.raises(ConfigError, match="unknown feature compute 'gpu': must be one of tasks, actors"):
        ClusterConfig(feature_compute="gpu")


def test_near_duplicates_group_by_photo(tmp_path):  # type: ignore[no-untyped-def]
    src = str(tmp_path / "nd")
    make_dataset("near-duplicates", src, count=120, seed=2, classes=8)
    out = str(tmp_path / "out")
    # Crops of 80-95%, rotations and re-encoding defeat global hashes; ORB's local features
    # survive them (imagehash's nearest neighbours are right, but its similarity ranges overlap).
    cluster(src, out, ClusterConfig(method="ORB", threshold=0.95, batch_size=40))
    m = _manifest(out)
    truth = read_truth(src)
    assert manifest_ari(m, truth) >= 0.85
    # clusters are (nearly) pure: each holds variants of one photo
    clustered = m[m.cluster.notna()]
    majority = sum(Counter(truth[os.path.basename(u)] for u in rows.uri).most_common(1)[0][1]
                   for _, rows in clustered.groupby("cluster"))
    assert majority >= 0.95 * len(clustered)


def test_s3_input_and_output(s3_server, s3_bucket, digits1000, tmp_path):  # type: ignore[no-untyped-def]
    """The 1000 digits from and to the loopback S3 server: the local run's clusters, the same
    ARI floor, every input in the results exactly once."""
    from icas_ray.storage import map_io

    st = s3_server.storage()
    names = sorted(n for n in os.listdir(digits1000) if n.endswith(".png"))

    def upload(name: str) -> None:
        with open(os.path.join(digits1000, name), "rb") as f:
            st.write_bytes(f"s3://{s3_bucket}/in/{name}", f.read())

    map_io(upload, names, remote=True)
    out = f"s3://{s3_bucket}/out"
    cfg = dict(method="imagehash", threshold=0.84, batch_size=250, strategy="exhaustive")
    summary = cluster(f"s3://{s3_bucket}/in", out, ClusterConfig(**cfg), storage=st)
    assert summary["batches"]["total"] == 4 and summary["comparisons"]["merge_comparisons"] > 0
    m = _manifest(out, st)
    local = str(tmp_path / "local")
    cluster(digits1000, local, ClusterConfig(**cfg))
    ml = _manifest(local)
    truth = read_truth(digits1000)
    # the same partition as from the local folder, and the accuracy floor of the local test
    assert len(m) == 1000 and m.uri.is_unique
    assert manifest_ari(m, truth) == pytest.approx(manifest_ari(ml, truth))
    assert manifest_ari(m, truth) >= 0.95
    results = [f.uri for f in st.list_files(f"{out}/results")]
    assert len(results) == 1000
    assert sorted(r.rsplit("/", 1)[1] for r in results) == names
    for r in results[:20]:  # byte-identical copies
        with open(os.path.join(digits1000, r.rsplit("/", 1)[1]), "rb") as f:
            assert st.read_bytes(r) == f.read()
    assert st.exists(f"{out}/summary.json") and st.exists(f"{out}/report.html")
    assert summary["report"] == f"{out}/report.html"


def test_layout_manifest_edges_summary_report(digits200, tmp_path):  # type: ignore[no-untyped-def]
    out = str(tmp_path / "out")
    summary = cluster(digits200, out, ClusterConfig(method="imagehash", threshold=0.84, batch_size=50))
    assert sorted(os.listdir(out)) == ["_icas", "edges.parquet", "manifest.parquet", "report.html",
                                       "results", "summary.json"]
    folders = sorted(os.listdir(os.path.join(out, "results")))
    assert all(f.startswith("cluster_") or f == "outliers" for f in folders)
    sizes = [len(os.listdir(os.path.join(out, "results", f))) for f in folders if f != "outliers"]
    by_id = [len(os.listdir(os.path.join(out, "results", f"cluster_{i}"))) for i in range(len(sizes))]
    assert by_id == sorted(by_id, reverse=True)  # cluster_0 is the largest
    m = _manifest(out)
    assert set(m.columns) >= {"uri", "size", "batch", "batch_cluster", "cluster", "is_representative",
                              "status", "error"}
    assert m.is_representative.any()
    edges = pq.read_table(os.path.join(out, "edges.parquet")).to_pandas()
    assert set(edges.phase) <= {"batch", "merge"} and (edges.similarity > 0.84).all()
    s = json.load(open(os.path.join(out, "summary.json")))
    assert s["comparisons"]["all_pairs"] == 200 * 199 // 2
    assert "merge_compared" in s["comparisons"] and s["threshold"] == 0.84
    report = open(os.path.join(out, "report.html")).read()
    assert "cluster_0" in report and "data:image/jpeg;base64," in report
    assert summary["counts"]["images"] == 200


def test_dontmerge_then_merge_equals_all(digits200, tmp_path):  # type: ignore[no-untyped-def]
    cfg = dict(method="imagehash", threshold=0.84, batch_size=50)
    all_out = str(tmp_path / "all")
    cluster(digits200, all_out, ClusterConfig(**cfg))
    split = str(tmp_path / "split")
    s1 = cluster(digits200, split, ClusterConfig(option="dontmerge", **cfg))
    assert os.path.isdir(os.path.join(split, "batches", "batch_0"))
    assert s1["comparisons"]["merge_comparisons"] == 0
    cluster(digits200, split, ClusterConfig(option="merge", **cfg))
    a, b = _manifest(all_out), _manifest(split)
    assert (a.sort_values("uri").cluster.fillna(-1).values == b.sort_values("uri").cluster.fillna(-1).values).all()
    assert os.path.isdir(os.path.join(split, "batches"))  # batch folders kept, as the original


def test_merge_without_batches_is_refused(digits200, tmp_path):  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="--option merge needs the batch results"):
        cluster(digits200, str(tmp_path / "none"), ClusterConfig(option="merge", threshold=0.8))


def test_overwrite_refusal_and_overwrite(digits200, tmp_path):  # type: ignore[no-untyped-def]
    out = str(tmp_path / "out")
    cfg = dict(method="imagehash", threshold=0.84, batch_size=100)
    cluster(digits200, out, ClusterConfig(**cfg))
    with pytest.raises(ConfigError, match="already holds a finished result: pass --overwrite"):
        cluster(digits200, out, ClusterConfig(**cfg))
    s = cluster(digits200, out, ClusterConfig(overwrite=True, **cfg))
    assert s["batches"]["computed_now"] == 2 and len(_result_files(out)) == 200


def test_unfinished_run_of_another_version_is_refused(digits200, tmp_path):  # type: ignore[no-untyped-def]
    """Batch results whose features another version wrote cannot join this version's merge."""
    import json

    out = str(tmp_path / "out")
    cfg = dict(method="minhash", threshold=0.3, batch_size=100, option="dontmerge")
    cluster(digits200, out, ClusterConfig(**cfg))
    state_path = os.path.join(out, "_icas", "state.json")
    state = json.load(open(state_path))
    state["version"] -= 1
    json.dump(state, open(state_path, "w"))
    with pytest.raises(ConfigError, match="another icas version.*--overwrite"):
        cluster(digits200, out, ClusterConfig(**{**cfg, "option": "merge"}))


def test_output_inside_input_is_refused(digits200):  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="inside the input"):
        cluster(digits200, os.path.join(digits200, "out"), ClusterConfig(threshold=0.8))


def test_missing_input_is_one_line_error(tmp_path):  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="does not exist: check the path"):
        cluster(str(tmp_path / "missing"), None, ClusterConfig(threshold=0.8))


def test_no_images_is_one_line_error(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("x")
    with pytest.raises(InputError, match="no images found"):
        cluster(str(tmp_path / "in"), None, ClusterConfig(threshold=0.8))


def test_local_writing_runs_in_the_workers_already_started(digits200, tmp_path):  # type: ignore[no-untyped-def]
    """Local copies are CPU work (the kernel's file creation): writer tasks take a CPU each and
    run in the worker processes the job has; none is started for them. At a quarter CPU
    each, Ray ran eight writer tasks at once on 2 CPUs and started a worker process (about a
    CPU-second) for each beyond the first two."""
    import ray

    logs = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")

    def workers() -> set[str]:
        return {n for n in os.listdir(logs) if n.startswith("python-core-worker-")}

    config = {"threshold": 0.84, "batch_size": 50}
    cluster(digits200, str(tmp_path / "warm"), ClusterConfig(**config))  # the pool is started
    before = workers()
    out = str(tmp_path / "out")
    cluster(digits200, out, ClusterConfig(files_per_task=10, **config))  # 20 writer tasks
    assert workers() - before == set()
    _check_all_accounted(digits200, out, 200)


def test_same_name_collision_never_overwrites(tmp_path):  # type: ignore[no-untyped-def]
    src = tmp_path / "in"
    img = np.zeros((64, 64, 3), np.uint8)
    img[16:48, 16:48] = 255
    for sub in ("a", "b", "c"):
        (src / sub).mkdir(parents=True)
        Image.fromarray(img).save(src / sub / "same.png")
    out = str(tmp_path / "out")
    cluster(str(src), out, ClusterConfig(threshold=0.9, batch_size=10))
    files = sorted(os.listdir(os.path.join(out, "results", "cluster_0")))
    assert files == ["same.png", "same_1.png", "same_2.png"]


def _save(path, array, **kw):  # type: ignore[no-untyped-def]
    Image.fromarray(array).save(path, **kw)


def test_bad_and_unusual_inputs_are_all_accounted_for(tmp_path):  # type: ignore[no-untyped-def]
    src = tmp_path / "in"
    src.mkdir()
    base = np.zeros((80, 80, 3), np.uint8)
    base[20:60, 20:60] = (200, 30, 30)
    _save(src / "rgb.png", base)
    _save(src / "grey.png", base[..., 0])
    _save(src / "rgba.png", np.dstack([base, np.full((80, 80), 255, np.uint8)]))
    Image.fromarray((base[..., 0].astype(np.uint16) * 257)).save(src / "sixteen.png")
    _save(src / "ünïcødé 图像.png", base)
    _save(src / "huge.png", np.zeros((400, 400, 3), np.uint8))
    (src / "empty.png").write_bytes(b"")
    (src / "text.png").write_text("not an image")
    good = io.BytesIO()
    Image.fromarray(base).save(good, "JPEG")
    (src / "truncated.jpg").write_bytes(good.getvalue()[:200])
    out = str(tmp_path / "out")
    summary = cluster(str(src), out, ClusterConfig(threshold=0.9, batch_size=4, max_pixels=100_000))
    m = _manifest(out).set_index(m_idx := "uri")
    reasons = {os.path.basename(u): r for u, r in zip(m.index, m.error)}
    assert reasons["empty.png"] == "empty file"
    assert reasons["text.png"].startswith("cannot identify image")
    assert reasons["truncated.jpg"].startswith("truncated") or "corrupt" in reasons["truncated.jpg"]
    assert reasons["huge.png"].startswith("exceeds pixel limit")
    ok = {os.path.basename(u) for u in m.index[m.status == "ok"]}
    assert ok == {"rgb.png", "grey.png", "rgba.png", "sixteen.png", "ünïcødé 图像.png"}
    assert summary["counts"] == {**summary["counts"], "images": 9, "unreadable": 4}
    # unreadable files stay where they were; readable ones were copied
    assert (src / "empty.png").exists() and len(_result_files(out)) == 5
    assert m_idx == "uri"


def _cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "icas_ray", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


@pytest.mark.parametrize("transfer", ["copy", "move"])
def test_resume_after_kill(digits200, tmp_path, transfer):  # type: ignore[no-untyped-def]
    """A run killed mid-way (batches, then writing) resumes without losing or duplicating."""
    import shutil

    src = str(tmp_path / "in")
    shutil.copytree(digits200, src)
    os.remove(os.path.join(src, "truth.csv"))
    out = str(tmp_path / "out")
    args = ["cluster", src, "--output", out, "--threshold", "0.84", "--batch-size", "40",
            "--transfer", transfer, "--num-cpus", "2"]
    r = _cli(*args, env={"ICAS_FAILPOINT": "batches:2"})
    assert r.returncode == 75, r.stderr[-2000:]
    import re
    import time

    time.sleep(2)  # a batch task in flight when the driver died may still land its checkpoint
    ckpt = os.path.join(out, "_icas", "batches")
    done = {f: os.path.getmtime(os.path.join(ckpt, f)) for f in os.listdir(ckpt)}
    # The driver hands each batch to a task as soon as its rows are in, without waiting for
    # earlier ones: every batch task can be in flight at the kill, and all of them may land
    # (the run then resumes at the writing).
    assert 2 <= len(done) <= 5
    # second interruption: during the writing phase (after the first writer task)
    r = _cli(*args, env={"ICAS_FAILPOINT": "transfers:1"})
    assert r.returncode == 75, r.stderr[-2000:]
    resumed = re.search(r"resuming: (\d) of 5 batches already done", r.stderr)
    assert resumed and int(resumed.group(1)) >= len(done), r.stderr[-2000:]
    for f, t in done.items():  # finished batches were not recomputed
        assert os.path.getmtime(os.path.join(ckpt, f)) == t
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "200 images:" in r.stdout
    results = _result_files(out)
    assert len(results) == 200 and len({os.path.basename(f) for f in results}) == 200
    left = [f for f in os.listdir(src) if f.endswith(".png")]
    assert len(left) == (200 if transfer == "copy" else 0)
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["batches"]["computed_now"] == 0 and summary["batches"]["resumed"] == 5


def test_resume_after_kill_keeps_the_suggested_threshold(digits200, tmp_path):  # type: ignore[no-untyped-def]
    """Without --threshold, a run killed during the batches resumes with the suggested
    threshold its finished batches were clustered with (saved in the run's state)."""
    out = str(tmp_path / "out")
    args = ["cluster", digits200, "--output", out, "--batch-size", "40", "--num-cpus", "2"]
    r = _cli(*args, env={"ICAS_FAILPOINT": "batches:2"})
    assert r.returncode == 75, r.stderr[-2000:]
    state = json.load(open(os.path.join(out, "_icas", "state.json")))
    assert state["threshold_source"] == "suggested" and state["threshold"] is not None
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming:" in r.stderr
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["threshold"] == state["threshold"] and summary["threshold_source"] == "suggested"
    assert summary["batches"]["resumed"] >= 2
    assert len(_result_files(out)) == 200


def test_suggestion_from_too_few_readable_images_is_one_line_error(tmp_path):  # type: ignore[no-untyped-def]
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(src / "one.png")
    (src / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="give --threshold explicitly"):
        cluster(str(src), str(tmp_path / "out"), ClusterConfig(batch_size=10))


def test_overwrite_after_move_is_refused(digits200, tmp_path):  # type: ignore[no-untyped-def]
    import shutil

    src = str(tmp_path / "in")
    shutil.copytree(digits200, src)
    out = str(tmp_path / "out")
    cluster(src, out, ClusterConfig(threshold=0.84, batch_size=100, transfer="move"))
    assert not [f for f in os.listdir(src) if f.endswith(".png")]
    with pytest.raises(ConfigError, match="moved there by an earlier run"):
        cluster(src, out, ClusterConfig(threshold=0.84, batch_size=100, overwrite=True))
    assert len(_result_files(out)) == 200


def test_cli_cluster_prints_summary_and_report(digits200, tmp_path):  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from icas_ray.cli import cli

    out = str(tmp_path / "out")
    conf = tmp_path / "cluster.toml"
    conf.write_text('method = "imagehash"\nthreshold = 0.5\nbatch-size = 100\n')
    r = CliRunner().invoke(cli, ["cluster", digits200, "--output", out, "--config", str(conf),
                                 "--threshold", "0.84", "--param", "hash_size=16"])
    assert r.exit_code == 0, r.output
    assert "200 images:" in r.output and f"report:  {out}/report.html" in r.output
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["threshold"] == 0.84  # the command line wins over the file
    assert summary["parameters"]["batch_size"] == 100  # the file's value
    r = CliRunner().invoke(cli, ["cluster", digits200, "--output", out, "--threshold", "7"])
    assert r.exit_code != 0 and "threshold 7.0 is out of range" in str(r.exception)
