"""The `icas label` page in headless Chromium: paint, save, undo, cut, continuous modes,
navigation, session resume, template painting, GrabCut, cluster proposals.

One browser for the module; one label server per test on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from test_label_client_support import (
    GREEN,
    RED,
    PageDriver,
    make_scenes,
    mask_path,
    quadrant_labels,
    read_mask,
    write_png,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from conftest import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Labelling:
    """A running label server on generated scenes and a page open on it."""

    def __init__(self, browser: Any, tmp: str, names: list[str], **config: Any) -> None:
        from icas_ray.client import LabelConfig, start_server

        self.folder, self.preseg = make_scenes(tmp, names, preseg=config.pop("preseg", True))
        setup = config.pop("setup", None)
        if setup is not None:
            config.update(setup(self.folder, tmp))
        if "presegmented" not in config and os.path.isdir(self.preseg):
            config["presegmented"] = self.preseg
        self.out = self.folder + "_segmented"
        self.config = LabelConfig(self.folder, port=0, **config)
        self.server = start_server(self.config)
        self.context = browser.new_context(viewport={"width": 1100, "height": 800})
        self.page = self.context.new_page()
        self.on_dialog = lambda d: d.accept()
        self.page.on("dialog", lambda d: self.on_dialog(d))
        self.ui = PageDriver(self.page)
        self.open()

    def open(self) -> None:
        self.page.goto(self.server.url)
        self.ui.wait_ready()

    def restart(self) -> None:
        """Stop the server and start a new one on the same folder and output."""
        from icas_ray.client import start_server

        self.server.stop()
        self.server = start_server(self.config)

    def close(self) -> None:
        self.context.close()
        self.server.stop()

    def masks(self) -> list[str]:
        if not os.path.isdir(self.out):
            return []
        return sorted(f for f in os.listdir(self.out) if "_mask_" in f)


@pytest.fixture
def labelling(browser: Any, tmp_path: Any) -> Iterator[Any]:
    made: list[Labelling] = []

    def make(names: list[str] | None = None, **config: Any) -> Labelling:
        lab = Labelling(browser, str(tmp_path), names or ["a.png", "b.png", "c.png"], **config)
        made.append(lab)
        return lab

    yield make
    for lab in made:
        lab.close()


Q = quadrant_labels()
TL, TR, BL, BR = (20, 15), (90, 15), (20, 70), (90, 70)  # a pixel in each quadrant


def test_click_a_segment_and_space_writes_its_mask(labelling) -> None:  # type: ignore[no-untyped-def]
    lab = labelling()
    assert lab.ui.js("icas.colour") == 1  # a colour is selected from the start
    lab.ui.click(*TL)
    assert lab.ui.js("icas.dirty") is True
    lab.ui.key(" ")
    assert lab.masks() == ["a_mask_(R:204,G:0,B:0).png"]
    m = read_mask(mask_path(lab.out, "a", RED))
    assert np.array_equal(m, Q == 1)
    assert lab.ui.js("icas.index") == 1  # space moved on to the next image
    assert "(saved a_mask_(R:204,G:0,B:0).png)" in lab.ui.js("icas.status")


def test_right_click_unfills_and_colours_are_picked_with_digits(labelling) -> None:  # type: ignore[no-untyped-def]
    lab = labelling()
    lab.ui.click(*TL)
    lab.ui.click(*TL, button="right")
    lab.page.keyboard.press("2")
    lab.ui.click(*BR)
    lab.ui.key(" ")
    assert lab.masks() == ["a_mask_(R:0,G:170,B:0).png"]
    assert np.array_equal(read_mask(mask_path(lab.out, "a", GREEN)), Q == 4)


def test_a_cut_splits_a_segment(labelling) -> None:  # type: ignore[no-untyped-def]
    lab = labelling()
    # A vertical cut through the top-left quadrant (x = 30), by two middle clicks.
    lab.ui.click(30, 0, button="middle")
    lab.ui.click(30, 44, button="middle")
    lab.ui.click(10, 20)  # the left piece only
    lab.ui.key(" ")
    m = read_mask(mask_path(lab.out, "a", RED))
    expected = (Q == 1).copy()
    expected[:, 30:] = False
    assert np.array_equal(m, expected)


def test_z_undoes_the_last_action(labelling) -> None:  # type: ignore[no-untyped-def]
    lab = labelling()
    lab.ui.click(*TL)
    lab.ui.click(*TR)
    lab.ui.key("z")
    assert lab.ui.js("icas.painting.undoDepth") == 1
    lab.ui.key(" ")
    assert np.array_equal(read_mask(mask_path(lab.out, "a", RED)), Q == 1)


def test_n_and_p_move_without_saving(labelling) -> None:  # type: ignore[no-untyped-def]
    lab = labelling()
    lab.ui.click(*TL)
    lab.ui.key("n")
    assert lab.ui.js("icas.index") == 1
    assert lab.ui.js("icas.meta.name") == "b.png"
    lab.ui.key("ArrowRight")
    assert lab.ui.js("icas.index") == 2
    lab.ui.key("p")
    lab.ui.key("a")
    assert lab.ui.js("icas.index") == 0
    assert lab.ui.js("icas.painting.painted()") == 0  # the unsaved paint was dropped
    assert lab.masks() == []


def test_double_click_toggles_continuous_filling_along_the_mouse_path(labelling) -> None:  # type: ignore[no-untyped-def]
    lab = labelling()
    lab.ui.dblclick(*TL)
    assert lab.ui.js("icas.continuous") == "fill"
    assert "continuous fill" in lab.page.inner_text("#mode")
    lab.ui.move(*TR, steps=12)  # along the top: crosses the edge into the top-right quadrant
    lab.ui.dblclick(*TR)
    assert lab.ui.js("icas.continuous") is None
    lab.ui.move(*BR, steps=12)  # continuous mode is off: nothing more is filled
    # The double click's first click filled (one step); the whole stroke is one more.
    assert lab.ui.js("icas.painting.undoDepth") == 2
    lab.ui.key(" ")
    assert np.array_equal(read_mask(mask_path(lab.out, "a", RED)), (Q == 1) | (Q == 2))


def test_double_right_click_unfills_continuously(labelling) -> None:  # type: ignore[no-untyped-def]
    lab = labelling()
    for p in (TL, TR, BL):
        lab.ui.click(*p)
    lab.ui.dblclick(*BL, button="right")
    assert lab.ui.js("icas.continuous") == "unfill"
    lab.ui.move(*TL, steps=12)
    lab.ui.dblclick(*TL, button="right")
    lab.ui.key(" ")
    assert np.array_equal(read_mask(mask_path(lab.out, "a", RED)), Q == 2)


def test_reset_and_debug_view(labelling) -> None:  # type: ignore[no-untyped-def]
    lab = labelling()
    lab.ui.click(*TL)
    lab.ui.key("v")
    assert lab.ui.js("icas.debug") is True
    assert "debug" in lab.page.inner_text("#mode")
    lab.ui.key("v")
    lab.ui.key("r")
    assert lab.ui.js("icas.painting.painted()") == 0
    lab.ui.key("z")  # reset is undoable
    assert lab.ui.js("icas.painting.painted()") == int((Q == 1).sum())


def test_a_reload_and_a_restart_resume_the_session(labelling) -> None:  # type: ignore[no-untyped-def]
    lab = labelling()
    lab.ui.click(*TL)
    lab.ui.key(" ")                     # a.png done, now on b.png
    lab.ui.key("n")                     # on c.png, nothing saved
    assert lab.ui.js("icas.index") == 2
    lab.open()                          # reload the page
    assert lab.ui.js("icas.index") == 2
    assert lab.ui.js("icas.state.images.map(i => i.done)") == [True, False, False]
    lab.restart()                       # a new server on the same output
    lab.open()
    assert lab.ui.js("icas.index") == 2
    assert "1/3" not in lab.page.inner_text("#progress") and "1 done" in lab.page.inner_text("#progress")
    lab.ui.key("p")
    lab.ui.key("p")                     # back on a.png: its saved mask is shown again
    assert lab.ui.js("icas.meta.done") is True
    assert lab.ui.js("icas.painting.painted()") == int((Q == 1).sum())
    lab.ui.click(*TR)                   # add to it and save again
    lab.ui.key(" ")
    assert np.array_equal(read_mask(mask_path(lab.out, "a", RED)), (Q == 1) | (Q == 2))
    lab.server.state.session.flush()    # the position is written in the background
    with open(os.path.join(lab.out, ".icas_label", "session.json")) as f:
        session = json.load(f)
    assert sorted(session["done"]) == ["a.png"] and session["current"] == "b.png"


def _tiny(name: str) -> Any:
    """A ``setup`` that adds a 3x2 image (too small to segment) called ``name``."""
    def setup(folder: str, tmp: str) -> dict[str, Any]:
        write_png(os.path.join(folder, name), np.zeros((2, 3, 3), np.uint8))
        return {}
    return setup


def test_an_image_that_cannot_be_segmented_is_stepped_over(labelling) -> None:  # type: ignore[no-untyped-def]
    """n and p step over an image that fails to open (its error shown); the session keeps the
    last image that opened, so a reload opens it."""
    lab = labelling(["a.png", "c.png"], setup=_tiny("b_tiny.png"))
    lab.ui.key("n")                     # b_tiny.png fails: its error, still on a.png
    assert "too small" in lab.page.inner_text("#status")
    assert lab.ui.js("icas.meta.name") == "a.png"
    lab.ui.key("n")                     # on to c.png
    assert lab.ui.js("icas.meta.name") == "c.png" and lab.ui.js("icas.index") == 2
    lab.ui.key("p")                     # b_tiny.png fails again
    lab.ui.key("p")
    assert lab.ui.js("icas.meta.name") == "a.png" and lab.ui.js("icas.index") == 0
    lab.ui.key("n")                     # fails; a reload opens the last image that opened
    lab.open()
    assert lab.ui.js("icas.meta.name") == "a.png"


def test_a_first_image_that_cannot_be_segmented_leaves_the_page_usable(labelling) -> None:  # type: ignore[no-untyped-def]
    lab = labelling(["b.png", "c.png"], setup=_tiny("a_tiny.png"))
    assert "too small" in lab.page.inner_text("#status")
    lab.ui.key("n")
    assert lab.ui.js("icas.meta.name") == "b.png" and lab.ui.js("icas.index") == 1
    lab.ui.click(*TL)
    lab.ui.key(" ")
    assert lab.masks() and all(m.startswith("b_mask_") for m in lab.masks())


def test_quit_asks_before_dropping_unsaved_paint_and_stops_the_server(labelling) -> None:  # type: ignore[no-untyped-def]
    import requests

    lab = labelling()
    asked: list[str] = []
    lab.on_dialog = lambda d: (asked.append(d.message), d.dismiss())
    lab.ui.click(*TL)
    lab.ui.key("q")                     # dismissed: still running
    assert asked and "unsaved" in asked[0]
    assert requests.get(lab.server.url + "api/state", timeout=5).status_code == 200
    lab.ui.key(" ")
    lab.ui.key("q")                     # nothing unsaved: no question, the server stops
    assert len(asked) == 1
    lab.server.thread.join(10)
    assert not lab.server.thread.is_alive()
    assert "stopped" in lab.ui.js("icas.status")


def _plant_template(folder: str, tmp: str) -> dict[str, Any]:
    """A 12x12 pattern planted in c.png at (70, 55); its template and segment folders."""
    from test_label_client_support import quadrant_image

    from icas_ray.client import TemplateDirs

    rng = np.random.default_rng(5)
    pattern = rng.integers(40, 255, (12, 12, 3)).astype(np.uint8)
    img = quadrant_image(seed=2)
    img[55:67, 70:82] = pattern
    write_png(os.path.join(folder, "c.png"), img)
    write_png(os.path.join(tmp, "tpl", "templates", "thing.png"), pattern)
    seg = np.zeros((12, 12, 3), np.uint8)
    seg[2:10, 2:10] = (255, 0, 255)  # paints the middle 8x8 (black = not painted)
    write_png(os.path.join(tmp, "tpl", "segments", "thing.png"), seg)
    return {"templates": TemplateDirs(os.path.join(tmp, "tpl", "templates"),
                                      os.path.join(tmp, "tpl", "segments"))}


def test_template_painting_paints_a_planted_template(labelling) -> None:  # type: ignore[no-untyped-def]
    lab = labelling(setup=_plant_template)
    lab.ui.key("n")
    lab.ui.key("n")
    assert lab.ui.js("icas.meta.name") == "c.png"
    lab.ui.key("t")
    assert "1 placement" in lab.ui.js("icas.status")
    lab.ui.key(" ")
    assert lab.masks() == ["c_mask_(R:255,G:0,B:255).png"]
    expected = np.zeros(Q.shape, bool)
    expected[57:65, 72:80] = True
    assert np.array_equal(read_mask(mask_path(lab.out, "c", (255, 0, 255))), expected)


def test_grabcut_mode_segments_a_rectangle_into_a_mask(labelling) -> None:  # type: ignore[no-untyped-def]
    lab = labelling(preseg=False, method="grabcut")
    assert lab.ui.js("icas.mode") == "grabcut"   # --method grabcut opens in its mode
    lab.ui.drag((57, 41), (119, 89), button="middle")   # the rectangle round the bottom-right
    lab.ui.key(" ")                                       # one iteration
    assert lab.ui.js("icas.grabcut.iterations") == 1
    lab.ui.key(" ")
    lab.ui.key("f")                                       # finish: segments for painting
    assert lab.ui.js("icas.mode") == "paint"
    lab.ui.click(*BR)
    lab.ui.key(" ")
    m = read_mask(mask_path(lab.out, "a", RED))
    truth = Q == 4
    iou = (m & truth).sum() / (m | truth).sum()
    assert iou > 0.85, iou


def _near_duplicates(folder: str, tmp: str) -> dict[str, Any]:
    """Replace the scenes by one cluster of 3 near-duplicates of one photo (JPEG variants)."""
    from icas_ray.datasets import make_dataset

    for f in os.listdir(folder):
        os.unlink(os.path.join(folder, f))
    make_dataset("near-duplicates", folder, count=3, seed=3, classes=1)
    for f in os.listdir(folder):
        if not f.endswith(".jpg"):
            os.unlink(os.path.join(folder, f))
    return {"method": "felzenszwalb", "params": {"segment_scale": 300, "min_segment_size": 400}}


def test_cluster_labelling_proposes_the_saved_masks_on_the_other_images(labelling) -> None:  # type: ignore[no-untyped-def]
    lab = labelling(preseg=False, setup=_near_duplicates)
    names = lab.ui.js("icas.state.images.map(i => i.name)")
    assert len(names) == 3
    w, h = lab.ui.js("[icas.painting.w, icas.painting.h]")
    for fx, fy in ((0.5, 0.5), (0.45, 0.55), (0.55, 0.45)):
        lab.ui.click(int(w * fx), int(h * fy))
    source_area = lab.ui.js("icas.painting.painted()")
    assert source_area > 0
    lab.ui.key(" ")                                     # saved: proposals for the others
    assert lab.ui.js("icas.index") == 1
    status = lab.ui.js("icas.status")
    assert status.startswith(f"proposal from {names[0]}"), status
    assert lab.ui.js("icas.dirty") is True
    proposed = lab.ui.js("icas.painting.painted()")
    w2, h2 = lab.ui.js("[icas.painting.w, icas.painting.h]")
    expected = source_area * (w2 * h2) / (w * h)
    assert 0.3 * expected < proposed < 3 * expected, (proposed, expected)
    lab.ui.key(" ")                                     # accept
    stem = names[1].rsplit(".", 1)[0]
    m = read_mask(mask_path(lab.out, stem, RED))
    assert int(m.sum()) == proposed
    # The third image gets one too; z removes it (one undo step) and n skips without saving.
    assert lab.ui.js("icas.index") == 2 and lab.ui.js("icas.status").startswith("proposal from")
    lab.ui.key("z")
    assert lab.ui.js("icas.painting.painted()") == 0
    lab.ui.key("p")
    assert sorted(lab.masks()) == sorted(
        [f"{n.rsplit('.', 1)[0]}_mask_(R:204,G:0,B:0).png" for n in names[:2]])
