"""The label server over HTTP (no browser): path refusal, symlinks, token, body cap, Host
check; the `icas label` command line: URL on stdout, one-line errors, no Ray or torch."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from test_label_client_support import H, W, make_scenes, mask_path, quadrant_labels, read_mask

POST = {"X-Icas-Client": "1"}


@pytest.fixture
def server(tmp_path: Any) -> Iterator[Any]:
    from icas_ray.client import LabelConfig, start_server

    folder, pre = make_scenes(str(tmp_path), ["a.png", "b.png"])
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(os.path.join(folder, "a.png"), outside / "secret.png")
    running = start_server(LabelConfig(folder, presegmented=pre, port=0, max_body=64 * 1024))
    running.folder = folder
    running.outside = str(outside)
    try:
        yield running
    finally:
        running.stop()


def _raw_get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET with the path sent exactly as given (no client-side dot-segment removal)."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    return r.status, r.read()


def _paint_payload(paint: np.ndarray, palette: list[list[int]]) -> dict[str, Any]:
    h, w = paint.shape
    data = gzip.compress(paint.astype("<u2").tobytes())
    return {"width": w, "height": h, "palette": palette,
            "paint": base64.b64encode(data).decode("ascii")}


@pytest.mark.parametrize("path", [
    "/api/images/../../etc/passwd/image",
    "/api/images/..%2F..%2Fetc%2Fpasswd/image",
    "/api/images/%2Fetc%2Fpasswd/image",
    "/api/images/../../../../etc/passwd/labels",
    "/static/../../../../etc/passwd",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/../../etc/passwd",
], ids=lambda p: p.replace("/", "|"))
def test_traversal_paths_are_refused(server, path: str) -> None:  # type: ignore[no-untyped-def]
    status, body = _raw_get(server.url, path)
    assert status in (400, 404), (status, body[:200])
    assert b"root:" not in body


def test_a_symlink_out_of_the_folder_is_refused(server) -> None:  # type: ignore[no-untyped-def]
    # Not listed, so not reachable by name...
    os.symlink(os.path.join(server.outside, "secret.png"), os.path.join(server.folder, "evil.png"))
    r = requests.get(server.url + "api/images/evil.png/image", timeout=10)
    assert r.status_code == 404
    # ...and a listed image swapped for a link after the listing is refused when read.
    b = os.path.join(server.folder, "b.png")
    os.unlink(b)
    os.symlink(os.path.join(server.outside, "secret.png"), b)
    r = requests.get(server.url + "api/images/1/image", timeout=10)
    assert r.status_code == 403
    assert "leads outside" in r.json()["error"]
    names = [im["name"] for im in requests.get(server.url + "api/state", timeout=10).json()["images"]]
    assert names == ["a.png", "b.png"]


def test_images_are_served_by_index_and_by_listed_name(server) -> None:  # type: ignore[no-untyped-def]
    import cv2

    from icas_ray.client._codec import unpack_png

    a = requests.get(server.url + "api/images/0/image", timeout=10)
    assert a.status_code == 200 and a.headers["content-type"] == "image/png"
    same = requests.get(server.url + "api/images/a.png/image", timeout=10)
    assert same.content == a.content
    img = cv2.imdecode(np.frombuffer(a.content, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (H, W, 3)
    lab = requests.get(server.url + "api/images/0/labels", timeout=10)
    assert np.array_equal(unpack_png(lab.content), quadrant_labels())


def test_save_over_http_writes_masks_and_checks_the_payload(server) -> None:  # type: ignore[no-untyped-def]
    paint = np.zeros((H, W), np.uint16)
    paint[quadrant_labels() == 2] = 1
    paint[quadrant_labels() == 3] = 2
    body = _paint_payload(paint, [[10, 20, 30], [0, 0, 0]])  # black is not a class
    r = requests.post(server.url + "api/images/0/save", json=body, headers=POST, timeout=10)
    assert r.status_code == 200, r.text
    out = server.folder + "_segmented"
    assert sorted(os.listdir(out)) == [".icas_label", "a_mask_(R:10,G:20,B:30).png"]
    assert np.array_equal(read_mask(mask_path(out, "a", (10, 20, 30))), quadrant_labels() == 2)
    with open(os.path.join(out, ".icas_label", "session.json")) as f:
        session = json.load(f)
    assert list(session["done"]) == ["a.png"]
    # The wrong size, an index past the palette: one-line 422s, nothing written.
    bad = _paint_payload(np.zeros((H, W + 1), np.uint16), [])
    r = requests.post(server.url + "api/images/1/save", json=bad, headers=POST, timeout=10)
    assert r.status_code == 422 and "expected the image's 120x90" in r.json()["error"]
    bad = _paint_payload(paint, [[1, 2, 3]])
    r = requests.post(server.url + "api/images/1/save", json=bad, headers=POST, timeout=10)
    assert r.status_code == 422 and "palette has 1 colours" in r.json()["error"]
    assert not any(f.startswith("b_") for f in os.listdir(out))


def test_oversized_bodies_get_413_and_posts_need_the_client_header(server) -> None:  # type: ignore[no-untyped-def]
    big = b"x" * (65 * 1024)
    r = requests.post(server.url + "api/images/0/save", data=big, headers=POST, timeout=10)
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap counts the stream
        for _ in range(20):
            yield b"y" * 8192

    r = requests.post(server.url + "api/images/0/save", data=chunks(), headers=POST, timeout=10)
    assert r.status_code == 413
    r = requests.post(server.url + "api/quit", json={}, timeout=10)
    assert r.status_code == 403 and "x-icas-client" in r.json()["error"]


def test_a_foreign_host_header_is_refused(server) -> None:  # type: ignore[no-untyped-def]
    status, body = _raw_get(server.url, "/api/state", {"Host": "evil.example:80"})
    assert status == 403 and b"is not this server" in body


def test_a_token_is_checked_on_every_api_request(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from icas_ray.client import LabelConfig, start_server

    folder, pre = make_scenes(str(tmp_path), ["a.png"])
    running = start_server(LabelConfig(folder, presegmented=pre, port=0, token="s3cret"))
    try:
        assert running.url.endswith("/?token=s3cret")
        base = running.url.split("?")[0]
        assert requests.get(base + "api/state", timeout=10).status_code == 401
        wrong = requests.get(base + "api/state", headers={"X-Icas-Token": "nope"}, timeout=10)
        assert wrong.status_code == 401
        ok = requests.get(base + "api/state", headers={"X-Icas-Token": "s3cret"}, timeout=10)
        assert ok.status_code == 200
        assert requests.get(base + "api/images/0/image?token=s3cret", timeout=10).status_code == 200
        assert requests.get(base, timeout=10).status_code == 200  # the page itself holds no data
    finally:
        running.stop()


def test_a_non_loopback_host_without_token_is_refused() -> None:
    from icas_ray.client import LabelConfig
    from icas_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="a token is required"):
        LabelConfig("x", host="0.0.0.0")


# -- the command line -------------------------------------------------------------------------
def _main(argv: list[str], capsys: Any) -> tuple[int, str, str]:
    from icas_ray.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_errors_are_one_line_before_the_server_starts(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    folder, _ = make_scenes(str(tmp_path), ["a.png"], preseg=False)
    code, _, err = _main(["label", str(tmp_path / "missing"), "--no-browser"], capsys)
    assert code == 1 and err.count("\n") == 1 and "does not exist" in err
    code, _, err = _main(["label", folder, "--method", "nosuch", "--no-browser"], capsys)
    assert code == 1 and err.count("\n") == 1 and "unknown segmentation method 'nosuch'" in err
    code, _, err = _main(["label", folder, "-p", "nosuch=1", "--no-browser"], capsys)
    assert code == 1 and "unknown parameter 'nosuch'" in err
    code, _, err = _main(["label", folder, "--method", "sam", "--no-browser"], capsys)
    assert code == 1 and "--sam-url" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = _main(["label", folder, "--port", str(port), "--no-browser"], capsys)
    assert code == 1 and err.count("\n") == 1 and f"port {port} on 127.0.0.1 is in use" in err


def test_cli_prints_the_url_serves_the_page_and_quits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder, _ = make_scenes(str(tmp_path), ["a.png"], preseg=False)
    proc = subprocess.Popen([sys.executable, "-m", "icas_ray", "label", folder, "--no-browser",
                             "--port", "0", "--method", "felzenszwalb", "-p", "min_segment_size=30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        page = requests.get(url, timeout=10)
        assert page.status_code == 200 and "<canvas id=\"view\"" in page.text
        js = requests.get(url + "static/app.js", timeout=10)
        assert js.status_code == 200 and "window.icas" in js.text
        state = requests.get(url + "api/state", timeout=10).json()
        assert state["method"] == "felzenszwalb" and [i["name"] for i in state["images"]] == ["a.png"]
        r = requests.post(url + "api/quit", json={}, headers=POST, timeout=10)
        assert r.json()["stopped"] is True
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_label_help_shows_both_commands_without_importing_ray_or_torch() -> None:
    code = ("import sys\n"
            "from click.testing import CliRunner\n"
            "from icas_ray.cli import cli\n"
            "r = CliRunner().invoke(cli, ['label', '--help'])\n"
            "o = CliRunner().invoke(cli, ['label', 'open', '--help'])\n"
            "print(r.output); print(o.output)\n"
            "print('HEAVY', sorted(m for m in ('ray', 'torch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert "open" in out and "export" in out and "--sam-url" in out and "--presegmented" in out
    assert "HEAVY []" in out


def test_label_export_writes_coco_that_pycocotools_decodes_to_the_masks(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from pycocotools import mask as mask_utils

    from icas_ray.label.export import write_masks
    from icas_ray.storage import Storage

    folder, _ = make_scenes(str(tmp_path), ["a.png", "b.png"], preseg=False)
    out = folder + "_segmented"
    q = quadrant_labels()
    write_masks(Storage(), out, "a", {(204, 0, 0): q == 1, (0, 170, 0): q == 4})
    labels = tmp_path / "classes.json"
    labels.write_text(json.dumps({"204,0,0": "plane", "0,170,0": "sky"}))
    target = tmp_path / "coco.json"
    code, stdout, err = _main(["label", "export", folder, "--format", "coco", "--labels",
                               str(labels), "--output", str(target)], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["output"] == str(target) and sorted(summary["categories"]) == ["plane", "sky"]
    coco = json.loads(target.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    got = {}
    for a in coco["annotations"]:
        rle = dict(a["segmentation"])
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode()
        got[names[a["category_id"]]] = mask_utils.decode(rle).astype(bool)
    assert np.array_equal(got["plane"], q == 1) and np.array_equal(got["sky"], q == 4)
    code, _, err = _main(["label", "export", folder, "--labels", str(tmp_path / "nope.json")],
                         capsys)
    assert code == 1 and err.count("\n") == 1


@pytest.mark.s3
def test_an_s3_folder_is_labelled_into_s3(s3_server, s3_bucket) -> None:  # type: ignore[no-untyped-def]
    import cv2
    from test_label_client_support import quadrant_image

    from icas_ray.client import LabelConfig, start_server

    storage = s3_server.storage()
    folder = f"s3://{s3_bucket}/photos"
    for name in ("a.png", "b.png"):
        storage.write_bytes(f"{folder}/{name}",
                            cv2.imencode(".png", quadrant_image()[..., ::-1])[1].tobytes())
    running = start_server(LabelConfig(folder, method="felzenszwalb", port=0), storage)
    try:
        state = requests.get(running.url + "api/state", timeout=30).json()
        assert [i["name"] for i in state["images"]] == ["a.png", "b.png"]
        assert state["output"] == f"s3://{s3_bucket}/photos_segmented"
        paint = np.zeros((H, W), np.uint16)
        paint[quadrant_labels() == 1] = 1
        r = requests.post(running.url + "api/images/a.png/save", headers=POST, timeout=30,
                          json=_paint_payload(paint, [[204, 0, 0]]))
        assert r.status_code == 200, r.text
        mask = f"s3://{s3_bucket}/photos_segmented/a_mask_(R:204,G:0,B:0).png"
        assert r.json()["files"] == [mask]
        m = cv2.imdecode(np.frombuffer(storage.read_bytes(mask), np.uint8), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(m > 127, quadrant_labels() == 1)
        session = json.loads(storage.read_text(
            f"s3://{s3_bucket}/photos_segmented/.icas_label/session.json"))
        assert list(session["done"]) == ["a.png"]
    finally:
        running.stop()


def test_icas_segment_results_in_the_output_are_found_without_presegmented(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from icas_ray.client import LabelConfig, start_server
    from icas_ray.client._codec import unpack_png

    folder, pre = make_scenes(str(tmp_path), ["a.png"])
    shutil.copytree(pre, folder + "_segmented")  # where `icas segment FOLDER` writes by default
    running = start_server(LabelConfig(folder, port=0))
    try:
        assert requests.get(running.url + "api/state", timeout=10).json()["presegmented"] == \
            "felzenszwalb"
        lab = requests.get(running.url + "api/images/0/labels", timeout=10)
        assert np.array_equal(unpack_png(lab.content), quadrant_labels())
    finally:
        running.stop()
