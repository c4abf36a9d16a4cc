"""Driver of tests/test_multinode.py: a 3-node Ray cluster on this machine, one run of
``icas cluster`` on it, and (per scenario) a node killed while the run is in flight.

Run as ``python tests/multinode_driver.py SCENARIO INPUT OUTPUT REPORT``, in its own process
(and process group): its Ray cluster, its ``ray.init`` and its node kills stay out of the test
session's Ray. Every node binds to 127.0.0.1; its temp dir (and Ray's address file) is under
``$RAY_TMPDIR``, which the test gives it.

Scenarios:

* ``plain``: an undisturbed run;
* ``kill-worker``: once the first batch's checkpoint exists, the worker node running one of
  the (held) other batches is killed (SIGKILL, as a crashed machine) and a fresh one joins;
* ``kill-merge``: the node running the merge task is killed while the merge runs, and a fresh
  one joins;
* ``kill-writer``: the node running a writer task is killed once the task has transferred its
  files (before it returns), and a fresh one joins.

The REPORT (JSON) says what happened: the nodes, which node ran which task (from Ray's state
API), what was killed and when. A worker setup hook (:func:`setup_worker`, in the job's
``runtime_env``) paces the run so that each kill lands where it is meant to, however loaded the
machine: the batches after the first wait (``ICAS_TEST_BATCH_HOLD_S`` at most) until the worker
node is killed; the merge's first attempt waits (``ICAS_TEST_MERGE_HOLD_S`` at most) once it has
told the driver where it runs, and so does the first writer task's first attempt
(``ICAS_TEST_WRITE_HOLD_S``) once its files are transferred; and in the undisturbed run
batch ``b`` takes at least ``b`` times ``ICAS_TEST_BATCH_DELAY_S``, so that batches overlap (and
spread over the workers).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from typing import Any

# Before Ray is imported: every port on 127.0.0.1, nothing reported (see runtime.loopback_env).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

LOOPBACK = "127.0.0.1"
#: A killed node is declared dead after 5 refused checks a second apart (defaults: 3 s apart);
#: a live node that is slow to answer (a loaded machine) only after 5 timeouts of 5 s.
SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 5000,
    "health_check_failure_threshold": 5,
}
WORKER_CPUS = 2


# ---------------------------------------------------------------------------------------------
# In Ray's workers: the pacing hook


def setup_worker() -> None:
    """``worker_process_setup_hook``: pace the batches and hold the merge's first attempt."""
    from icas_ray.pipeline import classic, results

    marks = os.environ["ICAS_TEST_MARKS"]
    delay = float(os.environ.get("ICAS_TEST_BATCH_DELAY_S", "0"))
    batch_hold = float(os.environ.get("ICAS_TEST_BATCH_HOLD_S", "0"))
    merge_hold = float(os.environ.get("ICAS_TEST_MERGE_HOLD_S", "0"))
    write_hold = float(os.environ.get("ICAS_TEST_WRITE_HOLD_S", "0"))
    process_batch, merge_batches = classic.process_batch, classic.merge_batches
    transfer_group = results.transfer_group

    def mark(path: str) -> None:
        """Write this node's id to ``path``, whole (a retry overwrites it)."""
        import ray

        with open(path + ".tmp", "w") as f:
            f.write(str(ray.get_runtime_context().get_node_id()))
        os.replace(path + ".tmp", path)

    def paced_batch(batch: int, **kw: Any) -> Any:
        mark(os.path.join(marks, f"batch_{batch:06d}"))  # where it runs
        t = time.monotonic()
        if batch > 0:  # batch 0's checkpoint is the driver's cue to kill a node
            killed = os.path.join(marks, "killed")
            while time.monotonic() - t < batch_hold and not os.path.exists(killed):
                time.sleep(0.1)
        result = process_batch(batch, **kw)
        time.sleep(max(0.0, delay * batch - (time.monotonic() - t)))
        return result

    def held_merge(*args: Any, **kw: Any) -> Any:
        first = os.path.join(marks, "merge_started")
        try:
            os.mkdir(first)  # the first attempt only: a retry goes straight on
        except FileExistsError:
            pass
        else:
            mark(os.path.join(first, "node"))
            time.sleep(merge_hold)  # the driver kills its node meanwhile
        return merge_batches(*args, **kw)

    def held_transfers(*args: Any, **kw: Any) -> Any:
        done = transfer_group(*args, **kw)
        first = os.path.join(marks, "write_started")
        try:
            os.mkdir(first)  # the first group's first attempt only
        except FileExistsError:
            pass
        else:
            mark(os.path.join(first, "node"))
            time.sleep(write_hold)  # copied and recorded; the driver kills its node meanwhile
        return done

    classic.process_batch = paced_batch  # type: ignore[assignment]
    classic.merge_batches = held_merge  # type: ignore[assignment]
    results.transfer_group = held_transfers  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------
