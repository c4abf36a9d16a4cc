"""The painting state of one image: fill, unfill, cut, undo, reset, template painting.

Pure and screen-free: the labelling client (or a test) calls these methods with pixel
coordinates, and reads back :attr:`Painter.result`, :attr:`Painter.painted` and
:meth:`Painter.masks`. Coordinates are ``(x, y)`` = (column, row), as mouse events give them.

Behaviour follows the seed's painter:

* ``fill`` on an unpainted pixel paints its segment (the 4-connected pixels with the same
  label); on a painted pixel it repaints the 4-connected pixels painted with that colour.
* ``unfill`` restores the 4-connected pixels painted with the clicked colour to the image.
* ``cut`` draws one-pixel lines between consecutive points; those pixels become edge (label
  0), unpainted and raw, which splits the segments they cross.
* every action that changes something is one undo step (a whole stroke is one step); reset
  is undoable too.
* template painting finds each template in the image (masked squared-difference matching)
  and paints its segment there.

Unlike the seed, clicking an edge pixel fills nothing, and colour floods never leak into
unpainted pixels that happen to have the clicked colour. Undo steps store only the pixels an
action touched, so long sessions on large images stay small.

Example:
    >>> import numpy as np
    >>> img = np.zeros((4, 6, 3), np.uint8)
    >>> labels = np.array([[1, 1, 1, 2, 2, 2]] * 4, np.int32)
    >>> p = Painter(img, labels)
    >>> p.fill(0, 0, (255, 0, 0))
    True
    >>> int(p.painted.sum()), p.colors()
    (12, [(255, 0, 0)])
    >>> p.undo()
    1
    >>> int(p.painted.sum())
    0
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from icas_ray.errors import ConfigError, InputError
from icas_ray.segment._registry import check_image

__all__ = ["Color", "Painter", "Template", "derive_attention", "derive_mask", "match_template"]

logger = logging.getLogger(__name__)

Color = tuple[int, int, int]
Point = tuple[int, int]


def _color(color: Iterable[int]) -> Color:
    c = tuple(int(v) for v in color)
    if len(c) != 3 or not all(0 <= v <= 255 for v in c):
        raise ConfigError(f"colour {tuple(color)!r} is invalid: "
                          "expected (R, G, B) with 0..255 values")
    return c  # type: ignore[return-value]


def _flood(values: np.ndarray, row: int, col: int) -> np.ndarray:
    """4-connected pixels of ``values`` equal to the value at ``(row, col)``: ``(H, W) bool``."""
    from skimage.morphology import flood

    return np.asarray(flood(values, (row, col), connectivity=1), dtype=bool)


# -- templates ---------------------------------------------------------------------------------
def derive_attention(template: np.ndarray) -> np.ndarray:
    """Where a template is compared: everything but its black background.

    As the seed does, the template is framed with one black pixel and the black pixels
    connected (4-connectivity) to that frame are ignored; black inside the object counts.

    Args:
        template: ``(h, w, 3) uint8``.

    Returns:
        ``(h, w) bool``, True where the template is compared.
    """
    framed = cv2.copyMakeBorder(template, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    black = np.all(framed == 0, axis=2).astype(np.uint8)
    outside = _flood(black, 0, 0)
    return ~outside[1:-1, 1:-1]


def derive_mask(segment: np.ndarray) -> np.ndarray:
    """Which pixels of a template's segment paint: its non-black pixels, ``(h, w) bool``."""
    return ~np.all(np.asarray(segment) == 0, axis=2)


