"""Shared fixtures: one local Ray per session, one S3 API server on loopback, generated data.

Ray reads its node address when first imported, so the loopback environment is set here,
before any test module imports Ray.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from icas_ray.runtime import loopback_env

for _k, _v in loopback_env().items():
    os.environ.setdefault(_k, _v)
# Loopback tests need no token; real clusters keep Ray's default authentication.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--runslow") or os.environ.get("ICAS_RUN_SLOW") == "1"
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow or ICAS_RUN_SLOW=1")
    skip_browser = pytest.mark.skip(reason=f"{CHROMIUM} not installed (scripts/setup.sh installs it)")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "browser" in item.keywords and not os.path.exists(CHROMIUM):
            item.add_marker(skip_browser)


def manifest_ari(manifest, truth: dict[str, str]) -> float:  # type: ignore[no-untyped-def]
    """ARI of a run's manifest against truth.csv, every outlier its own group (unreadable
    files excluded)."""
    from sklearn.metrics import adjusted_rand_score

    rows = manifest[manifest.status == "ok"]
    names = [os.path.basename(u) for u in rows.uri]
    pred = [f"c{c:.0f}" if c == c else f"o{i}" for i, c in enumerate(rows.cluster)]
    return float(adjusted_rand_score([truth[n] for n in names], pred))


def ray_listening_addresses() -> list[tuple[str, int, int]]:
    """``(ip, port, pid)`` of every listening TCP socket of this process and Ray's processes."""
    import psutil

    pids = {os.getpid()}
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(k in cmd for k in ("ray", "gcs_server", "raylet")):
            pids.add(p.pid)
    return [(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


def not_loopback(addresses: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    return [a for a in addresses if a[0] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray (2 CPUs, no dashboard, loopback only) for the whole test session."""
    import ray

    from icas_ray.runtime import ResourceConfig, init_ray

    init_ray(ResourceConfig(num_cpus=2))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


@dataclass
class S3Server:
    endpoint: str
    key: str = "testing"
    secret: str = "testing"

    def storage(self, **extra: str):  # type: ignore[no-untyped-def]
        from icas_ray.storage import Storage, StorageOptions

        return Storage(StorageOptions(endpoint_url=self.endpoint,
                                      extra={"key": self.key, "secret": self.secret, **extra}))

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name="us-east-1")

    def cli_options(self) -> list[str]:
        return ["--storage-option", f"endpoint_url={self.endpoint}",
                "--storage-option", f"key={self.key}", "--storage-option", f"secret={self.secret}"]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 API (moto's server) on 127.0.0.1, for the whole session."""
    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield S3Server(endpoint=f"http://127.0.0.1:{port}")
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh, empty bucket on the loopback S3 server; yields its name."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    yield name


def _dataset(factory: pytest.TempPathFactory, kind: str, count: int, seed: int, **kw: object) -> str:
    from icas_ray.datasets import make_dataset

    out = str(factory.mktemp(f"{kind}{count}"))
    make_dataset(kind, out, count=count, seed=seed, **kw)  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """40 generated digit images (4 per class) with truth.csv."""
    return _dataset(tmp_path_factory, "digits", 40, 0)


@pytest.fixture(scope="session")
def digits1000(tmp_path_factory: pytest.TempPathFactory) -> str:
    """1000 generated digit images (100 per class) with truth.csv."""
    return _dataset(tmp_path_factory, "digits", 1000, 0)


@pytest.fixture(scope="session")
def digits200(tmp_path_factory: pytest.TempPathFactory) -> str:
    """200 generated digit images (20 per class) with truth.csv."""
    return _dataset(tmp_path_factory, "digits", 200, 1)


@pytest.fixture(scope="session")
def near_dup_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """48 near-duplicate variants of 6 skimage photos, plus 3 broken files."""
    return _dataset(tmp_path_factory, "near-duplicates", 48, 0, classes=6, broken=True)


@pytest.fixture
def copy_tree(tmp_path):  # type: ignore[no-untyped-def]
    """Copy a folder into this test's tmp_path (tests that move or delete files use it)."""

    def _copy(src: str, name: str = "input") -> str:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return str(dst)

    return _copy
