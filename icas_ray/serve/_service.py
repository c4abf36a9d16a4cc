"""The SAM service's request logic, without Serve: what each endpoint does.

:class:`SamService` is synchronous and owns the model, the stores and the tunables; the Serve
deployment (``app.py``) adds HTTP, routing, the embedding LRU (Serve's model multiplexing keyed
by image id) and batching around it. Errors a client can fix are :class:`ServiceError` with an
HTTP status and a one-line message.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from icas_ray.errors import IcasError, InputError
from icas_ray.images import DecodeError, ReadConfig, decode
from icas_ray.sam import (
    AutomaticParams,
    LocalSam,
    SamEmbedding,
    build_sam,
    content_id,
    labels_from_masks,
)
from icas_ray.serve._codec import encode_label_png, encode_mask_png, encode_rle
from icas_ray.serve.args import TUNABLES, SamServeArgs
from icas_ray.serve.store import EmbeddingStore
from icas_ray.storage import Storage, StorageOptions

__all__ = ["Entry", "SamService", "ServiceError", "check_image_id"]

logger = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_FORMATS = ("png", "rle")
_PREDICT_KEYS = {"points", "labels", "boxes", "box", "multimask", "formats"}


class ServiceError(Exception):
    """A request the client must fix (4xx) or the service cannot serve (5xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_image_id(image_id: str) -> str:
    if not _ID_RE.match(image_id):
        raise ServiceError(404, f"unknown image id {image_id!r}: ids are the 64-hex sha256 "
                                "returned by POST /images")
    return image_id


@dataclass
class Entry:
    """A cached embedding and how it was obtained (reported once, then ``memory``)."""

    embedding: SamEmbedding
    source: str  # "encoder" | "store"
    fresh: bool = True

    def take_source(self) -> str:
        if self.fresh:
            self.fresh = False
            return self.source
        return "memory"

    @property
    def nbytes(self) -> int:
        return self.embedding.nbytes


def _storage(options: dict[str, Any]) -> Storage:
    known = {k: options[k] for k in ("endpoint_url", "profile", "anon") if k in options}
    extra = {k: v for k, v in options.items() if k not in known}
    return Storage(StorageOptions(extra=extra, **known))


class SamService:
    """Model, stores and tunables of one replica.

    Raises (at construction):
        ModelLoadError: the checkpoint cannot be loaded.
        ConfigError: the embedding store belongs to another model.
    """

    def __init__(self, args: SamServeArgs) -> None:
        self.args = args
        self.storage = _storage(args.storage_options)
        loaded = build_sam(args.model_type, args.checkpoint, storage=self.storage,
                           device=args.device, seed=args.seed)
        # Serve's multiplexer is this replica's embedding cache; LocalSam keeps none.
        self.sam = LocalSam(loaded, cache_bytes=0)
        self.store: EmbeddingStore | None = None
        if args.embedding_store:
            self.store = EmbeddingStore(args.embedding_store, self.storage)
            self.store.open_for(args.model_type, loaded.model_id)
        self.image_store = args.image_store
        self.settings: dict[str, Any] = args.user_config()
        self.store_hits = 0
        self.started = time.time()

    # -- settings -----------------------------------------------------------------------
    def configure(self, user_config: dict[str, Any]) -> None:
        unknown = sorted(set(user_config) - set(TUNABLES))
        if unknown:
            raise IcasError(f"unknown user_config key(s) {', '.join(unknown)}: "
                            f"must be among {', '.join(TUNABLES)}")
        merged = {**self.settings, **user_config}
        AutomaticParams.from_mapping(merged["automatic_defaults"] or {})  # validate early
        self.settings = merged

    @property
    def read_config(self) -> ReadConfig:
        return ReadConfig(max_pixels=int(self.settings["max_image_pixels"]))

    @property
    def max_upload_bytes(self) -> int:
        return int(float(self.settings["max_upload_mb"]) * 2**20)

    # -- registration ---------------------------------------------------------------------
    def check_upload(self, data: bytes) -> tuple[str, np.ndarray]:
        """Validate uploaded bytes: ``(content id, decoded RGB image)``."""
        if len(data) > self.max_upload_bytes:
            raise ServiceError(413, f"upload of {len(data)} bytes exceeds the limit of "
                                    f"{self.max_upload_bytes} bytes (max_upload_mb)")
        try:
            image = decode(data, self.read_config)
        except DecodeError as e:
            if "pixel limit" in str(e):
                raise ServiceError(413, f"image {e}: raise max_image_pixels or downscale it") from e
            raise ServiceError(415, f"not a decodable image: {e}") from e
        return content_id(data), image

    def read_uri(self, uri: str) -> bytes:
        """Bytes of an image the server reads itself (``POST /images {"uri": ...}``)."""
        prefixes = self.args.allowed_uri_prefixes
        if prefixes is not None and not any(uri.startswith(p) for p in prefixes):
            raise ServiceError(403, f"uri {uri!r} is outside the allowed prefixes "
                                    f"({', '.join(prefixes) or 'none'})")
        try:
            size = self.storage.size(uri)
            if size > self.max_upload_bytes:
                raise ServiceError(413, f"{uri!r} has {size} bytes, above the limit of "
                                        f"{self.max_upload_bytes} bytes (max_upload_mb)")
            return self.storage.read_bytes(uri)
        except InputError as e:
            raise ServiceError(404, f"cannot read {uri!r}: {e}") from e
        except IcasError as e:
            raise ServiceError(400, f"cannot read {uri!r}: {e}") from e

    def _image_uri(self, image_id: str) -> str:
        return self.storage.join(self.image_store, image_id)

    def save_image(self, image_id: str, data: bytes) -> None:
        uri = self._image_uri(image_id)
        if not self.storage.exists(uri):
            self.storage.write_bytes(uri, data)

    def is_known(self, image_id: str) -> bool:
        """Registered (in the image store) or pre-computed (in the embedding store)."""
        if self.storage.exists(self._image_uri(image_id)):
            return True
        return self.store is not None and self.store.has(image_id)

    def load_image(self, image_id: str) -> np.ndarray:
        uri = self._image_uri(image_id)
        try:
            data = self.storage.read_bytes(uri)
        except InputError as e:
            raise ServiceError(404, f"image {image_id} is not registered (only its embedding "
                                    "is stored): POST it to /images first") from e
        try:
            return decode(data, self.read_config)
        except DecodeError as e:
            raise ServiceError(500, f"stored image {image_id} no longer decodes: {e}") from e

    def load_entry(self, image_id: str, image: np.ndarray | None = None) -> Entry:
        """The embedding of an image: from the store if there, else by running the encoder."""
        if self.store is not None:
            emb = self.store.get(image_id, device=str(self.sam.loaded.device))
            if emb is not None:
                if emb.model_id != self.sam.model_id:
                    raise ServiceError(500, f"stored embedding {image_id} is of model "
                                            f"{emb.model_id}, not {self.sam.model_id}")
                self.store_hits += 1
                return Entry(emb, "store")
        if image is None:
            image = self.load_image(image_id)
        return Entry(self.sam.encode(image), "encoder")

    # -- prompts --------------------------------------------------------------------------
    def predict(self, image_id: str, entry: Entry, body: dict[str, Any], source: str) -> dict[str, Any]:
        """``POST /images/{id}/predict``: see docs/serve.md for the JSON."""
        t0 = time.perf_counter()
        unknown = sorted(set(body) - _PREDICT_KEYS)
        if unknown:
            raise ServiceError(422, f"unknown field(s) {', '.join(unknown)}: expected "
                                    f"{', '.join(sorted(_PREDICT_KEYS))}")
        formats = _formats(body.get("formats"))
        boxes = body.get("boxes")
        if boxes is None and body.get("box") is not None:
            boxes = [body["box"]]
        multimask = body.get("multimask", False)
        if not isinstance(multimask, bool):
            raise ServiceError(422, "multimask must be true or false")
        try:
            pred = self.sam.predict(entry.embedding, points=body.get("points"),
                                    point_labels=body.get("labels"), boxes=boxes,
                                    multimask=multimask)
        except InputError as e:
            raise ServiceError(422, str(e)) from e
        h, w = entry.embedding.original_size
        return {
            "id": image_id, "width": w, "height": h,
            "score": pred.score,
            "mask": _mask_json(pred.mask, pred.score, formats),
            "masks": [_mask_json(m, float(s), formats) for m, s in zip(pred.masks, pred.scores)],
            "embedding": source,
            "decode_ms": round((time.perf_counter() - t0) * 1000, 3),
        }

    def automatic(self, image_id: str, entry: Entry, body: dict[str, Any], source: str,
                  image: np.ndarray | None) -> dict[str, Any]:
        """``POST /images/{id}/automatic``: generator parameters in, label map out."""
        t0 = time.perf_counter()
        body = dict(body)
        formats = _formats(body.pop("formats", None))
        try:
            params = AutomaticParams.from_mapping({**(self.settings["automatic_defaults"] or {}),
                                                   **body})
            records = self.sam.automatic(entry.embedding, image, params)
        except IcasError as e:
            raise ServiceError(422, str(e)) from e
        h, w = entry.embedding.original_size
        labels = labels_from_masks([r["segmentation"] for r in records], (h, w))
        segments = []
        for r in sorted(records, key=lambda r: -int(r["area"])):
            seg: dict[str, Any] = {k: r[k] for k in ("area", "bbox", "predicted_iou", "stability_score")}
            if "rle" in formats:
                seg["rle"] = encode_rle(r["segmentation"])
            segments.append(seg)
        return {
            "id": image_id, "width": w, "height": h,
            "num_segments": int(labels.max()) if labels.size else 0,
            "labels_png": encode_label_png(labels),
            "segments": segments,
            "params": dataclasses.asdict(params),
            "embedding": source,
            "decode_ms": round((time.perf_counter() - t0) * 1000, 3),
        }

    def info(self) -> dict[str, Any]:
        loaded = self.sam.loaded
        return {
            "model_type": loaded.model_type, "model_id": loaded.model_id,
            "checkpoint": loaded.checkpoint, "device": str(loaded.device),
            "img_size": loaded.spec.img_size,
            "embedding_shape": list(loaded.spec.embedding_shape),
            "embedding_store": self.args.embedding_store,
            "encoder_runs": self.sam.encoder_runs, "store_hits": self.store_hits,
            "settings": self.settings,
        }


def _formats(value: Any) -> tuple[str, ...]:
    if value is None:
        return _FORMATS
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not set(value) <= set(_FORMATS):
        raise ServiceError(422, f"formats {value!r} must be a list among {list(_FORMATS)}")
    return tuple(value)


def _mask_json(mask: np.ndarray, score: float, formats: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"score": score, "area": int(mask.sum())}
    if "png" in formats:
        out["png"] = encode_mask_png(mask)
    if "rle" in formats:
        out["rle"] = encode_rle(mask)
    return out
