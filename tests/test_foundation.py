"""Data sets, the embedded Ray on loopback, Ray Data reads from local and S3, the CLI."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from icas_ray.cli import cli
from icas_ray.datasets import make_dataset, read_truth


def _digest(folder: str) -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        h.update(name.encode())
        with open(os.path.join(folder, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def test_digits_dataset(tmp_path):  # type: ignore[no-untyped-def]
    info = make_dataset("digits", str(tmp_path / "a"), count=30, seed=3)
    assert info.count == 30 and info.classes == 10
    truth = read_truth(str(tmp_path / "a"))
    assert len(truth) == 30
    for name, label in truth.items():
        assert name == f"{name[:-5]}{label}.png"  # <i><digit>.png
        img = np.asarray(Image.open(tmp_path / "a" / name))
        assert img.shape == (256, 256, 3)
        assert img.mean() > 150  # light background, dark digit
        assert img.min() < 60
    # deterministic for a seed, different for another seed
    make_dataset("digits", str(tmp_path / "b"), count=30, seed=3)
    make_dataset("digits", str(tmp_path / "c"), count=30, seed=4)
    assert _digest(str(tmp_path / "a")) == _digest(str(tmp_path / "b"))
    assert _digest(str(tmp_path / "a")) != _digest(str(tmp_path / "c"))


def test_near_duplicates_dataset(tmp_path):  # type: ignore[no-untyped-def]
    out = tmp_path / "nd"
    info = make_dataset("near-duplicates", str(out), count=40, seed=1, broken=True)
    assert info.classes == 19 and info.broken == 3
    truth = read_truth(str(out))
    labels = set(truth.values())
    assert "cat" not in labels and "chelsea" in labels and "broken" in labels
    assert len(truth) == 43 and len(os.listdir(out)) == 44  # + truth.csv
    assert os.path.getsize(out / "broken_empty.png") == 0
    first = [n for n, lab in truth.items() if lab == "astronaut"]
    a, b = (np.asarray(Image.open(out / n)) for n in first[:2])
    assert a.shape != b.shape or not np.array_equal(a, b)  # variants differ
    make_dataset("near-duplicates", str(tmp_path / "nd2"), count=40, seed=1, broken=True)
    assert _digest(str(out)) == _digest(str(tmp_path / "nd2"))


def test_dataset_bad_kind_and_count(tmp_path):  # type: ignore[no-untyped-def]
    from icas_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown data set kind 'cats': must be one of digits"):
        make_dataset("cats", str(tmp_path))
    with pytest.raises(ConfigError, match="count 0 is invalid"):
        make_dataset("digits", str(tmp_path), count=0)


def test_cli_datasets_make(tmp_path):  # type: ignore[no-untyped-def]
    r = CliRunner().invoke(cli, ["datasets", "make", "digits", str(tmp_path / "d"), "--count", "12"])
    assert r.exit_code == 0, r.output
    assert "wrote 12 images in 10 classes" in r.output
    with open(tmp_path / "d" / "truth.csv") as f:
        assert len(list(csv.DictReader(f))) == 12


def test_cli_help_lists_commands_and_imports_no_heavy_modules():  # type: ignore[no-untyped-def]
    code = ("import sys; from icas_ray.cli import main; "
            "sys.argv=['icas','--help'];\n"
            "try:\n main()\nexcept SystemExit: pass\n"
            "heavy=[m for m in ('torch','ray','segment_anything') if m in sys.modules];"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "datasets" in out
    assert "HEAVY []" in out


def test_cli_user_error_is_one_line(tmp_path):  # type: ignore[no-untyped-def]
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "icas_ray", "datasets", "make", "digits",
                        "s3://"], capture_output=True, text=True, env=env)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr


def test_embedded_ray_listens_on_loopback_only(ray_session):  # type: ignore[no-untyped-def]
    import ray

    from conftest import not_loopback, ray_listening_addresses

    @ray.remote
    def pid() -> int:
        return os.getpid()

    ray.get([pid.remote() for _ in range(2)])
    listening = ray_listening_addresses()
    assert listening, "expected Ray to listen on some ports"
    assert not not_loopback(listening), f"Ray listens on non-loopback addresses: {not_loopback(listening)}"


def test_ray_data_reads_local_folder(ray_session, near_dup_dir):  # type: ignore[no-untyped-def]
    from icas_ray.pipeline.read import read_binary

    rows = read_binary(near_dup_dir).take_all()
    truth = read_truth(near_dup_dir)
    assert sorted(os.path.basename(r["uri"]) for r in rows) == sorted(truth)
    for r in rows:
        with open(r["uri"], "rb") as f:
            assert f.read() == r["bytes"]


def test_ray_data_reads_s3(ray_session, s3_server, s3_bucket, digits_dir):  # type: ignore[no-untyped-def]
    from icas_ray.pipeline.read import read_binary

    st = s3_server.storage()
    for name in os.listdir(digits_dir):
        with open(os.path.join(digits_dir, name), "rb") as f:
            st.write_bytes(f"s3://{s3_bucket}/digits/{name}", f.read())
    rows = read_binary(f"s3://{s3_bucket}/digits", storage=st).take_all()
    assert sorted(r["uri"] for r in rows) == sorted(
        f"s3://{s3_bucket}/digits/{n}" for n in os.listdir(digits_dir) if n.endswith(".png"))
    for r in rows:
        with open(os.path.join(digits_dir, os.path.basename(r["uri"])), "rb") as f:
            assert f.read() == r["bytes"]


@pytest.mark.parametrize("kwargs, message", [
    ({"address": "ray://head:10001"}, "is a Ray Client address, which Ray Data cannot run through"),
    ({"address": "auto", "num_cpus": 2}, "--num-cpus/--num-gpus size an embedded local Ray"),
], ids=["ray-client", "num-cpus-with-address"])
def test_resource_config_mistakes_are_one_line(kwargs, message):  # type: ignore[no-untyped-def]
    from icas_ray.errors import ConfigError
    from icas_ray.runtime import ResourceConfig

    with pytest.raises(ConfigError, match=message):
        ResourceConfig(**kwargs)
