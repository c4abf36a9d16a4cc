"""SAM on Ray Serve: encoder vs prompt latency, throughput, with and without the embedding cache.

    .venv/bin/python scripts/bench.py serve [--requests 60] [--clients 4] [--vit-b]

Side by side in one run, tiny SAM (random weights) on this machine's CPU:
- in process: encoder (set_image) latency vs prompt decode latency;
- through Serve (1 replica): prompt latency p50/p95 and throughput under concurrent clients,
  with the cache (every prompt reuses the image's embedding) and without it (LRU of one entry,
  prompts alternate over images, so every prompt re-runs the encoder: what a service without
  a cache does);
- routing with 2 replicas: share of prompts that ran the encoder with the multiplexing header
  (the client's default) and without it;
- optionally (``--vit-b``) the real vit_b architecture with random weights, in process.
Writes benchmarks/serve.json and benchmarks/serve.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bench import BENCHMARKS, machine


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=60, help="prompt requests per measurement")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients for throughput")
    p.add_argument("--images", type=int, default=8, help="distinct images")
    p.add_argument("--size", type=int, default=512, help="image side in pixels")
    p.add_argument("--vit-b", action="store_true", help="also time vit_b (random weights) in process")


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def _stats(lat_s: list[float]) -> dict[str, float]:
    return {"n": len(lat_s), "p50_ms": round(_pct(lat_s, 50) * 1000, 2),
            "p95_ms": round(_pct(lat_s, 95) * 1000, 2),
            "mean_ms": round(statistics.fmean(lat_s) * 1000, 2)}


def _images(n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = np.full((size * 3 // 4, size, 3), 40 + 10 * i, np.uint8)
        img[size // 4: size // 2, size // 4: size // 2] = (200, 80, 30)
        out.append(np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8))
    return out


def _in_process(model_type: str, images: list[np.ndarray], reps: int) -> dict[str, Any]:
    import torch

    from icas_ray.sam import LocalSam

    torch.set_num_threads(os.cpu_count() or 1)
    sam = LocalSam.from_checkpoint(model_type, seed=0, device="cpu")
    enc, dec = [], []
    for img in images[:reps]:
        t = time.perf_counter()
        emb = sam.encode(img)
        enc.append(time.perf_counter() - t)
        for _ in range(5):
            t = time.perf_counter()
            sam.predict(emb, points=[[img.shape[1] // 3, img.shape[0] // 3]], multimask=True)
            dec.append(time.perf_counter() - t)
    return {"model_type": model_type, "encoder": _stats(enc), "prompt_decode": _stats(dec)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_prompts(url: str, ids: list[str], n: int, clients: int, *, header: bool = True,
                 ) -> dict[str, Any]:
    import requests

    def one(i: int) -> tuple[float, str]:
        image_id = ids[i % len(ids)]
        headers = {"serve_multiplexed_model_id": image_id} if header else {}
        t = time.perf_counter()
        r = requests.post(f"{url}/images/{image_id}/predict", headers=headers, timeout=600,
                          json={"points": [[100, 100]], "labels": [1], "formats": ["png"]})
        r.raise_for_status()
        return time.perf_counter() - t, r.json()["embedding"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    lat = [r[0] for r in results]
    encoded = sum(1 for r in results if r[1] != "memory")
    return {**_stats(lat), "clients": clients, "throughput_rps": round(n / wall, 2),
            "prompts_that_ran_encoder": encoded}


def _register(url: str, images: list[np.ndarray]) -> tuple[list[str], list[float]]:
    import cv2
    import requests

    from icas_ray.sam import content_id

    ids, lat = [], []
    for img in images:
        data = cv2.imencode(".png", img)[1].tobytes()
        t = time.perf_counter()
        r = requests.post(f"{url}/images", data=data, timeout=600,
                          headers={"Content-Type": "application/octet-stream",
                                   "serve_multiplexed_model_id": content_id(data)})
        r.raise_for_status()
        lat.append(time.perf_counter() - t)
        ids.append(r.json()["id"])
    return ids, lat


def _serve(args: argparse.Namespace, images: list[np.ndarray]) -> dict[str, Any]:
    from ray import serve

    from icas_ray.runtime import ResourceConfig, init_ray
    from icas_ray.sam import SAM_SPECS
    from icas_ray.serve.app import build_app
    from icas_ray.serve.args import SamServeArgs

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    init_ray(ResourceConfig(num_cpus=os.cpu_count() or 2))
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    store = tempfile.mkdtemp(prefix="icas-bench-images-")
    one_entry_mb = SAM_SPECS["tiny"].embedding_bytes / 2**20  # an LRU of one embedding
    out: dict[str, Any] = {}
    try:
        cpus = float(max(1, (os.cpu_count() or 2) - 1))
        base = {"model_type": "tiny", "image_store": store, "num_cpus": cpus, "torch_threads": 1}
        # with cache
        serve.run(build_app(SamServeArgs(**base)), name="bench", route_prefix="/")
        ids, reg = _register(url, images)
        out["register_http"] = _stats(reg)
        out["cached_sequential"] = _run_prompts(url, ids, args.requests, 1)
        out["cached_concurrent"] = _run_prompts(url, ids, args.requests, args.clients)
        # without cache: an LRU of one entry and prompts alternating over images
        serve.delete("bench")
        serve.run(build_app(SamServeArgs(**base, cache_mb=one_entry_mb)), name="bench",
                  route_prefix="/")
        _register(url, images)
        out["uncached_sequential"] = _run_prompts(url, ids, args.requests, 1)
        out["uncached_concurrent"] = _run_prompts(url, ids, args.requests, args.clients)
        serve.delete("bench")
        # routing over 2 replicas: header vs none
        half = max(0.5, cpus / 2)
        serve.run(build_app(SamServeArgs(**{**base, "num_cpus": half}, num_replicas=2)),
                  name="bench", route_prefix="/")
        _register(url, images)
        out["two_replicas_with_header"] = _run_prompts(url, ids, args.requests, args.clients)
        out["two_replicas_without_header"] = _run_prompts(url, ids, args.requests, args.clients,
                                                          header=False)
    finally:
        serve.shutdown()
    return out


def run(args: argparse.Namespace) -> int:
    images = _images(args.images, args.size)
    result: dict[str, Any] = {"machine": machine(), "args": vars(args),
                              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    result["in_process_tiny"] = _in_process("tiny", images, reps=len(images))
    result["serve_tiny"] = _serve(args, images)
    if args.vit_b:
        result["in_process_vit_b"] = _in_process("vit_b", images[:1], reps=1)
    with open(os.path.join(BENCHMARKS, "serve.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = _markdown(result)
    with open(os.path.join(BENCHMARKS, "serve.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


def _markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    s = r["serve_tiny"]
    lines = [
        "# SAM on Ray Serve: benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, GPU: {m['gpu'] or 'none'}; "
        f"Python {m['python']}; {r['when']}. Command: `scripts/bench.py serve "
        f"--requests {r['args']['requests']} --clients {r['args']['clients']}"
        f"{' --vit-b' if r['args'].get('vit_b') else ''}`. Images {r['args']['size']} px wide, "
        "random weights (no real checkpoint can be downloaded here), CPU only.",
        "",
        "## In process (LocalSam)",
        "",
        "| model | encoder p50 (ms) | encoder p95 (ms) | prompt decode p50 (ms) | prompt decode p95 (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key in ("in_process_tiny", "in_process_vit_b"):
        if key in r:
            x = r[key]
            lines.append(f"| {x['model_type']} | {x['encoder']['p50_ms']} | {x['encoder']['p95_ms']} | "
                         f"{x['prompt_decode']['p50_ms']} | {x['prompt_decode']['p95_ms']} |")
    lines += [
        "",
        "## Through Serve over HTTP (tiny), side by side",
        "",
        "| setup | clients | prompt p50 (ms) | prompt p95 (ms) | throughput (req/s) | prompts that ran the encoder |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "cached_sequential": "with cache, 1 replica",
        "cached_concurrent": "with cache, 1 replica",
        "uncached_sequential": "without cache (LRU of 1, alternating images), 1 replica",
        "uncached_concurrent": "without cache (LRU of 1, alternating images), 1 replica",
        "two_replicas_with_header": "2 replicas, routed by image id (multiplex header)",
        "two_replicas_without_header": "2 replicas, no routing header",
    }
    for key, label in names.items():
        if key in s:
            x = s[key]
            lines.append(f"| {label} | {x['clients']} | {x['p50_ms']} | {x['p95_ms']} | "
                         f"{x['throughput_rps']} | {x['prompts_that_ran_encoder']} of {x['n']} |")
    reg = s.get("register_http")
    if reg:
        lines += ["", f"Register (upload + decode + encoder), tiny over HTTP: p50 {reg['p50_ms']} ms, "
                      f"p95 {reg['p95_ms']} ms."]
    lines += ["", "vit_b on a GPU was not measured: no GPU machine was available to this task.", ""]
    return "\n".join(lines)
