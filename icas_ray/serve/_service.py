"""The SAM service's request logic, without Serve: what each endpoint does.

:class:`SamService` is synchronous and owns the model, the stores and the tunables; the Serve
deployment (``app.py``) adds HTTP, routing, the embedding LRU (Serve's model multiplexing keyed
by image id) and batching around it. Errors a client can fix are :class:`ServiceError` with an
HTTP status and a one-line message.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import re
import stat
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from icas_ray.errors import IcasError, InputError
from icas_ray.images import DecodeError, ReadConfig, decode
from icas_ray.paths import is_inside, join_inside, normalise_uri
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

__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "Entry", "SamService", "ServiceError",
           "check_image_id", "parse_json_body"]

logger = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_FORMATS = ("png", "rle")
_PREDICT_KEYS = {"points", "labels", "boxes", "box", "multimask", "formats"}
#: JSON request bodies are small (256 points are ~4 KB): anything larger is refused unread.
MAX_JSON_BYTES = 2**20
#: Containers nested deeper than this are refused ({"points": [[x, y]]} is 3 levels).
MAX_JSON_DEPTH = 8
#: Coordinates beyond this are refused before numpy sees them (a 400-digit integer overflows).
_MAX_COORD = 1e7


class ServiceError(Exception):
    """A request the client must fix (4xx) or the service cannot serve (5xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON: send finite numbers")


def _depth(value: Any) -> int:
    """Nesting depth of JSON containers (iterative: a crafted body cannot exhaust the stack);
    stops counting past :data:`MAX_JSON_DEPTH`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_JSON_DEPTH:
                break
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object (``{}`` when empty).

    Raises:
        ServiceError: 400 for invalid JSON (``NaN``/``Infinity`` included), nesting deeper than
            :data:`MAX_JSON_DEPTH`, or a body that is not an object.
    """
    if not raw:
        return {}
    too_deep = ServiceError(400, f"request body is nested too deeply: at most {MAX_JSON_DEPTH} "
                                 "levels of arrays and objects")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError as e:
        raise too_deep from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, NaN and Infinity
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ServiceError(400, f"request body is not valid JSON ({first})") from e
    if _depth(body) > MAX_JSON_DEPTH:
        raise too_deep
    if not isinstance(body, dict):
        raise ServiceError(400, "request body must be a JSON object")
    return body


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _plausible(v: float) -> bool:
    """Finite and within ±1e7 (checked on the int itself: a 400-digit one overflows a float)."""
    return abs(v) <= _MAX_COORD if isinstance(v, int) else math.isfinite(v) and abs(v) <= _MAX_COORD


def _prompt_rows(value: Any, name: str, width: int, limit: int, setting: str,
                 example: str) -> list[list[float]] | None:
    """Check a JSON prompt list (``points`` or ``boxes``) before numpy sees it: a list of at
    most ``limit`` rows of ``width`` finite numbers (one flat row is accepted too).

    Raises:
        ServiceError: 413 past ``limit`` rows, 422 for anything else malformed.
    """
    if value is None:
        return None
    if not isinstance(value, list):
        raise ServiceError(422, f"{name} must be a list like {example}")
    if len(value) == width and all(_is_number(v) for v in value):
        value = [value]
    if len(value) > limit:
        raise ServiceError(413, f"{len(value)} {name} exceed the limit of {limit} per request "
                                f"({setting}): send fewer, or ask the operator to raise {setting}")
    for i, row in enumerate(value):
        if not (isinstance(row, list) and len(row) == width and all(_is_number(v) for v in row)):
            raise ServiceError(422, f"{name}[{i}] must be {width} numbers, e.g. {example}")
        if not all(_plausible(v) for v in row):
            raise ServiceError(422, f"{name}[{i}] has a coordinate beyond ±{_MAX_COORD:g} pixels")
    return value


def _labels(value: Any, limit: int) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ServiceError(422, "labels must be a list like [1, 0, ...] (1 = foreground)")
    if len(value) > limit:
        raise ServiceError(413, f"{len(value)} labels exceed the limit of {limit} per request "
                                "(max_points): send fewer points")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v in (0, 1) for v in value):
        raise ServiceError(422, "labels must be 1 (foreground) or 0 (background), one per point")
    return value


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