# The driver


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _node_args(temp_dir: str, **extra: Any) -> dict[str, Any]:
    return {"node_ip_address": LOOPBACK, "temp_dir": temp_dir, "num_cpus": WORKER_CPUS,
            "object_store_memory": 100 * 1024 * 1024, **extra}


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _tasks(address: str) -> list[dict[str, Any]]:
    """Every task attempt the state API knows of: name, node, state, attempt."""
    from ray.util.state import list_tasks

    # The address explicitly: without it the state API picks the newest Ray on the machine.
    rows = list_tasks(address=address, limit=10000, detail=True, raise_on_missing_output=False,
                      timeout=60)
    return [{"name": t.name, "node_id": t.node_id, "state": t.state, "attempt": t.attempt_number,
             "task_id": t.task_id, "error_type": t.error_type} for t in rows]


def _wait_tasks(report: dict[str, Any], address: str, names: tuple[str, ...]) -> None:
    """The state API's task list, once the tasks named ``names`` have all reported an end
    state (task events reach the GCS a second or so after the task)."""
    deadline = time.monotonic() + 30
    while True:
        tasks = _tasks(address)
        ours = [t for t in tasks if any(n in (t["name"] or "") for n in names)]
        if all(t["state"] in ("FINISHED", "FAILED") for t in ours) or time.monotonic() > deadline:
            report["tasks"] = tasks
            return
        time.sleep(1)


