"""Connecting to Ray: an embedded local Ray bound to loopback, or an existing cluster.

The embedded Ray must not listen on the machine's network interfaces: on a laptop that would
be an open door. Ray chooses its node address when ``ray`` is first imported (its constant
``ENABLE_RAY_CLUSTER``); with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` it picks 127.0.0.1 for
every port. :func:`init_ray` sets that before importing Ray, and patches the constant when Ray
was imported earlier by the caller.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from icas_ray.errors import ConfigError

__all__ = ["EMBEDDED_START_ENV", "ResourceConfig", "check_gpu_request", "cluster_cpus", "cluster_gpus", "init_ray",
           "is_embedded", "loopback_env", "stop_ray"]

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def loopback_env() -> dict[str, str]:
    """Environment variables that keep an embedded Ray on loopback and offline."""
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # bind every port to 127.0.0.1
        "RAY_USAGE_STATS_ENABLED": "0",  # no usage report: nothing leaves the machine
    }


#: Ray settings for an embedded start (each left as the user set it). The raylet's object
#: manager connects to the plasma store its own thread starts a moment earlier; when the store's
#: socket is not there yet, Ray's client sleeps ``raylet_client_connect_timeout_milliseconds``
#: (1000) before it tries again: half or more of the embedded starts on a 2-core machine took
#: 2.9 s instead of 1.9 s. Tries every 20 ms, for the same 10 s in all. And the driver's
#: shutdown sends its last task events (the dashboard's task list) to the GCS and waits for
#: the answer, 0.25 s, though the embedded GCS is stopped right after: not sent.
EMBEDDED_START_ENV = {
    "RAY_raylet_client_connect_timeout_milliseconds": "20",
    "RAY_raylet_client_num_connect_attempts": "500",
    "RAY_task_events_shutdown_flush_timeout_ms": "0",
}


@dataclass(frozen=True)
class ResourceConfig:
    """Where and how big the Ray runtime is.

    Args:
        address: None starts a new embedded local Ray (never joins one already running);
            ``auto`` or ``HOST:PORT`` joins a running cluster. Ray Client addresses
            (``ray://``) are refused: Ray Data does not run through them.
        num_cpus: CPUs of the embedded Ray (None = all of the machine's).
        num_gpus: GPUs of the embedded Ray (None = detected).
        dashboard: start Ray's dashboard with the embedded Ray (on 127.0.0.1:8265).
    """

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    dashboard: bool = False

    def __post_init__(self) -> None:
        if self.address is not None and self.address.startswith("ray://"):
            raise ConfigError(
                f"--address {self.address} is a Ray Client address, which Ray Data cannot run "
                "through: submit the job to the cluster with `ray job submit --working-dir . -- "
                "python jobs/cluster.py ...` (see README, Scaling out), or run on a cluster node "
                "with --address auto")
        if self.address is not None and (self.num_cpus is not None or self.num_gpus is not None):
            raise ConfigError("--num-cpus/--num-gpus size an embedded local Ray: drop them when "
                              "joining a cluster with --address (its nodes bring their own)")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"num_cpus {self.num_cpus} is invalid: expected >= 1")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ConfigError(f"num_gpus {self.num_gpus} is invalid: expected >= 0")


def init_ray(resources: ResourceConfig | None = None, *, lean: bool = False) -> bool:
    """Connect to Ray as ``resources`` says, unless this process already is.

    Args:
        resources: where and how big.
        lean: for jobs of tasks and actors only (no Serve, no Train, no dashboard): an
            embedded Ray then starts without the two head processes such jobs never use (see
            :func:`_lean_start`). Ignored when joining a cluster.

    Returns:
        True if this call started (or connected) Ray, False if it was already initialised.
    """
    resources = resources or ResourceConfig()
    if resources.address is None:
        for key, value in {**loopback_env(), **EMBEDDED_START_ENV}.items():
            os.environ.setdefault(key, value)
        if "ray._private.ray_constants" in sys.modules:
            # Ray was imported before we could set the variable: apply it directly.
            from ray._private import ray_constants

            if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
                ray_constants.ENABLE_RAY_CLUSTER = False
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True}
    if resources.address is None:
        kwargs.update(
            # "local": always a new Ray; without an address Ray would join any cluster recorded in
            # Ray's temp dir (a `ray start --head` on this machine) and then refuse num_cpus.
            address="local",
            num_cpus=resources.num_cpus,
            num_gpus=resources.num_gpus,
            include_dashboard=resources.dashboard,
            dashboard_host=LOOPBACK,
        )
        logger.info("starting an embedded local Ray (loopback only)")
    else:
        kwargs["address"] = resources.address
        logger.info("connecting to the Ray cluster at %s", resources.address)
    global _EMBEDDED
    try:
        with _lean_start(lean and resources.address is None and not resources.dashboard):
            ray.init(**kwargs)
        _EMBEDDED = resources.address is None
    except ConnectionError as e:
        raise ConfigError(
            f"cannot connect to Ray at {resources.address!r}: start it with `ray start --head` "
            "or drop --address to use an embedded local Ray"
        ) from e
    return True


#: Whether this process started the Ray it runs on (an embedded local Ray, of a fixed size).
_EMBEDDED = False


@contextmanager
def _lean_start(enabled: bool) -> Iterator[None]:
    """Start an embedded Ray without its autoscaler monitor and its API server.

    Of the head's processes, these two serve a cluster, not a job on one machine: the monitor
    drives an autoscaler (an embedded Ray has none) and the API server (started even with
    ``include_dashboard=False``, then serving usage stats only) backs the dashboard, the job
    and state APIs. ``ray.init`` waits for the API server to come up before it starts the
    raylet, and each is a Python process importing Ray on the machine's cores while the
    raylet's own agents start. Without them, an embedded start on a 2-core machine took
    3.5-4.3 s instead of 4.7-5.3 s and 2 CPU-seconds less, and Ray's shutdown 0.35 s instead
    of 1.2-1.4 s (it waits a second for the monitor to end). Ray supports a head without an
    API server: it is what a dashboard that fails to start leaves. Both are Ray internals
    (``Node.start_monitor``/``Node.start_api_server``): if this Ray has neither, it starts
    as usual.

    Before it starts the raylet, Ray decides whether the dashboard agent runs in full by
    importing the dashboard's dependencies in the driver (aiohttp, grpc, opentelemetry, ...:
    150 ms of the driver's CPU, on the path to Ray's start, beside the listing); here it
    finds them instead (under a millisecond: the same answer unless a dependency is
    installed but broken, which the agent then reports as it would have).
    """
    try:
        import ray._private.utils as ray_utils
        from ray._private.node import Node
    except ImportError:  # pragma: no cover - a Ray without the internals this relies on
        enabled = False
    if not enabled or not all(callable(getattr(Node, n, None))
                              for n in ("start_monitor", "start_api_server")):
        yield
        return
    saved = {n: Node.__dict__[n] for n in ("start_monitor", "start_api_server") if n in Node.__dict__}
    Node.start_monitor = lambda self: None  # type: ignore[method-assign]
    Node.start_api_server = lambda self, **_: None  # type: ignore[method-assign]
    check = getattr(ray_utils, "get_dashboard_dependency_error", None)
    if callable(check):
        ray_utils.get_dashboard_dependency_error = _dashboard_dependency_error
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(Node, name, value)
        if callable(check):
            ray_utils.get_dashboard_dependency_error = check


#: The modules ``ray.dashboard.optional_deps`` imports (Ray's test of a full install).
_DASHBOARD_DEPENDENCIES = ("aiohttp", "aiohttp_cors", "grpc", "opencensus", "opentelemetry",
                           "opentelemetry.exporter.prometheus", "opentelemetry.proto",
                           "prometheus_client", "pydantic")


def _dashboard_dependency_error() -> ImportError | None:
    """Ray's ``get_dashboard_dependency_error`` by finding the modules, not importing them."""
    import importlib.util

    for name in _DASHBOARD_DEPENDENCIES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError) as e:
            return ImportError(f"{name}: {e}")
        if not found:
            return ImportError(f"No module named {name!r}")
    return None


