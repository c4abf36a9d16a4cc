"""``icas segment``: the Ray Data pre-segmentation job (local and S3), the CLI, the preview."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from skimage import data

from icas_ray.cli import cli
from icas_ray.errors import ConfigError, InputError
from icas_ray.images import decode
from icas_ray.pipeline.segment_job import PresegmentConfig, presegment
from icas_ray.segment import PresegLayout, decode_labels, encode_labels, read_labels, segment
from icas_ray.segment.store import LABELS_NPZ, LABELS_PNG
from icas_ray.storage import Storage

PHOTOS = {"astronaut.png": "astronaut", "coffee.jpg": "coffee", "sub/chelsea.png": "chelsea",
          "sub/deeper/rocket.jpg": "rocket"}


def _png(name: str, side: int = 72) -> bytes:
    img = getattr(data, name)()
    h, w = img.shape[:2]
    img = cv2.resize(img, (side, max(8, round(h * side / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return buf.tobytes()


def _write_photos(storage: Storage, root: str) -> None:
    for rel, name in PHOTOS.items():
        storage.write_bytes(storage.join(root, rel) if "://" not in root else f"{root}/{rel}", _png(name))
    bad = storage.join(root, "broken.jpg") if "://" not in root else f"{root}/broken.jpg"
    storage.write_bytes(bad, b"\xff\xd8\xff not really a jpeg")


@pytest.fixture
def photos(tmp_path) -> str:
    root = str(tmp_path / "photos")
    _write_photos(Storage(), root)
    return root


def test_label_maps_are_stored_losslessly() -> None:
    small = np.arange(6 * 7, dtype=np.int32).reshape(6, 7) * 1000
    data_, suffix = encode_labels(small)
    assert suffix == LABELS_PNG and data_[:4] == b"\x89PNG"
    assert np.array_equal(decode_labels(data_), small)
    png = cv2.imdecode(np.frombuffer(data_, np.uint8), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint16, "a 16-bit PNG"
    big = small.copy()
    big[0, 0] = 70_000
    data_, suffix = encode_labels(big)
    assert suffix == LABELS_NPZ and np.array_equal(decode_labels(data_), big)
    flat = np.ones((512, 512), np.int32)
    assert len(encode_labels(flat)[0]) < 2_000, "flat segments compress"


@pytest.mark.timeout(240)
def test_presegment_local_folder_and_rerun(ray_session, photos: str) -> None:
    config = PresegmentConfig(input=photos, method="felzenszwalb", params={"min_segment_size": 20})
    s = presegment(config)
    assert (s.images, s.segmented, s.skipped, s.failed) == (5, 4, 0, 1)
    assert s.errors == [{"uri": os.path.join(photos, "broken.jpg"), "error": s.errors[0]["error"]}]
    assert "truncated" in s.errors[0]["error"] or "cannot identify" in s.errors[0]["error"]
    out = photos + "_segmented"
    layout = PresegLayout(photos, out, "felzenszwalb")
    storage = Storage()
    for rel in PHOTOS:
        uri = os.path.join(photos, rel)
        stored = read_labels(storage, layout, uri)
        expected = segment(decode(storage.read_bytes(uri)), "felzenszwalb", min_segment_size=20)
        assert np.array_equal(stored, expected), rel
        assert os.path.exists(os.path.join(out, "felzenszwalb", rel + ".preview.jpg"))
    summary = json.loads(open(os.path.join(out, "felzenszwalb", "summary.json")).read())
    assert summary["segmented"] == 4 and summary["errors"][0]["uri"].endswith("broken.jpg")
    manifest = [json.loads(line) for line in open(os.path.join(out, "felzenszwalb", "manifest.jsonl"))]
    assert [m["status"] for m in manifest].count("ok") == 4 and len(manifest) == 5
    params = json.loads(open(os.path.join(out, "felzenszwalb", "params.json")).read())
    assert params["params"]["min_segment_size"] == 20

    # A rerun skips what is done (the broken file is tried again) ...
    mtime = os.path.getmtime(os.path.join(out, "felzenszwalb", "astronaut.png.labels.png"))
    s2 = presegment(config)
    assert (s2.segmented, s2.skipped, s2.failed) == (0, 4, 1)
    assert os.path.getmtime(os.path.join(out, "felzenszwalb", "astronaut.png.labels.png")) == mtime
    # ... and segments only new images.
    storage.write_bytes(os.path.join(photos, "new.png"), _png("camera"))
    s3 = presegment(config)
    assert (s3.segmented, s3.skipped, s3.failed) == (1, 4, 1)

    # Other parameters need --overwrite.
    other = PresegmentConfig(input=photos, method="felzenszwalb", params={"min_segment_size": 50})
    with pytest.raises(ConfigError, match=r"holds labels made with other parameters.*--overwrite"):
        presegment(other)


@pytest.mark.timeout(240)
def test_cli_segment_on_s3(ray_session, s3_server, s3_bucket: str) -> None:
    storage = s3_server.storage()
    root = f"s3://{s3_bucket}/photos"
    _write_photos(storage, root)
    args = ["segment", root, "--method", "superpixel", "-p", "region_size=16",
            "--output", f"s3://{s3_bucket}/segs", *s3_server.cli_options()]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert (summary["segmented"], summary["failed"]) == (4, 1)
    keys = sorted(o["Key"] for o in s3_server.client().list_objects_v2(
        Bucket=s3_bucket, Prefix="segs/")["Contents"])
    assert "segs/superpixel/sub/deeper/rocket.jpg.labels.png" in keys
    assert "segs/superpixel/sub/chelsea.png.preview.jpg" in keys
    assert "segs/superpixel/summary.json" in keys
    layout = PresegLayout(root, f"s3://{s3_bucket}/segs", "superpixel")
    labels = read_labels(storage, layout, f"{root}/coffee.jpg")
    expected = segment(decode(storage.read_bytes(f"{root}/coffee.jpg")), "superpixel", region_size=16)
    assert np.array_equal(labels, expected)
    # Rerun through the explicit subcommand: everything done is skipped.
    r = CliRunner().invoke(cli, ["segment", "run", *args[1:]])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["skipped"] == 4


def test_cli_errors_are_one_line() -> None:
    runner = CliRunner()
    r = runner.invoke(cli, ["segment", "x", "--method", "watershed"])
    assert r.exit_code == 2 and "'watershed' is not one of" in r.output and "superpixel" in r.output
    r = runner.invoke(cli, ["segment", "x", "--method", "superpixel", "-p", "regionsize=3"])
    assert r.exit_code == 1
    assert str(r.exception) == ("unknown parameter 'regionsize' for method superpixel: valid "
                                "parameters are algorithm, iterations, region_size, ruler")
    r = runner.invoke(cli, ["segment", "x", "--method", "superpixel", "-p", "region_size"])
    assert r.exit_code == 2 and "is not KEY=VALUE" in r.output
    r = runner.invoke(cli, ["segment", "x", "--method", "sam"])
    assert r.exit_code == 2 and "--method sam needs --sam-url" in r.output


def test_cli_missing_input_is_an_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        presegment(PresegmentConfig(input=str(tmp_path / "nope"), method="graph"))


def test_entry_point_prints_one_line_error(tmp_path) -> None:
    icas = os.path.join(os.path.dirname(sys.executable), "icas")
    p = subprocess.run([icas, "segment", str(tmp_path), "--method", "kmeans", "-p", "k=0"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stderr.strip() == "Error: kmeans parameter k=0 is invalid: expected >= 1"


def test_cli_methods_lists_parameters() -> None:
    r = CliRunner().invoke(cli, ["segment", "methods", "--json"])
    rows = {row["method"]: row for row in json.loads(r.stdout)}
    assert len(rows) == 10 and rows["chanvese"]["aliases"] == ["chanvase"]
    assert rows["superpixel"]["params"]["region_size"] == 40
    assert "backend" not in rows["sam"]["params"]
    assert rows["superpixel"]["min_size"] == {"side": 40, "pixels": 1}
    assert rows["kmeans"]["min_size"] == {"side": 1, "pixels": 15}


@pytest.mark.timeout(120)
def test_cli_preview_writes_every_method(tmp_path) -> None:
    image = tmp_path / "astronaut.png"
    image.write_bytes(_png("astronaut", 96))
    out = tmp_path / "sheet.png"
    r = CliRunner().invoke(cli, ["segment", "preview", str(image), "--output", str(out),
                                 "--panel", "96", "-p", "superpixel.region_size=12"])
    assert r.exit_code == 0, r.output
    sheet = cv2.imread(str(out))
    # The image and the nine methods that need no SAM backend, four panels a row.
    assert sheet.shape == (3 * (96 + 22), 4 * 96, 3)
    r = CliRunner().invoke(cli, ["segment", "preview", str(image), "--output", str(out),
                                 "-p", "region_size=12"])
    assert r.exit_code == 2 and "names no method" in r.output


def test_plan_with_relative_paths_and_output_inside_input(photos: str, monkeypatch) -> None:
    from icas_ray.pipeline.segment_job import plan_presegment

    monkeypatch.chdir(os.path.dirname(photos))
    storage = Storage()
    plan = plan_presegment(PresegmentConfig(input="photos", method="graph",
                                            output="photos/segs"), storage)
    assert plan.layout.input == photos and plan.layout.output == os.path.join(photos, "segs")
    rels = sorted(plan.layout.relative(f.uri) for f in plan.todo)
    assert rels == sorted([*PHOTOS, "broken.jpg"])
    # Stored label maps inside the input are neither inputs nor redone.
    storage.write_bytes(plan.layout.labels_uri(os.path.join(photos, "sub/chelsea.png")), b"x")
    storage.write_bytes(plan.layout.preview_uri(os.path.join(photos, "sub/chelsea.png")), b"x")
    plan = plan_presegment(PresegmentConfig(input="photos/", method="graph",
                                            output="photos/segs"), storage)
    assert len(plan.files) == 5 and plan.done == {"sub/chelsea.png"} and len(plan.todo) == 4
    with pytest.raises(ConfigError, match="is the input folder"):
        plan_presegment(PresegmentConfig(input="photos", method="graph", output="./photos"), storage)
    with pytest.raises(ConfigError, match="method sam needs a SAM backend"):
        plan_presegment(PresegmentConfig(input="photos", method="sam"), storage)


def test_preview_of_a_truncated_jpeg_is_one_line(tmp_path) -> None:
    """Item 10: a truncated JPEG is the user's file, not a bug: one line, exit 1."""
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    image = tmp_path / "cut.jpg"
    image.write_bytes(jpg.tobytes()[: len(jpg) // 2])
    out = tmp_path / "sheet.png"
    icas = os.path.join(os.path.dirname(sys.executable), "icas")
    p = subprocess.run([icas, "segment", "preview", str(image), "--output", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith("Error: ") and str(image) in p.stderr and "truncated" in p.stderr
    assert not out.exists()
