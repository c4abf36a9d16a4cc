"""``--gpu`` on ``icas segment`` (SAM run in the job) and ``icas serve embed`` (issue #14): with it
the stages that run SAM ask Ray for a GPU each (so an autoscaling cluster adds GPU nodes) and use
``cuda``; without it nothing asks for or uses a GPU, even on a node that has one; on an embedded
Ray without a GPU, ``--gpu`` is a one-line error; for a method that uses no GPU it is refused.

No GPU exists here: the resource requests are observed on a local Ray cluster whose head
advertises a fake GPU (``num_gpus=1``), started in a subprocess with its own temp dir, through
Ray's state API (each actor's and task's required resources). A stage given the fake GPU then
fails where it builds SAM on ``cuda``, which shows that it would have used it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from icas_ray.runtime import loopback_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_GPU = "--gpu: the embedded Ray sees no GPU on this machine"


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run([sys.executable, "-m", "icas_ray", *args], capture_output=True,
                          text=True, env={**os.environ, **loopback_env()}, timeout=timeout)


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.fixture(scope="module")
def short_root() -> Iterator[str]:
    """A short folder under /tmp (Ray's socket paths are limited) with three small photos and
    a tiny SAM checkpoint, removed afterwards."""
    from icas_ray.sam import build_sam, save_checkpoint

    root = tempfile.mkdtemp(prefix="icas-gpu-", dir="/tmp")
    os.makedirs(os.path.join(root, "photos"))
    rng = np.random.default_rng(0)
    for i in range(3):
        img = np.full((48, 64, 3), 40 * i, np.uint8)
        img[10:30, 20:50] = rng.integers(100, 255, 3)
        cv2.imwrite(os.path.join(root, "photos", f"p{i}.png"), img)
    save_checkpoint(build_sam("tiny", seed=0, device="cpu").model, os.path.join(root, "tiny.pth"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _sam_args(root: str, out: str) -> list[str]:
    return [os.path.join(root, "photos"), "--method", "sam", "--output", os.path.join(root, out),
            "--sam-checkpoint", os.path.join(root, "tiny.pth"), "--sam-model-type", "tiny",
            "-p", 'generator={"points_per_side": 4}']


@pytest.mark.parametrize("extra, message", [
    (["--method", "felzenszwalb", "--gpu"],
     "Error: --gpu: method felzenszwalb runs on CPUs only (only sam with --sam-checkpoint uses a "
     "GPU): drop --gpu"),
    (["--method", "sam", "--sam-url", "http://127.0.0.1:9", "--gpu"],
     "Error: --gpu: with --sam-url, SAM runs in the `icas serve` service, not in this job: give "
     "the service GPUs (`icas serve --gpu`), or run SAM in the job with --sam-checkpoint"),
    (["--method", "felzenszwalb", "--sam-checkpoint", "TINY"],
     "Error: --sam-checkpoint runs SAM in the job: it needs --method sam, not felzenszwalb"),
    (["--method", "sam", "--sam-checkpoint", "/nonexistent/sam.pth"],
     "Error: SAM checkpoint '/nonexistent/sam.pth' does not exist: give the path or s3:// URI "
     "of a segment_anything .pth file"),
])
def test_segment_refuses_gpu_where_no_stage_uses_one(short_root: str, extra: list[str],
                                                     message: str) -> None:
    extra = [os.path.join(short_root, "tiny.pth") if a == "TINY" else a for a in extra]
    r = _cli("segment", os.path.join(short_root, "photos"), "--output",
             os.path.join(short_root, "refused"), *extra)
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [message]
    assert not os.path.exists(os.path.join(short_root, "refused")), "nothing is written"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", ["segment", "embed"])
def test_gpu_on_an_embedded_ray_without_a_gpu_is_one_line(short_root: str, command: str) -> None:
    if _has_cuda():
        pytest.skip("this machine has a GPU")
    if command == "segment":
        args = ["segment", *_sam_args(short_root, "seg-nogpu")]
    else:
        args = ["serve", "embed", os.path.join(short_root, "photos"), "--checkpoint",
                os.path.join(short_root, "tiny.pth"), "--model-type", "tiny", "--output",
                os.path.join(short_root, "emb-nogpu")]
    r = _cli(*args, "--gpu", "--num-cpus", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: {NO_GPU}: drop --gpu, or run on a cluster with GPU nodes "
                      "(--address, ray job submit)"], r.stderr[-2000:]
    if command == "segment":
        assert not os.path.exists(os.path.join(short_root, "seg-nogpu")), "nothing is written"


#: Run in a subprocess: a local Ray cluster whose head has 2 CPUs and a fake GPU (dashboard on
#: 127.0.0.1 for the state API), four CLI jobs against it with --address, and what Ray saw each
#: job's actors and tasks ask for, written as JSON to argv[2].
SCRIPT = r"""
import json, os, socket, sys, time

root, result_file = sys.argv[1], sys.argv[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks

cluster = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args={
    "num_cpus": 2, "num_gpus": 1, "temp_dir": os.path.join(root, "ray"),
    "node_ip_address": "127.0.0.1", "include_dashboard": True,
    "dashboard_host": "127.0.0.1", "dashboard_port": free_port()})
ray.init(address=cluster.address, log_to_driver=False)
from icas_ray.cli import main


def settled(listing):
    # The state API is eventually consistent: list until two listings a second apart agree.
    last = None
    for _ in range(30):
        now = sorted(json.dumps(x, sort_keys=True, default=str) for x in listing())
        if now == last:
            return [json.loads(x) for x in now]
        last = now
        time.sleep(1)
    return [json.loads(x) for x in last]


def actors():
    return [{"id": a.actor_id, "class": a.class_name, "resources": a.required_resources}
            for a in list_actors(detail=True, limit=10000)]


def tasks():
    return [{"id": t.task_id, "name": t.name, "type": t.type, "resources": t.required_resources}
            for t in list_tasks(detail=True, limit=10000)]


photos, ckpt = os.path.join(root, "photos"), os.path.join(root, "tiny.pth")
sam = ["--method", "sam", "--sam-checkpoint", ckpt, "--sam-model-type", "tiny",
       "-p", 'generator={"points_per_side": 4}']
embed = ["--checkpoint", ckpt, "--model-type", "tiny"]
jobs = {
    "segment": ["segment", photos, *sam, "--output", os.path.join(root, "seg-cpu")],
    "segment --gpu": ["segment", photos, *sam, "--output", os.path.join(root, "seg-gpu"), "--gpu"],
    "embed": ["serve", "embed", photos, *embed, "--output", os.path.join(root, "emb-cpu")],
    "embed --gpu": ["serve", "embed", photos, *embed, "--output", os.path.join(root, "emb-gpu"),
                    "--gpu"],
}
out = {"cluster_gpus": ray.cluster_resources().get("GPU", 0), "jobs": {}}
seen_actors, seen_tasks = set(), set()
for name, argv in jobs.items():
    error = None
    try:
        main([*argv, "--address", cluster.address])
    except SystemExit as e:
        error = f"exit {e.code}"
    except Exception as e:  # the GPU jobs die where they build SAM on cuda
        error = f"{type(e).__name__}: {e}"
    new_actors = [a for a in settled(actors) if a["id"] not in seen_actors]
    new_tasks = [t for t in settled(tasks) if t["id"] not in seen_tasks]
    seen_actors |= {a["id"] for a in new_actors}
    seen_tasks |= {t["id"] for t in new_tasks}
    out["jobs"][name] = {"error": error, "actors": new_actors, "tasks": new_tasks}
with open(result_file, "w") as f:
    json.dump(out, f)
ray.shutdown()
cluster.shutdown()
"""


def _stop_group(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """Stop the script's process group (its Ray cluster too), never the stop-everything CLI."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def fake_gpu_jobs(short_root: str) -> dict:  # type: ignore[type-arg]
    result = os.path.join(short_root, "requests.json")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(loopback_env(), RAY_AUTH_MODE="disabled", RAY_DATA_LOG_LEVEL="WARNING")
    with open(os.path.join(short_root, "script.log"), "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, short_root, result], env=env,
                                cwd=short_root, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=540)
        finally:
            _stop_group(proc)
    if not os.path.exists(result):
        with open(os.path.join(short_root, "script.log")) as f:
            pytest.fail(f"the fake-GPU cluster script wrote no result:\n{f.read()[-5000:]}")
    with open(result) as f:
        return json.load(f)  # type: ignore[no-any-return]


def _gpus(resources: dict) -> float:  # type: ignore[type-arg]
    return float(resources.get("GPU", 0))


# Slow (~90 s: a cluster with a dashboard and four jobs), opt-in with --runslow.
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("job, stage", [("segment", "SegmentImages"), ("embed", "EmbedImages")])
def test_only_the_sam_stage_asks_for_a_gpu_and_only_with_gpu(fake_gpu_jobs: dict, job: str,  # type: ignore[type-arg]
                                                              stage: str) -> None:
    assert fake_gpu_jobs["cluster_gpus"] == 1
    plain, gpu = fake_gpu_jobs["jobs"][job], fake_gpu_jobs["jobs"][f"{job} --gpu"]

    # Without --gpu, on a cluster that has a GPU: the job succeeds and nothing asks for one.
    assert plain["error"] is None, plain["error"]
    plain_stage = [a for a in plain["actors"] if stage in a["class"]]
    assert plain_stage and all(_gpus(a["resources"]) == 0 for a in plain_stage), plain_stage
    assert all(_gpus(t["resources"]) == 0 for t in plain["tasks"]), plain["tasks"]
    assert all(_gpus(a["resources"]) == 0 for a in plain["actors"])

    # With --gpu: each actor of the SAM stage reserves one GPU and builds SAM on cuda (which
    # the fake GPU cannot give: that is where the job fails here); the read tasks ask for none.
    gpu_stage = [a for a in gpu["actors"] if stage in a["class"]]
    assert gpu_stage and all(_gpus(a["resources"]) == 1 for a in gpu_stage), gpu_stage
    assert "device 'cuda' requested but no CUDA GPU is visible" in (gpu["error"] or ""), gpu["error"]
    others = [t for t in gpu["tasks"] if t["type"] == "NORMAL_TASK"]
    assert others and all(_gpus(t["resources"]) == 0 for t in others), others
    assert all(_gpus(a["resources"]) == 0 for a in gpu["actors"] if stage not in a["class"])