def stop_ray() -> None:
    """Disconnect from Ray; an embedded Ray is stopped, without the second ``ray.shutdown``
    waits for an autoscaler monitor that ignores SIGTERM (the monitor, when the start was not
    lean, is killed first: it holds no state of the job)."""
    import ray

    if not ray.is_initialized():
        return
    if _EMBEDDED:
        from ray._private import worker

        node = getattr(worker, "_global_node", None)
        for info in (getattr(node, "all_processes", None) or {}).get("monitor", []):
            with suppress(Exception):
                info.process.kill()
                info.process.wait(timeout=1)
    ray.shutdown()


def is_embedded() -> bool:
    """True when :func:`init_ray` started an embedded local Ray (it cannot grow); False on a
    cluster (``--address``, ``ray job submit``), which an autoscaler may grow."""
    return _EMBEDDED


def cluster_cpus() -> float:
    """CPUs in the running Ray cluster."""
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def cluster_gpus() -> float:
    """GPUs in the running Ray cluster."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def check_gpu_request(gpu: bool, resources: ResourceConfig | None) -> None:
    """``--gpu`` on an embedded Ray without a GPU: one line, instead of tasks waiting forever
    for a GPU that cannot come (on a cluster GPU nodes may still come: the autoscaler adds
    them for the demand). Call it once Ray is up."""
    if gpu and (resources is None or resources.address is None) and cluster_gpus() < 1:
        raise ConfigError("--gpu: the embedded Ray sees no GPU on this machine: drop --gpu, "
                          "or run on a cluster with GPU nodes (--address, ray job submit)")
