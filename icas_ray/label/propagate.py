"""Whole-cluster labelling: carry the masks painted on one image over to its near-duplicates.

:func:`propose` aligns the target to the source and warps the painted masks:

1. **features**: ORB key points matched with Lowe's ratio test, then a RANSAC fit of a
   rotation + uniform scale + shift (``cv2.estimateAffinePartial2D``, the transforms a crop,
   resize and slight rotation make) or, when it explains clearly more matches, a homography
   (another viewpoint of a flat scene);
2. **template**: when the features give no trustworthy fit, each painted region's bounding box
   is searched in the target by normalised cross-correlation over a range of scales, as the
   original's template painting finds a template (plus the scales, since near-duplicates are
   resized).

The score is the normalised cross-correlation of the target with the aligned source over
their overlap (features) or of the best template match (template), clipped to ``[0, 1]``: 1
means the target looks exactly like the warped source.

With a label map of the target, the proposal is snapped to whole segments (each 4-connected
run of one label, what one click fills): a segment takes the colour covering the largest part
of it when that part is at least ``coverage``. The proposal is then exactly what the
labeller could paint by clicks, and :func:`clicks_to_paint` counts the clicks still needed.

Example:
    >>> labels = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 4]], np.int32)
    >>> truth = {(204, 0, 0): labels == 1}
    >>> clicks_to_paint(labels, truth), clicks_to_paint(labels, truth, start=truth)
    (1, 0)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from icas_ray.errors import InputError
from icas_ray.label._colour import Colour
from icas_ray.segment import check_image

__all__ = ["METHODS", "Proposal", "carry_points", "clicks_to_paint", "propose",
           "segment_units", "snap_to_segments"]

logger = logging.getLogger(__name__)

METHODS = ("features", "template")

#: Feature alignment works on images shrunk to this side: ORB finds enough corners there and
#: a 4000-pixel photo costs no more than a 1000-pixel one.
_MAX_SIDE = 1024
#: Template search runs at this side: the region's position is refined by the mask warp, and a
#: multi-scale search at full size would take seconds.
_TEMPLATE_SIDE = 384
_TEMPLATE_SCALES = np.geomspace(0.5, 2.0, 17)
_MIN_INLIERS = 12
#: The best correlation a region's box reaches by chance in an unrelated busy photo over the
#: 17 scales (0.55-0.6 measured on skimage's photos); template scores are rescaled from it, so
#: that 0 means "no better than chance" (near-duplicates score 0.8-1 after rescaling).
_TEMPLATE_CHANCE = 0.5
#: Below this score a feature fit is not trusted and template matching is tried too.
_MIN_FEATURE_SCORE = 0.5


@dataclass(frozen=True)
class Proposal:
    """Masks proposed on a target image.

    Attributes:
        masks: (R, G, B) -> ``(H, W) bool`` on the target (empty when nothing aligned).
        score: alignment confidence in ``[0, 1]``.
        method: ``"affine"`` or ``"homography"`` (features), ``"template"`` or ``"none"``.
        transform: ``(3, 3) float64`` mapping source ``(x, y, 1)`` to target pixels when one
            transform moved every mask (features), else None; :func:`carry_points` uses it to
            move SAM prompts.
    """

    masks: dict[Colour, np.ndarray]
    score: float
    method: str
    transform: np.ndarray | None = None


# -- segments and clicks -------------------------------------------------------------------------
def segment_units(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """What one click fills: the 4-connected runs of one label (label 0 = edge, never filled).

    Args:
        labels: ``(H, W)`` int label map, segments from 1, 0 = edge/cut.

    Returns:
        ``(units, n)``: ``(H, W) int32`` with units numbered 1..n and 0 on edges.
    """
    from skimage.measure import label as connected

    lab = np.asarray(labels)
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise InputError(f"label map has shape {lab.shape} and dtype {lab.dtype}: expected an "
                         "(H, W) integer map")
    units, n = connected(lab, background=0, connectivity=1,  # type: ignore[no-untyped-call]
                         return_num=True)
    return np.asarray(units, dtype=np.int32), int(n)


def _unit_colours(units: np.ndarray, n: int, masks: Mapping[Colour, np.ndarray],
                  colours: Sequence[Colour], coverage: float) -> np.ndarray:
    """Per unit (index 0..n), 1 + the index in ``colours`` of its majority colour, 0 = none."""
    sizes = np.bincount(units.ravel(), minlength=n + 1).astype(np.float64)
    sizes[sizes == 0] = 1
    if not colours:
        return np.zeros(n + 1, np.int64)
    share = np.zeros((len(colours), n + 1))
    for i, c in enumerate(colours):
        m = masks.get(c)
        if m is None:
            continue
        m = np.asarray(m, dtype=bool)
        if m.shape != units.shape:
            raise InputError(f"mask of colour {c} has shape {m.shape}: expected the label "
                             f"map's {units.shape}")
        share[i] = np.bincount(units[m], minlength=n + 1) / sizes
    best = np.argmax(share, axis=0)
    top = share[best, np.arange(n + 1)]
    out = np.where((top >= coverage) & (top > 0), best + 1, 0)
    out[0] = 0  # edges are never painted by a click
    return out


def snap_to_segments(labels: np.ndarray, masks: Mapping[Colour, np.ndarray], *,
                     coverage: float = 0.5) -> dict[Colour, np.ndarray]:
    """Masks made of whole segments: each takes its majority colour if that covers ``coverage``.

    Args:
        labels: ``(H, W)`` int label map (segments from 1, 0 = edge/cut).
        masks: (R, G, B) -> ``(H, W) bool``.
        coverage: the part of a segment its majority colour must cover, in ``(0, 1]``.

    Returns:
        (R, G, B) -> ``(H, W) bool``, disjoint, only colours that kept a segment.
    """
    if not 0 < coverage <= 1:
        raise InputError(f"coverage {coverage} is out of range: expected 0 < coverage <= 1")
    units, n = segment_units(labels)
    colours = sorted(masks)
    choice = _unit_colours(units, n, masks, colours, coverage)[units]
    out = {c: choice == i for i, c in enumerate(colours, start=1)}
    return {c: m for c, m in out.items() if m.any()}


def clicks_to_paint(labels: np.ndarray, masks: Mapping[Colour, np.ndarray], *,
                    start: Mapping[Colour, np.ndarray] | None = None,
                    coverage: float = 0.5) -> int:
    """Clicks a labeller needs on ``labels`` to turn ``start`` into ``masks``.

    One click per segment (4-connected run of one label) whose colour differs between the two:
    a fill with the right colour or an unfill. A segment's colour is its majority colour when
    that covers at least ``coverage`` of it, else none. (The painter repaints a whole
    same-coloured patch in one click, so a wrong colour over several adjacent segments can take
    fewer clicks than counted here: the count is what a labeller needs at most.)

    Args:
        labels: ``(H, W)`` int label map (segments from 1, 0 = edge/cut).
        masks: the wanted result, (R, G, B) -> ``(H, W) bool``.
        start: what is painted already (e.g. a :class:`Proposal`'s masks); None = nothing.
        coverage: see above.
    """
    start = start or {}
    units, n = segment_units(labels)
    colours = sorted(set(masks) | set(start))
    want = _unit_colours(units, n, masks, colours, coverage)
    have = _unit_colours(units, n, start, colours, coverage)
    return int(np.count_nonzero(want[1:] != have[1:]))


# -- alignment -----------------------------------------------------------------------------------
def _gray(image: np.ndarray) -> np.ndarray:
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))


def _shrink(gray: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    h, w = gray.shape
    f = min(1.0, side / max(h, w))
    if f == 1.0:
        return gray, 1.0
    small = cv2.resize(gray, (max(1, round(w * f)), max(1, round(h * f))),
                       interpolation=cv2.INTER_AREA)
    return np.asarray(small), f


def _matches(src: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matched ORB points ``(N, 2) float32`` in source and target pixels."""
    s, fs = _shrink(src, _MAX_SIDE)
    t, ft = _shrink(tgt, _MAX_SIDE)
    orb = cv2.ORB.create(nfeatures=3000)
    ks, ds = orb.detectAndCompute(s, None)
    kt, dt = orb.detectAndCompute(t, None)
    empty = np.zeros((0, 2), np.float32)
    if ds is None or dt is None or len(ks) < _MIN_INLIERS or len(kt) < _MIN_INLIERS:
        return empty, empty
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(ds, dt, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.8 * p[1].distance]
    if len(good) < _MIN_INLIERS:
        return empty, empty
    ps = np.array([ks[m.queryIdx].pt for m in good], np.float32) / fs
    pt = np.array([kt[m.trainIdx].pt for m in good], np.float32) / ft
    return ps, pt


def _plausible(h: np.ndarray, shape: tuple[int, int]) -> bool:
    """The transform keeps the source a convex quadrilateral of sensible size."""
    rows, cols = shape
    corners = np.array([[0, 0], [cols, 0], [cols, rows], [0, rows]], np.float32).reshape(-1, 1, 2)
    moved = cv2.perspectiveTransform(corners, h).reshape(-1, 2)
    if not np.isfinite(moved).all() or not cv2.isContourConvex(moved.astype(np.float32)):
        return False
    ratio = abs(cv2.contourArea(moved.astype(np.float32))) / float(rows * cols)
    return 0.04 < ratio < 25


def _fit(src: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, str] | None:
    """``(3x3 source->target transform, "affine" | "homography")`` or None."""
    ps, pt = _matches(src, tgt)
    if len(ps) < _MIN_INLIERS:
        return None
    thr = 3.0 * max(1.0, max(tgt.shape) / _MAX_SIDE)
    best: tuple[np.ndarray, str] | None = None
    inl_a = 0
    a, inliers = cv2.estimateAffinePartial2D(ps, pt, method=cv2.RANSAC,
                                              ransacReprojThreshold=thr, maxIters=4000,
                                              confidence=0.995)
    if a is not None and inliers is not None:
        inl_a = int(inliers.sum())
        h = np.vstack([a, [0.0, 0.0, 1.0]])
        if inl_a >= _MIN_INLIERS and _plausible(h, src.shape[:2]):
            best = (h, "affine")
    if len(ps) >= 2 * _MIN_INLIERS:
        hm, hin = cv2.findHomography(ps, pt, cv2.RANSAC, thr, maxIters=4000, confidence=0.995)
        if hm is not None and hin is not None:
            inl_h = int(hin.sum())
            # a homography has 8 degrees of freedom against 4: it must explain clearly more
            if inl_h >= max(_MIN_INLIERS, 1.3 * inl_a) and _plausible(hm, src.shape[:2]):
                best = (np.asarray(hm, np.float64), "homography")
    return best


def _warp(mask: np.ndarray, h: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows, cols = shape
    m = mask.astype(np.float32)
    if np.allclose(h[2], [0.0, 0.0, 1.0]):
        out = cv2.warpAffine(m, h[:2], (cols, rows), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    else:
        out = cv2.warpPerspective(m, h, (cols, rows), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.asarray(out >= 0.5)


def _ncc(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    if where.sum() < 64:
        return 0.0
    x = a[where].astype(np.float64)
    y = b[where].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else 0.0


def _feature_proposal(source: np.ndarray, masks: Mapping[Colour, np.ndarray],
                      target: np.ndarray) -> Proposal | None:
    sg, tg = _gray(source), _gray(target)
    fit = _fit(sg, tg)
    if fit is None:
        return None
    h, kind = fit
    shape = (target.shape[0], target.shape[1])
    warped = {c: _warp(m, h, shape) for c, m in masks.items()}
    # the score compares the images where the source lands, at a modest size for speed
    small_t, f = _shrink(tg, 512)
    scale = np.diag([f, f, 1.0])
    hs = scale @ h
    size = (small_t.shape[1], small_t.shape[0])
    if kind == "affine":
        src_on_t = cv2.warpAffine(sg, hs[:2], size, flags=cv2.INTER_AREA)
        valid = cv2.warpAffine(np.ones_like(sg), hs[:2], size, flags=cv2.INTER_NEAREST)
    else:
        src_on_t = cv2.warpPerspective(sg, hs, size, flags=cv2.INTER_AREA)
        valid = cv2.warpPerspective(np.ones_like(sg), hs, size, flags=cv2.INTER_NEAREST)
    score = _ncc(np.asarray(src_on_t), small_t, np.asarray(valid) > 0)
    return Proposal(warped, float(np.clip(score, 0.0, 1.0)), kind, h)


def _template_one(sg: np.ndarray, tg: np.ndarray, mask: np.ndarray,
                  shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """One colour by multi-scale template matching of its bounding box: (mask, score)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    small_s, fs = _shrink(sg, _TEMPLATE_SIDE)
    small_t, ft = _shrink(tg, _TEMPLATE_SIDE)
    px0, py0 = int(x0 * fs), int(y0 * fs)
    patch = small_s[py0:max(py0 + 1, int(np.ceil(y1 * fs))),
                    px0:max(px0 + 1, int(np.ceil(x1 * fs)))]
    best = (-1.0, 1.0, 0, 0)
    rel = ft / fs  # small-source pixels -> small-target pixels at equal content scale
    for scale in _TEMPLATE_SCALES:
        k = float(scale) * rel
        ph, pw = max(1, round(patch.shape[0] * k)), max(1, round(patch.shape[1] * k))
        if ph < 4 or pw < 4 or ph > small_t.shape[0] or pw > small_t.shape[1]:
            continue
        tpl = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_AREA if k < 1 else
                         cv2.INTER_LINEAR)
        if float(tpl.std()) < 1e-6:
            continue  # a flat patch matches anywhere
        res = cv2.matchTemplate(small_t, tpl, cv2.TM_CCOEFF_NORMED)
        _, v, _, loc = cv2.minMaxLoc(res)
        if v > best[0]:
            best = (float(v), float(scale), int(loc[0]), int(loc[1]))
    score, s, lx, ly = best
    if score <= 0:
        return np.zeros(shape, bool), 0.0
    # The patch's corner (px0, py0) of the small source lands on (lx, ly) of the small target,
    # scaled by s * rel; in full pixels that is a scale of s and this shift.
    tx, ty = (lx - s * rel * px0) / ft, (ly - s * rel * py0) / ft
    h = np.array([[s, 0.0, tx], [0.0, s, ty], [0.0, 0.0, 1.0]])
    return _warp(mask, h, shape), float(np.clip((score - _TEMPLATE_CHANCE) / (1 - _TEMPLATE_CHANCE),
                                                0.0, 1.0))


def _template_proposal(source: np.ndarray, masks: Mapping[Colour, np.ndarray],
                       target: np.ndarray) -> Proposal:
    sg, tg = _gray(source), _gray(target)
    shape = (target.shape[0], target.shape[1])
    out: dict[Colour, np.ndarray] = {}
    weighted, total = 0.0, 0.0
    for c, m in masks.items():
        warped, score = _template_one(sg, tg, m, shape)
        out[c] = warped
        weighted += score * float(m.sum())
        total += float(m.sum())
    return Proposal(out, weighted / total if total else 0.0, "template")


def propose(source: np.ndarray, source_masks: Mapping[Colour, np.ndarray], target: np.ndarray,
            *, target_labels: np.ndarray | None = None, coverage: float = 0.5,
            methods: Sequence[str] = METHODS, min_score: float = 0.25) -> Proposal:
    """Carry the masks painted on ``source`` over to ``target``, another image of its cluster.

    Args:
        source: ``(H, W, 3) uint8`` RGB, the painted image.
        source_masks: (R, G, B) -> ``(H, W) bool`` painted on ``source``.
        target: ``(H2, W2, 3) uint8`` RGB, possibly another size, shifted, cropped, rotated.
        target_labels: ``(H2, W2)`` int32 label map of the target (segments from 1, 0 = edge);
            when given, the proposal is snapped to whole segments (:func:`snap_to_segments`).
        coverage: the part of a segment a colour must cover to take it when snapping.
        methods: the alignments to try, in order (``"features"``, ``"template"``); template
            matching runs when features are not tried, fail or score below 0.5.
        min_score: a proposal scoring below this is dropped (no masks, ``method="none"``, its
            score kept): on an image that is not a near-duplicate it would cost clicks.

    Returns:
        The proposal; ``method="none"`` with no masks when nothing aligned well enough.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> src = cv2.GaussianBlur(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), (5, 5), 0)
        >>> m = np.zeros((120, 160), bool); m[30:70, 40:100] = True
        >>> tgt = np.ascontiguousarray(src[10:, 15:])  # a crop: shifted by (-15, -10)
        >>> p = propose(src, {(204, 0, 0): m}, tgt)
        >>> p.method, bool(p.masks[(204, 0, 0)][20:60, 25:85].all()), p.score > 0.9
        ('affine', True, True)
    """
    src, tgt = check_image(source), check_image(target)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"proposal method {unknown[0]!r} is unknown: use {', '.join(METHODS)}")
    masks: dict[Colour, np.ndarray] = {}
    for c, m in source_masks.items():
        mm = np.asarray(m, dtype=bool)
        if mm.shape != src.shape[:2]:
            raise InputError(f"mask of colour {c} has shape {mm.shape}: expected the source "
                             f"image's {src.shape[:2]}")
        if mm.any():
            masks[c] = mm
    proposal = Proposal({}, 0.0, "none")
    if masks:
        if "features" in methods:
            proposal = _feature_proposal(src, masks, tgt) or proposal
        if "template" in methods and proposal.score < _MIN_FEATURE_SCORE:
            candidate = _template_proposal(src, masks, tgt)
            if candidate.score > proposal.score:
                proposal = candidate
    kept = {c: m for c, m in proposal.masks.items() if m.any()}
    if proposal.score < min_score:
        kept = {}
    if target_labels is not None and kept:
        kept = snap_to_segments(target_labels, kept, coverage=coverage)
    logger.debug("proposal by %s, score %.2f, %d colour(s)", proposal.method, proposal.score,
                 len(kept))
    return Proposal(kept, proposal.score, proposal.method if kept else "none",
                    proposal.transform if kept else None)


def carry_points(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Move ``(N, 2)`` source ``(x, y)`` points (e.g. SAM prompts) with a proposal's transform.

    Returns:
        ``(N, 2) float64`` target points.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 1, 2)
    moved = cv2.perspectiveTransform(pts, np.asarray(transform, np.float64))
    return np.asarray(moved).reshape(-1, 2)
