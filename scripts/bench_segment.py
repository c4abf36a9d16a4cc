"""segment: time every segmentation method on a 512x512 image, and edge/kmeans against the seed.

    .venv/bin/python scripts/bench.py segment [--size 512] [--repeats 3] [--no-sam]

For ``edge``, ``kmeans`` and ``slickmeans`` a straightforward port of the seed's loop (kept
here only) runs side by side with the library code in the same run, on the same image, and
the outputs are compared: edge's region labelling must be identical, kmeans' feature array
identical (and the labels too, with the same OpenCV seed), slickmeans' superpixel features
identical. Writes ``benchmarks/segment.json`` and ``benchmarks/segment.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from bench import BENCHMARKS, machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=512, help="image side (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing; the median is kept")
    parser.add_argument("--image", default="astronaut", help="skimage.data image (default astronaut)")
    parser.add_argument("--no-sam", action="store_true", help="skip sam (tiny random in-process model)")
    parser.add_argument("--out", default=BENCHMARKS, help="output folder (default benchmarks/)")


def _time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


# -- the seed's loops, ported as they were ------------------------------------------------------
def seed_edge_labelling(edges: np.ndarray) -> np.ndarray:
    """The seed's flood-fill loop over an edge mask (full-image flood fill per segment)."""
    from skimage.morphology import flood_fill

    img = np.where(edges, -1.0, 0.0)
    pixels = np.where(img == 0)
    sid = 1
    while len(pixels[0]) != 0:
        r, c = pixels[0][0], pixels[1][0]
        img = flood_fill(img, (r, c), sid, connectivity=1, in_place=True)
        extracted = np.array(img == img[r][c]).astype(np.int16)
        extracted = cv2.dilate(extracted, np.ones((3, 3)), iterations=1)
        np.putmask(img, extracted != 0, sid)
        sid += 1
        pixels = np.where(img == 0)
    img[img == -1] = 0
    return img.astype(np.int32)


def seed_kmeans_features(image: np.ndarray, color_importance: float) -> np.ndarray:
    """The seed's coordinate list comprehension and feature array."""
    h, w = image.shape[:2]
    xy = np.array([[r, c] for r in range(h) for c in range(w)]).reshape((h, w, 2)) / color_importance
    return np.float32(np.concatenate([image, xy], axis=2).reshape((-1, 5)))


def seed_slic_features(lab: np.ndarray, slic_labels: np.ndarray) -> np.ndarray:
    """The seed's per-superpixel np.where loop."""
    n = int(slic_labels.max()) + 1
    feats = np.zeros((n, 5), np.float32)
    for i in range(n):
        locs = np.where(slic_labels == i)
        if len(locs[0]) == 0:
            continue
        feats[i] = np.hstack((np.mean(locs, axis=1), np.mean(lab[locs], axis=0)))
    return feats


def _kmeans(features: np.ndarray, p: Any) -> np.ndarray:
    cv2.setRNGSeed(p.seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, p.max_iter, p.epsilon)
    _, labels, _ = cv2.kmeans(features, p.k, None, criteria, p.attempts, cv2.KMEANS_RANDOM_CENTERS)
    return labels


