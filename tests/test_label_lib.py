"""The labelling library (icas_ray.label): exports, COCO, labels files, keymaps, proposals."""

from __future__ import annotations

import doctest
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

import icas_ray.label as lab
from icas_ray.errors import ConfigError, InputError, StorageError
from icas_ray.label import _rle
from icas_ray.segment import mask_file_name
from icas_ray.storage import Storage

RED, GREEN, BLUE = (204, 0, 0), (0, 204, 0), (0, 0, 255)


def _masks(h: int, w: int, seed: int = 0) -> dict[tuple[int, int, int], np.ndarray]:
    """Three disjoint masks: a rectangle, a disc and scattered noise pixels (many runs)."""
    rng = np.random.default_rng(seed)
    red = np.zeros((h, w), bool)
    red[h // 8:h // 2, w // 6:w // 2] = True
    green = np.zeros((h, w), bool)
    cv2.circle(green.view(np.uint8), (3 * w // 4, 3 * h // 4), min(h, w) // 6, 1, -1)
    blue = (rng.random((h, w)) < 0.05) & ~red & ~green
    return {RED: red, GREEN: green, BLUE: blue}


# -- mask files and the indexed PNG -----------------------------------------------------------
def test_write_masks_original_names_exact_pixels_and_stale_removed(tmp_path) -> None:
    st, out = Storage(), str(tmp_path / "planes_segmented")
    masks = _masks(30, 40)
    written = lab.write_masks(st, out, "jet1", masks)
    names = sorted(os.listdir(out))
    assert names == sorted(mask_file_name("jet1.jpg", c) for c in masks)
    assert "jet1_mask_(R:204,G:0,B:0).png" in names
    assert [os.path.basename(w) for w in written] == [mask_file_name("jet1.png", c)
                                                      for c in sorted(masks)]
    for c, m in masks.items():
        raw = np.asarray(Image.open(os.path.join(out, mask_file_name("jet1.png", c))))
        assert raw.dtype == np.uint8 and raw.ndim == 2 and set(np.unique(raw)) <= {0, 255}
        assert np.array_equal(raw == 255, m)
    # another image's masks and an unrelated file are left alone
    lab.write_masks(st, out, "jet2", {RED: masks[RED]})
    (tmp_path / "planes_segmented" / "notes.txt").write_text("keep")
    # re-save jet1 without green: its file goes, the others are rewritten
    again = {RED: masks[GREEN], BLUE: masks[BLUE]}
    lab.write_masks(st, out, "jet1", again)
    assert sorted(os.listdir(out)) == sorted(
        [mask_file_name("jet1.png", RED), mask_file_name("jet1.png", BLUE),
         mask_file_name("jet2.png", RED), "notes.txt"])
    back = lab.read_masks(st, out, "jet1")
    assert set(back) == {RED, BLUE} and all(np.array_equal(back[c], again[c]) for c in again)
    # an empty mask is not a painted colour
    lab.write_masks(st, out, "jet1", {RED: np.zeros((30, 40), bool), BLUE: masks[BLUE]})
    assert set(lab.read_masks(st, out, "jet1")) == {BLUE}
    assert lab.read_masks(st, str(tmp_path / "missing"), "jet1") == {}


def test_write_masks_stem_with_dots_and_bad_input(tmp_path) -> None:
    st, out = Storage(), str(tmp_path)
    m = np.eye(5, dtype=bool)
    lab.write_masks(st, out, "a.b", {RED: m})
    assert os.listdir(out) == ["a.b_mask_(R:204,G:0,B:0).png"]
    assert set(lab.read_masks(st, out, "a.b")) == {RED} and lab.read_masks(st, out, "a") == {}
    with pytest.raises(InputError, match="stem '../x' is invalid"):
        lab.write_masks(st, out, "../x", {RED: m})
    with pytest.raises(InputError, match="colour .* is invalid"):
        lab.write_masks(st, out, "a", {(300, 0, 0): m})
    with pytest.raises(InputError, match=r"shape \(5, 6\)"):
        lab.write_masks(st, out, "a", {RED: m, GREEN: np.zeros((5, 6), bool)})


def test_write_masks_refuses_a_symlink_out_of_the_output(tmp_path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere / "x_mask_(R:204,G:0,B:0).png", out / "x_mask_(R:204,G:0,B:0).png")
    with pytest.raises(StorageError, match="outside"):
        lab.write_masks(Storage(), str(out), "x", {RED: np.eye(3, dtype=bool)})
    assert os.listdir(elsewhere) == []


def test_indexed_png_palette_and_indices_exact(tmp_path) -> None:
    st, out = Storage(), str(tmp_path)
    masks = _masks(24, 32)
    written = lab.write_masks(st, out, "img", masks, indexed=True)
    assert os.path.basename(written[-1]) == "img_indexed.png"
    im = Image.open(os.path.join(out, "img_indexed.png"))
    assert im.mode == "P"
    colours = sorted(masks)
    assert im.getpalette()[:3 * (len(colours) + 1)] == [0, 0, 0] + [v for c in colours for v in c]
    expected = np.zeros((24, 32), np.uint8)
    for k, c in enumerate(colours, start=1):
        expected[masks[c]] = k
    assert np.array_equal(np.asarray(im), expected)
    back = lab.read_indexed(st, out, "img")
    assert set(back) == set(masks) and all(np.array_equal(back[c], masks[c]) for c in masks)
    # saved again without indexed: the stale indexed PNG goes
    lab.write_masks(st, out, "img", masks)
    assert "img_indexed.png" not in os.listdir(out)
    overlap = {RED: np.ones((4, 4), bool), GREEN: np.eye(4, dtype=bool)}
    with pytest.raises(InputError, match="4 pixels carry two colours"):
        lab.write_masks(st, out, "img", overlap, indexed=True)


@pytest.mark.s3
def test_write_and_read_masks_on_s3(s3_server, s3_bucket) -> None:
    st = s3_server.storage()
    out = f"s3://{s3_bucket}/planes_segmented"
    masks = _masks(20, 28)
    lab.write_masks(st, out, "jet1", masks, indexed=True)
    lab.write_masks(st, out, "jet1", {RED: masks[RED]})
    listing = s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    keys = sorted(o["Key"] for o in listing)
    assert keys == ["planes_segmented/jet1_mask_(R:204,G:0,B:0).png"]
    back = lab.read_masks(st, out, "jet1")
    assert list(back) == [RED] and np.array_equal(back[RED], masks[RED])


# -- COCO ----------------------------------------------------------------------------------------
def test_rle_matches_pycocotools_both_ways() -> None:
    from pycocotools import mask as cocomask

    rng = np.random.default_rng(3)
    shapes = [(1, 1), (1, 7), (9, 1), (13, 17), (40, 33)]
    for i in range(60):
        h, w = shapes[i % len(shapes)]
        m = rng.random((h, w)) < [0.0, 1.0, 0.5, 0.05, 0.95][i % 5]
        ours = _rle.encode(m)
        theirs = cocomask.encode(np.asfortranarray(m.astype(np.uint8)))
        assert ours["counts"] == theirs["counts"].decode()
        assert np.array_equal(cocomask.decode(ours), m)
        assert np.array_equal(_rle.decode(theirs), m)
        flat = _rle.encode(m, compressed=False)  # COCO's uncompressed counts
        assert np.array_equal(cocomask.decode(cocomask.frPyObjects(flat, h, w)), m)
        assert _rle.area(ours) == int(cocomask.area(theirs))
        if m.any():
            assert _rle.bbox(m) == [int(v) for v in cocomask.toBbox(theirs)]


def _labelled_folder(tmp_path, storage: Storage, root: str) -> dict[str, dict]:
    """Two images of two sizes (one in a sub-folder), their masks in <root>_segmented."""
    sizes = {"a.png": (30, 40), "sub/b.jpg": (45, 25), "unlabelled.png": (10, 10)}
    painted: dict[str, dict] = {}
    for i, (name, (h, w)) in enumerate(sizes.items()):
        img = np.full((h, w, 3), 40 * i, np.uint8)
        ok, data = cv2.imencode(os.path.splitext(name)[1], img)
        storage.write_bytes(storage.join(root, name), data.tobytes())
        if name != "unlabelled.png":
            masks = _masks(h, w, seed=i)
            if name == "sub/b.jpg":
                masks = {RED: masks[RED], BLUE: masks[BLUE]}
            sub = os.path.dirname(name)
            out = storage.join(root + "_segmented", sub) if sub else root + "_segmented"
            lab.write_masks(storage, out, os.path.splitext(os.path.basename(name))[0], masks)
            painted[name] = masks
    return painted


def _check_coco(coco: dict, painted: dict[str, dict], labels: dict) -> None:
    from pycocotools import mask as cocomask

    images = {im["file_name"]: im for im in coco["images"]}
    assert sorted(images) == sorted(painted)
    assert (images["a.png"]["width"], images["a.png"]["height"]) == (40, 30)
    assert (images["sub/b.jpg"]["width"], images["sub/b.jpg"]["height"]) == (25, 45)
    cats = {c["id"]: c for c in coco["categories"]}
    colour_of = {tuple(c["color"]): c["id"] for c in coco["categories"]}
    assert {c["name"] for c in cats.values()} == {"plane", "car", "0,0,255", "boat"}
    for name, masks in painted.items():
        anns = [a for a in coco["annotations"] if a["image_id"] == images[name]["id"]]
        assert len(anns) == len(masks)
        for a in anns:
            colour = tuple(cats[a["category_id"]]["color"])
            m = masks[colour]
            decoded = cocomask.decode(a["segmentation"])
            assert decoded.shape == m.shape and np.array_equal(decoded.astype(bool), m)
            assert a["area"] == int(m.sum()) and a["iscrowd"] == 0
            assert a["bbox"] == [int(v) for v in cocomask.toBbox(a["segmentation"])]
            assert colour_of[colour] == a["category_id"]
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    assert labels  # the names above came from it


def test_export_coco_local_decodes_to_the_masks(tmp_path) -> None:
    st, root = Storage(), str(tmp_path / "photos")
    painted = _labelled_folder(tmp_path, st, root)
    labels = {RED: "plane", GREEN: "car", (1, 2, 3): "boat"}
    out = str(tmp_path / "coco.json")
    coco = lab.export_coco(root, root + "_segmented", out, labels=labels)
    with open(out) as fh:
        assert json.load(fh) == coco
    _check_coco(coco, painted, labels)
    from pycocotools.coco import COCO

    api = COCO(out)  # the official loader indexes it and rebuilds every mask
    for ann in api.dataset["annotations"]:
        assert api.annToMask(ann).sum() == ann["area"]


def test_export_coco_of_an_exif_rotated_photo_is_upright(tmp_path) -> None:
    """A JPEG stored 120 wide x 60 high with EXIF orientation 6 is painted upright (60 x 120,
    as decode and the page show it): its COCO entry has the upright size and its masks."""
    from PIL import Image

    from icas_ray.images import decode

    st, root = Storage(), str(tmp_path / "photos")
    os.makedirs(root)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (120, 60), (90, 30, 10)).save(os.path.join(root, "rot.jpg"), exif=exif)
    with open(os.path.join(root, "rot.jpg"), "rb") as fh:
        assert decode(fh.read()).shape[:2] == (120, 60)  # upright: 120 rows, 60 columns
    m = np.zeros((120, 60), bool)
    m[10:50, 5:20] = True
    lab.write_masks(st, root + "_segmented", "rot", {RED: m})
    coco = lab.export_coco(root, root + "_segmented", str(tmp_path / "coco.json"))
    (image,) = coco["images"]
    assert (image["width"], image["height"]) == (60, 120)
    from pycocotools import mask as cocomask

    (ann,) = coco["annotations"]
    assert np.array_equal(cocomask.decode(ann["segmentation"]).astype(bool), m)


def test_export_coco_per_component(tmp_path) -> None:
    m = np.zeros((6, 9), bool)
    m[1:3, 1:3] = True
    m[4:6, 6:9] = True
    coco = lab.coco_dict([lab.CocoImage("x.png", 9, 6, {RED: m})], per="component")
    assert [a["area"] for a in coco["annotations"]] == [4, 6]
    assert [a["bbox"] for a in coco["annotations"]] == [[1, 1, 2, 2], [6, 4, 3, 2]]
    assert coco["categories"] == [{"id": 1, "name": "204,0,0", "supercategory": "",
                                   "color": [204, 0, 0]}]
    with pytest.raises(ConfigError, match="must be one of colour, component"):
        lab.coco_dict([], per="pixel")
    with pytest.raises(InputError, match="expected the image's 9x5"):
        lab.coco_dict([lab.CocoImage("x.png", 9, 5, {RED: m})])


@pytest.mark.s3
def test_export_coco_on_s3(tmp_path, s3_server, s3_bucket) -> None:
    st = s3_server.storage()
    root = f"s3://{s3_bucket}/photos"
    painted = _labelled_folder(tmp_path, st, root)
    labels = {RED: "plane", GREEN: "car", (1, 2, 3): "boat"}
    out = f"s3://{s3_bucket}/export/coco.json"
    coco = lab.export_coco(root, root + "_segmented", out, labels=labels, storage=st)
    assert json.loads(st.read_text(out)) == coco
    _check_coco(coco, painted, labels)


# -- labels file ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,text", [
    ("l.json", '{"204,0,0": "plane", "#00cc00": "car", "(0, 0, 255)": "boat"}'),
    ("l.toml", '"204,0,0" = "plane"\n"#00CC00" = "car"\n"0 0 255" = "boat"\n'),
    ("l.yaml", '"204,0,0": plane\n"#0c0": car\n"0,0,255": boat\n'),
    ("l.csv", "r,g,b,name\n204,0,0,plane\n\n# comment\n0,204,0,car\n0, 0, 255, boat\n"),
    ("l.txt", "204,0,0,plane\n0,204,0,car\n0,0,255,boat"),
], ids=["json", "toml", "yaml", "csv", "txt"])
def test_labels_file_formats(tmp_path, name: str, text: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    assert lab.load_labels_file(str(p)) == {RED: "plane", GREEN: "car", BLUE: "boat"}


@pytest.mark.parametrize("name,text,match", [
    ("l.csv", "204,0,0,plane\n1,2,car\n", r"l\.csv line 2: '1,2,car' is not 'r,g,b,name'"),
    ("l.csv", "204,0,0,plane\n256,0,0,car\n", r"line 2: '256,0,0,car'"),
    ("l.csv", "204,0,0,plane\n204,0,0,car\n", r"line 2: colour \(204, 0, 0\) is named twice"),
    ("l.json", '{"204,0,0": "plane", "red": "car"}', r"key 'red' is not a colour"),
    ("l.json", '{"204,0,0": 3}', r"the name of '204,0,0' is 3"),
    ("l.json", '{"204,0,0": "plane",\n "x" }', r"line 2: invalid JSON"),
    ("l.json", '["204,0,0"]', r"holds a list: expected a mapping"),
    ("l.yaml", '"204,0,0": plane\n  bad: [\n', r"invalid YAML"),
    ("l.toml", '204,0,0 = "plane"\n', r"invalid TOML"),
], ids=["short-line", "range", "twice", "key", "name", "json-syntax", "json-list", "yaml",
        "toml"])
def test_labels_file_errors(tmp_path, name: str, text: str, match: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        lab.load_labels_file(str(p))
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="does not exist"):
        lab.load_labels_file(str(tmp_path / "missing.json"))


# -- keymap --------------------------------------------------------------------------------------
def test_default_keymap_keeps_the_original_keys_and_adds_arrows_and_ad() -> None:
    km = lab.load_keymap(None)
    assert km == lab.DEFAULT_KEYMAP and km is not lab.DEFAULT_KEYMAP
    keys = lab.key_actions(km)
    for key, action in {"q": "quit", "n": "next", "p": "previous", " ": "save_next", "z": "undo",
                        "r": "reset", "t": "template", "f": "finish", "ArrowRight": "next",
                        "ArrowLeft": "previous", "a": "previous", "d": "next",
                        "v": "debug", "g": "grabcut", "s": "sam", "e": "automatic",
                        "Escape": "escape", "?": "help"}.items():
        assert keys[key] == action, key
    assert sum(len(v) for v in km.values()) == len(keys)  # no key has two actions
    assert set(km) == set(lab.ACTIONS)


def test_keymap_file_overrides(tmp_path) -> None:
    p = tmp_path / "keys.json"
    p.write_text(json.dumps({"debug": "d", "undo": ["z", "Backspace"], "quit": "Esc",
                             "save_next": ["space", "Enter"]}))
    km = lab.load_keymap(str(p))
    assert km["debug"] == ["d"] and km["next"] == ["n", "ArrowRight"]  # d moved to debug
    assert km["undo"] == ["z", "Backspace"] and km["quit"] == ["Escape"]
    assert km["save_next"] == [" ", "Enter"] and km["previous"] == ["p", "a", "ArrowLeft"]
    t = tmp_path / "keys.toml"
    t.write_text('next = ["N", "right"]\nprevious = []\n')
    km = lab.load_keymap(str(t))
    assert km["next"] == ["n", "ArrowRight"] and km["previous"] == []
    y = tmp_path / "keys.yaml"
    y.write_text("template: T\n")
    assert lab.load_keymap(str(y))["template"] == ["t"]
    y.write_text("save_next: s\n")  # s moves from SAM mode to saving
    km = lab.load_keymap(str(y))
    assert km["save_next"] == ["s"] and km["sam"] == []


@pytest.mark.parametrize("text,match", [
    ('{"jump": "j"}', r"unknown action 'jump': valid actions are quit, next, previous, "
                      r"save_next, undo, reset, debug, template, finish, grabcut, sam, "
                      r"automatic, escape, help$"),
    ('{"undo": "3"}', r"undo = '3': the keys 1-9 pick colours"),
    ('{"next": "x", "undo": "X"}', r"key 'x' is bound to both 'next' and 'undo'.*valid actions"),
    ('{"next": 3}', r"next = 3 is not a key or a list of keys"),
    ('{"next": "n",}', r"invalid JSON"),
], ids=["unknown", "digit", "twice", "type", "syntax"])
def test_keymap_errors(tmp_path, text: str, match: str) -> None:
    p = tmp_path / "keys.json"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        lab.load_keymap(str(p))
    assert "\n" not in str(e.value)


def test_doctests() -> None:
    import icas_ray.label._colour
    import icas_ray.label.coco
    import icas_ray.label.export
    import icas_ray.label.keymap
    import icas_ray.label.propagate

    for mod in (lab, _rle, icas_ray.label._colour, icas_ray.label.coco, icas_ray.label.export,
                icas_ray.label.keymap, icas_ray.label.propagate):
        assert doctest.testmod(mod).failed == 0, mod.__name__


def test_import_stays_light() -> None:
    import subprocess
    import sys

    code = ("import sys, icas_ray.label; "
            "print(sorted(m for m in ('torch', 'ray', 'pycocotools') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- proposals -----------------------------------------------------------------------------------
def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


@pytest.fixture(scope="module")
def astronaut() -> tuple[np.ndarray, np.ndarray]:
    """A 320x320 photo and the mask of one object on it (the face and helmet)."""
    from skimage import data

    img = cv2.resize(data.astronaut(), (320, 320), interpolation=cv2.INTER_AREA)
    mask = np.zeros((320, 320), np.uint8)
    cv2.ellipse(mask, (150, 110), (50, 70), 0, 0, 360, 1, -1)
    return np.ascontiguousarray(img), mask.astype(bool)


def _moved(img: np.ndarray, mask: np.ndarray, *, shift=(0, 0), angle=0.0, scale=1.0,
           crop=None) -> tuple[np.ndarray, np.ndarray]:
    """The image and its mask rotated/scaled about the centre, shifted, then cropped."""
    h, w = mask.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += shift
    out = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    mo = cv2.warpAffine(mask.astype(np.float32), m, (w, h)) >= 0.5
    y0, y1, x0, x1 = crop or (0, h, 0, w)
    return np.ascontiguousarray(out[y0:y1, x0:x1]), mo[y0:y1, x0:x1]


COPIES = {
    "shifted": dict(shift=(18, -12)),
    "cropped": dict(crop=(25, 300, 30, 290)),
    "rotated": dict(angle=4.0),
    "rotated-scaled-cropped": dict(angle=-3.0, scale=0.75, crop=(30, 280, 20, 300)),
}


@pytest.mark.parametrize("how", list(COPIES), ids=list(COPIES))
@pytest.mark.parametrize("methods", [("features", "template"), ("template",)],
                         ids=["features", "template"])
def test_propose_on_moved_copies_overlaps_the_truth(astronaut, how: str, methods) -> None:
    img, mask = astronaut
    target, truth = _moved(img, mask, **COPIES[how])
    p = lab.propose(img, {RED: mask}, target, methods=methods)
    assert p.method == ("affine" if methods[0] == "features" else "template")
    assert set(p.masks) == {RED} and p.masks[RED].shape == truth.shape
    assert _iou(p.masks[RED], truth) >= 0.9
    assert 0.8 <= p.score <= 1.0
    if p.method == "affine":  # the transform also carries prompts: the face centre lands
        centre = lab.carry_points(np.array([[150.0, 110.0]]), p.transform)[0]
        ys, xs = np.nonzero(truth)
        assert np.hypot(centre[0] - xs.mean(), centre[1] - ys.mean()) < 4


def test_propose_fits_a_homography_to_another_viewpoint(astronaut) -> None:
    img, mask = astronaut
    corners = np.float32([[0, 0], [320, 0], [320, 320], [0, 320]])
    moved = np.float32([[20, 10], [300, 30], [310, 300], [5, 290]])
    h = cv2.getPerspectiveTransform(corners, moved)
    target = cv2.warpPerspective(img, h, (320, 320), borderMode=cv2.BORDER_REFLECT)
    truth = cv2.warpPerspective(mask.astype(np.float32), h, (320, 320)) >= 0.5
    p = lab.propose(img, {RED: mask}, target)
    assert p.method == "homography" and p.score > 0.9
    assert _iou(p.masks[RED], truth) >= 0.95


def test_propose_snaps_to_the_target_segments(astronaut) -> None:
    from icas_ray.segment import segment

    img, mask = astronaut
    target, truth = _moved(img, mask, angle=3.0, scale=0.9, crop=(10, 300, 15, 310))
    labels = segment(target, "superpixel", region_size=20, algorithm="slico")
    p = lab.propose(img, {RED: mask}, target, target_labels=labels)
    snapped_truth = lab.snap_to_segments(labels, {RED: truth})
    assert _iou(p.masks[RED], snapped_truth[RED]) >= 0.8
    # every segment is wholly in or out of the proposal, and no edge pixel is painted
    units, n = lab.segment_units(labels)
    inside = np.bincount(units[p.masks[RED]], minlength=n + 1)
    sizes = np.bincount(units.ravel(), minlength=n + 1)
    assert np.all((inside[1:] == 0) | (inside[1:] == sizes[1:]))
    assert not p.masks[RED][labels == 0].any()
    assert lab.clicks_to_paint(labels, snapped_truth, start=p.masks) <= \
        0.2 * lab.clicks_to_paint(labels, snapped_truth)


def test_propose_declines_an_unrelated_image_and_empty_masks(astronaut) -> None:
    from skimage import data

    img, mask = astronaut
    other = cv2.resize(data.coffee(), (300, 200))
    p = lab.propose(img, {RED: mask}, other)
    assert p.masks == {} and p.method == "none" and p.score < 0.25
    p = lab.propose(img, {RED: np.zeros_like(mask)}, img)
    assert p == lab.Proposal({}, 0.0, "none")
    with pytest.raises(InputError, match="expected the source image's"):
        lab.propose(img, {RED: mask[:10]}, img)
    with pytest.raises(InputError, match="proposal method 'sam' is unknown"):
        lab.propose(img, {RED: mask}, img, methods=("sam",))


# -- segments and clicks -------------------------------------------------------------------------
# 1 1 2 2 1      label 1 appears twice, not connected: two click units
# 1 1 2 2 0
# 4 4 0 5 5      0 = edge: never painted, never clicked
# 4 4 0 5 5
LABELS = np.array([[1, 1, 2, 2, 1], [1, 1, 2, 2, 0], [4, 4, 0, 5, 5], [4, 4, 0, 5, 5]], np.int32)


def _m(*cells: tuple[int, int]) -> np.ndarray:
    m = np.zeros(LABELS.shape, bool)
    for r, c in cells:
        m[r, c] = True
    return m


def test_clicks_to_paint_on_a_hand_built_label_map() -> None:
    units, n = lab.segment_units(LABELS)
    assert n == 5 and units[0, 4] != units[0, 0]
    left = (LABELS == 1) & (np.arange(5) < 2)  # the left run of label 1
    truth = {RED: left | (LABELS == 2), GREEN: LABELS == 5}
    assert lab.clicks_to_paint(LABELS, truth) == 3  # two red segments, one green
    assert lab.clicks_to_paint(LABELS, truth, start=truth) == 0
    # right colours, one segment green instead of red: one fill
    swapped = {RED: left, GREEN: (LABELS == 2) | (LABELS == 5)}
    assert lab.clicks_to_paint(LABELS, truth, start=swapped) == 1
    # one segment too many (label 4) and the lone label-1 pixel: two unfills
    extra = {RED: truth[RED] | (LABELS == 4) | _m((0, 4)), GREEN: truth[GREEN]}
    assert lab.clicks_to_paint(LABELS, truth, start=extra) == 2
    # a segment counts as painted when its majority colour covers the coverage
    three_quarters = {RED: left | _m((0, 2), (0, 3), (1, 2)), GREEN: truth[GREEN]}
    assert lab.clicks_to_paint(LABELS, truth, start=three_quarters) == 0
    assert lab.clicks_to_paint(LABELS, truth, start=three_quarters, coverage=0.9) == 1
    one_quarter = {RED: left | _m((0, 2)), GREEN: truth[GREEN]}
    assert lab.clicks_to_paint(LABELS, truth, start=one_quarter) == 1
    # paint on edge pixels only changes no segment
    assert lab.clicks_to_paint(LABELS, {RED: LABELS == 0}) == 0


def test_snap_to_segments() -> None:
    rough = {RED: _m((0, 2), (0, 3), (1, 2), (2, 2), (3, 2)), GREEN: _m((2, 0))}
    snapped = lab.snap_to_segments(LABELS, rough)
    assert list(snapped) == [RED] and np.array_equal(snapped[RED], LABELS == 2)  # edges dropped
    assert lab.snap_to_segments(LABELS, rough, coverage=1.0) == {}
    with pytest.raises(InputError, match="coverage 0 is out of range"):
        lab.snap_to_segments(LABELS, rough, coverage=0)
    with pytest.raises(InputError, match="expected the label map's"):
        lab.clicks_to_paint(LABELS, {RED: np.zeros((2, 2), bool)})


# -- the generated ground truth and the clicks study ---------------------------------------------
def test_near_duplicate_objects_are_the_data_set_images(tmp_path) -> None:
    from icas_ray.datasets import make_dataset, near_duplicate_objects, read_truth

    make_dataset("near-duplicates", str(tmp_path), count=4, seed=5, classes=2)
    items = near_duplicate_objects(4, seed=5, classes=2)
    assert {d.file: d.label for d in items} == read_truth(str(tmp_path))
    for d in items:
        on_disk = np.asarray(Image.open(tmp_path / d.file).convert("RGB"))
        assert np.array_equal(d.image, on_disk)
        assert d.object.shape == d.image.shape[:2] and 0.005 < d.object.mean() < 0.45
    # the two variants of one photo show the same object: moved back onto the photo they agree
    a, b = items[0], items[2]
    assert a.label == b.label and a.variant != b.variant


def test_clicks_study_saves_clicks_on_a_small_cluster() -> None:
    r = lab.clicks_study(count=6, classes=2)  # superpixel (MSLIC), two clusters of three
    assert r["clusters"] == 2 and r["targets"] == 4 and len(r["rows"]) == 6
    assert r["skipped_clusters"] == [] and r["median_image_saving"] >= 0.5
    assert r["saving"] >= 0.5, r
    assert r["clicks_with_proposal"] <= 0.5 * r["clicks_alone"]
    assert r["cluster_clicks_with_proposal"] < r["cluster_clicks_alone"]
    assert r["mean_object_iou"] >= 0.9 and r["mean_iou"] >= 0.8, r
    for row in r["rows"]:
        if row["role"] == "target":
            assert row["clicks_with_proposal"] < row["clicks_alone"], row
            assert row["method"] in ("affine", "homography", "template")
    json.dumps(r)  # the bench writes it as JSON
