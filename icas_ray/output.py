"""The result layout: paths, the transfer plan, manifest, edges, summary and the HTML report.

::

    <output>/results/cluster_0/ ... cluster_K/   images of each final cluster (largest first)
    <output>/results/outliers/                   images in no cluster
    <output>/batches/batch_<b>/...               per-batch folders (option dontmerge)
    <output>/manifest.parquet                    one row per input file
    <output>/edges.parquet                       similar pairs: a, b, similarity, phase
    <output>/summary.json                        counts, parameters, timings, comparisons
    <output>/report.html                         thumbnails per cluster
    <output>/_icas/                              work state: listing, batch checkpoints, plan

``summary.json`` is written last: its presence marks a finished run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from icas_ray.storage import Storage

__all__ = ["Layout", "TransferPlan", "plan_transfers", "render_report", "transfer_one"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """Paths of one output folder."""

    root: str
    storage: Storage

    def path(self, *parts: str) -> str:
        return self.storage.join(self.root, *parts)

    @property
    def work(self) -> str:
        return self.path("_icas")

    def work_path(self, *parts: str) -> str:
        return self.path("_icas", *parts)

    def batch_checkpoint(self, batch: int) -> str:
        return self.work_path("batches", f"batch_{batch:06d}.npz")

    @property
    def summary(self) -> str:
        return self.path("summary.json")

    def cluster_folder(self, cluster: int, batch: int | None = None) -> str:
        name = "outliers" if cluster < 0 else f"cluster_{cluster}"
        if batch is None:
            return self.path("results", name)
        return self.path("batches", f"batch_{batch}", name)


@dataclass
class TransferPlan:
    """Where each input file goes: parallel arrays of source and destination URIs."""

    src: np.ndarray
    dst: np.ndarray

    def to_table(self) -> Any:
        import pyarrow as pa

        return pa.table({"src": self.src.astype(str), "dst": self.dst.astype(str)})

    @classmethod
    def from_table(cls, table: Any) -> TransferPlan:
        return cls(np.asarray(table.column("src").to_pylist(), dtype=object),
                   np.asarray(table.column("dst").to_pylist(), dtype=object))


def _basename(uri: str) -> str:
    return posixpath.basename(uri.replace("\\", "/"))


def plan_transfers(uris: Sequence[str], folders: Sequence[str], storage: Storage,
                   sources: Sequence[str] | None = None) -> TransferPlan:
    """Destinations for files: ``folders[i]/basename(uris[i])``, renamed on collision.

    Two files with one name bound for one folder (from different sub-folders of the input)
    never overwrite each other: the later one (in URI order) becomes ``name_1.ext``, and so on.
    Deterministic: the same inputs always give the same plan.

    Args:
        uris: original URIs (their base names are kept).
        folders: destination folder per file.
        storage: for joining paths.
        sources: where each file is now, if not at ``uris`` (a previous move).
    """
    order = sorted(range(len(uris)), key=lambda i: (folders[i], _basename(uris[i]), uris[i]))
    used: dict[str, set[str]] = {}
    dst = np.empty(len(uris), dtype=object)
    for i in order:
        taken = used.setdefault(folders[i], set())
        name = _basename(uris[i])
        stem, ext = posixpath.splitext(name)
        candidate, k = name, 0
        while candidate.lower() in taken:
            k += 1
            candidate = f"{stem}_{k}{ext}"
        taken.add(candidate.lower())
        dst[i] = storage.join(folders[i], candidate)
    src = np.asarray(list(sources if sources is not None else uris), dtype=object)
    return TransferPlan(src=src, dst=dst)


def transfer_one(src: str, dst: str, mode: str, storage: Storage,
                 existing_size: int | None) -> str:
    """Copy or move one file idempotently; returns "done", "skipped" or raises.

    ``existing_size`` is the destination's size if it already exists (from one listing of the
    output), so a resumed run skips finished files without a request per file. A move deletes
    its source only after the copy is verified; a move interrupted after the copy completes
    here by deleting the source.
    """
    if existing_size is not None:
        if not storage.exists(src):
            return "skipped"  # moved before
        if storage.size(src) == existing_size:
            if mode == "move":
                storage.delete(src)
            return "skipped"
    if mode == "move":
        storage.move(src, dst)
    else:
        storage.copy(src, dst)
    return "done"


def _thumbnail(data: bytes, side: int = 96) -> str | None:
    from icas_ray.images import DecodeError, ReadConfig, decode
    from PIL import Image

    try:
        img = decode(data, ReadConfig(max_side=side))
    except DecodeError:
        return None
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(uris: Sequence[str], storage: Storage) -> list[str | None]:
    """Base64 JPEG thumbnails of the given files (None where unreadable); remote files are
    read in threads."""
    from icas_ray.storage import is_remote, map_io

    def one(uri: str) -> str | None:
        try:
            return _thumbnail(storage.read_bytes(uri))
        except (OSError, ValueError):
            return None

    return map_io(one, uris, remote=any(is_remote(u) for u in uris))


_REPORT_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.05em;margin:1.2em 0 .3em}
.grid{display:flex;flex-wrap:wrap;gap:4px}
.grid figure{margin:0;width:100px;font-size:10px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.grid img{width:96px;height:96px;object-fit:contain;background:#eee;display:block}
table{border-collapse:collapse} td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #ddd}
.muted{color:#777}
"""


def render_report(summary: dict[str, Any], groups: list[tuple[str, int, list[tuple[str, str | None]]]],
                  unreadable: list[tuple[str, str]]) -> str:
    """The HTML report.

    Args:
        summary: the run's summary (counts, parameters).
        groups: ``(title, total files, [(file name, base64 thumbnail or None), ...])`` per
            cluster (then outliers).
        unreadable: ``(uri, reason)`` of files that could not be read.
    """
    esc = html.escape
    counts = summary.get("counts", {})
    rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in counts.items())
    params = summary.get("parameters", {})
    prow = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(json.dumps(v))}</td></tr>" for k, v in params.items())
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>icas cluster report</title>",
        f"<style>{_REPORT_CSS}</style></head><body>",
        f"<h1>icas cluster report: {esc(str(summary.get('input', '')))}</h1>",
        f"<table>{rows}</table><details><summary>parameters</summary><table>{prow}</table></details>",
    ]
    for title, total, items in groups:
        shown = len(items)
        more = f" <span class='muted'>(showing {shown} of {total})</span>" if total > shown else ""
        parts.append(f"<h2>{esc(title)}: {total} images{more}</h2><div class='grid'>")
        for name, thumb in items:
            img = f"<img src='data:image/jpeg;base64,{thumb}' alt=''>" if thumb else "<img alt='unreadable'>"
            parts.append(f"<figure title='{esc(name)}'>{img}{esc(name)}</figure>")
        parts.append("</div>")
    if unreadable:
        parts.append(f"<h2>unreadable: {len(unreadable)} files (left in place)</h2><table>")
        parts.extend(f"<tr><td>{esc(u)}</td><td>{esc(r)}</td></tr>" for u, r in unreadable[:1000])
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)
