"""Every method on one image, side by side (the seed's ``preview_methods``, without windows)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from icas_ray.errors import ConfigError
from icas_ray.images import resize
from icas_ray.segment._registry import ImageTooSmallError, check_image, get_method, method_names
from icas_ray.segment.render import contact_sheet

__all__ = ["preview_methods", "segment_all"]

logger = logging.getLogger(__name__)


def segment_all(image: np.ndarray, *, methods: Sequence[str] | None = None,
                params: Mapping[str, Mapping[str, Any]] | None = None,
                backend: Any = None,
                ) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, float]]:
    """Run several methods on one image.

    Args:
        image: ``(H, W, 3) uint8`` RGB.
        methods: names to run; None = every method, ``sam`` only when ``backend`` is given.
        params: method name -> parameter overrides.
        backend: a SAM backend for ``sam``.

    Returns:
        ``(labels, notes, seconds)``: label map per method that ran, a one-line note per method
        that could not (bad parameters for this image, an image below its minimum size, no
        backend), seconds per method.
    """
    params = {get_method(k).name: v for k, v in (params or {}).items()}
    if methods is None:
        names = [m for m in method_names()
                 if not get_method(m).needs_backend or backend is not None]
    else:
        names = [get_method(m).name for m in methods]
    results: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in names:
        method = get_method(name)
        overrides = dict(params.get(name, {}))
        if method.needs_backend:
            overrides["backend"] = backend
        p = method.make_params(overrides)  # bad parameters are the user's error: raise
        t0 = time.perf_counter()
        try:
            results[name] = method(image, p)
        except (ConfigError, ImageTooSmallError, cv2.error) as e:
            notes[name] = str(e).strip().splitlines()[-1]
            logger.warning("%s: %s", name, notes[name])
        seconds[name] = time.perf_counter() - t0
        logger.info("%-12s %6.2f s", name, seconds[name])
    return results, notes, seconds


def preview_methods(image: np.ndarray, *, max_side: int | None = 384, side: int = 256,
                    columns: int = 4, methods: Sequence[str] | None = None,
                    params: Mapping[str, Mapping[str, Any]] | None = None,
                    backend: Any = None) -> np.ndarray:
    """A picture of every method's segments of ``image``, one titled panel per method.

    Args:
        image: ``(H, W, 3) uint8`` RGB.
        max_side: shrink the image to this longest side before segmenting (the slow methods
            take seconds per 512x512 image); None = full size.
        side: panel size in the picture.
        columns: panels per row.
        methods, params, backend: as :func:`segment_all`.

    Returns:
        ``(H', W', 3) uint8`` RGB picture.
    """
    rgb = check_image(image)
    h, w = rgb.shape[:2]
    if max_side is not None and max(h, w) > max_side:
        f = max_side / max(h, w)
        rgb = resize(rgb, (max(1, round(w * f)), max(1, round(h * f))))
    results, notes, _ = segment_all(rgb, methods=methods, params=params, backend=backend)
    return contact_sheet(rgb, results, side=side, columns=columns, notes=notes)
