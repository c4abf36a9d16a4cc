"""The ten segmentation methods; importing this package registers them.

Each module holds one method (or a small family) as a pure function ``(image, params) ->
label map`` and its frozen Params dataclass with the seed's defaults.
"""

from __future__ import annotations

from icas_ray.segment.methods import chanvese, edge, felzenszwalb, grabcut  # noqa: F401
from icas_ray.segment.methods import graph, kmeans, quickshift, sam, superpixel  # noqa: F401
from icas_ray.segment.methods.chanvese import ChanveseParams
from icas_ray.segment.methods.edge import EdgeParams
from icas_ray.segment.methods.felzenszwalb import FelzenszwalbParams
from icas_ray.segment.methods.grabcut import GrabcutParams
from icas_ray.segment.methods.graph import GraphParams
from icas_ray.segment.methods.kmeans import KmeansParams
from icas_ray.segment.methods.quickshift import QuickshiftParams
from icas_ray.segment.methods.sam import SamParams
from icas_ray.segment.methods.superpixel import SlickmeansParams, SuperpixelParams

__all__ = [
    "ChanveseParams",
    "EdgeParams",
    "FelzenszwalbParams",
    "GrabcutParams",
    "GraphParams",
    "KmeansParams",
    "QuickshiftParams",
    "SamParams",
    "SlickmeansParams",
    "SuperpixelParams",
]