class SamService:
    """Model, stores and tunables of one replica.

    Raises (at construction):
        ModelLoadError: the checkpoint cannot be loaded.
        ConfigError: the embedding store belongs to another model.
    """

    def __init__(self, args: SamServeArgs) -> None:
        self.args = args
        self.storage = args.make_storage()
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
        """Bytes of an image the server reads itself (``POST /images {"uri": ...}``).

        Only under the operator's roots (``allowed_uri_prefixes``, ``--allow-uri``): the URI is
        resolved first (local: ``realpath``, so ``..`` and symlinks cannot lead out; S3: the
        key normalised), and one answer covers every URI outside, existing or not. Only regular
        files are read, never more than ``max_upload_mb``.

        Raises:
            ServiceError: 403 off or outside the roots, 404 missing, 400 not a regular file or
                unreadable, 413 too large.
        """
        roots = self.args.allowed_uri_prefixes
        if not roots:
            raise ServiceError(403, "registering images by URI is off: the operator must start "
                                    "the service with --allow-uri ROOT (allowed_uri_prefixes) "
                                    "for each folder or s3:// prefix it may read; or POST the "
                                    "image bytes")
        scheme = uri.split("://", 1)[0].lower() if "://" in uri else "file"
        try:
            target = normalise_uri(uri) if scheme in ("file", "s3") else None
        except (ValueError, OSError):  # an embedded NUL byte, a path too long to resolve
            target = None
        if target is None or not any(is_inside(root, target) for root in roots):
            raise ServiceError(403, f"uri {uri!r} is not under a root the operator allowed "
                                    "(--allow-uri): POST the image bytes instead")
        if "://" in target:
            return self._read_object(uri, target)
        return self._read_local(uri, target)

    def _read_local(self, uri: str, path: str) -> bytes:
        """A regular file's bytes: stat before opening (a FIFO or device is never opened), then
        open without following a symlink swapped in since and check it is the same file."""
        limit = self.max_upload_bytes
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                raise ServiceError(400, f"uri {uri!r} is not a regular file (a folder, FIFO or "
                                        "device): name an image file")
            if st.st_size > limit:
                raise ServiceError(413, f"{uri!r} has {st.st_size} bytes, above the limit of "
                                        f"{limit} bytes (max_upload_mb)")
            flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) \
                | getattr(os, "O_CLOEXEC", 0)
            with os.fdopen(os.open(path, flags), "rb") as f:
                now = os.fstat(f.fileno())
                same = (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
                if not (stat.S_ISREG(now.st_mode) and same):
                    raise ServiceError(400, f"uri {uri!r} changed while being read: try again")
                data = f.read(limit + 1)
        except FileNotFoundError as e:
            raise ServiceError(404, f"cannot read {uri!r}: it does not exist") from e
        except PermissionError as e:
            raise ServiceError(403, f"cannot read {uri!r}: permission denied") from e
        except OSError as e:
            reason = "a symlink was swapped in" if e.errno == errno.ELOOP else e.strerror
            raise ServiceError(400, f"cannot read {uri!r}: {reason}") from e
        if len(data) > limit:
            raise ServiceError(413, f"{uri!r} has more than {limit} bytes, the limit "
                                    "(max_upload_mb)")
        return data

    def _read_object(self, uri: str, target: str) -> bytes:
        """An object's bytes (the normalised key that was checked), at most the limit."""
        limit = self.max_upload_bytes
        try:
            if self.storage.isdir(target):
                raise ServiceError(400, f"uri {uri!r} is not a regular file (a prefix with "
                                        "objects under it): name an image object")
            size = self.storage.size(target)
            if size > limit:
                raise ServiceError(413, f"{uri!r} has {size} bytes, above the limit of "
                                        f"{limit} bytes (max_upload_mb)")
            data = self.storage.read_head(target, limit + 1)
        except InputError as e:
            raise ServiceError(404, f"cannot read {uri!r}: it does not exist") from e
        except IcasError as e:
            raise ServiceError(400, f"cannot read {uri!r}: {e}") from e
        if len(data) > limit:
            raise ServiceError(413, f"{uri!r} has more than {limit} bytes, the limit "
                                    "(max_upload_mb)")
        return data

    def _image_uri(self, image_id: str) -> str:
        return join_inside(self.image_store, check_image_id(image_id))

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
        max_points, max_boxes = int(self.settings["max_points"]), int(self.settings["max_boxes"])
        points = _prompt_rows(body.get("points"), "points", 2, max_points, "max_points",
                              "[[x, y], ...]")
        labels = _labels(body.get("labels"), max_points)
        if body.get("boxes") is not None:
            boxes = _prompt_rows(body["boxes"], "boxes", 4, max_boxes, "max_boxes",
                                 "[[x0, y0, x1, y1], ...]")
        elif body.get("box") is not None:
            boxes = _prompt_rows([body["box"]], "box", 4, 1, "max_boxes", "[x0, y0, x1, y1]")
        else:
            boxes = None
        multimask = body.get("multimask", False)
        if not isinstance(multimask, bool):
            raise ServiceError(422, "multimask must be true or false")
        try:
            pred = self.sam.predict(entry.embedding, points=points, point_labels=labels,
                                    boxes=boxes, multimask=multimask)
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

    def automatic_params(self, body: dict[str, Any]) -> tuple[AutomaticParams, tuple[str, ...]]:
        """The generator parameters and answer formats of an ``automatic`` request body.

        Raises:
            ServiceError: 422 for unknown names or values of the wrong type or range.
        """
        body = dict(body)
        formats = _formats(body.pop("formats", None))
        try:
            return AutomaticParams.from_mapping(
                {**(self.settings["automatic_defaults"] or {}), **body}), formats
        except IcasError as e:
            raise ServiceError(422, str(e)) from e

    def automatic(self, image_id: str, entry: Entry, params: AutomaticParams,
                  formats: tuple[str, ...], source: str,
                  image: np.ndarray | None) -> dict[str, Any]:
        """``POST /images/{id}/automatic``: generator parameters in, label map out."""
        t0 = time.perf_counter()
        try:
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
