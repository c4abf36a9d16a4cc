"""The painting engine and mask export, checked pixel by pixel on tiny arrays."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from icas_ray.errors import ConfigError, InputError
from icas_ray.segment import (
    Painter,
    Template,
    derive_attention,
    derive_mask,
    export_masks,
    mask_file_name,
    parse_mask_file_name,
)

RED, GREEN, BLUE = (204, 0, 0), (0, 255, 0), (0, 0, 255)

# 6 x 8: segments 1, 2, 3, 4 and an edge column of 0s between 3/4 and 1/2.
LABELS = np.array([
    [1, 1, 1, 2, 2, 2, 2, 2],
    [1, 1, 1, 2, 2, 2, 2, 2],
    [1, 1, 1, 0, 3, 3, 3, 3],
    [4, 4, 4, 0, 3, 3, 3, 3],
    [4, 4, 4, 0, 3, 3, 3, 3],
    [4, 4, 4, 0, 3, 3, 3, 3],
], np.int32)


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(1, 200, size=(6, 8, 3), dtype=np.uint8)  # no pure black, no paint colours


def _painted_as(p: Painter, color: tuple[int, int, int]) -> np.ndarray:
    return p.painted & np.all(p.result == color, axis=2)


def test_fill_paints_exactly_the_segment(image: np.ndarray) -> None:
    p = Painter(image, LABELS)
    assert p.fill(1, 1, RED)
    assert np.array_equal(p.painted, LABELS == 1)
    assert (p.result[LABELS == 1] == RED).all()
    assert np.array_equal(p.result[LABELS != 1], image[LABELS != 1])
    assert p.image is not p.result and np.array_equal(p.image, image)


def test_fill_on_an_edge_or_outside_does_nothing(image: np.ndarray) -> None:
    p = Painter(image, LABELS)
    assert not p.fill(3, 4, RED)  # x=3 is the edge column
    assert not p.fill(-1, 0, RED) and not p.fill(8, 0, RED) and not p.fill(0, 6, RED)
    assert not p.painted.any() and p.undo_depth == 0


def test_fill_same_colour_twice_is_no_step(image: np.ndarray) -> None:
    p = Painter(image, LABELS)
    p.fill(0, 0, RED)
    assert not p.fill(1, 0, RED)
    assert p.undo_depth == 1


def test_fill_on_paint_repaints_the_painted_patch(image: np.ndarray) -> None:
    p = Painter(image, LABELS)
    p.fill(0, 0, RED)   # segment 1
    p.fill(0, 5, RED)   # segment 4, touching 1: one red patch
    p.fill(7, 0, BLUE)  # segment 2
    assert p.fill(2, 2, GREEN)  # on red paint: the whole red patch turns green
    assert np.array_equal(_painted_as(p, GREEN), np.isin(LABELS, (1, 4)))
    assert np.array_equal(_painted_as(p, BLUE), LABELS == 2)
    assert p.colors() == sorted([GREEN, BLUE])


def test_fill_overwrites_other_paint_in_an_unpainted_segment(image: np.ndarray) -> None:
    labels = LABELS.copy()
    p = Painter(image, labels)
    p.fill(7, 0, BLUE)
    p.unfill(7, 0)
    p.fill(0, 0, RED)
    assert np.array_equal(p.painted, LABELS == 1)
    labels[:] = 0  # the painter keeps its own copy
    assert p.fill(7, 3, GREEN)


def test_unfill_restores_the_raw_pixels_of_the_colour_patch(image: np.ndarray) -> None:
    p = Painter(image, LABELS)
    p.fill(4, 0, RED)   # segment 2
    p.fill(4, 3, RED)   # segment 3, touching 2 below: one red patch
    p.fill(0, 0, BLUE)  # segment 1
    assert p.unfill(7, 5)
    assert np.array_equal(p.painted, LABELS == 1)
    assert np.array_equal(p.result[LABELS != 1], image[LABELS != 1])
    assert not p.unfill(7, 5), "nothing painted there any more"
    assert not p.unfill(3, 3), "an edge pixel carries no paint"


def test_strokes_are_one_undo_step(image: np.ndarray) -> None:
    p = Painter(image, LABELS)
    assert p.fill_stroke([(0, 0), (1, 0), (3, 2), (4, 1), (5, 3)], RED)  # 1, 1, edge, 2, 3
    assert np.array_equal(p.painted, np.isin(LABELS, (1, 2, 3)))
    assert p.undo_depth == 1
    assert p.unfill_stroke([(0, 0), (6, 4)])
    assert not p.painted.any() and p.undo_depth == 2
    assert p.undo() == 1
    assert np.array_equal(p.painted, np.isin(LABELS, (1, 2, 3)))
    assert p.undo() == 1 and not p.painted.any()
    assert not p.fill_stroke([], RED)


def test_cut_makes_edge_pixels_and_splits_segments(image: np.ndarray) -> None:
    one = np.ones((6, 8), np.int32)
    p = Painter(image, one)
    p.fill(7, 5, RED)  # everything is segment 1
    assert p.cut([(0, 2), (7, 2)])  # a horizontal line on row 2
    expected = one.copy()
    expected[2] = 0
    assert np.array_equal(p.labels, expected)
    assert not p.painted[2].any(), "cut pixels lose their paint"
    assert np.array_equal(p.result[2], image[2]), "and show the raw image"
    p.unfill(0, 0)  # the red patch is now two patches: only the upper one goes
    assert not p.painted[:2].any() and p.painted[3:].all()
    p.undo()
    p.undo()  # before the cut
    p.unfill(0, 0)
    p.fill(0, 0, GREEN)
    assert np.array_equal(p.painted, np.ones((6, 8), bool))
    p.cut([(0, 2), (7, 2)])
    p.unfill(0, 0)
    p.fill(0, 0, BLUE)  # fills only the part above the cut
    assert np.array_equal(_painted_as(p, BLUE)[:2], np.ones((2, 8), bool))
    assert not _painted_as(p, BLUE)[2:].any()


def test_diagonal_cut_separates_under_4_connectivity(image: np.ndarray) -> None:
    p = Painter(image[:6, :6], np.ones((6, 6), np.int32))
    assert p.cut([(0, 0), (5, 5)])
    assert np.array_equal(p.labels == 0, np.eye(6, dtype=bool))
    p.fill(5, 0, RED)  # the upper-right triangle only
    assert np.array_equal(p.painted, np.triu(np.ones((6, 6), bool), k=1))


def test_polyline_cut_and_single_point(image: np.ndarray) -> None:
    p = Painter(image, np.ones((6, 8), np.int32))
    assert not p.cut([(3, 3)]), "one point cuts nothing (the seed waits for a second click)"
    assert p.cut([(0, 1), (3, 1), (3, 4)])
    cut = np.zeros((6, 8), bool)
    cut[1, 0:4] = True
    cut[1:5, 3] = True
    assert np.array_equal(p.labels == 0, cut)


def test_undo_any_number_of_steps_and_reset(image: np.ndarray) -> None:
    p = Painter(image, LABELS)
    states = [(p.result.copy(), p.labels.copy(), p.painted.copy())]
    p.fill(0, 0, RED)
    states.append((p.result.copy(), p.labels.copy(), p.painted.copy()))
    p.cut([(4, 0), (4, 5)])
    states.append((p.result.copy(), p.labels.copy(), p.painted.copy()))
    p.fill(7, 0, BLUE)
    states.append((p.result.copy(), p.labels.copy(), p.painted.copy()))
    assert p.reset()
    assert np.array_equal(p.result, image) and np.array_equal(p.labels, LABELS)
    assert not p.painted.any()
    assert not p.reset(), "nothing to reset"
    assert p.undo() == 1  # undo the reset
    for state in reversed(states[:-1]):
        assert p.undo() == 1
        assert all(np.array_equal(a, b) for a, b in zip((p.result, p.labels, p.painted), state))
    assert p.undo(5) == 0 and p.undo_depth == 0
    p.fill(0, 0, RED)
    p.fill(7, 0, RED)
    assert p.undo(10) == 2 and not p.painted.any()


def test_bad_colour_and_label_map(image: np.ndarray) -> None:
    p = Painter(image, LABELS)
    with pytest.raises(ConfigError, match=r"colour \(300, 0, 0\) is invalid"):
        p.fill(0, 0, (300, 0, 0))
    with pytest.raises(InputError, match="label map has shape"):
        Painter(image, LABELS[:5])
    with pytest.raises(InputError, match="label map has shape"):
        Painter(image, LABELS.astype(np.float32))


def test_debug_views(image: np.ndarray) -> None:
    p = Painter(image, LABELS)
    p.fill(0, 0, RED)
    views = p.debug_views()
    assert views["labels"].shape == (6, 8, 3) and views["labels"].dtype == np.uint8
    assert (views["labels"][LABELS == 0] == 0).all() and (views["labels"][LABELS > 0].sum(axis=1) > 0).all()
    assert np.array_equal(views["painted"], (LABELS == 1).astype(np.uint8) * 255)


# -- templates -----------------------------------------------------------------------------------
def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noisy 30x40 image with a 5x5 object at x=10, y=7 and the object's template and paint."""
    rng = np.random.default_rng(1)
    img = rng.integers(60, 200, size=(30, 40, 3), dtype=np.uint8)
    obj = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
    obj[2, 2] = 0  # black inside the object still counts for matching
    img[7:12, 10:15] = obj
    template = np.zeros((7, 7, 3), np.uint8)  # the object on a black frame
    template[1:6, 1:6] = obj
    segment = np.zeros((7, 7, 3), np.uint8)
    segment[3, 1:6] = RED  # a red cross over the object
    segment[1:6, 3] = RED
    return img, template, segment


