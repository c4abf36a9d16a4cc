"""Images made ready for the page ahead of time: decoded, segmented, encoded, sent to SAM.

Opening an image needs its pixels and a label map; both are prepared in background threads
for the next images (and the previous one) while the labeller paints, so moving on costs one
loopback fetch. Label maps come from ``icas segment`` results when present, else from the
configured method (the ``icas_ray.segment`` registry).
"""

from __future__ import annotations

import json
import logging
import posixpath
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from icas_ray.client._catalog import Catalog, ImageEntry
from icas_ray.client._codec import encode_image_png, encode_packed_png
from icas_ray.errors import ConfigError
from icas_ray.images import decode
from icas_ray.segment import PresegLayout, get_method, read_labels, segment
from icas_ray.storage import Storage

__all__ = ["Prepared", "Preparer", "find_presegmented"]

logger = logging.getLogger(__name__)

#: Methods driven by prompts: the image opens in their mode with one segment to start from.
PROMPT_METHODS = {"grabcut": "grabcut", "sam": "sam"}


@dataclass
class Prepared:
    """One image ready for the page.

    Attributes:
        entry: the catalog entry.
        image: ``(H, W, 3) uint8`` RGB as decoded (EXIF orientation applied by the decoder).
        image_png: PNG bytes of ``image`` (the page draws exactly these pixels).
        labels: ``(H, W) int32`` label map, segments from 1, 0 = edge.
        labels_png: :func:`~icas_ray.client._codec.encode_packed_png` of ``labels``.
        source: where the labels came from (``presegmented:superpixel``, ``superpixel``...).
        seconds: time spent preparing.
        sam_id: future of the image's id at the SAM service (None without SAM).
    """

    entry: ImageEntry
    image: np.ndarray
    image_png: bytes
    labels: np.ndarray
    labels_png: bytes
    source: str
    seconds: float
    sam_id: Future[str] | None = field(default=None, repr=False)


def find_presegmented(root: str, method: str | None, storage: Storage) -> tuple[str, str]:
    """``(output root, method)`` of ``icas segment`` results at ``root``.

    ``root`` is either one method folder (it holds ``params.json``) or the output root with one
    folder per method; with several, ``method`` picks one.

    Raises:
        ConfigError: no results there, or several methods and none chosen.
    """
    root = root.rstrip("/")
    if storage.exists(storage.join(root, "params.json")):
        parent, name = posixpath.split(root.replace("\\", "/"))
        return parent or ".", name
    if not storage.exists(root):
        raise ConfigError(f"--presegmented {root!r} does not exist: give the output of "
                          "`icas segment` (or one method folder in it)")
    found = sorted({posixpath.basename(posixpath.dirname(f.uri.replace("\\", "/")))
                    for f in storage.list_files(root)
                    if f.uri.replace("\\", "/").endswith("/params.json")
                    and posixpath.dirname(posixpath.dirname(f.uri.replace("\\", "/")))
                    == root.replace("\\", "/")})
    if method is not None and method in found:
        return root, method
    if len(found) == 1:
        return root, found[0]
    if not found:
        raise ConfigError(f"--presegmented {root!r} holds no `icas segment` results "
                          "(no METHOD/params.json): run icas segment first")
    raise ConfigError(f"--presegmented {root!r} holds results of {', '.join(found)}: pick one "
                      "with --method")


