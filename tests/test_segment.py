"""Segmentation methods and their registry, on images scikit-image ships."""

from __future__ import annotations

import dataclasses
import doctest

import cv2
import numpy as np
import pytest
from skimage import data

import icas_ray.segment as seg
from icas_ray.errors import ConfigError, InputError
from icas_ray.segment import get_method, method_names, segment
from icas_ray.segment._labels import label_regions, partition_labels
from icas_ray.segment._registry import register
from icas_ray.segment.methods.kmeans import pixel_features

CLASSIC = [m for m in method_names() if m != "sam"]


def _small(img: np.ndarray, side: int) -> np.ndarray:
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    h, w = img.shape[:2]
    f = side / max(h, w)
    return cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return _small(data.astronaut(), 128)


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return _small(data.coffee(), 128)  # 128 x 85: not square


def test_registry_has_the_ten_methods() -> None:
    assert method_names() == sorted(["edge", "superpixel", "kmeans", "slickmeans", "chanvese",
                                     "felzenszwalb", "quickshift", "graph", "grabcut", "sam"])


@pytest.mark.parametrize("name", CLASSIC)
@pytest.mark.parametrize("image", ["astronaut", "coffee"])
def test_method_returns_a_label_map(name: str, image: str, request: pytest.FixtureRequest) -> None:
    img = request.getfixturevalue(image)
    labels = segment(img, name)
    assert labels.shape == img.shape[:2]
    assert labels.dtype == np.int32
    assert labels.flags.c_contiguous
    values = np.unique(labels)
    assert values[values > 0][0] == 1, "segments are numbered from 1"
    assert len(values[values > 0]) > 1, "a photo has more than one segment"
    if name != "edge":  # only edge leaves 0 (on edges no region grew over)
        assert labels.min() >= 1


def test_edge_zeros_lie_on_edges(astronaut: np.ndarray) -> None:
    from icas_ray.segment.methods.edge import EdgeParams, edge_mask

    p = EdgeParams(edge_th=20)
    labels = segment(astronaut, "edge", p)
    assert (labels == 0).any()
    assert edge_mask(astronaut, p)[labels == 0].all()


def test_grey_image_is_accepted() -> None:
    labels = segment(_small(data.camera(), 96)[..., 0], "felzenszwalb")
    assert labels.shape == (96, 96) and labels.min() == 1


def test_grabcut_separates_the_astronaut_face() -> None:
    img = _small(data.astronaut(), 256)
    x0, y0, x1, y1 = 75, 8, 150, 108  # around face and hair
    labels = segment(img, "grabcut", rect=(x0, y0, x1, y1))
    fg = labels == 1  # foreground components come first; the face is one piece
    inside = np.zeros(fg.shape, bool)
    inside[y0:y1, x0:x1] = True
    assert not (fg & ~inside).any(), "outside the rectangle is sure background"
    assert fg[35:85, 95:130].mean() > 0.95, "the face is foreground"
    assert fg[y0:y0 + 12, x0:x0 + 10].mean() < 0.05, "the wall in the rectangle's corner is not"
    assert 0.3 < fg[inside].mean() < 0.9


def test_grabcut_scribbles_steer_the_result() -> None:
    from icas_ray.segment.methods.grabcut import GrabcutParams, grabcut_mask

    img = _small(data.astronaut(), 128)
    rect = (37, 4, 75, 54)
    plain = grabcut_mask(img, GrabcutParams(rect=rect))
    # Sure background across the hair: the hair leaves the foreground, the face stays.
    steered = grabcut_mask(img, GrabcutParams(rect=rect, bg=(((45, 8), (68, 8)),), brush=1))
    assert plain[7:10, 45:69].mean() > 0.8 and not steered[7:10, 45:69].any()
    assert steered[18:42, 48:64].all()
    # Scribbles alone (no rectangle): a foreground stroke on the face, background strokes.
    scribbled = grabcut_mask(img, GrabcutParams(fg=(((55, 30), (58, 35)),), brush=2,
                                                bg=(((5, 5), (120, 5)), ((5, 120), (120, 120)))))
    assert scribbled[18:42, 48:64].mean() > 0.8 and scribbled.mean() < 0.2


