"""Ray Data reading: a listing becomes a Dataset of rows with bytes or decoded images.

Reading happens in our own ``map_batches`` (not ``ray.data.read_images``) so that a file that
cannot be read or decoded stays a row with ``status="error"`` and a reason, instead of failing
the whole job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from icas_ray.images import DecodeError, ReadConfig, decode
from icas_ray.storage import FileInfo, Storage

if TYPE_CHECKING:
    import ray.data

__all__ = ["DecodeImages", "listing_dataset", "read_binary", "read_bytes_batch"]

logger = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_ERROR = "error"

#: Rows per Ray Data block of the listing, at least and at most: small blocks spread the
#: reading over workers from the start, large ones cost Ray Data less per row.
MIN_ROWS_PER_BLOCK = 128
MAX_ROWS_PER_BLOCK = 512


def listing_dataset(files: Sequence[FileInfo], *, columns: dict[str, Sequence[Any]] | None = None,
                    workers: int = 1, min_rows: int = MIN_ROWS_PER_BLOCK,
                    max_rows: int = MAX_ROWS_PER_BLOCK, blocks_per_worker: int = 8) -> ray.data.Dataset:
    """A Dataset with one row per file: ``uri``, ``size`` and any extra ``columns``.

    The rows are cut into about ``blocks_per_worker`` blocks per worker (``workers``: the
    actors or tasks that will process them), of ``min_rows`` to ``max_rows`` rows: Ray Data
    spends some milliseconds on every block (a task per block costs more: a worker lease and
    a scheduling round each), and several blocks each keep the workers evenly busy to the end.
    An actor works on one block at a time, so work of seconds per image (segmentation,
    embeddings) wants small blocks (``min_rows=1``), or a few hundred images would all go to
    one actor. ``from_blocks`` keeps those blocks as they are and reads their metadata
    here; ``from_arrow`` would start a remote task per block for it (about 2 s on a 2-CPU
    machine whose workers are not started yet).
    """
    import pyarrow as pa
    import ray.data

    items: dict[str, Any] = {
        "uri": pa.array([f.uri for f in files], pa.string()),
        "size": pa.array([f.size for f in files], pa.int64()),
    }
    for name, values in (columns or {}).items():
        items[name] = pa.array(np.asarray(values))
    table = pa.table(items)
    per_block = -(-len(files) // (max(1, blocks_per_worker) * max(1, workers)))
    step = int(np.clip(per_block, max(1, min_rows), max(max_rows, min_rows, 1)))
    # take(), not slice(): a slice pickles the whole table's buffers with it.
    blocks = [table.take(pa.array(np.arange(i, min(i + step, len(files)))))
              for i in range(0, len(files), step)] or [table]
    # from_blocks is a DeveloperAPI: should a Ray release drop it, from_arrow does the same job
    # (slower to start).
    make = getattr(ray.data, "from_blocks", None) or ray.data.from_arrow
    return make(blocks)


def read_bytes_batch(batch: dict[str, np.ndarray], storage: Storage) -> dict[str, np.ndarray]:
    """Ray Data UDF: add ``bytes``, ``status`` and ``error`` columns by reading each ``uri``
    (remote files in threads: see :func:`icas_ray.storage.map_io`)."""
    from icas_ray.errors import IcasError
    from icas_ray.storage import is_remote, map_io

    uris = [str(u) for u in batch["uri"]]
    data = np.empty(len(uris), dtype=object)
    status = np.full(len(uris), STATUS_OK, dtype=object)
    error = np.full(len(uris), "", dtype=object)

    def read(i: int) -> None:
        try:
            data[i] = storage.read_bytes(uris[i])
        except (OSError, IcasError) as e:
            data[i], status[i], error[i] = b"", STATUS_ERROR, f"unreadable ({e})"

    map_io(read, range(len(uris)), remote=bool(uris) and is_remote(uris[0]))
    return {**batch, "bytes": data, "status": status, "error": error}


class DecodeImages:
    """Ray Data UDF: decode ``bytes`` into ``image`` (RGB uint8) rows; failures keep a reason.

    The ``image`` column holds one array per row (object column) because sizes may differ.
    With ``prepare``, it holds ``prepare(image)`` instead, computed as each image is decoded
    (a feature method's :meth:`~icas_ray.features.FeatureMethod.prepare`).
    """

    def __init__(self, config: ReadConfig, prepare: Callable[[np.ndarray], Any] | None = None) -> None:
        self.config = config
        self.prepare = prepare

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["uri"])
        images = np.empty(n, dtype=object)
        status = batch["status"].copy()
        error = batch["error"].copy()
        for i in range(n):
            images[i] = None
            if status[i] != STATUS_OK:
                continue
            try:
                image = decode(batch["bytes"][i], self.config)
                images[i] = image if self.prepare is None else self.prepare(image)
            except DecodeError as e:
                status[i], error[i] = STATUS_ERROR, str(e)
        out = {k: v for k, v in batch.items() if k != "bytes"}
        out.update(image=images, status=status, error=error)
        return out


def read_binary(uri: str, *, storage: Storage | None = None, sniff: bool = False,
                ) -> ray.data.Dataset:
    """List the images under ``uri`` and read them with Ray Data.

    Returns:
        A Dataset with columns ``uri``, ``size``, ``bytes``, ``status``, ``error``; one row per
        listed image, unreadable files included with ``status="error"``.
    """
    storage = storage or Storage()
    files = storage.list_images(uri, sniff=sniff)
    return listing_dataset(files).map_batches(
        read_bytes_batch, fn_kwargs={"storage": storage}, batch_format="numpy", num_cpus=0.5,
    )
