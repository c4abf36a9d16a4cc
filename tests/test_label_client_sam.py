"""The `icas label` SAM mode in headless Chromium against the real Serve app (a tiny
random-weight SAM on the session's loopback Ray, started as tests/test_serve.py does)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import numpy as np
import pytest
from test_label_client_support import PageDriver, make_scenes, mask_path, read_mask

pytestmark = [pytest.mark.browser, pytest.mark.timeout(400)]
TOKEN = "label-s3cret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sam_url(ray_session, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from ray import serve

    from icas_ray.sam import build_sam, save_checkpoint
    from icas_ray.serve.app import build_app
    from icas_ray.serve.args import SamServeArgs

    tmp = tmp_path_factory.mktemp("label-sam")
    ckpt = str(tmp / "tiny.pth")
    save_checkpoint(build_sam("tiny", seed=7, device="cpu").model, ckpt)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(SamServeArgs(model_type="tiny", checkpoint=ckpt, num_cpus=0.5,
                                     image_store=str(tmp / "images"), token=TOKEN,
                                     name="sam-label")), name="sam-label", route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def test_sam_prompts_predict_finish_and_paint_a_mask(sam_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conftest import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    from icas_ray.client import LabelConfig, start_server

    folder, _ = make_scenes(str(tmp_path), ["a.png", "b.png"], preseg=False)
    running = start_server(LabelConfig(folder, method="sam", sam_url=sam_url, sam_token=TOKEN,
                                       port=0))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            ui = PageDriver(page)
            page.goto(running.url)
            ui.wait_ready()
            assert ui.js("icas.mode") == "sam"         # --method sam opens in SAM mode
            ui.click(90, 70)                            # a foreground point
            ui.click(20, 15, button="right")            # a background point
            ui.click(10, 80)                            # one too many...
            ui.key("z")                                 # ...z removes the last prompt
            assert ui.js("icas.sam.prompts.length") == 2
            ui.key(" ")                                 # predict
            assert ui.js("icas.sam.result !== null")
            assert "SAM on CPU" in page.inner_text("#sam")
            assert "last request" in page.inner_text("#sam")
            # Where the page will paint: a pixel of the predicted mask (any if it is empty).
            x, y, label = ui.js("""(() => {
                const r = icas.sam.result, w = icas.painting.w;
                let i = r.labels.findIndex(l => l >= 1 && l <= r.foreground);
                if (i < 0) i = 0;
                return [i % w, Math.floor(i / w), r.labels[i]];
            })()""")
            region = np.array(ui.js(f"Array.from(icas.sam.result.labels).map(l => l === {label} ? 1 : 0)"),
                              bool).reshape(90, 120)
            ui.key("f")                                 # finish into painting
            assert ui.js("icas.mode") == "paint"
            ui.click(x, y)
            ui.key(" ")
            m = read_mask(mask_path(folder + "_segmented", "a", (204, 0, 0)))
            assert m.any() and np.array_equal(m, region)
            assert sorted(os.listdir(folder + "_segmented")) == [
                ".icas_label", "a_mask_(R:204,G:0,B:0).png"]
            browser.close()
    finally:
        running.stop()