def _wait_for(check: Any, timeout: float, what: str, job: threading.Thread) -> Any:
    """Poll ``check()`` until it returns something true; raise after ``timeout`` seconds or
    when the job ended first."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline or not job.is_alive():
            raise TimeoutError(f"{what} (job {'ended' if not job.is_alive() else 'still running'})")
        time.sleep(0.05)
    return value


def _start_cluster(temp_dir: str, tries: int = 2) -> tuple[Any, list[Any]]:
    """A head with no CPU (as cluster.yaml's: the driver is there, the work goes to the
    workers) and two workers. Its own ports (another Ray on this machine may hold the
    defaults); the dashboard serves the state API. A start that times out (a raylet given 30 s
    to register, on a loaded machine) is retried once: that is not what the test checks."""
    from ray.cluster_utils import Cluster

    for attempt in range(tries):
        cluster = Cluster()
        try:
            cluster.add_node(**_node_args(
                temp_dir, num_cpus=0, gcs_server_port=_free_port(), include_dashboard=True,
                dashboard_host=LOOPBACK, dashboard_port=_free_port(),
                dashboard_agent_listen_port=_free_port(), _system_config=SYSTEM_CONFIG))
            workers = [cluster.add_node(**_node_args(temp_dir)) for _ in range(2)]
            cluster.wait_for_nodes(timeout=120)
            return cluster, workers
        except Exception:
            try:
                cluster.shutdown()
            except Exception:
                traceback.print_exc()  # the test stops what is left, by PID
            if attempt + 1 == tries:
                raise
            traceback.print_exc()
    raise AssertionError("unreachable")


#: Scenarios that kill the node of a task once it has started: the task's mark (written by
#: ``setup_worker``), the report key for the node, the error if it never starts, the reason.
_KILL_WHERE_STARTED = {
    "kill-merge": ("merge_started", "merge_node", "the merge did not start", "it runs the merge"),
    "kill-writer": ("write_started", "writer_node", "no writer task started",
                    "it runs a writer task"),
}


def main(scenario: str, input_dir: str, output: str, report_path: str) -> int:
    import ray

    from icas_ray.pipeline.classic import cluster as run_cluster
    from icas_ray.pipeline.config import ClusterConfig
    from icas_ray.runtime import ResourceConfig

    temp_dir = os.path.join(os.environ["RAY_TMPDIR"], "ray")
    marks = os.environ["ICAS_TEST_MARKS"]
    job_timeout = float(os.environ.get("ICAS_TEST_JOB_TIMEOUT_S", "300"))
    report: dict[str, Any] = {"scenario": scenario, "events": [], "removed": [], "added": []}
    t0 = time.monotonic()

    def event(what: str, **kw: Any) -> None:
        report["events"].append({"t": round(time.monotonic() - t0, 2), "what": what, **kw})

    cluster = None
    try:
        cluster, workers = _start_cluster(temp_dir)
        event("cluster up")
        # The job's driver connects here, so that the job's runtime_env carries the pacing
        # hook; cluster() then finds Ray initialised and keeps this connection.
        ray.init(address=cluster.address, log_to_driver=False, runtime_env={
            "worker_process_setup_hook": "multinode_driver.setup_worker"})
        ray.data.DataContext.get_current().enable_progress_bars = False
        report["head"] = cluster.head_node.node_id
        report["workers"] = [w.node_id for w in workers]
        report["driver_node"] = ray.get_runtime_context().get_node_id()

        # The job runs in a thread: the main thread kills and adds nodes (Ray's Node needs
        # the main thread for its signal handlers).
        outcome: dict[str, Any] = {}

        def job() -> None:
            try:
                config = ClusterConfig(method="imagehash",
                                       threshold=float(os.environ["ICAS_TEST_THRESHOLD"]),
                                       batch_size=int(os.environ["ICAS_TEST_BATCH_SIZE"]))
                outcome["summary"] = run_cluster(input_dir, output, config,
                                                 resources=ResourceConfig(address=cluster.address))
            except BaseException:
                outcome["traceback"] = traceback.format_exc()

        def kill(node_id: str, why: str) -> None:
            node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
            cluster.remove_node(node, allow_graceful=False)  # SIGKILL: a crashed machine
            report["removed"].append(node_id)
            event("node killed", node=node_id, why=why)
            fresh = cluster.add_node(**_node_args(temp_dir))  # capacity comes back
            report["added"].append(fresh.node_id)
            event("node added", node=fresh.node_id)

        runner = threading.Thread(target=job, daemon=True)
        event("run start")
        runner.start()
        if scenario == "kill-worker":
            batches = os.path.join(output, "_icas", "batches")

            def cue() -> dict[str, str] | None:
                """Once a batch checkpoint exists: the batches started and not done, by node."""
                done = {n for n in (os.listdir(batches) if os.path.isdir(batches) else [])
                        if n.endswith(".npz")}
                if not done:
                    return None
                running = {}
                for name in os.listdir(marks):
                    if name.startswith("batch_") and "." not in name and f"{name}.npz" not in done:
                        running[name] = _read(os.path.join(marks, name))
                report["checkpoints_at_kill"] = sorted(done)
                return running or None

            running = _wait_for(cue, job_timeout, "no checkpoint, or no batch running", runner)
            report["running_at_kill"] = running
            kill(min(running.values()), "it runs a batch and others are checkpointed")
            open(os.path.join(marks, "killed"), "w").close()  # the held batches go on
        elif scenario in _KILL_WHERE_STARTED:
            mark, key, missing, why = _KILL_WHERE_STARTED[scenario]
            started = os.path.join(marks, mark, "node")
            node_id = _wait_for(lambda: os.path.exists(started) and _read(started),
                                job_timeout, missing, runner)
            report[key] = node_id
            kill(node_id, why)
        runner.join(timeout=job_timeout)
        if runner.is_alive():
            raise TimeoutError(f"the job did not end within {job_timeout:.0f} s")
        event("run end")
        if "traceback" in outcome:
            report["job_traceback"] = outcome["traceback"]
            raise RuntimeError("the job failed")
        report["summary"] = outcome["summary"]
        _wait_tasks(report, cluster.address,
                    ("_batch_task", "_merge_task", "_write_task", "extract"))
        report["node_alive"] = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
        report["ok"] = True
        return 0
    except BaseException:
        report["ok"] = False
        report["traceback"] = traceback.format_exc()
        return 1
    finally:
        report["elapsed_s"] = round(time.monotonic() - t0, 1)
        with open(report_path, "w") as f:
            json.dump(report, f, indent=1, default=str)
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


if __name__ == "__main__":
    code = main(*sys.argv[1:5])
    sys.stdout.flush()
    sys.stderr.flush()
    # A job thread still stuck in Ray must not keep the process alive.
    os._exit(code)
