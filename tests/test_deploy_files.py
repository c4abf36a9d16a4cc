"""The deployment files: cluster.yaml against Ray's cluster-launcher schema, the job runtime_env,
the cluster requirements and the Serve config name only installable things (icas-ray itself is
on no package registry: it travels as the working copy), jobs/ entry points are thin and runnable."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import zipfile

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME_ENV = os.path.join(ROOT, "jobs", "runtime_env.yaml")
REQUIREMENTS = os.path.join(ROOT, "jobs", "requirements-cluster.txt")
SERVE_CONFIG = os.path.join(ROOT, "icas_ray", "serve", "serve_config.example.yaml")
# The builds scripts/setup.sh installs; wherever torch is named it is pinned to these.
TORCH_PINS = {"torch": "==2.14.1", "torchvision": "==0.29.1"}
# Extras whose dependencies a cluster node needs (not the labelling client, not the tests).
NODE_EXTRAS = ("cluster", "deep", "serve")


def _load(path: str) -> dict:  # type: ignore[type-arg]
    with open(path) as f:
        return yaml.safe_load(f)  # type: ignore[no-any-return]


def _pyproject() -> dict:  # type: ignore[type-arg]
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _known_names() -> set[str]:
    """Every distribution pyproject.toml depends on, in any extra, plus pip itself."""
    project = _pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {canonicalize_name(Requirement(r).name) for r in reqs} - {"icas-ray"} | {"pip"}


def _node_requirements() -> list[Requirement]:
    """pyproject's base dependencies and its node extras, without self-references and Ray."""
    project = _pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in NODE_EXTRAS:
        reqs += project["optional-dependencies"][extra]
    out: dict[str, Requirement] = {}
    for r in map(Requirement, reqs):
        name = canonicalize_name(r.name)
        if name not in ("icas-ray", "ray"):
            out.setdefault(name, r)
    return list(out.values())


def _requirement_lines(lines: list[str]) -> list[Requirement]:
    """Requirements of a requirements file's lines, as pip reads them (comments, blanks out)."""
    return [Requirement(s) for s in (line.split("#", 1)[0].strip() for line in lines) if s]


def _pip_install_args(command: str) -> list[list[str]]:
    """The package arguments of each `pip install` in a shell command line."""
    out = []
    for part in command.replace("&&", ";").split(";"):
        words = shlex.split(part)
        if "pip" in words and "install" in words:
            out.append(words[words.index("install") + 1:])
    return out


def _check_requirement(req: Requirement, where: str) -> None:
    name = canonicalize_name(req.name)
    assert name != "icas-ray", f"{where}: icas-ray is on no registry; install it from the working copy"
    assert name in _known_names(), f"{where}: {req} is not a dependency of pyproject.toml"
    if name in TORCH_PINS:
        assert str(req.specifier) == TORCH_PINS[name], f"{where}: pin {name}{TORCH_PINS[name]}"


def test_cluster_yaml_matches_ray_schema():  # type: ignore[no-untyped-def]
    import jsonschema
    import ray.autoscaler

    schema_path = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    with open(schema_path) as f:
        schema = json.load(f)
    config = _load(os.path.join(ROOT, "cluster.yaml"))
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types)
    assert types["gpu_worker"]["min_workers"] <= types["gpu_worker"]["max_workers"]
    # the head coordinates only: no task or actor is scheduled on it
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    # the dashboard and job API stay on the head's loopback (reached through `ray dashboard`)
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


def test_cluster_yaml_installs_the_uploaded_working_copy():  # type: ignore[no-untyped-def]
    config = _load(os.path.join(ROOT, "cluster.yaml"))
    assert config["file_mounts"] == {"/home/ubuntu/icas-ray": "."}
    installs = [args for c in config["setup_commands"] for args in _pip_install_args(c)]
    local = []
    for args in installs:
        for arg in args:
            if arg.startswith("-"):
                continue
            if arg.startswith(("/", ".", "~", "$")):  # a folder: the uploaded working copy
                local.append(arg)
                assert arg.split("[", 1)[0] in config["file_mounts"], arg
                continue
            _check_requirement(Requirement(arg), "cluster.yaml setup_commands")
    assert local == ["/home/ubuntu/icas-ray[all]"]
    # the Ray nodes run must be the one jobs are submitted with (client and cluster must match)
    import ray

    rays = [Requirement(a) for args in installs for a in args if a.startswith("ray[")]
    assert [str(r.specifier) for r in rays] == [f"=={ray.__version__}"]


