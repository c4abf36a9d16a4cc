"""Ray orchestration: Ray Data reading, feature extraction, per-batch similarity, merge, writing.

Only this package (and :mod:`icas_ray.serve`) imports Ray; everything it runs is pure code
from the other modules.
"""
