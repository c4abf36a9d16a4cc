"""Segmentation for labelling: ten methods, the painting engine and mask export.

Methods are pure functions ``image -> label map`` behind a registry; label maps are
``(H, W) int32`` with segments numbered from 1 and 0 = edge/cut.

============  ===============================================================================
name          what it does
============  ===============================================================================
edge          regions between denoised Sobel edges (OpenCV), edges 0
superpixel    SLIC / SLICO / MSLIC superpixels (OpenCV ximgproc)
kmeans        k-means on colour and position (OpenCV)
slickmeans    superpixels clustered by k-means on centre and colour
chanvese      Chan-Vese level set cut into bins (scikit-image); alias ``chanvase``
felzenszwalb  Felzenszwalb graph segmentation (scikit-image)
quickshift    quick shift mode seeking (scikit-image)
graph         graph segmentation (OpenCV ximgproc)
grabcut       GrabCut from a rectangle and fg/bg/probable scribbles (OpenCV)
sam           Segment Anything, automatic or prompted, through a SamBackend
============  ===============================================================================

Example:
    >>> import numpy as np
    >>> img = np.zeros((32, 48, 3), np.uint8); img[:, 24:] = 200
    >>> labels = segment(img, "graph", sigma=0, min_segment_size=20)
    >>> sorted(np.unique(labels).tolist())
    [1, 2]
    >>> p = Painter(img, labels)
    >>> p.fill(40, 10, (204, 0, 0))
    True
    >>> sorted(p.masks())
    [(204, 0, 0)]
"""

from __future__ import annotations

from icas_ray.segment import methods as _methods  # noqa: F401  (registers the methods)
from icas_ray.segment._labels import fill_unlabelled, partition_labels
from icas_ray.segment._registry import (
    SegmentMethod,
    check_image,
    get_method,
    method_names,
    register,
    segment,
)
from icas_ray.segment.masks import encode_mask, export_masks, mask_file_name, parse_mask_file_name
from icas_ray.segment.paint import Painter, Template, derive_attention, derive_mask, match_template
from icas_ray.segment.preview import preview_methods, segment_all
from icas_ray.segment.render import colorize, contact_sheet, overlay_boundaries
from icas_ray.segment.store import (
    PresegLayout,
    decode_labels,
    default_output,
    encode_labels,
    read_labels,
    relative_path,
)

__all__ = [
    "Painter",
    "PresegLayout",
    "SegmentMethod",
    "Template",
    "check_image",
    "colorize",
    "contact_sheet",
    "decode_labels",
    "default_output",
    "derive_attention",
    "derive_mask",
    "encode_labels",
    "encode_mask",
    "export_masks",
    "fill_unlabelled",
    "get_method",
    "mask_file_name",
    "match_template",
    "method_names",
    "overlay_boundaries",
    "parse_mask_file_name",
    "partition_labels",
    "preview_methods",
    "read_labels",
    "register",
    "relative_path",
    "segment",
    "segment_all",
]
