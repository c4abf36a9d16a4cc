"""The labelling library behind ``icas label``: exports, labels files, keymaps, proposals.

No Ray and no torch: it runs with the base install plus the ``label`` extra.

* :mod:`~icas_ray.label.export`: the original's mask files (:func:`write_masks`,
  :func:`read_masks`), an indexed PNG, COCO instances (:func:`export_coco`) and the labels
  file colour -> class name (:func:`load_labels_file`).
* :mod:`~icas_ray.label.keymap`: the page's keys (:data:`DEFAULT_KEYMAP`, :func:`load_keymap`).

Colours are ``(r, g, b)`` int tuples; masks are ``(H, W) bool`` arrays.
"""

from __future__ import annotations

from icas_ray.label._colour import Colour, colour_text, parse_colour
from icas_ray.label.coco import CocoImage, coco_dict
from icas_ray.label.export import (
    export_coco,
    indexed_file_name,
    load_labels_file,
    read_indexed,
    read_masks,
    write_masks,
)
from icas_ray.label.keymap import ACTIONS, DEFAULT_KEYMAP, key_actions, load_keymap, normalise_key

__all__ = [
    "ACTIONS",
    "CocoImage",
    "Colour",
    "DEFAULT_KEYMAP",
    "coco_dict",
    "colour_text",
    "export_coco",
    "indexed_file_name",
    "key_actions",
    "load_keymap",
    "load_labels_file",
    "normalise_key",
    "parse_colour",
    "read_indexed",
    "read_masks",
    "write_masks",
]
