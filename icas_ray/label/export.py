"""What a labelling session writes: the original's mask files, an indexed PNG, COCO, labels.

* :func:`write_masks` / :func:`read_masks`: one binary PNG per colour,
  ``<stem>_mask_(R:r,G:g,B:b).png`` (the original's names, via :mod:`icas_ray.segment.masks`),
  and on request ``<stem>_indexed.png``, a palette PNG: index 0 = unpainted, index k = the
  k-th painted colour in sorted order, the palette holding the colours.
* :func:`load_labels_file`: colour -> class name.
* :func:`export_coco`: a COCO instances file of a labelled folder (:mod:`icas_ray.label.coco`).

Every file is written with :meth:`Storage.write_bytes` (atomic: readers see the old file or the
new one), at a path built by :func:`icas_ray.paths.join_inside`.

Example:
    >>> import tempfile, numpy as np
    >>> from icas_ray.storage import Storage
    >>> out = tempfile.mkdtemp()
    >>> m = np.zeros((4, 6), bool); m[1:3, 2:5] = True
    >>> [p.rsplit("/", 1)[1] for p in write_masks(Storage(), out, "jet1", {(204, 0, 0): m})]
    ['jet1_mask_(R:204,G:0,B:0).png']
    >>> int(read_masks(Storage(), out, "jet1")[(204, 0, 0)].sum())
    6
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Mapping

import numpy as np

from icas_ray.errors import ConfigError, InputError
from icas_ray.label._colour import Colour, as_colour, parse_colour
from icas_ray.label._files import extension, parse_mapping, read_text
from icas_ray.label.coco import decode_mask, export_coco
from icas_ray.paths import join_inside
from icas_ray.segment.masks import encode_mask, mask_file_name, parse_mask_file_name
from icas_ray.storage import Storage

__all__ = [
    "INDEXED_SUFFIX",
    "export_coco",
    "indexed_file_name",
    "load_labels_file",
    "read_indexed",
    "read_masks",
    "write_masks",
]

logger = logging.getLogger(__name__)

INDEXED_SUFFIX = "_indexed.png"


def indexed_file_name(stem: str) -> str:
    """``<stem>_indexed.png``."""
    return f"{stem}{INDEXED_SUFFIX}"


def _check_stem(stem: str) -> str:
    if not stem or "/" in stem or "\\" in stem or stem in (".", ".."):
        raise InputError(f"image stem {stem!r} is invalid: expected a file name without "
                         "folder or extension, e.g. 'jet1'")
    return stem


def _check_masks(masks: Mapping[Colour, np.ndarray]) -> dict[Colour, np.ndarray]:
    out: dict[Colour, np.ndarray] = {}
    shape: tuple[int, ...] | None = None
    for colour, mask in masks.items():
        try:
            c = as_colour(colour)
        except (TypeError, ValueError) as e:
            raise InputError(f"mask colour {colour!r} is invalid: expected (R, G, B) with "
                             "0..255 values") from e
        m = np.asarray(mask)
        if m.ndim != 2 or (shape is not None and m.shape != shape):
            raise InputError(f"mask of colour {c} has shape {m.shape}: expected (H, W), the "
                             f"same for every colour{f' ({shape})' if shape else ''}")
        shape = m.shape
        out[c] = m.astype(bool)
    return out


def _children(storage: Storage, folder: str) -> list[str]:
    """Names of the files directly in ``folder`` (none if it does not exist)."""
    fs, path = storage.fs(folder)
    if not fs.exists(path) or not fs.isdir(path):
        return []
    return [posixpath.basename(str(p).rstrip("/")) for p in fs.ls(path, detail=False)]


def _mask_name(stem: str, colour: Colour) -> str:
    # mask_file_name takes an image name and drops its extension; give it one so that a stem
    # with dots ("a.b" of "a.b.jpg") keeps them.
    return mask_file_name(f"{stem}.png", colour)


def encode_indexed(masks: Mapping[Colour, np.ndarray]) -> bytes:
    """Palette PNG bytes of disjoint masks: index 0 unpainted, index k the k-th sorted colour.

    Raises:
        InputError: more than 255 colours, no mask, or two colours painting one pixel.
    """
    checked = _check_masks(masks)
    if not checked:
        raise InputError("no mask to write as an indexed PNG")
    colours = sorted(checked)
    if len(colours) > 255:
        raise InputError(f"{len(colours)} colours do not fit an indexed PNG: at most 255")
    shape = checked[colours[0]].shape
    index = np.zeros(shape, np.uint8)
    painted = np.zeros(shape, np.uint8)
    for k, c in enumerate(colours, start=1):
        index[checked[c]] = k
        painted += checked[c]
    if (painted > 1).any():
        raise InputError(f"{int((painted > 1).sum())} pixels carry two colours: an indexed PNG "
                         "needs disjoint masks")
    from PIL import Image

    img = Image.fromarray(index, mode="L")
    img = img.convert("P")
    palette = [0, 0, 0] + [v for c in colours for v in c]
    img.putpalette(palette + [0] * (768 - len(palette)))
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=False)
    return buf.getvalue()


def decode_indexed(data: bytes) -> dict[Colour, np.ndarray]:
    """The masks of an indexed PNG from :func:`encode_indexed` (index 0 = unpainted)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.mode != "P":
            raise InputError(f"indexed PNG has mode {img.mode!r}: expected 'P' (palette)")
        index = np.asarray(img)
        palette = img.getpalette() or []
    out: dict[Colour, np.ndarray] = {}
    for k in np.unique(index):
        if k == 0:
            continue
        rgb = palette[3 * int(k):3 * int(k) + 3]
        out[(int(rgb[0]), int(rgb[1]), int(rgb[2]))] = index == k
    return out


