"""Shared pieces of the `icas label` tests (no tests here): generated scenes, the page driver."""

from __future__ import annotations

import json
import os
from typing import Any

import cv2
import numpy as np

from icas_ray.segment import PresegLayout, encode_labels

H, W = 90, 120
QUAD_COLOURS = [(200, 60, 40), (40, 160, 60), (50, 70, 200), (220, 210, 90)]
RED = (204, 0, 0)      # the page's first swatch: selected from the start
GREEN = (0, 170, 0)    # the second swatch (key 2)


def quadrant_labels(h: int = H, w: int = W) -> np.ndarray:
    """Four segments 1..4 (top-left, top-right, bottom-left, bottom-right), a 0 edge cross."""
    lab = np.zeros((h, w), np.int32)
    lab[: h // 2, : w // 2] = 1
    lab[: h // 2, w // 2 + 1:] = 2
    lab[h // 2 + 1:, : w // 2] = 3
    lab[h // 2 + 1:, w // 2 + 1:] = 4
    return lab


def quadrant_image(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = quadrant_labels(h, w)
    img = np.zeros((h, w, 3), np.uint8)
    for k, c in enumerate(QUAD_COLOURS, start=1):
        img[lab == k] = c
    noise = rng.integers(-6, 7, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def write_png(path: str, rgb: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def make_scenes(root: str, names: list[str], *, preseg: bool = True) -> tuple[str, str]:
    """``root/photos/<name>.png`` quadrant images and, with ``preseg``, their exact label maps
    as ``icas segment`` results under ``root/preseg/felzenszwalb``. Returns (folder, preseg)."""
    from icas_ray.storage import Storage

    folder = os.path.join(root, "photos")
    pre = os.path.join(root, "preseg")
    layout = PresegLayout(folder, pre, "felzenszwalb")
    for i, name in enumerate(names):
        uri = os.path.join(folder, name)
        write_png(uri, quadrant_image(seed=i))
        if preseg:
            data, suffix = encode_labels(quadrant_labels())
            Storage().write_bytes(layout.labels_uri(uri, suffix), data)
    if preseg:
        os.makedirs(layout.folder, exist_ok=True)
        with open(os.path.join(layout.folder, "params.json"), "w") as f:
            json.dump({"method": "felzenszwalb", "params": {}}, f)
    return folder, pre


def read_mask(path: str) -> np.ndarray:
    m = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    assert m is not None, path
    return m > 127


def mask_path(out: str, stem: str, colour: tuple[int, int, int]) -> str:
    r, g, b = colour
    return os.path.join(out, f"{stem}_mask_(R:{r},G:{g},B:{b}).png")


class PageDriver:
    """Drives the label page: clicks at image pixels, keys, waits until the page is idle."""

    def __init__(self, page: Any) -> None:
        self.page = page

    def wait_ready(self) -> None:
        self.page.wait_for_function("window.icas && window.icas.ready", timeout=30000)
        self.idle()

    def idle(self, timeout: float = 60000) -> None:
        self.page.wait_for_function("window.icas.pending === 0 && window.icas.busy === 0",
                                    timeout=timeout)

    def xy(self, x: int, y: int) -> tuple[float, float]:
        cx, cy = self.page.evaluate("([x, y]) => window.icas.toClient(x, y)", [x, y])
        return float(cx), float(cy)

    def click(self, x: int, y: int, button: str = "left", **kw: Any) -> None:
        cx, cy = self.xy(x, y)
        self.page.mouse.click(cx, cy, button=button, **kw)

    def dblclick(self, x: int, y: int, button: str = "left") -> None:
        cx, cy = self.xy(x, y)
        self.page.mouse.dblclick(cx, cy, button=button)

    def move(self, x: int, y: int, steps: int = 1) -> None:
        cx, cy = self.xy(x, y)
        self.page.mouse.move(cx, cy, steps=steps)

    def drag(self, a: tuple[int, int], b: tuple[int, int], button: str = "left",
             modifiers: tuple[str, ...] = ()) -> None:
        for m in modifiers:
            self.page.keyboard.down(m)
        self.move(*a)
        self.page.mouse.down(button=button)  # type: ignore[arg-type]
        self.move(*b, steps=8)
        self.page.mouse.up(button=button)  # type: ignore[arg-type]
        for m in modifiers:
            self.page.keyboard.up(m)

    def key(self, key: str) -> None:
        self.page.keyboard.press(key)
        self.idle()

    def js(self, expr: str) -> Any:
        return self.page.evaluate(expr)