def test_derived_attention_ignores_the_black_background() -> None:
    _, template, _ = _scene()
    att = derive_attention(template)
    expected = np.zeros((7, 7), bool)
    expected[1:6, 1:6] = True
    assert np.array_equal(att, expected)  # the black object pixel at (3, 3) is enclosed: kept
    t = np.zeros((5, 5, 3), np.uint8)
    t[1:4, 1:4] = 50
    t[2, 2] = 0
    assert derive_attention(t).sum() == 9


def test_derived_mask_is_the_non_black_segment() -> None:
    _, _, segment = _scene()
    assert np.array_equal(derive_mask(segment), np.all(segment == RED, axis=2))


def test_template_painting_best_match() -> None:
    img, template, segment = _scene()
    p = Painter(img, np.ones(img.shape[:2], np.int32))
    assert p.paint_templates([Template(template, segment)]) == 1
    expected = np.zeros(img.shape[:2], bool)
    expected[6:13, 9:16] = np.all(segment == RED, axis=2)  # template corner at x=9, y=6
    assert np.array_equal(p.painted, expected)
    assert (p.result[expected] == RED).all()
    assert np.array_equal(p.result[~expected], img[~expected])
    assert p.undo_depth == 1 and p.masks().keys() == {RED}


def test_template_painting_threshold_finds_every_copy() -> None:
    img, template, segment = _scene()
    img[20:25, 30:35] = img[7:12, 10:15]  # a second copy
    p = Painter(img, np.ones(img.shape[:2], np.int32))
    assert p.paint_templates([Template(template, segment)], threshold=1e-6) == 2
    assert p.painted[9, 12] and p.painted[22, 32] and p.painted.sum() == 2 * 9
    q = Painter(img, np.ones(img.shape[:2], np.int32))
    assert q.paint_templates([Template(template, segment)], threshold=0.0) >= 1
    assert q.paint_templates([Template(template, segment)], threshold=-1.0) == 0


