"""Pictures of label maps: colours per segment, boundaries over the image, preview sheets."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from icas_ray.images import resize

__all__ = ["boundaries", "colorize", "contact_sheet", "overlay_boundaries"]

logger = logging.getLogger(__name__)


def colorize(labels: np.ndarray) -> np.ndarray:
    """Distinct, stable colours per label: ``(H, W, 3) uint8`` RGB; label 0 (edge) is black.

    The colour of a label depends only on its value (a hash), so previews of one image are
    comparable across runs.
    """
    lab = np.asarray(labels, dtype=np.int64)
    values, inverse = np.unique(lab, return_inverse=True)
    v = values.astype(np.uint64)
    # A cheap integer hash (splitmix-style) spread over three bytes, kept away from black.
    with np.errstate(over="ignore"):
        z = (v + np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(31)
    palette = np.stack([(z >> np.uint64(s)) & np.uint64(0xFF) for s in (0, 8, 16)], axis=1)
    palette = (palette.astype(np.uint16) * 200 // 255 + 55).astype(np.uint8)
    palette[values == 0] = 0
    return palette[inverse.reshape(lab.shape)]


def boundaries(labels: np.ndarray) -> np.ndarray:
    """``(H, W) bool``: pixels whose right or lower neighbour has another label, and edges."""
    lab = np.asarray(labels)
    out = lab == 0
    out[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    out[:-1, :] |= lab[:-1, :] != lab[1:, :]
    return out


def overlay_boundaries(image: np.ndarray, labels: np.ndarray,
                       color: tuple[int, int, int] = (255, 230, 0)) -> np.ndarray:
    """The image with segment boundaries drawn in ``color``: ``(H, W, 3) uint8``."""
    out = np.array(image, dtype=np.uint8, copy=True)
    out[boundaries(labels)] = color
    return out


def _panel(picture: np.ndarray, title: str, side: int) -> np.ndarray:
    h, w = picture.shape[:2]
    f = side / max(h, w)
    pic = resize(picture, (max(1, round(w * f)), max(1, round(h * f))))
    bar = 22
    panel = np.full((side + bar, side, 3), 255, np.uint8)
    panel[bar:bar + pic.shape[0], :pic.shape[1]] = pic
    cv2.putText(panel, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return panel


def contact_sheet(image: np.ndarray, results: Mapping[str, np.ndarray], *, side: int = 256,
                  columns: int = 4, notes: Mapping[str, str] | None = None) -> np.ndarray:
    """The image and every method's segments side by side, one titled panel each.

    Args:
        image: ``(H, W, 3) uint8`` RGB.
        results: method name -> label map of ``image``.
        side: panel size in pixels.
        columns: panels per row.
        notes: method name -> a short note to show instead of a result (e.g. an error).

    Returns:
        ``(rows * (side + 22), columns * side, 3) uint8`` RGB sheet.
    """
    panels = [_panel(image, "image", side)]
    for name, labels in results.items():
        n = len(np.unique(labels))
        panels.append(_panel(overlay_boundaries(colorize(labels), labels, (0, 0, 0)),
                             f"{name} ({n})", side))
    for name, note in (notes or {}).items():
        blank = np.full((side, side, 3), 235, np.uint8)
        cv2.putText(blank, note[:40], (4, side // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (90, 0, 0), 1,
                    cv2.LINE_AA)
        panels.append(_panel(blank, name, side))
    columns = max(1, min(columns, len(panels)))
    rows: list[np.ndarray] = []
    for i in range(0, len(panels), columns):
        row: Sequence[np.ndarray] = panels[i:i + columns]
        row = list(row) + [np.full_like(panels[0], 255)] * (columns - len(row))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)