def test_grabcut_needs_background() -> None:
    img = _small(data.astronaut(), 64)
    with pytest.raises(ConfigError, match="grabcut needs both foreground and background"):
        segment(img, "grabcut", rect=(0, 0, 64, 64))
    with pytest.raises(ConfigError, match=r"rect=.*lies outside"):
        segment(img, "grabcut", rect=(100, 100, 200, 200))


def test_chanvase_alias(astronaut: np.ndarray) -> None:
    assert get_method("chanvase") is get_method("chanvese")
    a = segment(astronaut, "chanvase", number_of_bins=5, max_num_iter=20)
    b = segment(astronaut, "chanvese", number_of_bins=5, max_num_iter=20)
    assert np.array_equal(a, b) and set(np.unique(a)) <= {1, 2, 3, 4, 5}


def test_seeded_methods_are_deterministic(astronaut: np.ndarray) -> None:
    for name in ("kmeans", "slickmeans", "grabcut", "quickshift"):
        assert np.array_equal(segment(astronaut, name), segment(astronaut, name)), name


def test_kmeans_features_match_the_seed_loop(coffee: np.ndarray) -> None:
    h, w = coffee.shape[:2]
    ci = 5
    xy = np.array([[r, c] for r in range(h) for c in range(w)]).reshape((h, w, 2)) / ci
    seed = np.float32(np.concatenate([coffee, xy], axis=2).reshape((-1, 5)))
    assert np.array_equal(pixel_features(coffee, ci), seed)


def _seed_label_regions(edges: np.ndarray) -> np.ndarray:
    """The seed's loop, kept here as the reference."""
    from skimage.morphology import flood_fill

    img = np.where(edges, -1.0, 0.0)
    pixels = np.where(img == 0)
    sid = 1
    while len(pixels[0]):
        r, c = pixels[0][0], pixels[1][0]
        img = flood_fill(img, (r, c), sid, connectivity=1, in_place=True)
        grown = cv2.dilate((img == img[r][c]).astype(np.int16), np.ones((3, 3)), iterations=1)
        np.putmask(img, grown != 0, sid)
        sid += 1
        pixels = np.where(img == 0)
    img[img == -1] = 0
    return img.astype(np.int32)


@pytest.mark.parametrize("th", [10, 30, 60])
def test_edge_labelling_equals_the_seed_loop(th: int) -> None:
    from icas_ray.segment.methods.edge import EdgeParams, edge_mask

    for img in (_small(data.astronaut(), 160), _small(data.camera(), 160)):
        edges = edge_mask(img, EdgeParams(edge_th=th))
        assert np.array_equal(label_regions(edges), _seed_label_regions(edges))


def test_edge_labelling_random_masks_equal_the_seed_loop() -> None:
    rng = np.random.default_rng(0)
    for density in (0.2, 0.45, 0.6):
        edges = rng.random((40, 37)) < density
        assert np.array_equal(label_regions(edges), _seed_label_regions(edges))


def test_partition_labels() -> None:
    fg = np.zeros((4, 6), bool)
    fg[:, 0] = fg[:, 5] = True
    assert partition_labels(fg).tolist() == [[1, 3, 3, 3, 3, 2]] * 4


# -- registry and parameters --------------------------------------------------------------------
def test_unknown_method_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError) as e:
        get_method("watershed")
    assert str(e.value) == ("unknown segmentation method 'watershed': must be one of "
                            + ", ".join(sorted(method_names())))


def test_unknown_parameter_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown parameter 'regionsize' for method superpixel: "
                                          r"valid parameters are algorithm, iterations, region_size, ruler$"):
        get_method("superpixel").make_params({"regionsize": 3})


