"""cluster.yaml's node types on Ray's fake multi-node autoscaler (issue #14): a CPU ``icas
cluster`` job makes it add a CPU worker, a ``--gpu`` job a GPU worker (faked GPU resources), and
idle workers go away again.

Ray's ``fake_multinode`` provider runs each node of a node type as local processes (a raylet per
node, started by the autoscaler's monitor), so the autoscaler's decisions are the real ones
from the real demand; only the machines are fake. How the test deviates from the cloud, and why:

- Node types come from cluster.yaml (names, explicit resources, min/max workers, upscaling
  speed). Where cluster.yaml lets the cloud detect resources from the instance type
  (``resources: {}``), the test uses the instance type's vCPUs and GPUs (INSTANCE_RESOURCES)
  scaled down 8 times for this 2-core machine (GPUs are a resource count: no device exists).
  ``max_workers`` are capped (MAX_WORKERS) and the idle timeout is seconds, not 5 minutes.
- The head is the fake provider's ``ray.head.default`` (its fixed name) with cluster.yaml's head
  resources: 0 CPUs, so every task lands on a worker.
- The jobs are real ``icas cluster`` runs (the CLI, in a driver joined with ``--address``), on
  generated digits. A worker setup hook in each job records which node each feature call and
  each batch ran on, with what Ray gave it (JOB_DRIVER). In the CPU job it also paces the
  feature stage: a digit takes about a millisecond, a fake node 10 s or more to join on this
  machine, so unpaced the job's queued feature tasks (its demand) are done before the added node
  can take one. Each worker's first feature call waits (HOLD_S at most) until the cluster has
  two CPU workers' CPUs; the tasks the job keeps queued meanwhile are what makes the autoscaler
  add the second worker, then the job runs on both.
- Past the CPU workers' max_workers (2 here, 16 in cluster.yaml) the autoscaler also starts the
  GPU worker for CPU-only demand (Ray's autoscaler prefers, not requires, CPU nodes for it;
  README): the CPU job keeps two feature tasks queued per CPU, so it may. The test checks that
  it asks for no GPU, and that a GPU worker, if any, comes after the CPU worker.
- The ``--gpu`` job (``--method TM``, whose batch kernels and merge use a GPU) cannot finish:
  no ``icas cluster --gpu`` path completes without CUDA. Its batch tasks ask for 1 CPU and 0.25
  GPU and cluster on ``cuda`` (``_batch_task`` -> ``process_batch(device="cuda")``); the
  embedding method's actors fall back to the CPU when CUDA is missing, but its batch tasks and
  the merge do not, and the methods without a torch kernel (imagehash, ...) ask for no GPU at
  all with ``--gpu``. So the test shows that the job's GPU request makes the autoscaler add the
  GPU worker, that the batch task runs there (GPU id 0, 0.25 GPU, device cuda) while its feature
  tasks ask for no GPU, and that the task then fails there, in torch's CUDA initialisation
  (CUDA_MISSING), which ends the job. tests/test_gpu_flags.py checks what each stage of
  ``icas segment`` / ``icas serve embed`` asks Ray for.

Everything listens on 127.0.0.1, in its own temp dir and ports; the cluster is stopped by its
process group (never the stop-everything CLI), also when the test fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from conftest import _free_port, not_loopback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")

pytestmark = pytest.mark.slow

#: vCPUs and GPUs of cluster.yaml's instance types (what the AWS provider detects for
#: ``resources: {}``).
INSTANCE_RESOURCES = {"m6i.2xlarge": {"CPU": 8}, "c6i.4xlarge": {"CPU": 16},
                      "g5.2xlarge": {"CPU": 8, "GPU": 1}}
#: Fake nodes get 1/8 of the instance's CPUs (16 -> 2, 8 -> 1); GPUs are kept.
CPU_SCALE = 8
#: At most this many workers of each type (cluster.yaml allows 16 CPU and 4 GPU workers).
MAX_WORKERS = {"cpu_worker": 2, "gpu_worker": 1}
#: Seconds a worker may idle before it is removed (cluster.yaml: 5 minutes).
IDLE_TIMEOUT_S = 12
#: The fake provider's head node type and id (fixed names in Ray's fake_multinode provider).
FAKE_HEAD_TYPE = "ray.head.default"
#: CPUs of a fake cpu_worker (c6i.4xlarge's 16 vCPUs / CPU_SCALE).
CPU_WORKER_CPUS = 2
#: The CPU job: generated digits, in batches of this size.
CPU_JOB_IMAGES, CPU_JOB_BATCH = 2000, 500
#: The most a CPU job's worker holds its first feature call for the second CPU worker (s).
HOLD_S = 240
#: The --gpu job: fewer digits (it ends at its first batch task).
GPU_JOB_IMAGES, GPU_JOB_BATCH = 150, 50
#: What torch says where a task asks for cuda on a node whose GPU is only a resource count.
CUDA_MISSING = "Found no NVIDIA driver"


def fake_cluster_config(cluster: dict[str, Any], gcs_address: str) -> dict[str, Any]:
    """cluster.yaml as a ``fake_multinode`` autoscaling config (see the module docstring)."""
    types: dict[str, Any] = {}
    for name, spec in cluster["available_node_types"].items():
        resources = dict(spec.get("resources") or {})
        if not resources:
            detected = INSTANCE_RESOURCES[spec["node_config"]["InstanceType"]]
            resources = {"CPU": max(1, detected["CPU"] // CPU_SCALE),
                         **({"GPU": detected["GPU"]} if detected.get("GPU") else {})}
        resources["object_store_memory"] = 100 * 2**20
        if name == cluster["head_node_type"]:
            types[FAKE_HEAD_TYPE] = {"resources": resources, "node_config": {}, "max_workers": 0}
            continue
        types[name] = {"resources": resources, "node_config": {},
                       "min_workers": spec.get("min_workers", 0),
                       "max_workers": min(spec["max_workers"], MAX_WORKERS[name])}
    return {
        "cluster_name": cluster["cluster_name"],
        "max_workers": min(cluster["max_workers"], sum(MAX_WORKERS.values())),
        "upscaling_speed": cluster["upscaling_speed"],
        "idle_timeout_minutes": IDLE_TIMEOUT_S / 60,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": gcs_address},
        "available_node_types": types,
        "head_node_type": FAKE_HEAD_TYPE,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


#: A driver that runs one ``icas`` command (argv[3], JSON) against the cluster at argv[1], as a
#: job whose workers record where the pipeline's stages ran (argv[2]: a folder of JSON lines, one
#: file per worker process), then prints how the command ended (JSON, last line).
#:
#: The job's ``worker_process_setup_hook`` wraps two functions of the pipeline, in every worker
#: of the job: ``stages.extract_task`` (the feature stage, called by each ``_extract_chunk``
#: task per 64 images) and ``classic.process_batch`` (called by each ``_batch_task``). Each call
#: first writes a mark: the stage, the node and its type, what Ray gave the task (CPUs, GPUs and
#: GPU ids), the device the batch is clustered on. With ``ICAS_TEST_HOLD_CPUS`` a worker's first
#: feature call also waits (``ICAS_TEST_HOLD_S`` at most) until the cluster has that many CPUs:
#: the feature tasks the job has in flight then outlast the start of the node the autoscaler adds
#: for the ones still queued (see the module docstring).
JOB_DRIVER = r"""
import json, os, sys, time
import ray