def test_template_painting_with_given_attention_and_mask() -> None:
    img, template, segment = _scene()
    full = np.ones((7, 7), bool)
    mask = np.zeros((7, 7, 3), np.uint8)
    mask[0, 0] = 255  # paint one pixel only, even where the segment is black
    p = Painter(img, np.ones(img.shape[:2], np.int32))
    # An explicit attention (the object without its frame) and an explicit mask.
    att = np.zeros((7, 7), np.uint8)
    att[1:6, 1:6] = 1
    p.paint_templates([Template(template, segment, attention=att, mask=mask)])
    assert p.painted.sum() == 1 and p.painted[6, 9]
    assert (p.result[6, 9] == 0).all()  # the segment's pixel there is black
    with pytest.raises(InputError, match="template mask has shape"):
        p.paint_templates([Template(template, segment, mask=full[:3])])


def test_template_errors() -> None:
    img, template, segment = _scene()
    p = Painter(img[:4, :4], np.ones((4, 4), np.int32))
    with pytest.raises(InputError, match="larger than the 4x4 image"):
        p.paint_templates([Template(template, segment)])
    with pytest.raises(InputError, match="template segment has shape"):
        p.paint_templates([Template(template, segment[:3])])


# -- masks ---------------------------------------------------------------------------------------
def test_mask_file_names() -> None:
    assert mask_file_name("jet1.jpg", (204, 0, 0)) == "jet1_mask_(R:204,G:0,B:0).png"
    assert mask_file_name("s3://b/planes/a.b.png", (1, 2, 3)) == "a.b_mask_(R:1,G:2,B:3).png"
    assert mask_file_name("noext", (0, 0, 255)) == "noext_mask_(R:0,G:0,B:255).png"
    assert parse_mask_file_name("jet1_mask_(R:204,G:0,B:0).png") == ("jet1", (204, 0, 0))
    assert parse_mask_file_name("jet1.png") is None


