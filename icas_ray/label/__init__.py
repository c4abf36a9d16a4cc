"""The labelling library behind ``icas label``: exports, labels files, keymaps, proposals.

No Ray and no torch: it runs with the base install plus the ``label`` extra.

* :mod:`~icas_ray.label.export`: the original's mask files (:func:`write_masks`,
  :func:`read_masks`), an indexed PNG, COCO instances (:func:`export_coco`) and the labels
  file colour -> class name (:func:`load_labels_file`).
* :mod:`~icas_ray.label.keymap`: the page's keys (:data:`DEFAULT_KEYMAP`, :func:`load_keymap`).
* :mod:`~icas_ray.label.propagate`: whole-cluster labelling: :func:`propose` carries the masks
  of one image to a near-duplicate; :func:`clicks_to_paint` counts the clicks left.
* :mod:`~icas_ray.label.study`: :func:`clicks_study`, the clicks saved on generated data.

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
from icas_ray.label.propagate import (
    Proposal,
    carry_points,
    clicks_to_paint,
    propose,
    segment_units,
    snap_to_segments,
)
from icas_ray.label.study import clicks_study

__all__ = [
    "ACTIONS",
    "CocoImage",
    "Colour",
    "DEFAULT_KEYMAP",
    "Proposal",
    "carry_points",
    "clicks_study",
    "clicks_to_paint",
    "coco_dict",
    "colour_text",
    "export_coco",
    "indexed_file_name",
    "key_actions",
    "load_keymap",
    "load_labels_file",
    "normalise_key",
    "parse_colour",
    "propose",
    "read_indexed",
    "read_masks",
    "segment_units",
    "snap_to_segments",
    "write_masks",
]
