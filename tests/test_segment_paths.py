"""``icas segment`` writes only inside ``--output``, whatever the input names are (item 8).

A local file may be called ``x\\..\\..\\..\\ESCAPED.png`` (a backslash is an ordinary character
on POSIX) and an S3 key may hold ``../``: their label maps and previews must land inside the
output, and a rerun must find them done.
"""

from __future__ import annotations

import json
import os
import posixpath

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from icas_ray.cli import cli
from icas_ray.pipeline.segment_job import PresegmentConfig, presegment
from icas_ray.segment import PresegLayout, read_labels
from icas_ray.storage import Storage

EVIL_LOCAL = "x\\..\\..\\..\\ESCAPED.png"
# Literal S3 keys under the input prefix "photos/" that climb out when '..' is resolved.
EVIL_KEYS = ["photos/../../ESCAPED.png", "photos/x/../../../../ESC2.png", "photos/y\\..\\..\\E3.png"]


def _png(seed: int = 0, side: int = 24) -> bytes:
    img = np.zeros((side, side, 3), np.uint8)
    img[:, side // 2:] = (200, 60 + seed, 30)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _files_under(root: str) -> set[str]:
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


@pytest.mark.timeout(240)
def test_local_backslash_name_stays_inside_output(ray_session, tmp_path) -> None:
    photos = tmp_path / "a" / "b" / "photos"
    photos.mkdir(parents=True)
    (photos / "good.png").write_bytes(_png(0))
    (photos / EVIL_LOCAL).write_bytes(_png(1))
    out = str(tmp_path / "a" / "b" / "out")
    before = _files_under(str(tmp_path))
    config = PresegmentConfig(input=str(photos), method="graph", output=out,
                              params={"min_segment_size": 10})
    s = presegment(config)
    assert (s.images, s.segmented, s.failed) == (2, 2, 0), s.errors
    new = _files_under(str(tmp_path)) - before
    outside = sorted(f for f in new if not f.startswith(out + os.sep))
    assert outside == [], f"written outside --output: {outside}"
    assert all(os.path.realpath(f).startswith(os.path.realpath(out) + os.sep) for f in new)
    # The result is stored under the sanitised name and found again by path and by a rerun.
    layout = PresegLayout(str(photos), out, "graph")
    evil_uri = os.path.join(str(photos), EVIL_LOCAL)
    assert read_labels(Storage(), layout, evil_uri) is not None
    assert os.path.exists(os.path.join(out, "graph", "x", "%2E%2E", "%2E%2E", "%2E%2E",
                                       "ESCAPED.png.labels.png"))
    with open(os.path.join(out, "graph", "manifest.jsonl")) as fh:
        manifest = [json.loads(line) for line in fh]
    assert {m["uri"]: m["status"] for m in manifest} == {
        os.path.join(str(photos), "good.png"): "ok", evil_uri: "ok"}
    row = next(m for m in manifest if m["uri"] == evil_uri)
    assert row["labels_uri"].startswith(os.path.join(out, "graph") + os.sep)
    s2 = presegment(config)
    assert (s2.segmented, s2.skipped, s2.failed) == (0, 2, 0)
    assert _files_under(str(tmp_path)) - before == new, "a rerun writes no new file"


@pytest.mark.timeout(240)
def test_s3_keys_with_dotdot_stay_inside_output(ray_session, s3_server, s3_bucket: str) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="photos/good.png", Body=_png(0))
    for i, key in enumerate(EVIL_KEYS):
        client.put_object(Bucket=s3_bucket, Key=key, Body=_png(i + 1))
    root, out = f"s3://{s3_bucket}/photos", f"s3://{s3_bucket}/out"
    args = ["segment", root, "--method", "graph", "-p", "min_segment_size=10", "--output", out,
            *s3_server.cli_options()]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert (summary["images"], summary["segmented"], summary["failed"]) == (4, 4, 0), summary
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    written = [k for k in keys if k != "photos/good.png" and k not in EVIL_KEYS]
    assert written, keys
    for key in written:
        # Literal keys and the keys a sync to disk would resolve them to: both inside out/graph/.
        assert ".." not in key.replace("\\", "/").split("/"), key
        assert posixpath.normpath(key).startswith("out/graph/"), key
    storage = s3_server.storage()
    layout = PresegLayout(root, out, "graph")
    for key in EVIL_KEYS:
        assert read_labels(storage, layout, f"s3://{s3_bucket}/{key}") is not None, key
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["skipped"] == 4
