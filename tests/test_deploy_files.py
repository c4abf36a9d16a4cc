"""cluster.yaml against Ray's cluster-launcher schema; jobs/ entry points are thin and runnable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cluster_yaml_matches_ray_schema():  # type: ignore[no-untyped-def]
    import jsonschema
    import ray.autoscaler

    schema_path = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    with open(schema_path) as f:
        schema = json.load(f)
    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        config = yaml.safe_load(f)
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types)
    assert types["gpu_worker"]["min_workers"] <= types["gpu_worker"]["max_workers"]
    assert any("icas-ray" in c for c in config["setup_commands"])


def test_job_entry_points_show_help():  # type: ignore[no-untyped-def]
    for job in ("cluster.py", "segment.py", "embed.py"):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", job), "--help"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "Usage:" in r.stdout
