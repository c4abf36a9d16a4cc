"""deep: train the autoencoder, cluster the digits by its embeddings, next to the classic methods.

Every step is the whole command as a process (cold Ray), as a user runs it, on the same
generated digits: `icas train`, then `icas cluster --method embedding` with a scikit-learn model
chosen over a grid and with the suggested threshold, then the classic methods at the
thresholds the README gives for the digits. Each with its wall time and adjusted Rand index.

    .venv/bin/python scripts/bench.py deep --count 1000 --epochs 8

Writes ``benchmarks/deep.json`` and ``benchmarks/deep.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import BENCHMARKS, machine

CLASSIC = (("imagehash", "0.84"), ("minhash", "0.4"), ("SSIM", "0.9"), ("TM", "0.98"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=1000, help="generated digits")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--model", default="conv_small")
    parser.add_argument("--models", default="HDBSCAN:,kmeans:n_clusters=8,10,12,16",
                        help="comma-separated MODEL:GRID, GRID as for --grid (empty = defaults)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--out", default=BENCHMARKS, help="output folder (default benchmarks/)")


def _model_specs(text: str) -> list[tuple[str, str]]:
    """``"HDBSCAN:,kmeans:n_clusters=8,10"`` -> ``[("HDBSCAN", ""), ("kmeans", "n_clusters=8,10")]``
    (a new spec starts at each ``NAME:``)."""
    import re

    return [(m.group(1), m.group(2).strip(",")) for m in
            re.finditer(r"([A-Za-z]+):([^:]*?)(?=,[A-Za-z]+:|$)", text)]


def _icas(*args: str) -> tuple[float, str]:
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "icas_ray", *args], capture_output=True, text=True,
                       env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    elapsed = time.monotonic() - t
    if r.returncode != 0:
        raise SystemExit(f"icas {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return elapsed, r.stdout + r.stderr


def _ari(out: str, truth_csv: str) -> float:
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score

    truth = pd.read_csv(truth_csv)
    by_name = dict(zip(truth.iloc[:, 0], truth.iloc[:, 1].astype(str)))
    m = pd.read_parquet(os.path.join(out, "manifest.parquet"))
    m = m[m.status == "ok"]
    pred = [f"c{c:.0f}" if c == c else f"o{i}" for i, c in enumerate(m.cluster)]
    return float(adjusted_rand_score([by_name[os.path.basename(u)] for u in m.uri], pred))


def run(args: argparse.Namespace) -> int:
    from icas_ray.datasets import make_dataset

    work = tempfile.mkdtemp(prefix="icas-bench-deep-")
    data = os.path.join(work, "digits")
    make_dataset("digits", data, count=args.count, seed=0)
    truth = os.path.join(work, "truth.csv")
    os.replace(os.path.join(data, "truth.csv"), truth)
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()

    models = os.path.join(work, "models")
    train_s, log = _icas("train", data, "--storage", models, "--epochs", str(args.epochs),
                         "--image-size", str(args.image_size), "--model", args.model)
    rows.append({"step": f"icas train ({args.model}, {args.image_size} px, {args.epochs} epochs, mse)",
                 "wall_s": round(train_s, 1), "ari": None})
    checkpoint = os.path.join(models, "best.pt")
    common = ["--batch-size", str(args.batch_size)]
    runs = []
    for item in _model_specs(args.models):
        model, grid = item
        runs.append((f"embedding + {model}" + (f" over {grid}" if grid else " (default grid)"),
                     ["--cluster-model", model] + (["--grid", grid] if grid else [])))
    runs.append(("embedding + suggested threshold", []))
    for label, extra in runs:
        out = os.path.join(work, f"out-{len(rows)}")
        wall, _ = _icas("cluster", data, "--output", out, "--method", "embedding",
                        "--checkpoint", checkpoint, *extra, *common)
        rows.append({"step": f"icas cluster --method {label}", "wall_s": round(wall, 1),
                     "ari": round(_ari(out, truth), 3)})
    for method, threshold in CLASSIC:
        out = os.path.join(work, f"out-{method}")
        wall, _ = _icas("cluster", data, "--output", out, "--method", method, "--threshold",
                        threshold, *common)
        rows.append({"step": f"icas cluster --method {method} --threshold {threshold}",
                     "wall_s": round(wall, 1), "ari": round(_ari(out, truth), 3)})
    elapsed = time.monotonic() - t0
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "elapsed_s": round(elapsed),
              "args": {k: v for k, v in vars(args).items() if k != "func"}, "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "deep.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    m = result["machine"]
    md = ["# Deep pipeline: autoencoder embeddings against the classic methods, on the digits", "",
          f"`scripts/bench.py deep --count {args.count} --epochs {args.epochs} --image-size "
          f"{args.image_size} --model {args.model}`, {result['date']}, on {m['cpu']} ({m['cpus']} "
          f"cores, {m['memory_gib']} GiB, GPU: {m.get('gpu') or 'none'}), Python {m['python']}. "
          f"{args.count} generated digits (10 classes), batches of {args.batch_size}; each step is "
          "the whole command as a process on a cold embedded Ray.", "",
          "| step | wall time | ARI |", "| --- | ---: | ---: |"]
    md += [f"| {r['step']} | {r['wall_s']} s | {'' if r['ari'] is None else r['ari']} |" for r in rows]
    with open(os.path.join(args.out, "deep.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0