@pytest.mark.parametrize("name,values,match", [
    ("superpixel", {"region_size": "abc"}, r"superpixel parameter region_size='abc' is not an integer"),
    ("superpixel", {"region_size": 1}, r"superpixel parameter region_size=1 is invalid: expected >= 2"),
    ("superpixel", {"algorithm": "fast"}, r"must be one of mslic, slic, slico"),
    ("quickshift", {"color_weight": 2}, r"expected 0 <= color_weight <= 1"),
    ("grabcut", {"rect": "1,2,3"}, r"needs 4 values"),
    ("edge", {"template_window_size": 4}, r"an odd number"),
    ("kmeans", {"k": 0}, r"kmeans parameter k=0 is invalid"),
], ids=["type", "range", "choice", "ratio", "rect", "odd", "k"])
def test_bad_parameter_values_are_one_line_errors(name: str, values: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        get_method(name).make_params(values)
    assert "\n" not in str(e.value)


def test_string_parameters_are_converted() -> None:
    p = get_method("grabcut").make_params({"rect": "1,2,30,40", "fg": "[[[5, 6], [7, 8]]]",
                                           "seed": "none", "iterations": "3"})
    assert p.rect == (1, 2, 30, 40) and p.fg == (((5, 6), (7, 8)),)
    assert p.seed is None and p.iterations == 3
    e = get_method("edge").make_params({"sigmaColor": "50", "hColor": 5})  # the seed's names
    assert e.sigma_color == 50.0 and e.h_color == 5.0


def test_params_are_frozen_with_the_seed_defaults() -> None:
    assert get_method("edge").defaults() == dict(
        edge_th=60, bilateral_d=7, sigma_color=100.0, sigma_space=100.0, template_window_size=7,
        search_window_size=21, h=10.0, h_color=10.0)
    assert get_method("superpixel").defaults()["region_size"] == 40
    assert get_method("superpixel").defaults()["ruler"] == 30.0
    assert get_method("kmeans").defaults()["k"] == 15
    assert get_method("kmeans").defaults()["color_importance"] == 5.0
    assert get_method("chanvese").defaults()["number_of_bins"] == 20
    assert get_method("felzenszwalb").defaults() == dict(segment_scale=100.0, sigma=0.5,
                                                         min_segment_size=100)
    assert get_method("quickshift").defaults()["segment_size"] == 100.0
    assert get_method("quickshift").defaults()["color_weight"] == 0.5
    assert get_method("graph").defaults() == dict(k=15.0, min_segment_size=100, sigma=0.5)
    p = get_method("kmeans").params_type()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.k = 3  # type: ignore[misc]


def test_registering_a_name_twice_raises() -> None:
    @dataclasses.dataclass(frozen=True)
    class P:
        pass

    with pytest.raises(ValueError, match="already registered"):
        register("kmeans", P)(lambda image, params: image[..., 0])
    with pytest.raises(ValueError, match="already registered"):
        register("something-new", P, aliases=("chanvase",))(lambda image, params: image[..., 0])
    assert "something-new" not in method_names()


def test_bad_images_are_input_errors() -> None:
    with pytest.raises(InputError, match=r"expected an \(H, W, 3\) uint8 RGB array"):
        segment(np.zeros((8, 8, 3), np.float32), "graph")
    with pytest.raises(InputError):
        segment(np.zeros((8, 8, 4), np.uint8), "graph")


def test_sam_without_a_backend_is_a_config_error(astronaut: np.ndarray) -> None:
    with pytest.raises(ConfigError, match=r"^method sam needs a SAM backend: .*--sam-url URL\)$"):
        segment(astronaut, "sam")
    with pytest.raises(ConfigError, match="is not a SAM backend"):
        segment(astronaut, "sam", backend=object())


def test_doctests() -> None:
    import icas_ray.segment._labels
    import icas_ray.segment._registry
    import icas_ray.segment.masks
    import icas_ray.segment.paint
    import icas_ray.segment.store

    for mod in (seg, icas_ray.segment._labels, icas_ray.segment._registry, icas_ray.segment.masks,
                icas_ray.segment.paint, icas_ray.segment.store):
        result = doctest.testmod(mod)
        assert result.failed == 0, mod.__name__


def test_import_stays_light() -> None:
    import subprocess
    import sys

    code = ("import sys, icas_ray.segment, icas_ray.cli.commands.segment; "
            "print(sorted(m for m in ('torch', 'segment_anything', 'ray', 'ray.serve') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
