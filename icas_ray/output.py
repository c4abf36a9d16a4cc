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
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from icas_ray.clustering import OUTLIER, UNREADABLE, BatchResult, MergeResult
from icas_ray.paths import join_names_inside
from icas_ray.storage import Storage

__all__ = ["Layout", "TransferPlan", "count_results", "plan_transfers", "render_report",
           "report_page_name", "report_pages", "write_tables"]

logger = logging.getLogger(__name__)


_CHECKPOINT = re.compile(r"batch_(\d{6,})\.npz")


@dataclass(frozen=True)
class Layout:
    """Paths of one output folder."""

    root: str
    storage: Storage

    def path(self, *parts: str) -> str:
        return self.storage.join(self.root, *parts)

    def relative(self, uri: str) -> str:
        """``uri``'s path under the root, ``/``-separated (``results/cluster_0``)."""
        rel = uri[len(self.root):] if uri.startswith(self.root) else uri
        return rel.replace("\\", "/").strip("/")

    @property
    def work(self) -> str:
        return self.path("_icas")

    def work_path(self, *parts: str) -> str:
        return self.path("_icas", *parts)

    def batch_checkpoint(self, batch: int) -> str:
        return self.work_path("batches", f"batch_{batch:06d}.npz")

    @staticmethod
    def checkpoint_batch(uri: str) -> int | None:
        """The batch number of a :meth:`batch_checkpoint` URI (None for other files)."""
        m = _CHECKPOINT.fullmatch(posixpath.basename(uri.replace("\\", "/")))
        return int(m.group(1)) if m else None

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
    """The file name of ``uri`` (``/`` and ``\\`` both separate; ``..`` is no name)."""
    name = posixpath.basename(uri.replace("\\", "/"))
    return name if name not in ("", ".", "..") else "%2E%2E"


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
    names = [_basename(u) for u in uris]
    order = sorted(range(len(uris)), key=lambda i: (folders[i], names[i], uris[i]))
    used: dict[str, set[str]] = {}
    chosen: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for i in order:
        taken = used.setdefault(folders[i], set())
        stem, ext = posixpath.splitext(names[i])
        candidate, k = names[i], 0
        while candidate.lower() in taken:
            k += 1
            candidate = f"{stem}_{k}{ext}"
        taken.add(candidate.lower())
        chosen[folders[i]].append((i, candidate))
    dst = np.empty(len(uris), dtype=object)
    for folder, picks in chosen.items():
        # a name cannot lead out of its folder
        for (i, _), path in zip(picks, join_names_inside(folder, [c for _, c in picks])):
            dst[i] = path
    src = np.asarray(list(sources if sources is not None else uris), dtype=object)
    return TransferPlan(src=src, dst=dst)


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


#: What the report shows: thumbnails per cluster and per outlier folder, clusters per page,
#: pages, and rows of the unreadable table. Whatever is cut is said on the page, with where
#: to find the rest (the folders and ``manifest.parquet`` hold everything).
REPORT_THUMBS = 8
REPORT_OUTLIER_THUMBS = 32
REPORT_PER_PAGE = 100
REPORT_MAX_PAGES = 50
REPORT_MAX_UNREADABLE = 1000


def report_page_name(page: int) -> str:
    """``report.html`` for page 1, ``report_<k>.html`` after it."""
    return "report.html" if page == 1 else f"report_{page}.html"


