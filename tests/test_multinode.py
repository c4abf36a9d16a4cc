"""Issue #14: ``icas cluster`` on a multi-node Ray cluster, and a node lost mid-run.

A cluster of three nodes on this machine (``ray.cluster_utils.Cluster``, every port on
127.0.0.1): a head with no CPU, as cluster.yaml's, and two workers of 2 CPUs. Each scenario runs
in its own process (tests/multinode_driver.py) so that its Ray, its driver and its node kills
stay out of the session's Ray; the process's own temp dir and ports keep it off any other Ray
on the machine, and what it started is stopped by PID.

* an undisturbed run spreads the features and batches over both workers, nothing on the head;
* a worker node killed (SIGKILL) while batches run: the batch tasks it held are retried on
  another node and the run ends by itself;
* the node running the merge killed while it merges: the merge task is retried elsewhere;
* a worker node killed while a writer task on it has copied its files: the task is retried
  elsewhere (expected to fail until journal.transfer_group accepts its own earlier copies).

After each, every input is in the results exactly once (by content), the manifest lists each
once, and the partition is the undisturbed run's (itself the same as on one local Ray).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pytest

from conftest import manifest_ari

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "multinode_driver.py")
THRESHOLD = 0.84
BATCH_SIZE = 50  # 200 images: 4 batches
#: In the undisturbed run batch b takes at least b * this (multinode_driver.setup_worker):
#: the batches overlap, more of them at once than one worker's CPUs hold.
BATCH_DELAY_S = 2.0
#: The most a held batch, merge or writer task waits for its node's kill (seconds, usually).
HOLD_S = "120"
JOB_TIMEOUT_S = 300
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


@dataclass
class Run:
    input: str
    output: str
    report: dict[str, Any]
    log: str
    #: ``(ip, port, process name)`` of every socket the cluster's processes listened on.
    listening: set[tuple[str, int, str]] = field(default_factory=set)

    def tasks(self, name: str) -> list[dict[str, Any]]:
        """The state API's attempts of the tasks whose name holds ``name`` (``extract``: the
        feature tasks, ``_extract_chunk`` or Ray Data's ``MapBatches(extract_task)``)."""
        return [t for t in self.report["tasks"] if name in (t["name"] or "")]


