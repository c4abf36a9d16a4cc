#!/usr/bin/env python
"""Benchmarks of icas-ray, side by side with a reference in one run.

    .venv/bin/python scripts/bench.py cluster [options]
    .venv/bin/python scripts/bench.py segment [options]
    .venv/bin/python scripts/bench.py serve   [options]
    .venv/bin/python scripts/bench.py label   [options]
    .venv/bin/python scripts/bench.py chaos   [options]

Each subcommand lives in ``scripts/bench_<name>.py`` (functions ``add_arguments(parser)`` and
``run(args) -> int``) and writes JSON and a markdown table to ``benchmarks/``, with the machine
it ran on (see :func:`machine`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
from typing import Any

# One BLAS thread, as in Ray's workers (which set OMP_NUM_THREADS=1): in-process measurements
# of icas's kernels then use one core, like the per-pair reference loops they are compared with.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = os.path.join(os.path.dirname(HERE), "benchmarks")
#: Every ``scripts/bench_<name>.py`` is a subcommand: adding a benchmark is adding a file.
SUBCOMMANDS = tuple(sorted(n[len("bench_"):-len(".py")] for n in os.listdir(HERE)
                           if n.startswith("bench_") and n.endswith(".py")))


def machine() -> dict[str, Any]:
    """A description of the machine, stored with every result."""
    import psutil

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["gpu"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, HERE)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="name", required=True)
    modules = {}
    for name in SUBCOMMANDS:
        try:
            modules[name] = importlib.import_module(f"bench_{name}")
        except ImportError:
            continue
        p = sub.add_parser(name, help=(modules[name].__doc__ or "").strip().splitlines()[0])
        modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    os.makedirs(BENCHMARKS, exist_ok=True)
    return int(modules[args.name].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