def render_report(summary: dict[str, Any], groups: list[tuple[str, int, list[tuple[str, str | None]]]],
                  unreadable: list[tuple[str, str]], *, page: int = 1, pages: int = 1,
                  clusters: tuple[int, int, int] | None = None) -> str:
    """One page of the HTML report.

    Args:
        summary: the run's summary (counts, parameters).
        groups: ``(title, total files, [(file name, base64 thumbnail or None), ...])`` per
            cluster (then outliers) shown on this page.
        unreadable: ``(uri, reason)`` of the files that could not be read or listed (page 1).
        page, pages: this page's number and how many there are (linked from each page).
        clusters: ``(first, last, total)`` cluster numbers shown on this page, for its header.
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
    ]
    if page == 1:
        parts.append(f"<table>{rows}</table><details><summary>parameters</summary>"
                     f"<table>{prow}</table></details>")
    if pages > 1:
        links = " ".join(f"<b>{k}</b>" if k == page else
                         f"<a href='{report_page_name(k)}'>{k}</a>" for k in range(1, pages + 1))
        parts.append(f"<p class='nav'>page {page} of {pages}: {links}</p>")
    if clusters is not None:
        first, last, total = clusters
        parts.append(f"<p class='muted'>clusters {first}-{last} of {total} on this page"
                     + (f"; clusters after {REPORT_PER_PAGE * REPORT_MAX_PAGES} are not shown in "
                        "the report (they are in results/ and manifest.parquet)"
                        if total > REPORT_PER_PAGE * REPORT_MAX_PAGES else "") + "</p>")
    for title, total, items in groups:
        shown = len(items)
        more = f" <span class='muted'>(showing {shown} of {total})</span>" if total > shown else ""
        parts.append(f"<h2>{esc(title)}: {total} images{more}</h2><div class='grid'>")
        for name, thumb in items:
            img = f"<img src='data:image/jpeg;base64,{thumb}' alt=''>" if thumb else "<img alt='unreadable'>"
            parts.append(f"<figure title='{esc(name)}'>{img}{esc(name)}</figure>")
        parts.append("</div>")
    if unreadable:
        cut = (f" <span class='muted'>(showing {REPORT_MAX_UNREADABLE} of {len(unreadable)}; all "
               "are in manifest.parquet)</span>" if len(unreadable) > REPORT_MAX_UNREADABLE else "")
        parts.append(f"<h2>unreadable: {len(unreadable)} files (left in place){cut}</h2><table>")
        parts.extend(f"<tr><td>{esc(u)}</td><td>{esc(r)}</td></tr>"
                     for u, r in unreadable[:REPORT_MAX_UNREADABLE])
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


def report_pages(groups: dict[str, list[str]]) -> list[list[tuple[str, int]]]:
    """Which groups each report page shows, as ``(title, thumbnails)``: the clusters in pages
    of :data:`REPORT_PER_PAGE` (at most :data:`REPORT_MAX_PAGES` pages), and every outlier
    folder on page 1, first."""
    clusters = [t for t in groups if not t.endswith("outliers")]
    outliers = [(t, REPORT_OUTLIER_THUMBS) for t in groups if t.endswith("outliers")]
    shown = clusters[:REPORT_PER_PAGE * REPORT_MAX_PAGES]
    pages = [[(t, REPORT_THUMBS) for t in shown[i:i + REPORT_PER_PAGE]]
             for i in range(0, len(shown), REPORT_PER_PAGE)] or [[]]
    pages[0] = outliers + pages[0]
    return pages


def write_tables(layout: Layout, results: Sequence[BatchResult], final: dict[int, np.ndarray] | None,
                 location: dict[str, str], merge: MergeResult | None,
                 unlisted: Sequence[tuple[str, str]] = ()) -> None:
    """``manifest.parquet`` (one row per input, then one per entry that could not be listed,
    status ``unlisted``) and ``edges.parquet``.

    Built column by column (numpy; the edges' URIs dictionary-encoded): a per-row Python loop
    took 4 s for 20,000 images and their millions of edges.
    """
    import pyarrow as pa

    def ints_or_null(values: np.ndarray, type_: Any) -> Any:
        return pa.array(values, type_, mask=values < 0)

    uris = [np.asarray(r.uris).astype(str) for r in results]
    uri = np.concatenate(uris) if uris else np.empty(0, str)
    labels = np.concatenate([np.asarray(r.labels, np.int64) for r in results]) if results \
        else np.empty(0, np.int64)
    cluster = (np.concatenate([np.asarray(final[r.batch], np.int64) for r in results])
               if final is not None and results else np.full(len(uri), -1, np.int64))
    is_rep = []
    for r in results:
        rep = np.zeros(len(r.uris), bool)
        rep[r.rep_index] = True
        is_rep.append(rep)
    status = np.concatenate([np.asarray(r.status).astype(str) for r in results]) if results \
        else np.empty(0, str)
    status = np.where(labels == UNREADABLE, "unreadable", status)
    error = np.concatenate([np.asarray(r.error).astype(str) for r in results]) if results \
        else np.empty(0, str)
    names = pa.array(uri, pa.string())  # the manifest's URIs, and the edges' dictionary
    columns = {
        "uri": names,
        "size": pa.array(np.concatenate([np.asarray(r.sizes, np.int64) for r in results])
                         if results else np.empty(0, np.int64), pa.int64()),
        "batch": pa.array(np.concatenate([np.full(len(r.uris), r.batch, np.int32) for r in results])
                          if results else np.empty(0, np.int32), pa.int32()),
        "batch_cluster": ints_or_null(labels, pa.int32()),
        "cluster": ints_or_null(cluster, pa.int32()),
        "is_representative": pa.array(np.concatenate(is_rep) if is_rep else np.empty(0, bool),
                                      pa.bool_()),
        "status": pa.array(status, pa.string()),
        "error": pa.array(error, pa.string(), mask=error == ""),
        "location": pa.array([location.get(u, u) for u in uri.tolist()], pa.string()),
    }
    if unlisted:
        extra = {"uri": [u for u, _ in unlisted], "size": None, "batch": None,
                 "batch_cluster": None, "cluster": None, "is_representative": False,
                 "status": "unlisted", "error": [why for _, why in unlisted],
                 "location": [u for u, _ in unlisted]}
        for key, value in extra.items():
            values = value if isinstance(value, list) else [value] * len(unlisted)
            columns[key] = pa.concat_arrays([columns[key], pa.array(values, columns[key].type)])
    layout.storage.write_table(layout.path("manifest.parquet"), pa.table(columns))

    # The pairs' names as indices into one dictionary of every URI: Parquet writes a
    # dictionary-encoded column as its dictionary and the indices (the encoding it would
    # choose anyway), without building the million strings of a 20,000-image job's edges
    # (Arrow's take and concatenation 0.34-1.1 s, against 0.15-0.19 s for the whole table).
    offsets = np.cumsum([0] + [len(u) for u in uris])
    ends_a, ends_b, phases, sims = [], [], [], []
    for r, offset in zip(results, offsets):
        ends_a.append(np.asarray(r.edge_a, np.int64) + offset)
        ends_b.append(np.asarray(r.edge_b, np.int64) + offset)
        sims.append(np.asarray(r.edge_sim, np.float32))
        phases.append(np.zeros(len(r.edge_a), np.int8))
    if merge is not None:
        import pyarrow.compute as pc

        for side, merge_uris in ((ends_a, merge.edge_uri_a), (ends_b, merge.edge_uri_b)):
            index = pc.index_in(pa.array(np.asarray(merge_uris).astype(str), pa.string()),
                                value_set=names)
            if index.null_count:
                raise RuntimeError("a merge edge names an image no batch has")
            side.append(index.to_numpy(zero_copy_only=False).astype(np.int64))
        sims.append(np.asarray(merge.edge_sim, np.float32))
        phases.append(np.ones(len(merge.edge_sim), np.int8))

    def named(parts: list[np.ndarray], dictionary: Any) -> Any:
        index = np.concatenate(parts) if parts else np.empty(0, np.int64)
        return pa.DictionaryArray.from_arrays(pa.array(index, pa.int64()), dictionary)

    layout.storage.write_table(layout.path("edges.parquet"), pa.table({
        "a": named(ends_a, names),
        "b": named(ends_b, names),
        "similarity": pa.array(np.concatenate(sims) if sims else np.empty(0, np.float32),
                               pa.float32()),
        "phase": named(phases, pa.array(["batch", "merge"], pa.string()))}),
        arrow_schema=False)  # read back as plain strings, not Arrow dictionaries


def count_results(results: Sequence[BatchResult], final: dict[int, np.ndarray] | None,
                  failed: dict[str, str], unlisted: int = 0) -> dict[str, int]:
    """The summary's counts (``images`` are the listed inputs; ``unlisted`` entries could not
    be listed at all)."""
    labels = np.concatenate([(final[r.batch] if final is not None else r.labels) for r in results])
    batch_ids = np.concatenate([np.full(len(r.labels), r.batch) for r in results])
    readable = labels != UNREADABLE
    if final is not None:
        n_clusters = int(labels.max() + 1) if readable.any() and labels.max() >= 0 else 0
    else:
        n_clusters = len({(b, c) for b, c in zip(batch_ids[labels >= 0], labels[labels >= 0])})
    return {
        "images": int(len(labels)), "readable": int(readable.sum()),
        "unreadable": int((~readable).sum()), "unlisted": int(unlisted), "clusters": n_clusters,
        "clustered_images": int((labels >= 0).sum()), "outliers": int((labels == OUTLIER).sum()),
        "transfer_errors": len(failed),
    }