def _ours(root: str, driver: int) -> list[Any]:
    """The processes of the scenario's cluster: the driver and every process it started,
    orphans too (all inherit ``RAY_TMPDIR=root``; Ray's workers retitle their command line)."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.pid == driver or p.environ().get("RAY_TMPDIR") == root:
                found.append(p)
        except psutil.Error:
            continue
    return found


def _listening(procs: list[Any]) -> set[tuple[str, int, str]]:
    import psutil

    pids = {p.pid: p for p in procs}
    out = set()
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            try:
                out.add((c.laddr.ip, c.laddr.port, pids[c.pid].name()))
            except psutil.Error:
                continue
    return out


def _stop(root: str, driver: subprocess.Popen) -> None:
    """Stop what the scenario started: the driver's process group, then any process of its
    cluster still alive, each by PID."""
    import psutil

    for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):
        if driver.poll() is None:
            try:
                os.killpg(driver.pid, sig)
                driver.wait(timeout=wait_s)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
    deadline = time.monotonic() + 15  # Cluster.shutdown() killed them: workers exit soon after
    while (left := [p for p in _ours(root, driver.pid) if p.pid != driver.pid]) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass


def _scenario(scenario: str, src: str, workdir: str, **env: str) -> Run:
    """Run ``scenario`` of tests/multinode_driver.py on a copy of ``src``."""
    # A short temp root of its own (Ray's socket paths are limited to ~100 characters); Ray
    # records the cluster's address there, where no other ray.init() looks.
    root = tempfile.mkdtemp(prefix="icasmn-", dir="/tmp")
    os.makedirs(os.path.join(root, "marks"))
    inp = os.path.join(workdir, "in")
    shutil.copytree(src, inp)
    out = os.path.join(workdir, "out")
    report_path = os.path.join(workdir, "report.json")
    log_path = os.path.join(workdir, "driver.log")
    full_env = {
        **os.environ, "RAY_TMPDIR": root, "RAY_ADDRESS": "",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        # multinode_driver is the workers' setup hook: importable there too.
        "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]),
        "ICAS_TEST_MARKS": os.path.join(root, "marks"), "ICAS_TEST_THRESHOLD": str(THRESHOLD),
        "ICAS_TEST_BATCH_SIZE": str(BATCH_SIZE), "ICAS_TEST_JOB_TIMEOUT_S": str(JOB_TIMEOUT_S),
        **env,
    }
    listening: set[tuple[str, int, str]] = set()
    with open(log_path, "w") as log:
        driver = subprocess.Popen([sys.executable, DRIVER, scenario, inp, out, report_path],
                                  env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + JOB_TIMEOUT_S + 120
            while driver.poll() is None and time.monotonic() < deadline:
                listening |= _listening(_ours(root, driver.pid))
                time.sleep(1)
            assert driver.poll() is not None, f"the {scenario} driver did not end"
        finally:
            _stop(root, driver)
            shutil.rmtree(root, ignore_errors=True)
    text = _read(log_path)
    assert os.path.exists(report_path), text[-5000:]
    report = json.loads(_read(report_path))
    assert report["ok"], (report.get("job_traceback") or report.get("traceback"), text[-3000:])
    assert driver.returncode == 0, text[-3000:]
    return Run(inp, out, report, text, listening)


# ---------------------------------------------------------------------------------------------
# Checks


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _md5(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def _files(folder: str) -> list[str]:
    return [os.path.join(r, n) for r, _, names in os.walk(folder) for n in names]


def _partition(manifest: pd.DataFrame) -> set[frozenset[str]]:
    """The clusters as sets of input names, each outlier on its own."""
    groups: dict[Any, set[str]] = {}
    for i, (uri, c) in enumerate(zip(manifest.uri, manifest.cluster)):
        key = f"c{c:.0f}" if pd.notna(c) else f"o{i}"
        groups.setdefault(key, set()).add(os.path.basename(uri))
    return {frozenset(g) for g in groups.values()}


def _check_results(run: Run) -> pd.DataFrame:
    """The run finished, and every input is in the results exactly once: in the manifest
    (one row each, where the file is) and on disk (its content in exactly one result file, no
    other file there); the result folders are the manifest's clusters."""
    inputs = sorted(n for n in os.listdir(run.input) if n.endswith(".png"))
    assert len(inputs) == 200
    summary = json.loads(_read(os.path.join(run.output, "summary.json")))
    assert summary["counts"]["images"] == 200 and summary["counts"]["transfer_errors"] == 0
    assert summary["batches"] == {"total": 4, "computed_now": 4, "resumed": 0}
    m = pd.read_parquet(os.path.join(run.output, "manifest.parquet"))
    assert sorted(os.path.basename(u) for u in m.uri) == inputs  # each input once
    assert (m.status == "ok").all()
    results = _files(os.path.join(run.output, "results"))
    assert len(results) == len(inputs), "extra or missing files in results/"
    by_md5: dict[str, list[str]] = {}
    for f in results:
        by_md5.setdefault(_md5(f), []).append(f)
    for uri, loc in zip(m.uri, m.location):
        h = _md5(uri)  # a copy run: the input is still there
        assert by_md5.get(h) == [loc], (uri, by_md5.get(h), loc)
    folders: dict[str, set[str]] = {}
    for uri, loc in zip(m.uri, m.location):
        folders.setdefault(os.path.dirname(loc), set()).add(os.path.basename(uri))
    clustered = m[m.cluster.notna()]
    assert {frozenset(v) for k, v in folders.items() if not k.endswith("outliers")} == \
        _partition(clustered)
    return m


def _check_retried(run: Run, name: str, node: str) -> None:
    """The tasks called ``name`` that ran on ``node`` when it was killed failed with it and
    were retried on a live node, each once."""
    attempts = run.tasks(name)
    lost = [t for t in attempts if t["node_id"] == node and t["state"] != "FINISHED"]
    assert lost and all(t["error_type"] == "NODE_DIED" for t in lost), attempts
    for t in lost:
        retries = [r for r in attempts
                   if r["task_id"] == t["task_id"] and r["attempt"] > t["attempt"]]
        assert [r["state"] for r in retries] == ["FINISHED"], retries
        assert retries[0]["node_id"] != node


def _same_partition(run: Run, manifest: pd.DataFrame, reference: Run) -> None:
    assert _partition(manifest) == _partition(pd.read_parquet(
        os.path.join(reference.output, "manifest.parquet"))), run.output


def _check_loopback(run: Run) -> None:
    names = {name for _, _, name in run.listening}
    assert "gcs_server" in names and "raylet" in names, run.listening  # the check saw the cluster
    assert [a for a in run.listening if a[0] not in LOOPBACK] == []