def write_masks(storage: Storage, output_dir: str, stem: str, masks: Mapping[Colour, np.ndarray],
                *, indexed: bool = False) -> list[str]:
    """Write the masks of one image; remove the files of colours no longer painted.

    Args:
        storage: file access (local or ``s3://``).
        output_dir: the folder of the image's masks (the original's ``<folder>_segmented``,
            or its sub-folder mirroring the image's).
        stem: the image's file name without extension (``jet1`` of ``jet1.jpg``).
        masks: (R, G, B) -> ``(H, W) bool``, e.g. :meth:`icas_ray.segment.Painter.masks`;
            an all-False mask is not written (and its old file is removed).
        indexed: also write ``<stem>_indexed.png`` (palette PNG, index 0 = unpainted); without
            it an old indexed file of this stem is removed, as it would show stale masks.

    Returns:
        The URIs written, mask files in colour order, then the indexed PNG.

    Raises:
        InputError: a bad stem, colour or mask shape; overlapping masks with ``indexed``.
        StorageError: a path would leave ``output_dir``, or the storage refused.
    """
    _check_stem(stem)
    painted = {c: m for c, m in _check_masks(masks).items() if m.any()}
    written: list[str] = []
    for colour in sorted(painted):
        uri = join_inside(output_dir, _mask_name(stem, colour))
        storage.write_bytes(uri, encode_mask(painted[colour]))
        written.append(uri)
    if indexed and painted:
        uri = join_inside(output_dir, indexed_file_name(stem))
        storage.write_bytes(uri, encode_indexed(painted))
        written.append(uri)
    keep = {_mask_name(stem, c) for c in painted}
    if indexed and painted:
        keep.add(indexed_file_name(stem))
    for name in _children(storage, output_dir):
        parsed = parse_mask_file_name(name)
        if name not in keep and ((parsed is not None and parsed[0] == stem)
                                 or name == indexed_file_name(stem)):
            storage.delete(join_inside(output_dir, name))
            logger.info("removed stale %s", name)
    logger.info("wrote %d file(s) of %s to %s", len(written), stem, output_dir)
    return written