def test_cluster_requirements_are_pyprojects_node_extras():  # type: ignore[no-untyped-def]
    with open(REQUIREMENTS) as f:
        reqs = _requirement_lines(f.read().splitlines())
    for r in reqs:
        _check_requirement(r, os.path.basename(REQUIREMENTS))
    got = {canonicalize_name(r.name): r for r in reqs}
    assert "ray" not in got  # a job's pip step must not replace the cluster's Ray
    want = {canonicalize_name(r.name): r for r in _node_requirements()}
    assert set(got) == set(want), (
        f"jobs/requirements-cluster.txt must list pyproject's base + {NODE_EXTRAS} dependencies "
        f"(without ray): add {sorted(set(want) - set(got))}, drop {sorted(set(got) - set(want))}")
    for name, r in got.items():
        if name not in TORCH_PINS:
            assert r.specifier == want[name].specifier, f"{r} differs from pyproject's {want[name]}"


def test_runtime_env_is_valid_and_names_the_requirements():  # type: ignore[no-untyped-def]
    from ray.runtime_env import RuntimeEnv

    env = _load(RUNTIME_ENV)
    assert set(env) == {"working_dir", "excludes", "pip"}
    assert env["working_dir"] == "."
    assert env["pip"] == "jobs/requirements-cluster.txt"  # read relative to the repository root
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        parsed = RuntimeEnv(**env)  # Ray's own validation; reads the requirements file
    finally:
        os.chdir(cwd)
    for r in _requirement_lines(parsed["pip"]["packages"]):
        _check_requirement(r, "jobs/runtime_env.yaml pip")


def test_working_dir_upload_is_small_and_holds_the_package(tmp_path):  # type: ignore[no-untyped-def]
    """What `ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml` would upload from
    this working copy (its virtualenv, .git and caches included), zipped by Ray's own code."""
    from pathlib import Path

    from ray._private.runtime_env.packaging import create_package

    env = _load(RUNTIME_ENV)
    target = tmp_path / "pkg.zip"
    create_package(ROOT, target, include_gitignore=True, excludes=env["excludes"])
    names = zipfile.ZipFile(target).namelist()
    assert "icas_ray/__init__.py" in names and "jobs/cluster.py" in names
    assert "pyproject.toml" in names and "jobs/requirements-cluster.txt" in names
    tops = {n.split("/", 1)[0] for n in names}
    assert not tops & {".git", ".venv", "tests", "benchmarks", "sample", "icas_ray.egg-info"}, tops
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pt", ".pth"))]
    # Ray refuses packages over 512 MiB; the code is a few MB
    assert Path(target).stat().st_size < 16 * 1024 * 1024


def test_serve_config_ships_the_code_and_known_packages():  # type: ignore[no-untyped-def]
    config = _load(SERVE_CONFIG)
    mounts = _load(os.path.join(ROOT, "cluster.yaml"))["file_mounts"]
    for app in config["applications"]:
        env = app["runtime_env"]
        # the folder cluster.yaml uploads on every node (a Serve config takes no local path)
        assert env["working_dir"].removeprefix("local://") in mounts
        reqs = _requirement_lines(env["pip"])
        for r in reqs:
            _check_requirement(r, "serve config pip")
        assert {"torch", "torchvision", "segment-anything"} <= {canonicalize_name(r.name)
                                                               for r in reqs}
        with open(REQUIREMENTS) as f:  # the same specifiers as the cluster requirements
            cluster = {canonicalize_name(r.name): str(r.specifier)
                       for r in _requirement_lines(f.read().splitlines())}
        assert {canonicalize_name(r.name): str(r.specifier) for r in reqs}.items() <= cluster.items()


@pytest.mark.parametrize("path", ["cluster.yaml", "jobs/runtime_env.yaml",
                                  "jobs/requirements-cluster.txt", "docs/serve.md",
                                  "icas_ray/serve/serve_config.example.yaml", "jobs/cluster.py",
                                  "jobs/segment.py", "jobs/embed.py", "jobs/train.py"])
def test_no_registry_install_of_icas_ray(path: str) -> None:
    with open(os.path.join(ROOT, path)) as f:
        text = f.read()
    for bad in ('"icas-ray[', "'icas-ray[", "pip install icas-ray", '["icas-ray'):
        assert bad not in text, f"{path} installs icas-ray from a registry ({bad})"


def test_job_entry_points_show_help():  # type: ignore[no-untyped-def]
    for job in ("cluster.py", "segment.py", "embed.py"):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", job), "--help"],
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        assert "Usage:" in r.stdout