def test_export_writes_one_exact_png_per_colour(image: np.ndarray, tmp_path) -> None:
    p = Painter(image, LABELS)
    p.fill(0, 0, RED)
    p.fill(7, 0, GREEN)
    p.fill(7, 5, GREEN)  # segments 2 and 3 share green
    p.fill(0, 5, (0, 0, 0))  # black is not a class (as in the seed)
    written = export_masks(p.masks(), "photos/jet1.jpg", str(tmp_path))
    names = sorted(os.path.basename(w) for w in written)
    assert names == ["jet1_mask_(R:0,G:255,B:0).png", "jet1_mask_(R:204,G:0,B:0).png"]
    assert sorted(os.listdir(tmp_path)) == names
    red = cv2.imread(str(tmp_path / "jet1_mask_(R:204,G:0,B:0).png"), cv2.IMREAD_UNCHANGED)
    green = cv2.imread(str(tmp_path / "jet1_mask_(R:0,G:255,B:0).png"), cv2.IMREAD_UNCHANGED)
    assert red.dtype == np.uint8 and red.shape == (6, 8)
    assert np.array_equal(red, (LABELS == 1).astype(np.uint8) * 255)
    assert np.array_equal(green, np.isin(LABELS, (2, 3)).astype(np.uint8) * 255)


def test_export_to_s3(s3_server, s3_bucket: str, image: np.ndarray) -> None:
    p = Painter(image, LABELS)
    p.fill(0, 0, RED)
    storage = s3_server.storage()
    written = export_masks(p.masks(), "jet1.jpg", f"s3://{s3_bucket}/jets_segmented", storage=storage)
    assert written == [f"s3://{s3_bucket}/jets_segmented/jet1_mask_(R:204,G:0,B:0).png"]
    png = cv2.imdecode(np.frombuffer(storage.read_bytes(written[0]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(png, (LABELS == 1).astype(np.uint8) * 255)
