"""The ``sam`` method through a SamBackend: the in-process tiny SAM and a fake backend."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from icas_ray.sam_protocol import SamBackend
from icas_ray.segment import segment, segment_all


class _Recording:
    """A deterministic backend that records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def predict_mask(self, image, *, points=None, point_labels=None, boxes=None, multimask=False):
        self.calls.append(("predict", dict(points=points, point_labels=point_labels, boxes=boxes,
                                           multimask=multimask)))
        mask = np.zeros(image.shape[:2], bool)
        mask[2:5, 1:4] = True
        mask[7:9, 7:9] = True
        return mask

    def automatic_labels(self, image, **params):
        self.calls.append(("auto", params))
        labels = np.zeros(image.shape[:2], np.int32)
        labels[:, :3] = 5  # labels need not be consecutive
        labels[:, 6:] = 2
        return labels


def test_prompt_mode_labels_mask_then_background() -> None:
    backend = _Recording()
    img = np.zeros((10, 10, 3), np.uint8)
    labels = segment(img, "sam", backend=backend, points=[(2, 3), (8, 8)], point_labels=[1, 0],
                     boxes=[(0, 0, 5, 6)])
    kind, kw = backend.calls[0]
    assert kind == "predict"
    assert kw["points"].tolist() == [[2, 3], [8, 8]] and kw["point_labels"].tolist() == [1, 0]
    assert kw["boxes"].tolist() == [[0, 0, 5, 6]] and kw["multimask"] is False
    assert labels[3, 2] == 1 and labels[8, 8] == 2, "mask components first, in raster order"
    assert labels[0, 0] == 3 and labels.min() == 1 and labels.max() == 3
    only_points = segment(img, "sam", backend=backend, points=[(2, 3)])
    assert backend.calls[-1][1]["point_labels"].tolist() == [1], "points default to foreground"
    assert only_points.max() == 3


def test_automatic_mode_labels_uncovered_pixels() -> None:
    backend = _Recording()
    img = np.zeros((4, 8, 3), np.uint8)
    labels = segment(img, "sam", backend=backend, generator={"points_per_side": 8})
    assert backend.calls == [("auto", {"points_per_side": 8})]
    assert labels.tolist() == [[2, 2, 2, 3, 3, 3, 1, 1]] * 4


def test_sam_point_labels_must_match_points() -> None:
    from icas_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="one label per point"):
        segment(np.zeros((4, 4, 3), np.uint8), "sam", backend=_Recording(), points=[(1, 1)],
                point_labels=[1, 0])


@pytest.fixture(scope="module")
def tiny_sam():
    pytest.importorskip("segment_anything")
    from icas_ray.sam import LocalSam

    backend = LocalSam.from_checkpoint("tiny", seed=0, device="cpu")
    assert isinstance(backend, SamBackend)
    return backend


@pytest.mark.timeout(120)
def test_sam_with_a_real_tiny_model(tiny_sam) -> None:
    img = cv2.resize(data.astronaut(), (96, 96), interpolation=cv2.INTER_AREA)
    auto = segment(img, "sam", backend=tiny_sam,
                   generator={"points_per_side": 4, "pred_iou_thresh": 0.0,
                              "stability_score_thresh": 0.0})
    assert auto.shape == (96, 96) and auto.dtype == np.int32 and auto.min() == 1
    assert len(np.unique(auto)) > 1
    prompted = segment(img, "sam", backend=tiny_sam, points=[(48, 30)], boxes=[(20, 5, 80, 60)])
    assert prompted.shape == (96, 96) and prompted.min() == 1
    values = np.unique(prompted)
    assert np.array_equal(values, np.arange(1, len(values) + 1))


@pytest.mark.timeout(120)
def test_segment_all_runs_sam_only_with_a_backend(tiny_sam) -> None:
    img = cv2.resize(data.coffee(), (64, 42), interpolation=cv2.INTER_AREA)
    fast = ["graph", "felzenszwalb"]
    results, notes, _ = segment_all(img, methods=None, params={"chanvase": {"max_num_iter": 5}})
    assert "sam" not in results and "sam" not in notes and len(results) == 9
    results, notes, _ = segment_all(img, methods=[*fast, "sam"], backend=tiny_sam,
                                    params={"sam": {"generator": {"points_per_side": 4,
                                                                  "pred_iou_thresh": 0.0,
                                                                  "stability_score_thresh": 0.0}}})
    assert set(results) == {*fast, "sam"} and not notes
    results, notes, _ = segment_all(img, methods=["sam"])
    assert not results and notes["sam"].startswith("method sam needs a SAM backend")
