"""Image embeddings: the expensive result of SAM's encoder, and a memory-bounded LRU of them."""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from icas_ray.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["EmbeddingCache", "SamEmbedding", "content_id", "array_id"]


def content_id(data: bytes) -> str:
    """The id of an image file: the sha256 hex digest of its bytes (as ``sha256sum`` prints)."""
    return hashlib.sha256(data).hexdigest()


def array_id(image: np.ndarray) -> str:
    """The id of a decoded image array (shape and pixels); used when no file bytes exist."""
    h = hashlib.sha256(repr((image.shape, str(image.dtype))).encode())
    h.update(np.ascontiguousarray(image).data)
    return "a" + h.hexdigest()[1:]


@dataclass
class SamEmbedding:
    """One image's encoder output and the sizes needed to decode prompts against it.

    Attributes:
        features: ``(1, C, h, w)`` float tensor on the model's device.
        original_size: ``(H, W)`` of the image the prompts refer to.
        input_size: ``(h, w)`` of the resized image fed to the encoder (long side = img_size).
        model_id: the weights that produced it (see :class:`~icas_ray.sam.LoadedSam`).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_id: str

    @property
    def nbytes(self) -> int:
        return int(self.features.element_size() * self.features.nelement())

    # -- compact serialisation: float16, one .npz per image -------------------------------
    def to_bytes(self) -> bytes:
        """Serialise as an ``.npz``: float16 features plus sizes and the model id."""
        buf = io.BytesIO()
        np.savez(
            buf,
            features=self.features.detach().to("cpu").numpy().astype(np.float16),
            original_size=np.asarray(self.original_size, dtype=np.int64),
            input_size=np.asarray(self.input_size, dtype=np.int64),
            model_id=np.asarray(self.model_id),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, device: str = "cpu") -> SamEmbedding:
        """Inverse of :meth:`to_bytes`; features come back as float32 on ``device``."""
        import torch

        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                feats = z["features"]
                original = tuple(int(v) for v in z["original_size"])
                inp = tuple(int(v) for v in z["input_size"])
                model_id = str(z["model_id"])
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"not a stored SAM embedding ({e})") from e
        features = torch.from_numpy(feats.astype(np.float32)).to(device)
        return cls(features, (original[0], original[1]), (inp[0], inp[1]), model_id)


class EmbeddingCache:
    """A thread-safe LRU of :class:`SamEmbedding` bounded by total bytes.

    Example:
        >>> cache = EmbeddingCache(max_bytes=0)
        >>> cache.get("x") is None
        True
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, SamEmbedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> SamEmbedding | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: str, item: SamEmbedding) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if item.nbytes > self.max_bytes:
                return
            self._items[key] = item
            self._bytes += item.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, Any]:
        return {"entries": len(self._items), "bytes": self._bytes, "max_bytes": self.max_bytes,
                "hits": self.hits, "misses": self.misses}