def _binary(mask: np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m.any(axis=2)
    if m.shape != shape:
        raise InputError(f"template {what} has shape {m.shape}: "
                         f"expected {shape}, the template's size")
    return m.astype(bool)


@dataclass(frozen=True)
class Template:
    """A template to find and the paint to put where it is found.

    Args:
        template: ``(h, w, 3) uint8`` RGB pattern searched in the image.
        segment: ``(h, w, 3) uint8`` RGB paint placed over each match.
        attention: ``(h, w)`` (or ``(h, w, 3)``) non-zero where the template is compared;
            None = derived with :func:`derive_attention`.
        mask: ``(h, w)`` (or ``(h, w, 3)``) non-zero where the segment paints; None = derived
            with :func:`derive_mask`.
    """

    template: np.ndarray
    segment: np.ndarray
    attention: np.ndarray | None = None
    mask: np.ndarray | None = None

    def resolved(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(template, attention bool, segment, mask bool)`` with checked, equal sizes."""
        tpl = check_image(self.template)
        seg = check_image(self.segment)
        shape = tpl.shape[:2]
        if seg.shape[:2] != shape:
            raise InputError(f"template segment has shape {seg.shape[:2]}: expected {shape}, "
                             "the template's size")
        att = (derive_attention(tpl) if self.attention is None
               else _binary(self.attention, shape, "attention"))
        msk = derive_mask(seg) if self.mask is None else _binary(self.mask, shape, "mask")
        return tpl, att, seg, msk


def match_template(image: np.ndarray, template: np.ndarray, attention: np.ndarray | None = None,
                   threshold: float | None = None) -> list[Point]:
    """Top-left corners ``(x, y)`` where ``template`` matches ``image``.

    Matching is OpenCV's normalised squared difference restricted to ``attention``: 0 is a
    perfect match.

    Args:
        image: ``(H, W, 3) uint8``.
        template: ``(h, w, 3) uint8`` with ``h <= H`` and ``w <= W``.
        attention: ``(h, w) bool`` or None (compare every pixel).
        threshold: every position scoring ``<= threshold``; None = the single best position.
    """
    h, w = template.shape[:2]
    if h > image.shape[0] or w > image.shape[1]:
        raise InputError(f"template of {w}x{h} pixels is larger than the {image.shape[1]}x"
                         f"{image.shape[0]} image: crop or resize it")
    mask = None
    if attention is not None and not attention.all():
        if not attention.any():
            raise InputError("template attention is empty: it must select some template pixels")
        mask = attention.astype(np.uint8)
    scores = cv2.matchTemplate(image, template, cv2.TM_SQDIFF_NORMED, mask=mask)
    scores = np.nan_to_num(scores, nan=np.inf, posinf=np.inf, neginf=np.inf)
    if threshold is None:
        r, c = np.unravel_index(int(np.argmin(scores)), scores.shape)
        return [(int(c), int(r))]
    rows, cols = np.nonzero(scores <= threshold)
    return [(int(c), int(r)) for r, c in zip(rows, cols)]


# -- the painter -------------------------------------------------------------------------------
class _Step:
    """Old values of the pixels one action touched (flat indices into the image)."""

    __slots__ = ("index", "result", "labels", "painted")

    def __init__(self, index: np.ndarray, result: np.ndarray, labels: np.ndarray,
                 painted: np.ndarray) -> None:
        self.index, self.result, self.labels, self.painted = index, result, labels, painted


class _Recorder:
    """Collects the old values of every pixel an action touches, once per pixel."""

    def __init__(self, painter: Painter) -> None:
        self.p = painter
        self.seen = np.zeros(painter.labels.size, bool)
        self.parts: list[_Step] = []

    def touch(self, region: np.ndarray) -> None:
        idx = np.flatnonzero(region.reshape(-1) & ~self.seen)
        if idx.size:
            self.seen[idx] = True
            p = self.p
            self.parts.append(_Step(idx, p.result.reshape(-1, 3)[idx].copy(),
                                    p.labels.reshape(-1)[idx].copy(),
                                    p.painted.reshape(-1)[idx].copy()))

    def commit(self) -> bool:
        """Push one undo step if any touched pixel changed; True if something changed."""
        if not self.parts:
            return False
        step = _Step(*(np.concatenate([getattr(s, a) for s in self.parts])
                       for a in ("index", "result", "labels", "painted")))
        p = self.p
        changed = (np.any(p.result.reshape(-1, 3)[step.index] != step.result)
                   or np.any(p.labels.reshape(-1)[step.index] != step.labels)
                   or np.any(p.painted.reshape(-1)[step.index] != step.painted))
        if changed:
            p._history.append(step)
        return bool(changed)


class Painter:
    """The painting state of one image and its label map.

    Args:
        image: ``(H, W, 3) uint8`` RGB, the raw image (never modified).
        labels: ``(H, W)`` integer label map of the image (segments from 1, 0 = edge).

    Attributes:
        image: the raw image.
        result: ``(H, W, 3) uint8`` the image with paint.
        labels: ``(H, W) int32`` the current label map (cuts are 0).
        painted: ``(H, W) bool`` which pixels carry paint.
    """

    def __init__(self, image: np.ndarray, labels: np.ndarray) -> None:
        self.image = check_image(image).copy()
        self.image.setflags(write=False)
        lab = np.asarray(labels)
        if lab.shape != self.image.shape[:2] or not np.issubdtype(lab.dtype, np.integer):
            raise InputError(f"label map has shape {lab.shape} and dtype {lab.dtype}: expected an "
                             f"integer map of the image's shape {self.image.shape[:2]}")
        self._orig_labels = np.ascontiguousarray(lab, dtype=np.int32).copy()
        self._orig_labels.setflags(write=False)
        self.result = self.image.copy()
        self.labels = self._orig_labels.copy()
        self.painted = np.zeros(self.labels.shape, bool)
        self._history: list[_Step] = []

    # -- queries ------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape  # type: ignore[return-value]

    @property
    def undo_depth(self) -> int:
        """How many actions can be undone."""
        return len(self._history)

    def _inside(self, x: int, y: int) -> bool:
        h, w = self.shape
        return 0 <= x < w and 0 <= y < h

    def colors(self) -> list[Color]:
        """Painted colours, sorted."""
        if not self.painted.any():
            return []
        found = np.unique(self.result[self.painted], axis=0)
        return [tuple(int(v) for v in c) for c in found]  # type: ignore[misc]

    def masks(self) -> dict[Color, np.ndarray]:
        """One ``(H, W) bool`` mask per painted colour; black is not a class (as in the seed)."""
        out = {}
        for color in self.colors():
            if color == (0, 0, 0):
                continue
            out[color] = self.painted & np.all(self.result == np.array(color, np.uint8), axis=2)
        return out

    def debug_views(self) -> dict[str, np.ndarray]:
        """What the seed's ``d`` key showed: the current segments and the painted pixels.

        Returns:
            ``labels``: ``(H, W, 3) uint8`` segments in distinct colours (edges/cuts black);
            ``painted``: ``(H, W) uint8`` 255 where painted.
        """
        from icas_ray.segment.render import colorize

        return {"labels": colorize(self.labels), "painted": self.painted.astype(np.uint8) * 255}

    def _color_region(self, x: int, y: int) -> np.ndarray:
        same = self.painted & np.all(self.result == self.result[y, x], axis=2)
        return _flood(same.astype(np.uint8), y, x)

    # -- actions (each returns whether anything changed) --------------------------------------
    def _fill_at(self, rec: _Recorder, x: int, y: int, color: Color) -> None:
        if not self._inside(x, y):
            return
        if self.painted[y, x]:
            region = self._color_region(x, y)
        elif self.labels[y, x] == 0:
            return  # an edge or a cut: no segment to fill
        else:
            region = _flood(self.labels, y, x)
        rec.touch(region)
        self.result[region] = color
        self.painted[region] = True

    def _unfill_at(self, rec: _Recorder, x: int, y: int) -> None:
        if not self._inside(x, y) or not self.painted[y, x]:
            return
        region = self._color_region(x, y)
        rec.touch(region)
        self.result[region] = self.image[region]
        self.painted[region] = False

    def fill(self, x: int, y: int, color: Iterable[int]) -> bool:
        """Paint the segment under ``(x, y)`` (or repaint its painted patch) with ``color``."""
        rec = _Recorder(self)
        self._fill_at(rec, int(x), int(y), _color(color))
        return rec.commit()

    def unfill(self, x: int, y: int) -> bool:
        """Remove the paint of the patch under ``(x, y)``."""
        rec = _Recorder(self)
        self._unfill_at(rec, int(x), int(y))
        return rec.commit()

    def fill_stroke(self, points: Iterable[Sequence[int]], color: Iterable[int]) -> bool:
        """Continuous filling: fill under every point of a hover path; one undo step."""
        c = _color(color)
        rec = _Recorder(self)
        for x, y in points:
            self._fill_at(rec, int(x), int(y), c)
        return rec.commit()

    def unfill_stroke(self, points: Iterable[Sequence[int]]) -> bool:
        """Continuous unfilling along a hover path; one undo step."""
        rec = _Recorder(self)
        for x, y in points:
            self._unfill_at(rec, int(x), int(y))
        return rec.commit()

    def cut(self, points: Sequence[Sequence[int]]) -> bool:
        """Cut one-pixel lines between consecutive points; cut pixels become edge (label 0).

        The cut pixels lose their paint and show the raw image, as in the seed. With fewer
        than two points nothing happens (the seed waited for a second middle click).
        """
        pts = [(int(x), int(y)) for x, y in points]
        if len(pts) < 2:
            return False
        line = np.zeros(self.shape, np.uint8)
        for p, q in zip(pts[:-1], pts[1:]):
            cv2.line(line, p, q, 1, 1, cv2.LINE_8)
        region = line.astype(bool)
        rec = _Recorder(self)
        rec.touch(region)
        self.result[region] = self.image[region]
        self.labels[region] = 0
        self.painted[region] = False
        return rec.commit()

    def paint_templates(self, templates: Sequence[Template], threshold: float | None = None) -> int:
        """Template painting (the seed's ``t`` key): paint each template's segment where found.

        Args:
            templates: what to look for and what to paint.
            threshold: paint every position whose masked normalised squared difference is
                ``<= threshold`` (0 = exact); None = only the best position of each template.

        Returns:
            The number of placements painted (all of them are one undo step).
        """
        rec = _Recorder(self)
        placed = 0
        h, w = self.shape
        for t in templates:
            tpl, att, seg, msk = t.resolved()
            th, tw = tpl.shape[:2]
            for x, y in match_template(self.image, tpl, att, threshold):
                region = np.zeros((h, w), bool)
                region[y:y + th, x:x + tw] = msk
                rec.touch(region)
                self.result[y:y + th, x:x + tw][msk] = seg[msk]
                self.painted[region] = True
                placed += 1
        rec.commit()
        return placed

    def reset(self) -> bool:
        """Back to the raw image and the original label map (undoable)."""
        changed = (np.any(self.result != self.image, axis=2) | (self.labels != self._orig_labels)
                   | self.painted)
        rec = _Recorder(self)
        rec.touch(changed)
        self.result[changed] = self.image[changed]
        self.labels[changed] = self._orig_labels[changed]
        self.painted[changed] = False
        return rec.commit()

    def undo(self, steps: int = 1) -> int:
        """Undo up to ``steps`` actions, newest first; returns how many were undone."""
        done = 0
        while done < steps and self._history:
            s = self._history.pop()
            self.result.reshape(-1, 3)[s.index] = s.result
            self.labels.reshape(-1)[s.index] = s.labels
            self.painted.reshape(-1)[s.index] = s.painted
            done += 1
        return done