class Preparer:
    """Prepares images in a small thread pool and keeps the recent ones.

    Args:
        catalog: the session's images.
        method: registry name of the fallback method; params its parameters.
        presegmented: ``(output root, method)`` of ``icas segment`` results, or None.
        sam: a :class:`~icas_ray.serve.client.SamClient`, or None.
        keep: how many prepared images stay in memory.
        threads: background threads.
    """

    def __init__(self, catalog: Catalog, *, method: str, params: dict[str, Any],
                 presegmented: tuple[str, str] | None = None, sam: Any = None,
                 keep: int = 6, threads: int = 2) -> None:
        self.catalog = catalog
        self.method = get_method(method)
        self.params = dict(params)
        if self.method.needs_backend:
            self.params.setdefault("backend", sam)
        self.method.make_params(self.params)  # bad parameters fail before the server starts
        self.layout = (PresegLayout(catalog.folder, presegmented[0], presegmented[1])
                       if presegmented else None)
        self.sam = sam
        self.keep = max(1, keep)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="icas-prepare")
        self._sam_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icas-sam")
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, Future[Prepared]] = OrderedDict()

    @property
    def start_mode(self) -> str:
        """The page's mode when an image opens: ``paint``, ``grabcut`` or ``sam``."""
        return PROMPT_METHODS.get(self.method.name, "paint") if self.layout is None else "paint"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._sam_pool.shutdown(wait=False, cancel_futures=True)

    def _labels(self, entry: ImageEntry, image: np.ndarray) -> tuple[np.ndarray, str]:
        if self.layout is not None:
            stored = read_labels(self.catalog.storage, self.layout, entry.uri)
            if stored is not None:
                if stored.shape != image.shape[:2]:  # segmented with --max-side: scale up
                    h, w = image.shape[:2]
                    stored = cv2.resize(stored, (w, h), interpolation=cv2.INTER_NEAREST)
                return stored.astype(np.int32), f"presegmented:{self.layout.method}"
        if self.start_mode != "paint":
            # Prompt-driven methods segment when prompted; until then the image is one segment.
            return np.ones(image.shape[:2], np.int32), self.method.name
        return segment(image, self.method.name, self.params), self.method.name

    def _prepare(self, entry: ImageEntry) -> Prepared:
        t0 = time.perf_counter()
        image = decode(self.catalog.read_image_bytes(entry))
        image_png = encode_image_png(image)
        sam_id = self._sam_pool.submit(self.sam.register, image_png) if self.sam else None
        labels, source = self._labels(entry, image)
        out = Prepared(entry, image, image_png, labels, encode_packed_png(labels), source,
                       time.perf_counter() - t0, sam_id)
        logger.debug("prepared %s in %.3f s (%s)", entry.rel, out.seconds, source)
        return out

    def submit(self, index: int) -> Future[Prepared]:
        """Start (or reuse) the preparation of image ``index``."""
        with self._lock:
            fut = self._cache.get(index)
            if fut is not None and not (fut.done() and fut.exception() is not None):
                self._cache.move_to_end(index)
                return fut
            fut = self._pool.submit(self._prepare, self.catalog.entries[index])
            self._cache[index] = fut
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
            return fut

    def get(self, index: int) -> Prepared:
        """Image ``index`` prepared (waits for it; raises what preparing raised)."""
        return self.submit(index).result()

    def is_ready(self, index: int) -> bool:
        with self._lock:
            fut = self._cache.get(index)
            return fut is not None and fut.done()

    def prefetch(self, index: int, ahead: int) -> None:
        """Prepare the ``ahead`` images after ``index`` and the one before it."""
        n = len(self.catalog)
        for k in [*range(1, ahead + 1), -1] if ahead > 0 else []:
            j = index + k
            if 0 <= j < n:
                self.submit(j)

    def replace_labels(self, index: int, labels: np.ndarray) -> None:
        """Keep new labels (from GrabCut or SAM) for image ``index`` while it stays cached."""
        with self._lock:
            fut = self._cache.get(index)
        if fut is not None and fut.done() and fut.exception() is None:
            p = fut.result()
            p.labels = labels.astype(np.int32)
            p.labels_png = encode_packed_png(p.labels)

    @staticmethod
    def describe(p: Prepared) -> dict[str, Any]:
        h, w = p.image.shape[:2]
        return {"width": w, "height": h, "source": p.source,
                "segments": int(p.labels.max()) if p.labels.size else 0,
                "prepare_ms": round(p.seconds * 1000, 1)}


def params_json(params: dict[str, Any]) -> str:
    """The parameters as the page shows them (the SAM backend object left out)."""
    return json.dumps({k: v for k, v in params.items() if k != "backend"}, default=str)
