"""One feature pass: without ``--threshold`` the suggestion comes from features the main pass
computes (the sample first, then the rest), never from a second extraction.

Observed from outside: ``strace`` counts every ``openat`` of each input file by the whole
process tree of ``icas cluster`` (driver, raylet, Ray's workers).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter

import pyarrow.parquet as pq
import pytest
from conftest import manifest_ari

from icas_ray.datasets import read_truth

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")

ICAS = os.path.join(os.path.dirname(sys.executable), "icas")


def _opens(trace: str, folder: str) -> Counter[str]:
    """Successful opens of the files directly in ``folder``, by file name."""
    pattern = re.compile(r'openat\(AT_FDCWD, "' + re.escape(folder.rstrip("/")) + r'/([^"/]+)"')
    counts: Counter[str] = Counter()
    pending: dict[str, str] = {}
    with open(trace) as f:
        for line in f:
            pid = line.split(" ", 1)[0]
            m = pattern.search(line)
            if m and "<unfinished" in line:
                pending[pid] = m.group(1)
            elif m and not re.search(r"= -1 ", line):
                counts[m.group(1)] += 1
            elif "openat resumed>" in line and pid in pending:
                name = pending.pop(pid)
                if not re.search(r"= -1 ", line):
                    counts[name] += 1
    return counts


def test_the_threshold_sample_is_extracted_once(digits200, tmp_path):  # type: ignore[no-untyped-def]
    images = str(tmp_path / "images")
    shutil.copytree(digits200, images)
    os.remove(os.path.join(images, "truth.csv"))
    out, trace = str(tmp_path / "out"), str(tmp_path / "trace.txt")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # Every image is in the sample (200 < the default sample of 1000): a second extraction
    # for the threshold would open each file once more.
    proc = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=openat", "-e", "signal=none", "-o", trace,
         ICAS, "cluster", images, "--output", out, "--method", "imagehash", "--batch-size", "50"],
        check=False, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["threshold_source"] == "suggested"
    # The feature stage's own time (benchmarks compare it with the decode floor) lies within
    # the batches phase, the threshold's decision (beside the features) within it too.
    timings = summary["timings"]
    assert 0 < timings["features_s"] <= timings["batches_s"]
    assert 0 < timings["threshold_s"] <= timings["batches_s"]
    # The wait for the first feature task to start (Ray's workers starting) is part of it.
    assert 0 <= timings["features_wait_s"] < timings["features_s"]
    # The listing ran beside Ray's start: what the run waited for it afterwards is timed apart.
    assert timings["listing_s"] > 0 and timings["listing_wait_s"] >= 0
    opens = _opens(trace, images)
    names = sorted(os.listdir(images))
    # Once to extract the features, once to copy the file into its cluster folder.
    assert {n: opens[n] for n in names} == {n: 2 for n in names}
    manifest = pq.read_table(os.path.join(out, "manifest.parquet")).to_pandas()
    assert manifest_ari(manifest, read_truth(digits200)) > 0.8  # 0.86 at the suggested 0.816