def run(args: argparse.Namespace) -> int:
    from skimage import data

    from icas_ray.segment import get_method, method_names
    from icas_ray.segment._labels import label_regions
    from icas_ray.segment.methods.edge import edge_mask
    from icas_ray.segment.methods.kmeans import pixel_features
    from icas_ray.segment.methods.superpixel import slic_labels

    img = getattr(data, args.image)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = cv2.resize(img, (args.size, args.size), interpolation=cv2.INTER_AREA)
    r = args.repeats
    rows: list[dict[str, Any]] = []

    backend = None
    if not args.no_sam:
        try:
            from icas_ray.sam import LocalSam

            backend = LocalSam.from_checkpoint("tiny", seed=0, device="cpu")
        except ImportError:
            backend = None

    for name in method_names():
        m = get_method(name)
        overrides: dict[str, Any] = {}
        note = ""
        if m.needs_backend:
            if backend is None:
                continue
            overrides = {"backend": backend, "generator": {"points_per_side": 8, "pred_iou_thresh": 0.0,
                                                          "stability_score_thresh": 0.0}}
            note = "tiny random in-process SAM (img_size 256), automatic mode, 8x8 points"
        p = m.make_params(overrides)
        if m.needs_backend:
            m(img, p)  # warm-up: the first call pays for torch's lazy set-up
        t, labels = _time(lambda: m(img, p), r)
        rows.append({"method": name, "seconds": round(t, 4), "segments": int(len(np.unique(labels))),
                     "note": note})
        print(f"{name:13s} {t:8.3f} s  {rows[-1]['segments']} segments")

    comparisons: list[dict[str, Any]] = []

    # edge: the whole method, and the labelling stage alone, against the seed's loop.
    ep = get_method("edge").make_params({})
    edges = edge_mask(img, ep)
    t_mask, _ = _time(lambda: edge_mask(img, ep), r)
    t_seed, seed_labels = _time(lambda: seed_edge_labelling(edges), r)
    t_ours, our_labels = _time(lambda: label_regions(edges), r)
    same = bool(np.array_equal(seed_labels, our_labels))
    comparisons.append({"what": "edge: region labelling", "seed_s": round(t_seed, 4), "ours_s": round(t_ours, 4),
                        "speedup": round(t_seed / t_ours, 1), "identical": same})
    comparisons.append({"what": "edge: whole method", "seed_s": round(t_mask + t_seed, 4),
                        "ours_s": round(t_mask + t_ours, 4),
                        "speedup": round((t_mask + t_seed) / (t_mask + t_ours), 2), "identical": same})
    for th in (10, 20):  # lower thresholds give many more segments: the loop's cost grows with them
        e = edge_mask(img, get_method("edge").make_params({"edge_th": th}))
        t_s, a = _time(lambda: seed_edge_labelling(e), r)
        t_o, b = _time(lambda: label_regions(e), r)
        comparisons.append({"what": f"edge: region labelling, edge_th={th} ({int(b.max())} segments)",
                            "seed_s": round(t_s, 4), "ours_s": round(t_o, 4),
                            "speedup": round(t_s / t_o, 1), "identical": bool(np.array_equal(a, b))})

    # kmeans: building the features, and the whole method.
    kp = get_method("kmeans").make_params({})
    t_seed_f, seed_f = _time(lambda: seed_kmeans_features(img, kp.color_importance), r)
    t_ours_f, our_f = _time(lambda: pixel_features(img, kp.color_importance), r)
    same_f = bool(np.array_equal(seed_f, our_f))
    comparisons.append({"what": "kmeans: pixel features", "seed_s": round(t_seed_f, 4), "ours_s": round(t_ours_f, 4),
                        "speedup": round(t_seed_f / t_ours_f, 1), "identical": same_f})
    t_k, seed_k = _time(lambda: _kmeans(seed_f, kp), 1)
    ours_k = _kmeans(our_f, kp)
    comparisons.append({"what": "kmeans: whole method (cv2.kmeans dominates)", "seed_s": round(t_seed_f + t_k, 4),
                        "ours_s": round(t_ours_f + t_k, 4),
                        "speedup": round((t_seed_f + t_k) / (t_ours_f + t_k), 2),
                        "identical": bool(np.array_equal(seed_k, ours_k))})

    # slickmeans: per-superpixel features.
    sp = get_method("slickmeans").make_params({})
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    sl = slic_labels(lab, sp.region_size, sp.ruler, sp.algorithm, sp.iterations)
    t_seed_s, seed_s = _time(lambda: seed_slic_features(lab, sl), r)

    def ours_slic() -> np.ndarray:
        h, w = sl.shape
        flat = sl.reshape(-1)
        n = int(flat.max()) + 1
        counts = np.maximum(np.bincount(flat, minlength=n), 1).astype(np.float64)
        rows_, cols_ = np.divmod(np.arange(h * w), w)
        f = [np.bincount(flat, weights=rows_, minlength=n), np.bincount(flat, weights=cols_, minlength=n)]
        f += [np.bincount(flat, weights=lab[..., c].reshape(-1), minlength=n) for c in range(3)]
        return (np.stack(f, axis=1) / counts[:, None]).astype(np.float32)

    t_ours_s, our_s = _time(ours_slic, r)
    comparisons.append({"what": f"slickmeans: superpixel features ({int(sl.max()) + 1} superpixels)",
                        "seed_s": round(t_seed_s, 4), "ours_s": round(t_ours_s, 4),
                        "speedup": round(t_seed_s / t_ours_s, 1),
                        "identical": bool(np.allclose(seed_s, our_s, rtol=1e-5, atol=1e-3))})
    for c in comparisons:
        print(f"{c['what']:60s} seed {c['seed_s']:8.3f} s  ours {c['ours_s']:8.3f} s  "
              f"x{c['speedup']}  identical={c['identical']}")

    result = {"benchmark": "segment", "image": f"skimage.data.{args.image} resized to {args.size}x{args.size}",
              "repeats": r, "statistic": "median", "machine": machine(),
              "cv2_threads": cv2.getNumThreads(), "methods": rows, "seed_comparison": comparisons,
              "date": time.strftime("%Y-%m-%d")}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "segment.json"), "w") as f:
        json.dump(result, f, indent=2)
    mach = result["machine"]
    md = [
        "# Segmentation benchmark",
        "",
        f"`scripts/bench.py segment` on {result['image']}, median of {r} runs, {result['date']}.",
        f"Machine: {mach.get('cpu')}, {mach.get('cpus')} CPUs, {mach.get('memory_gib')} GiB, "
        f"Python {mach.get('python')}, GPU: {mach.get('gpu') or 'none'}; "
        f"OpenCV threads: {result['cv2_threads']}.",
        "The machine may be shared with other work: absolute times are noisy; each seed/icas-ray",
        "pair below ran back to back in the same process on the same input.",
        "",
        "## Every method (default parameters)",
        "",
        "| method | seconds | segments | note |",
        "| --- | ---: | ---: | --- |",
        *[f"| {x['method']} | {x['seconds']:.3f} | {x['segments']} | {x['note']} |" for x in rows],
        "",
        "## Against the seed's loops (same run, same image)",
        "",
        "| what | seed (s) | icas-ray (s) | speed-up | identical output |",
        "| --- | ---: | ---: | ---: | --- |",
        *[f"| {c['what']} | {c['seed_s']:.4f} | {c['ours_s']:.4f} | {c['speedup']}x | "
          f"{'yes' if c['identical'] else 'NO'} |" for c in comparisons],
        "",
    ]
    with open(os.path.join(args.out, "segment.md"), "w") as f:
        f.write("\n".join(md))
    print(f"wrote {os.path.join(args.out, 'segment.json')} and segment.md")
    return 0 if all(c["identical"] for c in comparisons) else 1
