"""Feature methods for clustering, one module each, behind a registry.

A method turns decoded images into a dict of stacked feature arrays (leading axis = image)
and scores pairs of feature sets with a vectorized kernel. Similarities are "higher = more
alike", and two images are linked when their similarity is greater than the threshold.

==========  =====================================================  ===================
name        similarity                                             range
==========  =====================================================  ===================
imagehash   1 - Hamming distance / bits of the perceptual hashes   [0, 1]
minhash     share of equal MinHash values of Harris-corner sets    [0, 1]
SSIM        mean structural similarity of grey images              [-1, 1]
ORB         share of good cross-checked ORB descriptor matches     [0, 1]
TM          1 - normalised squared difference of grey images       (-inf, 1], 1 = equal
==========  =====================================================  ===================

Example:
    >>> import numpy as np
    >>> m = get_method("imagehash")
    >>> imgs = [np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)]
    >>> m.pairwise(m.extract(imgs), m.extract(imgs)).shape
    (2, 2)
"""

from __future__ import annotations

from icas_ray.features._base import (
    Features,
    FeatureMethod,
    concat_features,
    get_method,
    method_class,
    method_names,
    register,
    take_features,
)

# Importing the modules registers the methods.
from icas_ray.features import embedding as _embedding  # noqa: F401,E402
from icas_ray.features import imagehash as _imagehash  # noqa: F401,E402
from icas_ray.features import minhash as _minhash  # noqa: F401,E402
from icas_ray.features import orb as _orb  # noqa: F401,E402
from icas_ray.features import ssim as _ssim  # noqa: F401,E402
from icas_ray.features import tm as _tm  # noqa: F401,E402

__all__ = [
    "Features",
    "FeatureMethod",
    "concat_features",
    "get_method",
    "method_class",
    "method_names",
    "register",
    "take_features",
]
