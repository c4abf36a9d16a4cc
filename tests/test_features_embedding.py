"""The embedding feature: parameters, lazy torch, backbones and autoencoder checkpoints,
cosine similarity (numpy against torch), near-duplicates closer than different photos."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from icas_ray.errors import ConfigError, ModelLoadError
from icas_ray.features import get_method, method_names
from icas_ray.features.embedding import (
    _HEADS,
    BACKBONES,
    EmbeddingMethod,
    _network,
    cosine_matrix,
    cosine_matrix_torch,
)
from icas_ray.images import ReadConfig, resize

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

PHOTOS = ["astronaut", "camera", "coffee", "chelsea", "rocket", "immunohistochemistry"]
RANDOM = {"backbone": "resnet18", "weights": "random", "device": "cpu"}


@pytest.fixture(scope="module")
def near_dups() -> tuple[list[np.ndarray], np.ndarray]:
    """Three near-duplicates (crop, small rotation, resize, brightness) of each of six photos."""
    from icas_ray.datasets import _load_photo, near_duplicate

    rng = np.random.default_rng(0)
    images, labels = [], []
    for i, name in enumerate(PHOTOS):
        photo = _load_photo(name)
        for _ in range(3):
            images.append(near_duplicate(photo, rng)[0])
            labels.append(i)
    return images, np.array(labels)


def _within_between(sim: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """Mean similarity of near-duplicate pairs, of pairs of different photos, and the share of
    images whose most similar other image is one of their near-duplicates."""
    same = labels[:, None] == labels[None]
    eye = np.eye(len(labels), dtype=bool)
    others = np.where(eye, -np.inf, sim)
    nearest = float(np.mean(labels[others.argmax(1)] == labels))
    return float(sim[same & ~eye].mean()), float(sim[~same].mean()), nearest


def _tiny_checkpoint(path: str, seed: int = 0) -> str:
    from icas_ray.train.checkpoint import save_checkpoint
    from icas_ray.train.models import build_model

    torch.manual_seed(seed)
    model = build_model("conv_small", 32, channels="16,32,64", embed_dim=128)
    uri = os.path.join(path, "best.pt")
    save_checkpoint(uri, model, epoch=1, loss=0.5)
    return uri


def test_registered_and_torch_stays_unimported():  # type: ignore[no-untyped-def]
    assert "embedding" in method_names()
    assert isinstance(get_method("EMBEDDING", RANDOM), EmbeddingMethod)
    code = ("import sys, icas_ray.features as f; m = f.get_method('embedding', "
            "{'backbone': 'resnet18', 'weights': 'random'}); "
            "print(sorted(k for k in ('torch', 'torchvision') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"  # parameters are checked without torch


@pytest.mark.parametrize("params,match", [
    ({}, "needs exactly one of --param checkpoint=URI .* or --param backbone=NAME"),
    ({"checkpoint": "x.pt", "backbone": "resnet18"}, "needs exactly one of"),
    ({"backbone": "resnet7", "weights": "random"},
     "unknown backbone 'resnet7': must be one of resnet18, resnet34, resnet50, .*vit_b_16"),
    ({"backbone": "resnet50"}, (r"backbone resnet50 needs weights: pass --param weights=FILE_OR_URI "
                                r".*torchvision.models.resnet50\(weights='DEFAULT'\).*"
                                r"or --param weights=random")),
    ({"checkpoint": "x.pt", "weights": "w.pth"}, "weights applies to a backbone only"),
    ({**RANDOM, "batch_size": 0}, "batch_size=0 of method embedding is invalid"),
    ({**RANDOM, "batch_size": "many"}, "batch_size='many' is not an integer"),
    ({**RANDOM, "device": "gpu"}, "device='gpu' .* expected auto, cpu, cuda or cuda:N"),
    ({**RANDOM, "size": 3}, "unknown parameter.*size.*valid parameters are backbone, batch_size"),
], ids=["neither", "both", "unknown-backbone", "no-weights", "weights-with-checkpoint",
        "batch-size", "batch-size-text", "device", "unknown-param"])
def test_params_are_checked_in_one_line(params, match):  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match) as e:
        get_method("embedding", params)
    assert "\n" not in str(e.value)


def test_missing_checkpoint_fails_at_construction(tmp_path):  # type: ignore[no-untyped-def]
    with pytest.raises(ModelLoadError, match="does not exist"):
        get_method("embedding", {"checkpoint": str(tmp_path / "none.pt")})


def test_backbone_names_exist_and_have_a_head():  # type: ignore[no-untyped-def]
    import torchvision.models as tvm

    assert set(BACKBONES) <= set(tvm.list_models(module=tvm))
    for name in BACKBONES:
        assert any(name.startswith(p) for p in _HEADS), name
    assert {"resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large",
            "efficientnet_b0", "vit_b_16"} <= set(BACKBONES)


def test_read_and_input_sizes(tmp_path):  # type: ignore[no-untyped-def]
    assert get_method("embedding", RANDOM).read.size == (224, 224)
    small = get_method("embedding", RANDOM, read=ReadConfig(size=(64, 48)))
    assert small.input_size == (64, 48)  # a CNN pools any size: the job's --size
    vit = get_method("embedding", {"backbone": "vit_b_16", "weights": "random"},
                     read=ReadConfig(size=(64, 64)))
    assert vit.input_size == (224, 224)  # position embeddings fix the size
    ckpt = get_method("embedding", {"checkpoint": _tiny_checkpoint(str(tmp_path))})
    assert ckpt.default_read.size == (224, 224) and ckpt.read.size == (32, 32)
    assert ckpt.input_size == (32, 32)


def test_cosine_numpy_equals_torch():  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 40)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = np.concatenate([a[:3], -a[3:4], rng.normal(size=(2, 40)).astype(np.float32) / 6.3])
    ref = (a.astype(np.float64) @ b.T.astype(np.float64)).clip(-1, 1)
    np.testing.assert_allclose(cosine_matrix(a, b), ref, atol=1e-6)
    np.testing.assert_allclose(cosine_matrix_torch(a, b), cosine_matrix(a, b), atol=1e-6)
    assert cosine_matrix(a, a).dtype == np.float32
    np.testing.assert_allclose(np.diag(cosine_matrix(a, a)), 1.0, atol=1e-6)
    assert cosine_matrix(a[:0], b).shape == (0, 6) and cosine_matrix_torch(a, b[:0]).shape == (7, 0)


def test_backbone_near_duplicates_closer_and_torch_equal(near_dups):  # type: ignore[no-untyped-def]
    images, labels = near_dups
    torch.manual_seed(0)
    m = get_method("embedding", RANDOM)
    feats = m.extract([resize(img, m.read.size) for img in images])
    emb = feats["embedding"]
    assert emb.shape == (len(images), 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = m.pairwise(feats, feats)
    np.testing.assert_allclose(m.pairwise_torch(feats, feats, "cpu"), sim, atol=1e-5)
    within, between, nearest = _within_between(sim, labels)
    assert within > between and nearest == 1.0, (within, between, nearest)
    # images of another size are brought to the input size; batches do not change the result
    other = get_method("embedding", {**RANDOM, "batch_size": 2})
    some = images[:5]
    resized = other.extract([resize(i, (224, 224)) for i in some])["embedding"]
    np.testing.assert_allclose(other.extract(some)["embedding"], resized, atol=1e-5)
    np.testing.assert_allclose(resized, emb[:5], atol=1e-4)
    # one network per process, shared by every instance (the batch size does not matter)
    assert _network(m.params, m.storage)[0] is _network(other.params, other.storage)[0]


def test_autoencoder_near_duplicates_closer(near_dups, tmp_path):  # type: ignore[no-untyped-def]
    images, labels = near_dups
    m = get_method("embedding", {"checkpoint": _tiny_checkpoint(str(tmp_path))})
    feats = m.extract([resize(img, (32, 32)) for img in images])
    assert feats["embedding"].shape == (len(images), 128)
    sim = m.pairwise(feats, feats)
    np.testing.assert_allclose(m.pairwise_torch(feats, feats, "cpu"), sim, atol=1e-5)
    within, between, _ = _within_between(sim, labels)
    assert within > between + 0.02, (within, between)
    # the features are the model's embed of [0, 1] images, L2-normalised
    from icas_ray.train.checkpoint import load_model

    model, _ = load_model(os.path.join(str(tmp_path), "best.pt"))
    x = torch.from_numpy(np.stack([resize(i, (32, 32)) for i in images[:3]])).permute(0, 3, 1, 2)
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(model.embed(x.float() / 255), dim=1).numpy()
    np.testing.assert_allclose(feats["embedding"][:3], ref, atol=1e-5)
    # a checkpoint rewritten in place (a resumed `icas train`) is loaded again
    os.utime(_tiny_checkpoint(str(tmp_path), seed=5), ns=(1, 1))
    again = m.extract([resize(img, (32, 32)) for img in images[:3]])["embedding"]
    assert not np.allclose(again, feats["embedding"][:3], atol=1e-3)


def test_backbone_weights_from_a_file(tmp_path):  # type: ignore[no-untyped-def]
    import torchvision

    torch.manual_seed(1)
    full = torchvision.models.mobilenet_v3_small(weights=None).eval()
    path = tmp_path / "mobilenet.pth"
    torch.save(full.state_dict(), path)  # a whole-model file: the classifier's keys are extra
    m = get_method("embedding", {"backbone": "mobilenet_v3_small", "weights": str(path)},
                   read=ReadConfig(size=(64, 64)))
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    got = m.extract(images)["embedding"]
    assert got.shape == (3, 576)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    full.classifier = torch.nn.Identity()
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(full((x - mean) / std), dim=1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)

    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    wrong = get_method("embedding", {"backbone": "mobilenet_v3_small", "weights": str(bad)})
    with pytest.raises(ModelLoadError, match="do not fit mobilenet_v3_small: missing features.0"):
        wrong.extract(images)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="corrupt or not a torch state_dict.*weights=random"):
        get_method("embedding", {"backbone": "mobilenet_v3_small", "weights": str(junk)}).extract(images)
    with pytest.raises(ModelLoadError, match="cannot be read"):
        get_method("embedding", {"backbone": "mobilenet_v3_small",
                                 "weights": str(tmp_path / "none.pth")}).extract(images)


def test_empty_batch():  # type: ignore[no-untyped-def]
    m = get_method("embedding", RANDOM)
    empty = m.extract([])
    assert empty["embedding"].shape[0] == 0
    assert m.pairwise(empty, {"embedding": np.ones((2, 512), np.float32)}).shape == (0, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "mnasnet0_5", "regnet_x_400mf", "densenet121",
                                  "convnext_tiny", "swin_t", "vit_b_16", "efficientnet_b0",
                                  "mobilenet_v2", "resnext50_32x4d"])
def test_every_family_gives_pooled_features(name):  # type: ignore[no-untyped-def]
    m = get_method("embedding", {"backbone": name, "weights": "random", "device": "cpu"},
                   read=ReadConfig(size=(64, 64)))
    w, h = m.input_size
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    emb = m.extract([image])["embedding"]
    assert emb.ndim == 2 and emb.shape[1] >= 400
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_equals_cpu(near_dups):  # type: ignore[no-untyped-def]
    images, _ = near_dups
    cpu = get_method("embedding", RANDOM)
    gpu = get_method("embedding", {**RANDOM, "device": "cuda"})
    _network(gpu.params, gpu.storage)[0].load_state_dict(_network(cpu.params, cpu.storage)[0].state_dict())
    a, b = cpu.extract(images), gpu.extract(images)
    np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-3)
    np.testing.assert_allclose(gpu.pairwise_torch(b, b, "cuda"), gpu.pairwise(b, b), atol=1e-5)
