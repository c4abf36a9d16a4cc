"""An in-process Segment Anything model: encode once, prompt many times, automatic masks.

:class:`LocalSam` is a plain class (no Ray): the Serve replica wraps one, the ``sam``
segmentation method uses one directly, and tests exercise it without Serve. It splits SAM's
work the way its cost splits: :meth:`LocalSam.encode` runs the expensive image encoder and
returns a :class:`SamEmbedding`; :meth:`LocalSam.predict` and :meth:`LocalSam.automatic`
decode prompts against an embedding and never run the encoder for the full image.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from icas_ray.errors import ConfigError, InputError
from icas_ray.sam._build import LoadedSam, build_sam
from icas_ray.sam._embedding import EmbeddingCache, SamEmbedding, array_id
from icas_ray.storage import Storage

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_CACHE_BYTES", "AutomaticParams", "LocalSam", "SamPrediction",
           "labels_from_masks", "validate_prompts"]

logger = logging.getLogger(__name__)

#: Default memory for cached embeddings: 512 MiB = 128 embeddings of the real models.
DEFAULT_CACHE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class AutomaticParams:
    """The main parameters of segment_anything's ``SamAutomaticMaskGenerator``.

    Defaults are SAM's (tuned for vit_h). With random weights (tests) set
    ``pred_iou_thresh=0`` and ``stability_score_thresh=0`` or no mask survives the filters.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.points_per_side <= 128:
            raise ConfigError(f"points_per_side {self.points_per_side} is out of range: expected 1..128")
        if not 1 <= self.points_per_batch <= 4096:
            raise ConfigError(f"points_per_batch {self.points_per_batch} is out of range: expected 1..4096")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name} {v} is out of range: expected 0 <= value <= 1")
        if not 0 <= self.crop_n_layers <= 3:
            raise ConfigError(f"crop_n_layers {self.crop_n_layers} is out of range: expected 0..3")
        if self.crop_n_points_downscale_factor < 1:
            raise ConfigError("crop_n_points_downscale_factor must be >= 1")
        if self.min_mask_region_area < 0:
            raise ConfigError("min_mask_region_area must be >= 0")

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> AutomaticParams:
        """Build from keyword values; unknown names raise listing the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ConfigError(
                f"unknown automatic-mask parameter(s) {', '.join(unknown)}: "
                f"must be among {', '.join(sorted(names))}"
            )
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for k, v in params.items():
            if v is None:
                continue
            # JSON and YAML give bools, strings and floats where an int is meant: the
            # dataclass would take them and fail deep inside segment_anything.
            kind = "an integer" if hints[k] is int else "a number"
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"automatic-mask parameter {k} {v!r} must be {kind}")
            try:
                number = float(v)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise ConfigError(f"automatic-mask parameter {k} is not a finite number")
            if hints[k] is int and not number.is_integer():
                raise ConfigError(f"automatic-mask parameter {k} {v!r} must be {kind}")
            values[k] = int(number) if hints[k] is int else number
        return cls(**values)


@dataclass
class SamPrediction:
    """The answer to one prompt request.

    Attributes:
        mask: ``(H, W) bool``: the best mask, or with several boxes the union of each box's best.
        score: the model's predicted IoU of ``mask`` (the mean over boxes when merged).
        masks: ``(K, H, W) bool`` candidates: the 3 multimask outputs (or 1) of a single prompt
            set, or one mask per box when several boxes are given.
        scores: ``(K,) float32`` predicted IoU of each candidate.
    """

    mask: np.ndarray
    score: float
    masks: np.ndarray
    scores: np.ndarray


def _as_array(value: Any, shape_tail: tuple[int, ...], name: str, example: str) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be numbers, e.g. {example}") from e
    if arr.size == 0:
        return None
    if shape_tail and arr.ndim == 1 and arr.shape[0] == shape_tail[0]:
        arr = arr[None]
    if arr.shape[1:] != shape_tail or arr.ndim != len(shape_tail) + 1:
        raise InputError(f"{name} has shape {list(arr.shape)}: expected a list like {example}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


def validate_prompts(size: tuple[int, int], points: Any = None, point_labels: Any = None,
                     boxes: Any = None) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Check prompts against an image of ``size = (H, W)`` and return them as arrays.

    Returns:
        ``(points (N, 2) float, labels (N,) int32, boxes (B, 4) float)``, each possibly None.

    Raises:
        InputError: wrong shapes, labels other than 0/1, coordinates outside the image, boxes
            with x1 < x0 or y1 < y0, or no prompt at all.
    """
    h, w = size
    pts = _as_array(points, (2,), "points", "[[x, y], ...]")
    bxs = _as_array(boxes, (4,), "boxes", "[[x0, y0, x1, y1], ...]")
    labels: np.ndarray | None = None
    if pts is not None:
        if point_labels is None:
            labels = np.ones(len(pts), dtype=np.int32)
        else:
            lab = np.asarray(point_labels).reshape(-1)
            if lab.shape[0] != pts.shape[0]:
                raise InputError(f"{pts.shape[0]} points but {lab.shape[0]} labels: give one label per point")
            if not np.isin(lab, (0, 1)).all():
                raise InputError("point labels must be 1 (foreground) or 0 (background)")
            labels = lab.astype(np.int32)
        for i, (x, y) in enumerate(pts):
            if not (0 <= x <= w and 0 <= y <= h):
                raise InputError(f"point {i} (x={x:g}, y={y:g}) is outside the {w}x{h} image: "
                                 f"expected 0 <= x <= {w}, 0 <= y <= {h}")
    if bxs is not None:
        for i, (x0, y0, x1, y1) in enumerate(bxs):
            if not (0 <= x0 <= w and 0 <= x1 <= w and 0 <= y0 <= h and 0 <= y1 <= h):
                raise InputError(f"box {i} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the {w}x{h} "
                                 "image: expected 0 <= x <= width, 0 <= y <= height")
            if x1 <= x0 or y1 <= y0:
                raise InputError(f"box {i} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or inverted: "
                                 "expected x0 < x1 and y0 < y1")
    if pts is None and bxs is None:
        raise InputError("no prompt: give points (with labels) and/or boxes")
    return pts, labels, bxs


