"""The embedding store: pre-computed SAM image embeddings on a folder or bucket.

Layout under the store URI::

    manifest.json            {"format": "icas-sam-embeddings/1", "model_type", "model_id", ...}
    <sha256 of the image file>.npz   float16 features, original/input size, model id

One store holds embeddings of one model (``model_id``: type plus checkpoint hash), so an
embedding is never decoded with other weights. Files are written atomically (local rename or a
single S3 PUT), so a crashed job leaves only whole entries and a rerun skips them.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from typing import TYPE_CHECKING, Any

from icas_ray.errors import ConfigError, IcasError, InputError, StorageError
from icas_ray.paths import join_inside
from icas_ray.storage import Storage

if TYPE_CHECKING:
    from icas_ray.sam import SamEmbedding

__all__ = ["STORE_FORMAT", "EmbeddingStore"]

logger = logging.getLogger(__name__)

STORE_FORMAT = "icas-sam-embeddings/1"
_SUFFIX = ".npz"
_ID_RE = re.compile(r"^[0-9a-f]{64}$")


class EmbeddingStore:
    """Read and write embeddings keyed by image content hash; picklable for Ray workers.

    Args:
        uri: folder or ``s3://`` prefix of the store.
        storage: how to reach it.
    """

    def __init__(self, uri: str, storage: Storage | None = None) -> None:
        self.uri = uri.rstrip("/") if "://" in uri else uri
        self.storage = storage or Storage()

    def _path(self, name: str) -> str:
        """A file of the store, checked to stay inside it (``join_inside``: a symlink in a
        local store that leads out is refused)."""
        return join_inside(self.uri, name)

    def _entry(self, image_id: str) -> str:
        """The file of one embedding; ids are content hashes, never names from an input."""
        if not isinstance(image_id, str) or not _ID_RE.match(image_id):
            raise StorageError(f"{image_id!r} is not an image id: expected the 64-hex sha256 "
                               "of the image file")
        return self._path(image_id + _SUFFIX)

    def manifest(self) -> dict[str, Any] | None:
        """The store's manifest, or None for a new (empty) store."""
        path = self._path("manifest.json")
        if not self.storage.exists(path):
            return None
        try:
            data = json.loads(self.storage.read_text(path))
        except ValueError as e:
            raise ConfigError(f"{path!r} is not a valid embedding-store manifest ({e})") from e
        if data.get("format") != STORE_FORMAT:
            raise ConfigError(f"{self.uri!r} is not an icas SAM embedding store "
                              f"(format {data.get('format')!r}, expected {STORE_FORMAT!r})")
        return dict(data)

    def open_for(self, model_type: str, model_id: str, *, create: bool = False,
                 checkpoint: str | None = None) -> None:
        """Check (or with ``create`` write) that the store belongs to ``model_id``.

        Raises:
            ConfigError: the store holds embeddings of other weights, or does not exist and
                ``create`` is False.
        """
        found = self.manifest()
        if found is None:
            if not create:
                raise ConfigError(f"embedding store {self.uri!r} has no manifest.json: "
                                  "create it with `icas serve embed`")
            spec_info: dict[str, Any] = {"format": STORE_FORMAT, "model_type": model_type,
                                         "model_id": model_id, "checkpoint": checkpoint,
                                         "dtype": "float16"}
            self.storage.write_text(self._path("manifest.json"), json.dumps(spec_info, indent=1))
            return
        if found.get("model_id") != model_id:
            raise ConfigError(
                f"embedding store {self.uri!r} holds embeddings of {found.get('model_id')!r}, not of "
                f"{model_id!r}: use the same --model-type and checkpoint, or another store"
            )

    def ids(self) -> set[str]:
        """Content hashes of every stored embedding (one listing)."""
        if not self.storage.exists(self.uri):
            return set()
        names = (posixpath.basename(f.uri.replace("\\", "/")) for f in self.storage.list_files(self.uri))
        return {n[:-len(_SUFFIX)] for n in names if n.endswith(_SUFFIX) and not n.startswith(".")}

    def has(self, image_id: str) -> bool:
        return self.storage.exists(self._entry(image_id))

    def put(self, image_id: str, embedding: SamEmbedding) -> int:
        """Store one embedding (float16); returns the bytes written."""
        data = embedding.to_bytes()
        self.storage.write_bytes(self._entry(image_id), data)
        return len(data)

    def get(self, image_id: str, *, device: str = "cpu") -> SamEmbedding | None:
        """The stored embedding of ``image_id``, or None when it is not stored."""
        from icas_ray.sam import SamEmbedding

        path = self._entry(image_id)
        try:
            data = self.storage.read_bytes(path)
        except InputError:
            return None
        except IcasError:
            raise
        return SamEmbedding.from_bytes(data, device=device)
