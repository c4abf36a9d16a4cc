"""cluster.yaml's node types on Ray's fake multi-node autoscaler (issue #14): CPU demand adds CPU
workers, GPU demand (what ``--gpu`` stages ask for) adds a GPU worker, idle workers go away.

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
- The demand comes from tasks shaped like the pipeline's (a batch task: 1 CPU; the merge with
  ``--gpu``: 1 CPU and 1 GPU) that wait for each other, so it lasts until the autoscaler has
  added what it needs. A real ``icas cluster --gpu`` job would ask for the same GPU but then
  run CUDA kernels, which no fake GPU has; ``tests/test_gpu_flags.py`` checks what each stage
  asks Ray for.

Everything listens on 127.0.0.1, in its own temp dir and ports; the cluster is stopped by its
process group (never the stop-everything CLI), also when the test fails.
"""

from __future__ import annotations

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


#: A driver that runs N tasks of one shape which wait until all N run at once (so the demand
#: lasts until the autoscaler has added the capacity), then report where they ran.
DRIVER = r"""
import json, os, sys, time
import ray

address, n, options = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
ray.init(address=address, log_to_driver=False)


@ray.remote(num_cpus=0)
class Barrier:
    def __init__(self):
        self.n = 0

    def arrive(self):
        self.n += 1

    def count(self):
        return self.n


@ray.remote
def work(barrier, n):
    ray.get(barrier.arrive.remote())
    deadline = time.monotonic() + 300
    while ray.get(barrier.count.remote()) < n and time.monotonic() < deadline:
        time.sleep(0.5)
    return {"node": ray.get_runtime_context().get_node_id(),
            "type": os.environ.get("RAY_NODE_TYPE_NAME", "head"),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "together": ray.get(barrier.count.remote()) >= n}


barrier = Barrier.remote()
print(json.dumps(ray.get([work.options(**options).remote(barrier, n) for _ in range(n)])))
"""


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

    def run_tasks(self, n: int, options: dict[str, Any]) -> list[dict[str, Any]]:
        env = {k: v for k, v in self.env.items()
               if k not in ("RAY_FAKE_CLUSTER", "RAY_OVERRIDE_NODE_ID_FOR_TESTING")}
        r = subprocess.run([sys.executable, "-c", DRIVER, self.address, str(n), json.dumps(options)],
                           env=env, cwd=self.root, capture_output=True, text=True, timeout=420)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

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


@pytest.mark.timeout(900)
def test_cpu_and_gpu_demand_add_their_node_types_then_idle_nodes_go(fake_cluster: FakeCluster) -> None:
    c = fake_cluster
    min_cpu = c.wait_active({"cpu_worker": 1}, timeout=240)  # cluster.yaml's min_workers: 1
    assert min_cpu.get("cpu_worker") == 1 and not min_cpu.get("gpu_worker"), min_cpu
    assert c.head.poll() is None, open(os.path.join(c.root, "head.log")).read()[-3000:]
    # Every port of the head and of the fake nodes is on loopback.
    listening = _listeners(c.pids())
    assert listening and not not_loopback(listening), not_loopback(listening)

    # CPU demand: four batch-shaped tasks (1 CPU each) need two 2-CPU workers at once.
    before = len(c.events())
    ran = c.run_tasks(4, {"num_cpus": 1})
    cpu_events = c.events()[before:]
    assert all(r["together"] for r in ran), ran
    assert {r["type"] for r in ran} == {"cpu_worker"}, ran
    assert len({r["node"] for r in ran}) == 2, ran
    assert "Adding 1 node(s) of type cpu_worker." in cpu_events, cpu_events
    assert not any("gpu_worker" in e for e in cpu_events), "CPU work must not start GPU nodes"

    # GPU demand: the merge's shape with --gpu (1 CPU, 1 GPU) brings a GPU worker.
    before = len(c.events())
    ran = c.run_tasks(1, {"num_cpus": 1, "num_gpus": 1})
    gpu_events = c.events()[before:]
    assert [(r["type"], r["gpu_ids"]) for r in ran] == [("gpu_worker", ["0"])], ran
    assert "Adding 1 node(s) of type gpu_worker." in gpu_events, gpu_events

    # Idle: back to cluster.yaml's minimum (one CPU worker, no GPU worker).
    final = c.wait_active({"cpu_worker": 1, "gpu_worker": 0}, timeout=240)
    assert final.get("cpu_worker") == 1 and not final.get("gpu_worker"), final
    events = c.events()
    assert "Removing 1 nodes of type gpu_worker (idle)." in events, events
    assert "Removing 1 nodes of type cpu_worker (idle)." in events, events
