"""The ``icas`` program's embedded Ray, as a user runs it (issue #15, the fixed cost): a job's
Ray starts without the head processes that serve only a cluster (the autoscaler monitor, the
API server), and the process ends as soon as its results are out, leaving no Ray process."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ICAS = os.path.join(os.path.dirname(sys.executable), "icas")


def _processes_of(root: str) -> list[str]:
    """Command lines of the live processes that name ``root`` (a Ray session's temp root)."""
    found = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as f:
                text = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if root in text:
            found.append(text)
    return found


@pytest.mark.timeout(300)
def test_icas_cluster_starts_a_lean_ray_and_leaves_nothing_running(digits200, tmp_path):
    root = tempfile.mkdtemp(prefix="icas-lean-", dir="/tmp")  # short: socket paths are limited
    try:
        src = tmp_path / "in"
        shutil.copytree(digits200, src)
        r = subprocess.run([ICAS, "cluster", str(src), "--output", str(tmp_path / "out"),
                            "--threshold", "0.84"], capture_output=True, text=True, timeout=240,
                           env={**os.environ, "RAY_TMPDIR": root, "RAY_ADDRESS": ""})
        assert r.returncode == 0, r.stderr[-3000:]
        # Everything printed made it out before the quick exit (stdout is a pipe here).
        assert "200 images:" in r.stdout and "report:" in r.stdout.splitlines()[-1]
        assert (tmp_path / "out" / "manifest.parquet").exists()
        sessions = glob.glob(os.path.join(root, "ray", "session_2*"))
        assert len(sessions) == 1, sessions
        logs = set(os.listdir(os.path.join(sessions[0], "logs")))
        assert "raylet.out" in logs and "gcs_server.out" in logs  # it was a Ray of its own ...
        assert not any(name.startswith(("monitor.", "dashboard.")) for name in logs), logs
        assert _processes_of(root) == []  # ... and none of its processes outlived the command
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_icas_exit_codes_and_messages_survive_the_quick_exit(tmp_path):
    missing = tmp_path / "nothing-here"
    r = subprocess.run([ICAS, "cluster", str(missing)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("Error:") and str(missing) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([ICAS, "cluster", "--no-such-option"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "No such option" in r.stderr
    r = subprocess.run(f"{ICAS} --help | head -1", shell=True, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("Usage: icas")
    r = subprocess.run([ICAS, "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "icas" in r.stdout


def test_lean_start_restores_ray_and_runs_tasks():
    """In a process of its own: a lean embedded Ray runs tasks, has no monitor or API server
    among its head processes, and leaves Ray's own start-up as it was for the next start."""
    code = r"""
import sys, glob
import ray
import ray._private.utils as ray_utils
from ray._private.node import Node
start_monitor, start_api_server = Node.start_monitor, Node.start_api_server
check = ray_utils.get_dashboard_dependency_error
from icas_ray.runtime import ResourceConfig, init_ray, stop_ray
assert init_ray(ResourceConfig(num_cpus=1), lean=True)
assert Node.start_monitor is start_monitor and Node.start_api_server is start_api_server
assert ray_utils.get_dashboard_dependency_error is check
# The dashboard's dependencies were found, not imported, and the agent runs in full.
assert "ray.dashboard.optional_deps" not in sys.modules
session = ray._private.worker._global_node.get_session_dir_path()
agents = []
for path in glob.glob("/proc/[0-9]*/cmdline"):
    try:
        text = open(path, "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        continue
    if "dashboard/agent.py" in text and session in text:
        agents.append(text)
assert len(agents) == 1 and "--minimal" not in agents[0], agents
processes = set(ray._private.worker._global_node.all_processes)
assert {"gcs_server", "raylet"} <= processes and not {"monitor", "dashboard"} & processes, processes
assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
stop_ray()
assert not ray.is_initialized()
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "RAY_ADDRESS": ""})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_dashboard_dependencies_are_found_as_ray_imports_them(monkeypatch):  # type: ignore[no-untyped-def]
    """The lean start's check says what Ray's import says: installed here, and a missing
    module is an ImportError naming it."""
    import ray._private.utils as ray_utils

    from icas_ray import runtime

    assert runtime._dashboard_dependency_error() is None
    assert ray_utils.get_dashboard_dependency_error() is None
    monkeypatch.setattr(runtime, "_DASHBOARD_DEPENDENCIES", ("aiohttp", "no_such_module_icas"))
    error = runtime._dashboard_dependency_error()
    assert isinstance(error, ImportError) and "no_such_module_icas" in str(error)


def test_dashboard_dependencies_cover_rays_list():  # type: ignore[no-untyped-def]
    """Every package Ray's own test imports is one the lean start looks for (a Ray release
    that adds one fails here, not in a user's agent)."""
    import ast
    import importlib.util

    from icas_ray.runtime import _DASHBOARD_DEPENDENCIES

    spec = importlib.util.find_spec("ray.dashboard.optional_deps")
    assert spec is not None and spec.origin
    with open(spec.origin) as f:
        tree = ast.parse(f.read())
    imported = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    ours = {name.split(".")[0] for name in _DASHBOARD_DEPENDENCIES}
    assert {name.split(".")[0] for name in imported} <= ours, imported