def read_masks(storage: Storage, output_dir: str, stem: str) -> dict[Colour, np.ndarray]:
    """The masks :func:`write_masks` wrote for ``stem`` (empty if none), (R, G, B) -> bool."""
    _check_stem(stem)
    out: dict[Colour, np.ndarray] = {}
    for name in sorted(_children(storage, output_dir)):
        parsed = parse_mask_file_name(name)
        if parsed is None or parsed[0] != stem:
            continue
        uri = join_inside(output_dir, name)
        out[parsed[1]] = decode_mask(storage.read_bytes(uri), uri)
    return out


def read_indexed(storage: Storage, output_dir: str, stem: str) -> dict[Colour, np.ndarray]:
    """The masks of ``<stem>_indexed.png`` in ``output_dir``."""
    uri = join_inside(output_dir, indexed_file_name(_check_stem(stem)))
    return decode_indexed(storage.read_bytes(uri))


# -- labels file ---------------------------------------------------------------------------------
def _parse_csv_labels(text: str, source: str) -> dict[Colour, str]:
    out: dict[Colour, str] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",", 3)]
        if n == 1 and [p.lower() for p in parts[:3]] in (["r", "g", "b"], ["red", "green", "blue"]):
            continue  # a header
        colour = parse_colour(",".join(parts[:3])) if len(parts) == 4 else None
        name = parts[3].strip().strip('"') if len(parts) == 4 else ""
        if colour is None or not name:
            raise ConfigError(f"labels file {source} line {n}: {line!r} is not 'r,g,b,name' "
                              "with 0..255 values, e.g. '204,0,0,plane'")
        if colour in out:
            raise ConfigError(f"labels file {source} line {n}: colour {colour} is named twice "
                              f"({out[colour]!r} and {name!r})")
        out[colour] = name
    return out


def parse_labels(data: Mapping[str, object], source: str) -> dict[Colour, str]:
    """Colour -> name from a mapping ``{"204,0,0" or "#cc0000": "plane"}``."""
    out: dict[Colour, str] = {}
    for key, value in data.items():
        colour = parse_colour(str(key))
        if colour is None:
            raise ConfigError(f"labels file {source}: key {key!r} is not a colour: expected "
                              "'R,G,B' with 0..255 values or '#rrggbb'")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"labels file {source}: the name of {key!r} is {value!r}: expected "
                              "a non-empty string")
        if colour in out:
            raise ConfigError(f"labels file {source}: colour {colour} is named twice "
                              f"({out[colour]!r} and {value!r})")
        out[colour] = value.strip()
    return out


def load_labels_file(path_or_uri: str, storage: Storage | None = None) -> dict[Colour, str]:
    """Colour -> class name from a small labels file (local or ``s3://``).

    Formats, by extension: ``.json`` ``{"204,0,0": "plane", "#00cc00": "car"}``; ``.toml``
    (``"204,0,0" = "plane"``); ``.yaml``/``.yml`` (``"#cc0000": plane``, needs pyyaml); any
    other extension (``.csv``, ``.txt``) is CSV, one ``r,g,b,name`` line per class (blank lines,
    ``#`` comments and an ``r,g,b,name`` header are skipped).

    Raises:
        InputError: the file does not exist.
        ConfigError: a bad line or key, named in a one-line message.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "labels.csv")
        >>> _ = open(p, "w").write("204,0,0,plane\\n0,204,0,car\\n")
        >>> load_labels_file(p)
        {(204, 0, 0): 'plane', (0, 204, 0): 'car'}
    """
    text = read_text(path_or_uri, storage, "labels file")
    ext = extension(path_or_uri)
    source = path_or_uri
    if ext in (".json", ".toml", ".yaml", ".yml"):
        return parse_labels(parse_mapping(text, ext, source, "labels file"), source)
    return _parse_csv_labels(text, source)
