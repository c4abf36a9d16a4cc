"""The in-process SAM: registry, checkpoints (local and S3), prompts, cache, automatic masks."""

from __future__ import annotations

import numpy as np
import pytest

from icas_ray.errors import ConfigError, InputError, ModelLoadError
from icas_ray.sam import (
    SAM_SPECS,
    AutomaticParams,
    EmbeddingCache,
    LocalSam,
    SamEmbedding,
    build_sam,
    labels_from_masks,
    save_checkpoint,
    validate_prompts,
)

AUTO = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def _image(h: int = 90, w: int = 120, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 40, np.uint8)
    img[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = (200, 60, 60)
    return np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sam() -> LocalSam:
    return LocalSam.from_checkpoint("tiny", seed=0, device="cpu")


def test_registry_covers_the_real_models_and_tiny() -> None:
    assert {"vit_b", "vit_l", "vit_h", "tiny"} <= set(SAM_SPECS)
    assert SAM_SPECS["vit_b"].embedding_shape == (256, 64, 64)
    assert SAM_SPECS["tiny"].embedding_shape == (32, 16, 16)
    with pytest.raises(ConfigError, match="must be one of .*tiny.*vit_b"):
        build_sam("vit_x")


def test_checkpoint_round_trip_local(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = build_sam("tiny", seed=1, device="cpu")
    path = str(tmp_path / "tiny.pth")
    save_checkpoint(a.model, path)
    b = build_sam("tiny", path, device="cpu", seed=2)
    assert b.model_id.startswith("tiny-") and b.model_id != "tiny-random"
    for (k, v), (_, w) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert np.array_equal(v.numpy(), w.numpy()), k


@pytest.mark.s3
def test_checkpoint_from_s3(s3_server, s3_bucket) -> None:  # type: ignore[no-untyped-def]
    storage = s3_server.storage()
    a = build_sam("tiny", seed=3, device="cpu")
    uri = f"s3://{s3_bucket}/models/tiny.pth"
    save_checkpoint(a.model, uri, storage)
    b = build_sam("tiny", uri, storage=storage, device="cpu")
    w = "mask_decoder.iou_prediction_head.layers.0.weight"
    assert np.array_equal(a.model.state_dict()[w].numpy(), b.model.state_dict()[w].numpy())
    with pytest.raises(ModelLoadError, match="does not exist"):
        build_sam("tiny", f"s3://{s3_bucket}/models/missing.pth", storage=storage)


def test_checkpoint_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    with pytest.raises(ModelLoadError, match="does not exist"):
        build_sam("tiny", str(tmp_path / "nope.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a PyTorch state dict"):
        build_sam("tiny", str(junk))
    state = build_sam("tiny", seed=0).model.state_dict()
    state["image_encoder.pos_embed"] = torch.zeros(1, 8, 8, 64)
    del state["mask_decoder.iou_token.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(state, str(bad))
    with pytest.raises(ModelLoadError, match=r"does not fit model type 'tiny'.*shape mismatch"):
        build_sam("tiny", str(bad))


def test_predict_points_box_boxes_multimask(sam: LocalSam) -> None:
    img = _image()
    emb = sam.embedding(img)
    runs = sam.encoder_runs
    p = sam.predict(emb, points=[[60, 45]], point_labels=[1])
    assert p.mask.shape == (90, 120) and p.mask.dtype == bool and p.masks.shape[0] == 1
    one = sam.predict(emb, boxes=[[10, 10, 60, 50]])
    assert one.masks.shape == (1, 90, 120)
    multi = sam.predict(emb, points=[[60, 45]], multimask=True)
    assert multi.masks.shape == (3, 90, 120) and multi.score == pytest.approx(multi.scores.max())
    two = sam.predict(emb, boxes=[[0, 0, 50, 40], [60, 45, 119, 89]],
                      points=[[10, 10], [100, 70], [55, 42]], point_labels=[1, 0, 1])
    assert two.masks.shape == (2, 90, 120)
    assert np.array_equal(two.mask, two.masks[0] | two.masks[1])
    assert sam.encoder_runs == runs  # prompts never run the encoder
    sam.predict_mask(img, points=np.array([[5, 5]]), point_labels=np.array([1]))
    assert sam.encoder_runs == runs  # the LRU had it


@pytest.mark.parametrize("kwargs, match", [
    ({}, "no prompt"),
    ({"points": [[500, 1]]}, "outside the 120x90 image"),
    ({"points": [[-1, 1]]}, "outside"),
    ({"points": [[1, 2, 3]]}, "expected a list like"),
    ({"points": [[1, 2]], "point_labels": [2]}, "must be 1 .* or 0"),
    ({"points": [[1, 2]], "point_labels": [1, 1]}, "1 points but 2 labels"),
    ({"boxes": [[50, 10, 20, 40]]}, "inverted"),
    ({"boxes": [[0, 0, 200, 40]]}, "outside"),
    ({"points": [[float("nan"), 1]]}, "NaN"),
], ids=["none", "x-too-big", "negative", "3-coords", "label-2", "label-count", "inverted-box",
        "box-outside", "nan"])
def test_bad_prompts(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        validate_prompts((90, 120), **kwargs)


def test_automatic_labels_and_params(sam: LocalSam) -> None:
    img = _image(seed=1)
    labels = sam.automatic_labels(img, **AUTO)
    assert labels.shape == img.shape[:2] and labels.dtype == np.int32
    ids = np.unique(labels[labels > 0])
    assert len(ids) >= 1 and np.array_equal(ids, np.arange(1, len(ids) + 1))
    runs = sam.encoder_runs
    sam.automatic_labels(img, **AUTO)
    assert sam.encoder_runs == runs
    with pytest.raises(ConfigError, match="unknown automatic-mask parameter.*points_per_side"):
        AutomaticParams.from_mapping({"points_per_sid": 4})
    with pytest.raises(ConfigError, match="out of range"):
        AutomaticParams(pred_iou_thresh=2)


def test_embedding_bytes_round_trip_and_cache(sam: LocalSam) -> None:
    emb = sam.encode(_image(seed=2))
    data = emb.to_bytes()
    back = SamEmbedding.from_bytes(data)
    assert back.original_size == emb.original_size and back.model_id == sam.model_id
    assert np.allclose(back.features.numpy(), emb.features.numpy(), atol=2e-3 * float(emb.features.abs().max()))
    assert len(data) < emb.nbytes  # float16
    cache = EmbeddingCache(max_bytes=2 * emb.nbytes)
    for k in "abc":
        cache.put(k, emb)
    assert "a" not in cache and "b" in cache and "c" in cache and cache.nbytes == 2 * emb.nbytes


def test_labels_from_masks_small_on_top() -> None:
    big = np.zeros((4, 4), bool)
    big[:, :] = True
    small = np.zeros((4, 4), bool)
    small[0, 0] = True
    out = labels_from_masks([small, big], (4, 4))
    assert out[0, 0] == 2 and out[3, 3] == 1
    assert labels_from_masks([], (2, 2)).max() == 0