def labels_from_masks(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Paint masks into a label map, larger first so smaller segments stay visible.

    Returns:
        ``(H, W) int32`` label map, segments numbered from 1 in order of decreasing area,
        0 = no segment; masks hidden entirely by smaller ones get no number.
    """
    out = np.zeros(shape, dtype=np.int32)
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for label, i in enumerate(order, start=1):
        out[masks[i]] = label
    present = np.unique(out)
    present = present[present > 0]
    remap = np.zeros(len(masks) + 1, dtype=np.int32)
    remap[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return remap[out]


class LocalSam:
    """Segment Anything in this process, with an LRU of image embeddings.

    Implements :class:`icas_ray.sam_protocol.SamBackend`.

    Args:
        loaded: the model (see :func:`~icas_ray.sam.build_sam`).
        cache_bytes: memory for cached embeddings (float32 on the model's device).

    Example:
        >>> sam = LocalSam.from_checkpoint("tiny", seed=0, device="cpu")
        >>> image = np.zeros((40, 60, 3), np.uint8)
        >>> sam.predict_mask(image, points=np.array([[30, 20]]), point_labels=np.array([1])).shape
        (40, 60)
        >>> sam.encoder_runs
        1
    """

    def __init__(self, loaded: LoadedSam, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.loaded = loaded
        self.model = loaded.model
        self.transform = ResizeLongestSide(self.model.image_encoder.img_size)
        self.cache = EmbeddingCache(cache_bytes)
        self._lock = threading.Lock()
        self.encoder_runs = 0

    @classmethod
    def from_checkpoint(cls, model_type: str, checkpoint: str | None = None, *,
                        storage: Storage | None = None, device: str | None = None,
                        cache_bytes: int = DEFAULT_CACHE_BYTES, seed: int | None = None) -> LocalSam:
        """Build the model (see :func:`~icas_ray.sam.build_sam`) and wrap it."""
        return cls(build_sam(model_type, checkpoint, storage=storage, device=device, seed=seed),
                   cache_bytes=cache_bytes)

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- the encoder ----------------------------------------------------------------------
    @staticmethod
    def _check_image(image: np.ndarray) -> None:
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
                or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
            got = (f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', type(image).__name__)}")
            raise InputError(f"image must be an (H, W, 3) uint8 RGB array, got {got}")

    def encode(self, image: np.ndarray) -> SamEmbedding:
        """Run the image encoder (the expensive step) on an ``(H, W, 3) uint8`` RGB image."""
        import torch

        self._check_image(image)
        resized = self.transform.apply_image(image)
        with torch.inference_mode():
            t = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
            features = self.model.image_encoder(self.model.preprocess(t))
        with self._lock:
            self.encoder_runs += 1
        h, w = image.shape[:2]
        return SamEmbedding(features, (h, w), (int(t.shape[-2]), int(t.shape[-1])), self.model_id)

    def embedding(self, image: np.ndarray, *, key: str | None = None) -> SamEmbedding:
        """The embedding of ``image`` from the cache, encoding it on a miss.

        Args:
            key: cache key, e.g. the file's content hash; default: a hash of the pixels.
        """
        key = key or array_id(image)
        found = self.cache.get(key)
        if found is None:
            found = self.encode(image)
            self.cache.put(key, found)
        return found

    # -- prompts --------------------------------------------------------------------------
    def predict(self, embedding: SamEmbedding, *, points: Any = None, point_labels: Any = None,
                boxes: Any = None, multimask: bool = False) -> SamPrediction:
        """Masks for prompts on an embedded image; never runs the encoder.

        Args:
            embedding: from :meth:`encode` / :meth:`embedding` or a store.
            points: ``(N, 2)`` ``(x, y)`` pixel coordinates of the original image.
            point_labels: ``(N,)`` 1 = foreground, 0 = background (default all 1).
            boxes: ``(B, 4)`` ``(x0, y0, x1, y1)``. With B >= 2 each box is decoded with the
                points inside it (points outside every box are ignored), and the masks merged.
            multimask: let SAM propose 3 masks per prompt and keep the best scoring one.

        Raises:
            InputError: bad prompts (see :func:`validate_prompts`).
        """
        import torch

        pts, labels, bxs = validate_prompts(embedding.original_size, points, point_labels, boxes)
        groups: list[tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]]
        if bxs is None or len(bxs) == 1:
            groups = [(pts, labels, None if bxs is None else bxs[0])]
        else:
            groups = []
            for box in bxs:
                if pts is None:
                    groups.append((None, None, box))
                    continue
                inside = ((pts[:, 0] >= box[0]) & (pts[:, 0] <= box[2])
                          & (pts[:, 1] >= box[1]) & (pts[:, 1] <= box[3]))
                groups.append((pts[inside], labels[inside] if labels is not None else None, box))
        coords_t, labels_t, boxes_t = self._prompt_tensors(groups, embedding.original_size)
        model = self.model
        with torch.inference_mode():
            sparse, dense = model.prompt_encoder(
                points=None if coords_t is None else (coords_t, labels_t),
                boxes=boxes_t, masks=None)
            low_res, iou = model.mask_decoder(
                image_embeddings=embedding.features,
                image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
            masks_t = model.postprocess_masks(low_res, embedding.input_size, embedding.original_size)
            masks = (masks_t > model.mask_threshold).cpu().numpy()  # (G, C, H, W)
            scores = iou.float().cpu().numpy()  # (G, C)
        if len(groups) == 1:
            best = int(np.argmax(scores[0]))
            return SamPrediction(mask=masks[0, best], score=float(scores[0, best]),
                                 masks=masks[0], scores=scores[0].astype(np.float32))
        best_idx = scores.argmax(axis=1)
        chosen = masks[np.arange(len(groups)), best_idx]
        chosen_scores = scores[np.arange(len(groups)), best_idx].astype(np.float32)
        return SamPrediction(mask=chosen.any(axis=0), score=float(chosen_scores.mean()),
                             masks=chosen, scores=chosen_scores)

    def _prompt_tensors(self, groups: list[tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]],
                        size: tuple[int, int]) -> tuple[Any, Any, Any]:
        """Batch prompt groups for one decoder call; missing points are padded with label -1
        (SAM's "not a point" token), as in SAM's own ONNX export."""
        import torch

        device = self.device
        n_max = max((0 if p is None else len(p)) for p, _, _ in groups)
        coords_t = labels_t = boxes_t = None
        if n_max:
            coords = np.zeros((len(groups), n_max, 2), dtype=np.float64)
            labs = np.full((len(groups), n_max), -1, dtype=np.int32)
            for g, (p, lab, _) in enumerate(groups):
                if p is not None and len(p):
                    coords[g, :len(p)] = self.transform.apply_coords(p, size)
                    labs[g, :len(p)] = lab if lab is not None else 1
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=device)
            labels_t = torch.as_tensor(labs, dtype=torch.int, device=device)
        if groups[0][2] is not None:
            bx = np.stack([b for _, _, b in groups if b is not None])
            boxes_t = torch.as_tensor(self.transform.apply_boxes(bx, size), dtype=torch.float,
                                      device=device)
        return coords_t, labels_t, boxes_t

    def predict_mask(self, image: np.ndarray, *, points: np.ndarray | None = None,
                     point_labels: np.ndarray | None = None, boxes: np.ndarray | None = None,
                     multimask: bool = False) -> np.ndarray:
        """:class:`~icas_ray.sam_protocol.SamBackend`: one ``(H, W) bool`` mask for the prompts."""
        emb = self.embedding(image)
        return self.predict(emb, points=points, point_labels=point_labels, boxes=boxes,
                            multimask=multimask).mask

    # -- automatic masks ------------------------------------------------------------------
    def automatic(self, embedding: SamEmbedding, image: np.ndarray | None = None,
                  params: AutomaticParams | None = None) -> list[dict[str, Any]]:
        """SAM's automatic mask generator over the embedded image.

        The full-image crop reuses ``embedding``; only extra crop layers (``crop_n_layers > 0``)
        run the encoder on crops, and they need ``image``.

        Returns:
            segment_anything's records (``segmentation`` as ``(H, W) bool``, ``area``, ``bbox``
            XYWH, ``predicted_iou``, ``stability_score``, ...).
        """
        from segment_anything import SamAutomaticMaskGenerator

        params = params or AutomaticParams()
        if params.crop_n_layers > 0 and image is None:
            raise InputError("crop_n_layers > 0 needs the image itself, not only its embedding: "
                             "register the image first")
        if image is None:
            h, w = embedding.original_size
            image = np.zeros((h, w, 3), dtype=np.uint8)  # only its size is read
        elif tuple(image.shape[:2]) != tuple(embedding.original_size):
            raise InputError(f"image size {image.shape[:2]} differs from the embedding's "
                             f"{embedding.original_size}")
        gen = SamAutomaticMaskGenerator(self.model, output_mode="binary_mask",
                                        **dataclasses.asdict(params))
        gen.predictor = _EmbeddingPredictor(self, embedding)
        return list(gen.generate(image))

    def automatic_labels(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """:class:`~icas_ray.sam_protocol.SamBackend`: automatic masks as a label map.

        Returns:
            ``(H, W) int32``: segments from 1 (largest first), 0 = no segment.
        """
        p = AutomaticParams.from_mapping(params)
        records = self.automatic(self.embedding(image), image, p)
        return labels_from_masks([r["segmentation"] for r in records], image.shape[:2])


@functools.cache
def _embedding_predictor_class() -> type:
    from segment_anything import SamPredictor

    class _Predictor(SamPredictor):  # type: ignore[misc]
        """A SamPredictor whose full-image ``set_image`` uses a known embedding."""

        def __init__(self, owner: LocalSam, embedding: SamEmbedding) -> None:
            super().__init__(owner.model)
            self._owner = owner
            self._embedding = embedding

        def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
            emb = self._embedding
            if tuple(image.shape[:2]) == tuple(emb.original_size):
                self.reset_image()
                self.features = emb.features
                self.original_size = emb.original_size
                self.input_size = emb.input_size
                self.is_image_set = True
                return
            crop = self._owner.encode(np.ascontiguousarray(image))  # a sub-crop: needs the encoder
            self.reset_image()
            self.features = crop.features
            self.original_size = crop.original_size
            self.input_size = crop.input_size
            self.is_image_set = True

    return _Predictor


def _EmbeddingPredictor(owner: LocalSam, embedding: SamEmbedding) -> Any:  # noqa: N802
    return _embedding_predictor_class()(owner, embedding)
