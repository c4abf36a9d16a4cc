"""The SAM Ray Serve app on loopback with a tiny random SAM: API, cache, errors, embeddings.

One module-scoped pair of apps (local files; S3 on the loopback server) shares the session Ray;
Serve is shut down at the end of the module.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import requests

from icas_ray.serve._codec import decode_label_png, decode_mask_png, decode_rle

pytestmark = pytest.mark.timeout(300)
TOKEN = "s3cret"
AUTO = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (30 + 7 * seed) % 200, np.uint8)
    img[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = (220, 80, 40)
    return np.clip(img + rng.integers(0, 25, img.shape), 0, 255).astype(np.uint8)


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Apps:
    url: str
    s3_url: str
    folder: str
    s3_folder: str
    checkpoint: str
    store: str
    s3_store: str
    storage_options: dict


@pytest.fixture(scope="module")
def apps(ray_session, s3_server, tmp_path_factory) -> Iterator[Apps]:  # type: ignore[no-untyped-def]
    from ray import serve

    from icas_ray.sam import build_sam, save_checkpoint
    from icas_ray.serve.app import build_app
    from icas_ray.serve.args import SamServeArgs
    from icas_ray.serve.embed import EmbedConfig, embed_folder

    tmp = tmp_path_factory.mktemp("serve")
    storage = s3_server.storage()
    bucket = "serve-test"
    s3_server.client().create_bucket(Bucket=bucket)
    model = build_sam("tiny", seed=7, device="cpu").model
    ckpt = str(tmp / "tiny.pth")
    save_checkpoint(model, ckpt)
    s3_ckpt = f"s3://{bucket}/models/tiny.pth"
    save_checkpoint(model, s3_ckpt, storage)

    folder = tmp / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.png").write_bytes(_png(_image(64 + 8 * i, 96, seed=10 + i)))
    (folder / "broken.png").write_bytes(b"not a png")
    s3_folder = f"s3://{bucket}/photos"
    for i in range(2):
        storage.write_bytes(f"{s3_folder}/q{i}.png", _png(_image(70, 50, seed=20 + i)))

    store, s3_store = str(tmp / "store"), f"s3://{bucket}/store"
    embed_folder(str(folder), EmbedConfig("tiny", ckpt, store, batch_size=2))
    embed_folder(s3_folder, EmbedConfig("tiny", s3_ckpt, s3_store), storage=storage)

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    opts = {"endpoint_url": s3_server.endpoint, "key": "testing", "secret": "testing"}
    serve.run(build_app(SamServeArgs(
        model_type="tiny", checkpoint=ckpt, num_cpus=0.5, image_store=str(tmp / "images"),
        embedding_store=store, token=TOKEN, max_image_pixels=200 * 200,
        allowed_uri_prefixes=[str(folder)], name="sam-local")),
        name="sam-local", route_prefix="/")
    serve.run(build_app(SamServeArgs(
        model_type="tiny", checkpoint=s3_ckpt, num_cpus=0.25, storage_options=opts,
        image_store=f"s3://{bucket}/images", embedding_store=s3_store,
        allowed_uri_prefixes=[s3_folder], name="sam-s3")),
        name="sam-s3", route_prefix="/s3")
    try:
        yield Apps(url=f"http://127.0.0.1:{port}", s3_url=f"http://127.0.0.1:{port}/s3",
                   folder=str(folder), s3_folder=s3_folder, checkpoint=ckpt, store=store,
                   s3_store=s3_store, storage_options=opts)
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def client(apps: Apps):  # type: ignore[no-untyped-def]
    from icas_ray.serve.client import SamClient

    with SamClient(apps.url, token=TOKEN, retries=1) as c:
        yield c


@pytest.fixture(scope="module")
def image_id(client) -> str:  # type: ignore[no-untyped-def]
    return str(client.register(_png(_image(100, 150, seed=1))))


def test_serve_listens_on_loopback_only(client) -> None:  # type: ignore[no-untyped-def]
    """With the app up (proxy, controller, replicas), nothing of Ray listens beyond 127.0.0.1."""
    from conftest import not_loopback, ray_listening_addresses

    assert not not_loopback(ray_listening_addresses())


def test_health_and_info(client) -> None:  # type: ignore[no-untyped-def]
    assert client.health() == {"status": "ok"}
    info = client.info()
    assert info["model_type"] == "tiny" and info["model_id"].startswith("tiny-")
    assert info["embedding_shape"] == [32, 16, 16]


def test_register_then_predict_does_not_rerun_encoder(client, image_id) -> None:  # type: ignore[no-untyped-def]
    again = client._request("POST", "/images", image_id=image_id, data=_png(_image(100, 150, seed=1)),
                            headers={"Content-Type": "application/octet-stream"})
    assert again["id"] == image_id and (again["width"], again["height"]) == (150, 100)
    runs = client.info()["encoder_runs"]
    first = client.predict(image_id, points=[[75, 50]], labels=[1])
    second = client.predict(image_id, points=[[20, 20], [75, 50]], labels=[0, 1])
    assert client.info()["encoder_runs"] == runs
    assert first["embedding"] == second["embedding"] == "memory"
    mask = decode_mask_png(first["mask"]["png"])
    assert mask.shape == (100, 150)
    assert np.array_equal(mask, decode_rle(first["mask"]["rle"]))
    assert first["mask"]["area"] == int(mask.sum())


def test_predict_one_box(client, image_id) -> None:  # type: ignore[no-untyped-def]
    out = client.predict(image_id, boxes=[[30, 20, 120, 80]])
    assert len(out["masks"]) == 1 and decode_mask_png(out["mask"]["png"]).shape == (100, 150)


def test_predict_two_boxes_merged(client, image_id) -> None:  # type: ignore[no-untyped-def]
    out = client.predict(image_id, boxes=[[0, 0, 70, 50], [80, 50, 149, 99]],
                         points=[[10, 10], [100, 70]], labels=[1, 1])
    per_box = [decode_mask_png(m["png"]) for m in out["masks"]]
    assert len(per_box) == 2
    assert np.array_equal(decode_mask_png(out["mask"]["png"]), per_box[0] | per_box[1])


def test_multimask(client, image_id) -> None:  # type: ignore[no-untyped-def]
    out = client.predict(image_id, points=[[75, 50]], multimask=True)
    scores = [m["score"] for m in out["masks"]]
    assert len(scores) == 3 and out["score"] == pytest.approx(max(scores))


def test_automatic_label_map(client, image_id) -> None:  # type: ignore[no-untyped-def]
    out = client.automatic(image_id, **AUTO)
    labels = decode_label_png(out["labels_png"])
    assert labels.shape == (100, 150)
    ids = np.unique(labels[labels > 0])
    assert out["num_segments"] == len(ids) >= 1
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))
    assert len(out["segments"]) >= len(ids) and "rle" in out["segments"][0]


def test_client_is_a_sam_backend(client) -> None:  # type: ignore[no-untyped-def]
    from icas_ray.sam_protocol import SamBackend

    assert isinstance(client, SamBackend)
    img = _image(60, 80, seed=3)
    mask = client.predict_mask(img, points=np.array([[40, 30]]), point_labels=np.array([1]))
    assert mask.shape == (60, 80) and mask.dtype == bool
    assert client.automatic_labels(img, **AUTO).shape == (60, 80)


def test_register_by_uri(client, apps) -> None:  # type: ignore[no-untyped-def]
    from icas_ray.sam import content_id

    path = os.path.join(apps.folder, "p1.png")
    with open(path, "rb") as f:
        assert client.register_uri(path) == content_id(f.read())


def _post(url: str, path: str, *, token: str | None = TOKEN, **kw) -> requests.Response:  # type: ignore[no-untyped-def]
    headers = kw.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(url + path, headers=headers, timeout=60, **kw)


@pytest.mark.parametrize("case, status, match", [
    ("unknown-id", 404, "unknown image id"),
    ("malformed-id", 404, "unknown image id"),
    ("point-outside", 422, "outside the 150x100 image"),
    ("box-inverted", 422, "inverted"),
    ("label-3", 422, "must be 1"),
    ("unknown-field", 422, "unknown field"),
    ("bad-json", 400, "not valid JSON"),
    ("not-an-image", 415, "not a decodable image"),
    ("too-large", 413, "pixel limit"),
    ("empty-body", 400, "empty body"),
    ("uri-missing", 404, "does not exist"),
    ("uri-outside", 403, "not under a root the operator allowed"),
    ("automatic-param", 422, "unknown automatic-mask parameter"),
    ("no-token", 401, "bearer token"),
    ("wrong-token", 401, "bearer token"),
])
def test_bad_requests_get_4xx(apps, image_id, case, status, match) -> None:  # type: ignore[no-untyped-def]
    url = apps.url
    pred = f"/images/{image_id}/predict"
    octet = {"Content-Type": "application/octet-stream"}
    r = {
        "unknown-id": lambda: _post(url, f"/images/{'0' * 64}/predict", json={"points": [[1, 1]]}),
        "malformed-id": lambda: _post(url, "/images/xyz/predict", json={"points": [[1, 1]]}),
        "point-outside": lambda: _post(url, pred, json={"points": [[151, 1]], "labels": [1]}),
        "box-inverted": lambda: _post(url, pred, json={"boxes": [[50, 50, 10, 10]]}),
        "label-3": lambda: _post(url, pred, json={"points": [[1, 1]], "labels": [3]}),
        "unknown-field": lambda: _post(url, pred, json={"pointz": [[1, 1]]}),
        "bad-json": lambda: _post(url, pred, data=b"{nope", headers={"Content-Type": "application/json"}),
        "not-an-image": lambda: _post(url, "/images", data=b"hello world", headers=octet),
        "too-large": lambda: _post(url, "/images", data=_png(_image(300, 300, 0)), headers=octet),
        "empty-body": lambda: _post(url, "/images", data=b"", headers=octet),
        "uri-missing": lambda: _post(url, "/images",
                                     json={"uri": os.path.join(apps.folder, "missing.png")}),
        "uri-outside": lambda: _post(url, "/images", json={"uri": "/etc/passwd"}),
        "automatic-param": lambda: _post(url, f"/images/{image_id}/automatic", json={"bogus": 1}),
        "no-token": lambda: _post(url, pred, token=None, json={"points": [[1, 1]]}),
        "wrong-token": lambda: _post(url, pred, token="nope", json={"points": [[1, 1]]}),
    }[case]()
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert match in message and "\n" not in message
    # the replica is still there and answering
    ok = _post(url, pred, json={"points": [[5, 5]], "labels": [1], "formats": ["png"]})
    assert ok.status_code == 200


def test_precomputed_embeddings_answer_without_encoder(client, apps) -> None:  # type: ignore[no-untyped-def]
    from icas_ray.serve.store import EmbeddingStore

    assert len(EmbeddingStore(apps.store).ids()) == 3  # the broken file is not embedded
    runs = client.info()["encoder_runs"]
    with open(os.path.join(apps.folder, "p2.png"), "rb") as f:
        data = f.read()
    out = client._request("POST", "/images", data=data, headers={"Content-Type": "application/octet-stream"})
    assert out["embedding"] == "store"
    pred = client.predict(out["id"], points=[[40, 30]])
    assert pred["embedding"] == "memory" and client.info()["encoder_runs"] == runs


def test_embed_rerun_skips_stored_via_cli(apps) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from icas_ray.cli import cli

    result = CliRunner().invoke(cli, ["serve", "embed", apps.folder, "--checkpoint", apps.checkpoint,
                                      "--model-type", "tiny", "--output", apps.store])
    assert result.exit_code == 0, result.output
    assert "4 images: 0 embedded, 3 already stored, 1 failed" in result.output


def test_embed_refuses_store_of_other_model(apps, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from icas_ray.errors import ConfigError
    from icas_ray.serve.embed import EmbedConfig, embed_folder

    with pytest.raises(ConfigError, match="holds embeddings of"):
        embed_folder(apps.folder, EmbedConfig("tiny", None, apps.store))


@pytest.mark.s3
def test_s3_checkpoint_and_store(apps) -> None:  # type: ignore[no-untyped-def]
    from icas_ray.serve.client import SamClient
    from icas_ray.storage import Storage, StorageOptions

    storage = Storage(StorageOptions(endpoint_url=apps.storage_options["endpoint_url"],
                                     extra={"key": "testing", "secret": "testing"}))
    data = storage.read_bytes(f"{apps.s3_folder}/q1.png")
    with SamClient(apps.s3_url, retries=1) as c:
        info = c.info()
        assert info["checkpoint"].startswith("s3://") and info["encoder_runs"] == 0
        out = c._request("POST", "/images", data=data, headers={"Content-Type": "application/octet-stream"})
        assert out["embedding"] == "store"
        pred = c.predict(out["id"], boxes=[[5, 5, 40, 60]])
        assert decode_mask_png(pred["mask"]["png"]).shape == (70, 50)
        uri_id = c.register_uri(f"{apps.s3_folder}/q0.png")
        assert c.info()["encoder_runs"] == 0 and len(uri_id) == 64


def test_reconfigure_user_config(apps, client, image_id) -> None:  # type: ignore[no-untyped-def]
    from ray import serve

    from icas_ray.serve.app import DEPLOYMENT_NAME

    handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name="sam-local")
    assert handle is not None
    assert json.dumps(client.info()["settings"])  # tunables are reported