address, marks, argv = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])


def setup_worker():
    import json, os, time
    import ray
    from icas_ray.pipeline import classic, stages

    marks = os.environ["ICAS_TEST_MARKS"]
    need = float(os.environ.get("ICAS_TEST_HOLD_CPUS", "0"))
    hold_s = float(os.environ.get("ICAS_TEST_HOLD_S", "0"))
    extract, process_batch = stages.extract_task, classic.process_batch
    released = [need <= 0]

    def mark(stage, **extra):
        ctx = ray.get_runtime_context()
        line = {"stage": stage, "type": os.environ.get("RAY_NODE_TYPE_NAME", "head"),
                "node": ctx.get_node_id(), "resources": ctx.get_assigned_resources(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "pid": os.getpid(),
                "t": time.time(), **extra}
        with open(os.path.join(marks, f"{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")

    def extract_task(batch, **job):
        if not released[0]:
            deadline = time.monotonic() + hold_s
            while ray.cluster_resources().get("CPU", 0) < need and time.monotonic() < deadline:
                time.sleep(0.5)
            released[0] = True
        mark("features", rows=len(batch["uri"]))
        return extract(batch, **job)

    def marked_process_batch(batch, **kwargs):
        mark("batch", batch=int(batch), device=kwargs.get("device"))
        return process_batch(batch, **kwargs)

    stages.extract_task = extract_task
    classic.process_batch = marked_process_batch


env_vars = {k: os.environ[k] for k in ("ICAS_TEST_HOLD_CPUS", "ICAS_TEST_HOLD_S") if k in os.environ}
ray.init(address=address, log_to_driver=False, runtime_env={
    "worker_process_setup_hook": setup_worker,
    "env_vars": {"ICAS_TEST_MARKS": marks, **env_vars}})
from icas_ray.cli import main

start, error = time.time(), None
try:
    main([*argv, "--address", address])
except SystemExit as e:
    error = None if e.code in (0, None) else f"exit {e.code}"
except Exception as e:
    error = f"{type(e).__name__}: {e}"
print(json.dumps({"error": error, "start": start, "end": time.time()}))
"""


@dataclass
class Job:
    """How an ``icas`` job on the fake cluster ended, and where its stages ran."""

    error: str | None
    marks: list[dict[str, Any]]
    log: str
    seconds: float

    def stage(self, name: str) -> list[dict[str, Any]]:
        return [m for m in self.marks if m["stage"] == name]


@dataclass
class FakeCluster:
    root: str
    address: str
    head: subprocess.Popen  # type: ignore[type-arg]
    env: dict[str, str]

    @property
    def events_file(self) -> str:
        return os.path.join(self.root, "ray", "session_latest", "logs", "events",
                            "event_AUTOSCALER.log")

    def events(self) -> list[str]:
        """The autoscaler's event messages so far (what the dashboard and job logs show)."""
        if not os.path.exists(self.events_file):
            return []
        with open(self.events_file) as f:
            return [json.loads(line)["message"] for line in f if line.strip()]

    def active(self) -> dict[str, int]:
        """``ray status``'s active nodes by type."""
        out = subprocess.run([RAY, "status", f"--address={self.address}"], env=self.env,
                             capture_output=True, text=True, timeout=120).stdout
        if "Active:" not in out:
            return {}
        block = out.split("Active:", 1)[1].split("Pending:", 1)[0]
        return {m.group(2): int(m.group(1))
                for m in re.finditer(r"^\s*(\d+)\s+(\S+)\s*$", block, re.MULTILINE)}

    def wait_active(self, want: dict[str, int], timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.active()
            if all(got.get(k, 0) == v for k, v in want.items()) or time.monotonic() > deadline:
                return got
            time.sleep(2)

    def run_job(self, argv: list[str], **env: str) -> Job:
        """Run ``icas *argv --address <the cluster>`` through :data:`JOB_DRIVER`."""
        marks = tempfile.mkdtemp(prefix="marks-", dir=self.root)
        job_env = {k: v for k, v in self.env.items()
                   if k not in ("RAY_FAKE_CLUSTER", "RAY_OVERRIDE_NODE_ID_FOR_TESTING")}
        job_env.update(env, RAY_DATA_LOG_LEVEL="WARNING")
        t = time.monotonic()
        r = subprocess.run([sys.executable, "-c", JOB_DRIVER, self.address, marks, json.dumps(argv)],
                           env=job_env, cwd=self.root, capture_output=True, text=True, timeout=480,
                           check=False)
        seconds = time.monotonic() - t
        log = r.stdout + r.stderr
        assert r.returncode == 0 and r.stdout.strip(), log[-5000:]
        ended = json.loads(r.stdout.strip().splitlines()[-1])
        lines = []
        for name in sorted(os.listdir(marks)):
            with open(os.path.join(marks, name)) as f:
                lines += [json.loads(line) for line in f if line.strip()]
        return Job(ended["error"], sorted(lines, key=lambda m: m["t"]), log, seconds)

    def pids(self) -> set[int]:
        """The cluster's processes: its process group, and anything running from its temp dir
        (the fake nodes' raylets and workers)."""
        import psutil

        out = set()
        for p in psutil.process_iter(["cmdline"]):
            try:
                if os.getpgid(p.pid) == self.head.pid or self.root in " ".join(p.info["cmdline"] or []):
                    out.add(p.pid)
            except (ProcessLookupError, psutil.Error):
                continue
        return out - {os.getpid()}


def _stop(cluster: FakeCluster) -> None:
    """Stop the cluster by PID: ``ray start --block`` stops the head's processes on SIGTERM;
    then what is left (fake nodes) gets SIGTERM, then SIGKILL."""
    import psutil

    try:
        cluster.head.send_signal(signal.SIGTERM)
        cluster.head.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = cluster.pids()
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        psutil.wait_procs([psutil.Process(p) for p in left if psutil.pid_exists(p)], timeout=20)
    if cluster.head.poll() is None:
        cluster.head.kill()
        cluster.head.wait(timeout=10)


@pytest.fixture
def fake_cluster() -> Iterator[FakeCluster]:
    """cluster.yaml's node types on the fake autoscaler, head on 127.0.0.1, own temp dir."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    root = tempfile.mkdtemp(prefix="icas-as-", dir="/tmp")  # short: Ray's socket paths
    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        cluster_yaml = yaml.safe_load(f)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    config = fake_cluster_config(cluster_yaml, address)
    config_file = os.path.join(root, "autoscaling.json")
    with open(config_file, "w") as f:
        json.dump(config, f)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1",
               RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID,
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="disabled",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    ports = {name: _free_port() for name in (
        "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "metrics-export-port", "runtime-env-agent-port", "node-manager-port",
        "object-manager-port")}
    head_resources = config["available_node_types"][FAKE_HEAD_TYPE]["resources"]
    with open(os.path.join(root, "head.log"), "w") as log:
        head = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
             f"--temp-dir={os.path.join(root, 'ray')}", f"--num-cpus={head_resources['CPU']}",
             "--include-dashboard=false", "--disable-usage-stats",
             f"--object-store-memory={head_resources['object_store_memory']}",
             f"--autoscaling-config={config_file}", *(f"--{k}={v}" for k, v in ports.items())],
            env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = FakeCluster(root, address, head, env)
    try:
        yield cluster
    finally:
        _stop(cluster)
        left = cluster.pids()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"processes of the fake cluster still running: {sorted(left)}"


def _listeners(pids: set[int]) -> list[tuple[str, int, int]]:
    import psutil

    return [(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


def test_translated_node_types_follow_cluster_yaml() -> None:
    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        cluster_yaml = yaml.safe_load(f)
    types = fake_cluster_config(cluster_yaml, "127.0.0.1:1")["available_node_types"]
    assert types[FAKE_HEAD_TYPE]["resources"]["CPU"] == 0, "the head runs no task"
    assert types["cpu_worker"]["resources"]["CPU"] == 2 and "GPU" not in types["cpu_worker"]["resources"]
    assert types["gpu_worker"]["resources"]["GPU"] == 1
    assert types["cpu_worker"]["min_workers"] == cluster_yaml["available_node_types"]["cpu_worker"]["min_workers"]
    assert types["gpu_worker"]["min_workers"] == 0


def _md5(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def _check_cpu_results(inp: str, out: str, n: int) -> None:
    """The CPU job's results: every input exactly once (one manifest row each, its content in
    exactly one result file, nothing else there), in clusters that follow the digits."""
    import pandas as pd
    from conftest import manifest_ari

    inputs = sorted(f for f in os.listdir(inp) if f.endswith(".png"))
    assert len(inputs) == n
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["counts"]["images"] == n and summary["counts"]["transfer_errors"] == 0, summary
    assert summary["counts"]["unreadable"] == 0, summary
    assert summary["batches"] == {"total": n // CPU_JOB_BATCH, "computed_now": n // CPU_JOB_BATCH,
                                  "resumed": 0}, summary
    m = pd.read_parquet(os.path.join(out, "manifest.parquet"))
    assert sorted(os.path.basename(u) for u in m.uri) == inputs, "each input once in the manifest"
    assert (m.status == "ok").all()
    results = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(out, "results"))
                     for f in fs)
    assert results == sorted(m.location), "results/ holds exactly the manifest's files"
    for uri, loc in zip(m.uri, m.location):
        assert _md5(uri) == _md5(loc), (uri, loc)  # a copy run: the input is still there
    truth = pd.read_csv(os.path.join(inp, "truth.csv"))
    labels = dict(zip(truth.iloc[:, 0].map(os.path.basename), truth.iloc[:, 1].astype(str)))
    assert manifest_ari(m, labels) > 0.9  # imagehash at 0.84 on digits: ~0.97


@pytest.mark.timeout(1200)
def test_cpu_and_gpu_jobs_add_their_node_types_then_idle_nodes_go(fake_cluster: FakeCluster) -> None:
    from icas_ray.datasets import make_dataset

    c = fake_cluster
    min_cpu = c.wait_active({"cpu_worker": 1}, timeout=240)  # cluster.yaml's min_workers: 1
    assert min_cpu.get("cpu_worker") == 1 and not min_cpu.get("gpu_worker"), min_cpu
    assert c.head.poll() is None, open(os.path.join(c.root, "head.log")).read()[-3000:]
    # Every port of the head and of the fake nodes is on loopback.
    listening = _listeners(c.pids())
    assert listening and not not_loopback(listening), not_loopback(listening)

    # A CPU job: `icas cluster` (imagehash) on 2,000 digits. Its queued feature tasks make the
    # autoscaler add the second CPU worker, and features run on both CPU workers.
    cpu_in, cpu_out = os.path.join(c.root, "digits"), os.path.join(c.root, "digits-out")
    make_dataset("digits", cpu_in, count=CPU_JOB_IMAGES, seed=0)
    before = len(c.events())
    cpu = c.run_job(["cluster", cpu_in, "--output", cpu_out, "--method", "imagehash",
                     "--threshold", "0.84", "--batch-size", str(CPU_JOB_BATCH)],
                    ICAS_TEST_HOLD_CPUS=str(2 * CPU_WORKER_CPUS), ICAS_TEST_HOLD_S=str(HOLD_S))
    cpu_events = c.events()[before:]
    print(f"CPU job: {cpu.seconds:.0f} s, autoscaler: {cpu_events}")
    assert cpu.error is None, cpu.log[-5000:]
    _check_cpu_results(cpu_in, cpu_out, CPU_JOB_IMAGES)
    assert "Adding 1 node(s) of type cpu_worker." in cpu_events, cpu_events
    features, batches = cpu.stage("features"), cpu.stage("batch")
    assert sum(m["rows"] for m in features) == CPU_JOB_IMAGES, "each image extracted once"
    feature_nodes = {m["node"] for m in features if m["type"] == "cpu_worker"}
    assert len(feature_nodes) == 2, "features ran on both CPU workers, the added one too"
    assert "head" not in {m["type"] for m in cpu.marks}, "nothing runs on the 0-CPU head"
    # The CPU job asks for no GPU anywhere. (Past the CPU workers' max_workers, capped at 2
    # here, the autoscaler may add the GPU worker for CPU-only work, and only then: README.)
    assert all(not m["resources"].get("GPU") and not m["gpu_ids"] for m in cpu.marks), cpu.marks
    assert len(batches) == CPU_JOB_IMAGES // CPU_JOB_BATCH and all(
        m["device"] is None for m in batches), batches
    gpu_adds = [i for i, e in enumerate(cpu_events) if e == "Adding 1 node(s) of type gpu_worker."]
    if gpu_adds:
        assert cpu_events.index("Adding 1 node(s) of type cpu_worker.") < gpu_adds[0], cpu_events

    # Idle again: back to cluster.yaml's minimum before the GPU job.
    idle = c.wait_active({"cpu_worker": 1, "gpu_worker": 0}, timeout=240)
    assert idle.get("cpu_worker") == 1 and not idle.get("gpu_worker"), idle
    assert "Removing 1 nodes of type cpu_worker (idle)." in c.events(), c.events()

    # A --gpu job: `icas cluster --method TM --gpu`. Its batch tasks ask for a GPU (0.25 each),
    # so the autoscaler adds the GPU worker, and the first batch task runs there, on GPU 0,
    # clustering on cuda: no CUDA exists behind the fake GPU, so the task fails there and the
    # job with it (see the module docstring). The feature tasks ask for no GPU.
    gpu_in, gpu_out = os.path.join(c.root, "digits-gpu"), os.path.join(c.root, "digits-gpu-out")
    make_dataset("digits", gpu_in, count=GPU_JOB_IMAGES, seed=1)
    before = len(c.events())
    gpu = c.run_job(["cluster", gpu_in, "--output", gpu_out, "--method", "TM", "--threshold",
                     "0.98", "--batch-size", str(GPU_JOB_BATCH), "--gpu"])
    gpu_events = c.events()[before:]
    print(f"--gpu job: {gpu.seconds:.0f} s, autoscaler: {gpu_events}")
    assert "Adding 1 node(s) of type gpu_worker." in gpu_events, gpu_events
    assert gpu.error is not None and "_batch_task" in gpu.error and CUDA_MISSING in gpu.error, \
        gpu.error or gpu.log[-5000:]
    gpu_batches = gpu.stage("batch")
    assert gpu_batches, gpu.marks
    assert all(m["type"] == "gpu_worker" and m["gpu_ids"] == ["0"] and m["device"] == "cuda"
               and m["resources"].get("GPU") == 0.25 for m in gpu_batches), gpu_batches
    gpu_features = gpu.stage("features")
    assert gpu_features and all(not m["resources"].get("GPU") for m in gpu_features), gpu_features
    assert not os.path.exists(os.path.join(gpu_out, "summary.json")), "the job did not finish"

    # Idle: back to cluster.yaml's minimum (one CPU worker, no GPU worker).
    final = c.wait_active({"cpu_worker": 1, "gpu_worker": 0}, timeout=240)
    assert final.get("cpu_worker") == 1 and not final.get("gpu_worker"), final
    assert "Removing 1 nodes of type gpu_worker (idle)." in c.events()[before:], c.events()
