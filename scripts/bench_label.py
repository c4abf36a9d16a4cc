"""icas label: click -> repainted overlay, next image, SAM round trip, clicks saved by clusters.

    .venv/bin/python scripts/bench.py label [--clicks 200] [--images 12] [--no-sam]

Drives the real page in headless Chromium (/usr/bin/chromium, Playwright) against a real label
server on 127.0.0.1:

* **click -> repainted overlay** at 1024x768: a left click on a segment of a pre-segmented image
  (about 1200 segments), timed in the page from the mouse event's timestamp to the animation
  frame after the overlay was redrawn (``icas.timing.click``);
* **next image shown**: from the key press to the first frame of the next image, when it was
  prepared ahead (the default: server and page prefetch) and when not (a jump to an image no
  one prepared, segmented on demand with superpixel);
* **SAM round trip** with the tiny random-weight model on Ray Serve (CPU): space -> mask shown;
* **clicks per image** with and without cluster proposals (:func:`icas_ray.label.study.clicks_study`).

Writes benchmarks/label.json and benchmarks/label.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from typing import Any

import numpy as np
from bench import BENCHMARKS, machine

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
W, H = 1024, 768


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clicks", type=int, default=200, help="clicks timed (default 200)")
    p.add_argument("--images", type=int, default=12, help="images to move through (default 12)")
    p.add_argument("--sam-requests", type=int, default=20, help="SAM predictions timed")
    p.add_argument("--no-sam", action="store_true", help="skip the SAM round trip (no Ray)")
    p.add_argument("--study-count", type=int, default=24,
                   help="near-duplicate images of the clicks study (default 24)")
    p.add_argument("--study-classes", type=int, default=4, help="groups of the clicks study")
    p.add_argument("--out", default=BENCHMARKS, help="output folder (default benchmarks/)")


def _stats(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    ys = sorted(xs)
    return {"n": len(xs), "median_ms": round(statistics.median(ys), 2),
            "p95_ms": round(ys[min(len(ys) - 1, int(0.95 * len(ys)))], 2),
            "max_ms": round(ys[-1], 2)}


def _scene(i: int) -> tuple[np.ndarray, np.ndarray]:
    """A 1024x768 photo-like image and a label map of ~1200 blocky segments."""
    rng = np.random.default_rng(i)
    img = np.zeros((H, W, 3), np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    for c in range(3):
        img[..., c] = (127 + 90 * np.sin(xx / (37 + 11 * c + i) + yy / (53 + 7 * c))).astype(np.uint8)
    img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
    cell = 24
    labels = ((yy // cell) * (W // cell + 1) + (xx // cell) + 1).astype(np.int32)
    labels[(yy % cell == 0) | (xx % cell == 0)] = 0  # edges between the blocks
    return img, labels


def _write_data(root: str, n: int) -> tuple[str, str]:
    import cv2

    from icas_ray.segment import PresegLayout, encode_labels
    from icas_ray.storage import Storage

    folder, pre = os.path.join(root, "photos"), os.path.join(root, "preseg")
    os.makedirs(folder)
    layout = PresegLayout(folder, pre, "superpixel")
    for i in range(n):
        img, labels = _scene(i)
        uri = os.path.join(folder, f"img{i:03d}.jpg")
        cv2.imwrite(uri, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        data, suffix = encode_labels(labels)
        Storage().write_bytes(layout.labels_uri(uri, suffix), data)
    with open(os.path.join(layout.folder, "params.json"), "w") as f:
        json.dump({"method": "superpixel", "params": {}}, f)
    return folder, pre


def _page(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport={"width": 1300, "height": 950})
    page.on("dialog", lambda d: d.accept())
    page.goto(url)
    page.wait_for_function("window.icas && window.icas.ready", timeout=120000)
    return page


def _idle(page: Any) -> None:
    page.wait_for_function("icas.pending === 0 && icas.busy === 0", timeout=300000)


def _click_xy(page: Any, x: int, y: int) -> tuple[float, float]:
    cx, cy = page.evaluate("([x, y]) => icas.toClient(x, y)", [x, y])
    return float(cx), float(cy)


def _clicks(page: Any, n: int) -> list[float]:
    rng = np.random.default_rng(1)
    page.evaluate("icas.timing.click.length = 0")
    for k in range(n):
        x, y = int(rng.integers(1, W - 1)), int(rng.integers(1, H - 1))
        page.keyboard.press(str(1 + k % 3))  # another colour each time: every click repaints
        page.mouse.click(*_click_xy(page, x, y))
        page.wait_for_function(f"icas.timing.click.length >= {k + 1}", timeout=10000)
    return [t["frame_ms"] for t in page.evaluate("icas.timing.click")]


def _next_times(page: Any, n: int, wait_s: float) -> list[float]:
    out = []
    for _ in range(n):
        time.sleep(wait_s)  # the labeller paints meanwhile: prefetching has time to finish
        before = page.evaluate("icas.timing.show.length")
        page.keyboard.press("n")
        page.wait_for_function(f"icas.timing.show.length > {before}", timeout=120000)
        _idle(page)
        out.append(page.evaluate("icas.timing.show[icas.timing.show.length - 1].frame_ms"))
    return out


def _jump_times(page: Any, indexes: list[int]) -> list[float]:
    out = []
    for i in indexes:
        before = page.evaluate("icas.timing.show.length")
        t0 = page.evaluate("performance.now()")
        page.evaluate(f"icas.goTo({i})")
        page.wait_for_function(f"icas.timing.show.length > {before}", timeout=300000)
        _idle(page)
        t1 = page.evaluate("icas.timing.show[icas.timing.show.length - 1].frame_ms")
        out.append(float(t1))
        del t0
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sam(browser: Any, folder: str, n: int) -> dict[str, Any]:
    from ray import serve

    from icas_ray.client import LabelConfig, start_server
    from icas_ray.runtime import ResourceConfig, init_ray
    from icas_ray.sam import build_sam, save_checkpoint
    from icas_ray.serve.app import build_app
    from icas_ray.serve.args import SamServeArgs

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    init_ray(ResourceConfig(num_cpus=os.cpu_count() or 2))
    tmp = tempfile.mkdtemp(prefix="icas-bench-label-sam-")
    ckpt = os.path.join(tmp, "tiny.pth")
    save_checkpoint(build_sam("tiny", seed=7, device="cpu").model, ckpt)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(SamServeArgs(model_type="tiny", checkpoint=ckpt, num_cpus=1,
                                         image_store=os.path.join(tmp, "images"))),
                  name="bench-label", route_prefix="/")
        running = start_server(LabelConfig(folder, method="sam", sam_url=f"http://127.0.0.1:{port}",
                                           output=os.path.join(tmp, "out"), port=0))
        try:
            page = _page(browser, running.url)
            rng = np.random.default_rng(2)
            for _ in range(n):
                page.mouse.click(*_click_xy(page, int(rng.integers(0, W)), int(rng.integers(0, H))))
                page.keyboard.press(" ")
                _idle(page)
                page.keyboard.press("z")
            timing = page.evaluate("icas.timing.sam || []")
            device = page.inner_text("#sam")
            page.close()
        finally:
            running.stop()
    finally:
        serve.shutdown()
    return {"page": _stats([t["page_ms"] for t in timing]),
            "label_server": _stats([t["server_ms"] for t in timing]),
            "service_decode": _stats([t["decode_ms"] for t in timing if t.get("decode_ms") is not None]),
            "shown": device}


def run(args: argparse.Namespace) -> int:
    from playwright.sync_api import sync_playwright

    from icas_ray.client import LabelConfig, start_server
    from icas_ray.label.study import clicks_study

    n_img = max(4, args.images)
    root = tempfile.mkdtemp(prefix="icas-bench-label-")
    folder, pre = _write_data(root, n_img)
    result: dict[str, Any] = {"machine": machine(), "args": vars(args),
                              "when": time.strftime("%Y-%m-%d %H:%M:%S"), "size": [W, H]}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        # Pre-segmented, prefetching: clicks and "next" when prepared ahead.
        running = start_server(LabelConfig(folder, presegmented=pre, port=0,
                                           output=os.path.join(root, "out1")))
        try:
            page = _page(browser, running.url)
            result["click_to_overlay"] = _stats(_clicks(page, args.clicks))
            half = max(1, (n_img - 2) // 2)
            result["next_prefetched"] = _stats(_next_times(page, half, wait_s=1.0))
            page.close()
        finally:
            running.stop()
        # Nothing prepared: on-demand superpixel, no prefetch, jumps to far images.
        running = start_server(LabelConfig(folder, method="superpixel", prefetch=0, port=0,
                                           output=os.path.join(root, "out2")))
        try:
            page = _page(browser, running.url)
            result["next_not_prefetched"] = _stats(_jump_times(page, list(range(2, n_img, 2))))
            page.close()
        finally:
            running.stop()
        if not args.no_sam:
            result["sam_round_trip"] = _sam(browser, folder, args.sam_requests)
        browser.close()
    study = clicks_study(count=args.study_count, classes=args.study_classes)
    result["clicks_study"] = {k: v for k, v in study.items() if k != "rows"}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "label.json"), "w") as f:
        json.dump({**result, "clicks_study_rows": study.get("rows")}, f, indent=1, default=str)
    md = _markdown(result)
    with open(os.path.join(args.out, "label.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


def _row(name: str, s: dict[str, Any], aim: str) -> str:
    if not s.get("n"):
        return f"| {name} | not measured | | | {aim} |"
    return f"| {name} | {s['median_ms']} | {s['p95_ms']} | {s['n']} | {aim} |"


def _markdown(r: dict[str, Any]) -> str:
    m, a = r["machine"], r["args"]
    lines = [
        "# icas label: benchmark",
        "",
        (f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, GPU: {m['gpu'] or 'none'}; "
         f"Python {m['python']}; {r['when']}. Command: `scripts/bench.py label --clicks {a['clicks']} "
         f"--images {a['images']}{' --no-sam' if a['no_sam'] else ''}`. Headless Chromium "
         "(Debian's package, software rendering), the real page and server on 127.0.0.1; images "
         f"{W}x{H}."),
        "",
        "| what | median (ms) | p95 (ms) | n | aim |",
        "| --- | ---: | ---: | ---: | --- |",
        _row("click -> repainted overlay (mouse event to the next frame)", r["click_to_overlay"],
             "<= 50 ms"),
        _row("next image shown, prefetched (key to first frame)", r["next_prefetched"],
             "<= 150 ms"),
        _row("next image shown, not prefetched (decode + superpixel on demand)",
             r["next_not_prefetched"], "-"),
    ]
    sam = r.get("sam_round_trip")
    if sam:
        lines.append(_row("SAM round trip, tiny model on Serve, CPU (space to mask in the page)",
                          sam["page"], "-"))
        lines.append(_row("... of which label server -> service -> label server",
                          sam["label_server"], "-"))
        lines.append(_row("... of which the service's decoder", sam["service_decode"], "-"))
    c = r["clicks_study"]
    lines += [
        "",
        "## Clicks per image: whole-cluster labelling against painting each image alone",
        "",
        (f"Near-duplicates data set ({c['data']['count']} images, {c['clusters']} clusters, "
         f"seed {c['data']['seed']}), segments by {c['method']}; the first image of each cluster "
         "is painted by hand, the others get its masks proposed "
         "(`icas_ray.label.study.clicks_study`)."
         + (f" Skipped clusters: {c['skipped_clusters']}." if c.get("skipped_clusters") else "")),
        "",
        "| | clicks per image |",
        "| --- | ---: |",
        f"| painting each image alone | {c['clicks_alone']:.1f} |",
        f"| with the cluster's proposal (fix what is wrong) | {c['clicks_with_proposal']:.1f} |",
        f"| saving (all targets pooled) | {100 * c['saving']:.0f}% |",
        f"| saving (median per image) | {100 * c.get('median_image_saving', c['saving']):.0f}% |",
        "",
        (f"Proposal IoU against the truth: mean {c['mean_iou']:.3f}, min {c['min_iou']:.3f}; "
         f"alignment methods used: {c['methods']}."),
        "",
    ]
    return "\n".join(lines)
