"""The embedded default starts a new local Ray, even with a cluster running on the machine
(issue #14, item 2): a bare ``ray.init()`` would join the cluster recorded in Ray's temp dir."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import _free_port


def _drivers(session: str) -> set[str]:
    """The driver logs of the cluster's session: one per driver that ever connected."""
    return set(glob.glob(os.path.join(session, "logs", "python-core-driver-*")))


@pytest.mark.timeout(300)
def test_icas_cluster_does_not_join_a_running_cluster(digits200, tmp_path):
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    # Its own temp root (short: socket paths are limited), where the cluster records itself
    # (ray/ray_current_cluster) and where a bare ray.init() of the same RAY_TMPDIR looks.
    root = tempfile.mkdtemp(prefix="icas-", dir="/tmp")
    temp_dir = os.path.join(root, "ray")
    port = _free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TMPDIR": root}
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats",
         "--num-cpus=1"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(temp_dir, "ray_current_cluster")):  # up and recorded
            assert time.monotonic() < deadline and head.poll() is None, "ray start did not come up"
            time.sleep(0.5)
        session = os.path.realpath(os.path.join(temp_dir, "session_latest"))
        before = _drivers(session)
        src = tmp_path / "in"
        shutil.copytree(digits200, src)
        r = subprocess.run([sys.executable, "-m", "icas_ray", "cluster", str(src), "--output",
                            str(tmp_path / "out"), "--threshold", "0.84", "--num-cpus", "2"],
                           capture_output=True, text=True, timeout=240,
                           env={**env, "RAY_ADDRESS": ""})
        assert r.returncode == 0, r.stderr[-3000:]
        assert "200 images:" in r.stdout
        assert _drivers(session) == before  # no driver joined the running cluster
        assert head.poll() is None, "the running cluster went away during the test"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the cluster this test started, by its group
            try:
                os.killpg(head.pid, sig)
                head.wait(timeout=30)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(root, ignore_errors=True)


_RAYLET_ENV = r"""
import json, sys
from icas_ray.runtime import EMBEDDED_START_ENV, ResourceConfig, init_ray, stop_ray
import ray
init_ray(ResourceConfig(num_cpus=1), lean=True)
raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
env = dict(e.split("=", 1) for e in open(f"/proc/{raylet}/environ").read().split("\0") if "=" in e)
stop_ray()
print(json.dumps({k: v for k, v in env.items() if k in EMBEDDED_START_ENV}))
"""


@pytest.mark.timeout(120)
def test_the_embedded_ray_starts_and_stops_without_its_fixed_waits(tmp_path):
    """An embedded start must not sleep Ray's default second when the raylet's object manager
    comes up before the plasma store's socket (half the starts on 2 cores took 1 s longer),
    nor its shutdown wait on task events for a GCS stopped next; a value the user set stays."""
    import json

    from icas_ray.runtime import EMBEDDED_START_ENV

    env = {k: v for k, v in os.environ.items() if k not in EMBEDDED_START_ENV}
    env["RAY_raylet_client_connect_timeout_milliseconds"] = "50"  # the user's
    r = subprocess.run([sys.executable, "-c", _RAYLET_ENV], env=env, capture_output=True,
                       text=True, timeout=110, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"RAY_raylet_client_connect_timeout_milliseconds": "50",
                   "RAY_raylet_client_num_connect_attempts": "500",
                   "RAY_task_events_shutdown_flush_timeout_ms": "0"}