def _truth(folder: str) -> dict[str, str]:
    t = pd.read_csv(os.path.join(folder, "truth.csv"))
    return dict(zip(t.iloc[:, 0].map(os.path.basename), t.iloc[:, 1].astype(str)))


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module")
def undisturbed(digits200: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """An undisturbed run on the 3-node cluster: the reference partition."""
    yield _scenario("plain", digits200, str(tmp_path_factory.mktemp("plain")),
                    ICAS_TEST_BATCH_DELAY_S=str(BATCH_DELAY_S))


def test_work_spreads_over_the_worker_nodes(  # type: ignore[no-untyped-def]
        undisturbed: Run, digits200: str, tmp_path, ray_session) -> None:
    run = undisturbed
    _check_loopback(run)
    head, workers = run.report["head"], set(run.report["workers"])
    assert run.report["driver_node"] == head
    features = {t["node_id"] for t in run.tasks("extract") if t["state"] == "FINISHED"}
    batches = {t["node_id"] for t in run.tasks("_batch_task") if t["state"] == "FINISHED"}
    merge = {t["node_id"] for t in run.tasks("_merge_task") if t["state"] == "FINISHED"}
    writers = {t["node_id"] for t in run.tasks("_write_task") if t["state"] == "FINISHED"}
    assert len(run.tasks("_batch_task")) == 4 and len(merge) == 1
    # Both workers computed features or batches; the head (no CPU) ran none of the work.
    assert features | batches == workers, (features, batches, workers)
    assert not (features | batches | merge | writers) & {head}
    m = _check_results(run)
    assert manifest_ari(m, _truth(run.input)) > 0.7  # a sanity check: digits in clusters
    # The same partition as on one node (the session's local Ray).
    from icas_ray.pipeline.classic import cluster
    from icas_ray.pipeline.config import ClusterConfig

    local = str(tmp_path / "local")
    cluster(digits200, local, ClusterConfig(method="imagehash", threshold=THRESHOLD,
                                            batch_size=BATCH_SIZE))
    assert _partition(m) == _partition(pd.read_parquet(os.path.join(local, "manifest.parquet")))


def test_a_worker_node_lost_mid_run(  # type: ignore[no-untyped-def]
        undisturbed: Run, digits200: str, tmp_path) -> None:
    # The batches after the first wait (up to HOLD_S) until a node running one is killed.
    run = _scenario("kill-worker", digits200, str(tmp_path), ICAS_TEST_BATCH_HOLD_S=HOLD_S)
    _check_loopback(run)
    report = run.report
    killed = report["removed"]
    assert len(killed) == 1 and killed[0] in report["workers"] and len(report["added"]) == 1
    # Mid-run: the first batch was checkpointed, and the killed node held one still running.
    assert report["checkpoints_at_kill"] == ["batch_000000.npz"]
    assert killed[0] in report["running_at_kill"].values()
    _check_retried(run, "_batch_task", killed[0])
    _same_partition(run, _check_results(run), undisturbed)


def test_the_merge_node_lost_mid_merge(  # type: ignore[no-untyped-def]
        undisturbed: Run, digits200: str, tmp_path) -> None:
    # The merge's first attempt waits (up to HOLD_S) until its node is killed.
    run = _scenario("kill-merge", digits200, str(tmp_path), ICAS_TEST_MERGE_HOLD_S=HOLD_S)
    _check_loopback(run)
    report = run.report
    node = report["merge_node"]
    assert report["removed"] == [node] and node in report["workers"]
    merges = sorted(run.tasks("_merge_task"), key=lambda t: t["attempt"])
    assert [(t["attempt"], t["state"], t["error_type"]) for t in merges] == \
        [(0, "FAILED", "NODE_DIED"), (1, "FINISHED", None)], merges
    assert merges[0]["node_id"] == node != merges[1]["node_id"]
    _same_partition(run, _check_results(run), undisturbed)


def test_a_worker_node_lost_while_writing(  # type: ignore[no-untyped-def]
        undisturbed: Run, digits200: str, tmp_path) -> None:
    # The first writer task's first attempt waits (up to HOLD_S), its files transferred and
    # recorded, until its node is killed.
    run = _scenario("kill-writer", digits200, str(tmp_path), ICAS_TEST_WRITE_HOLD_S=HOLD_S)
    _check_loopback(run)
    report = run.report
    node = report["writer_node"]
    assert report["removed"] == [node] and node in report["workers"]
    _check_retried(run, "_write_task", node)
    # Where it fails today: each file the lost attempt copied is reported as not this run's.
    summary = json.loads(_read(os.path.join(run.output, "summary.json")))
    assert summary["counts"]["transfer_errors"] == 0, list(summary["transfer_errors"].items())[:2]
    _same_partition(run, _check_results(run), undisturbed)
