"""The pure modules type-check under ``mypy --strict`` (STYLE.md, rule 23)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Modules without Ray or UI: checked strictly. (segment/ is next: its OpenCV and
#: scikit-image calls still need annotations.)
STRICT = ["icas_ray/images.py", "icas_ray/graph.py", "icas_ray/features", "icas_ray/clustering.py",
          "icas_ray/label", "icas_ray/cluster_models", "icas_ray/train"]


def test_pure_modules_pass_mypy_strict(tmp_path):  # type: ignore[no-untyped-def]
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / "mypy_cache"), *STRICT],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
