"""Writing a run's results, shared by the pipelines of ``icas cluster``.

From the batches' results and the final clusters: where each file goes (the journal's plan),
the transfers (writer tasks, recorded before a moved source is deleted), the manifest and
edges, the report's pages, and ``summary.json`` last (its presence marks a finished run).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from icas_ray.clustering import UNREADABLE, BatchResult, MergeResult
from icas_ray.output import (
    REPORT_PER_PAGE, Layout, TransferPlan, count_results, render_report, report_page_name,
    report_pages, thumbnails, write_tables,
)
from icas_ray.paths import outside_all
from icas_ray.pipeline.journal import Journal, TransferRecord, transfer_group
from icas_ray.pipeline.stages import failpoint
from icas_ray.progress import Progress
from icas_ray.runtime import cluster_cpus
from icas_ray.storage import Listing, Storage, is_remote, is_temp_name

__all__ = ["write_results"]

logger = logging.getLogger(__name__)


def _write_task(items: list[tuple[str, str]], mode: str, storage: Storage, existing: dict[str, int],
                records: dict[str, TransferRecord], record_dir: str,
                remote: bool, keep: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Transfer files in groups (each group's records are stored before its moved sources are
    deleted: :func:`icas_ray.pipeline.journal.transfer_group`); ``remote`` groups (to or from
    an object store) in threads."""
    from icas_ray.storage import map_io

    # Remote groups are small so that threads overlap their requests; local ones large so
    # that a record file is written per few hundred files, not per file.
    size = 32 if remote else 256
    groups = [items[i:i + size] for i in range(0, len(items), size)]

    def one(group: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return transfer_group(group, mode, storage, existing=existing, records=records,
                              record_dir=record_dir, keep=keep)

    return [r for part in map_io(one, groups, remote=remote, threads=8) for r in part]


def _thumbs_task(uris: list[str], storage: Storage) -> list[str | None]:
    return thumbnails(uris, storage)


def _write_files(plan: TransferPlan, mode: str, journal: Journal, plan_name: str,
                 folder: str, config: Any, progress: Progress,
                 keep: frozenset[str] = frozenset()) -> dict[str, str]:
    """Run the transfer plan with Ray tasks; returns ``{dst: outcome}``. A move copies the
    sources in ``keep`` and leaves them in place."""
    import ray

    st = journal.storage
    existing: dict[str, int] = {}
    if st.exists(folder):
        for f in st.list_files(folder):
            if is_temp_name(os.path.basename(f.uri)):
                st.delete(f.uri)  # a copy a kill cut short: never under its final name
            else:
                existing[f.uri] = f.size
    records = journal.records(plan_name)
    # By destination: each task then fills whole folders, and two tasks rarely create files in
    # one folder at once (they would queue on its lock).
    items = sorted(((str(s), str(d)) for s, d in zip(plan.src, plan.dst)), key=lambda item: item[1])
    # Few large tasks: each new worker process costs about a second to start.
    per_task = config.files_per_task or int(np.clip(-(-len(items) // int(cluster_cpus())), 64, 4096))
    chunks = [items[i:i + per_task] for i in range(0, len(items), per_task)]
    # A local transfer is CPU work (the kernel's file creation): one task per CPU, in the
    # worker processes the feature stage started. Transfers to or from an object store wait
    # on requests (threads in each task): four tasks per CPU.
    remote = bool(items) and (is_remote(items[0][0]) or is_remote(items[0][1]))
    task = ray.remote(_write_task).options(num_cpus=0.25 if remote else 1)
    pending = [task.remote(c, mode, st, {d: existing[d] for _, d in c if d in existing},
                           {d: records[d] for _, d in c if d in records},
                           journal.records_dir(plan_name), remote,
                           frozenset(s for s, _ in c if s in keep)) for c in chunks]
    outcome: dict[str, str] = {}
    progress.start("writing", len(items))
    done_chunks = 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for dst, result in ray.get(ready[0]):
            outcome[dst] = result
        done_chunks += 1
        progress.advance("writing", len(outcome), len(items))
        failpoint("transfers", done_chunks)
    errors = [v for v in outcome.values() if v.startswith("error")]
    for e in errors[:10]:
        logger.warning("not transferred: %s", e[len("error: "):])
    progress.finish("writing", f"{len(items)} files {mode == 'move' and 'moved' or 'copied'}"
                               f"{f', {len(errors)} failed (see the manifest)' if errors else ''}")
    return outcome


def _report(layout: Layout, summary: dict[str, Any], groups: dict[str, list[str]],
            unreadable: list[tuple[str, str]]) -> str:
    """Write ``report.html`` (and its further pages); returns the first page's URI."""
    import ray

    pages = report_pages(groups)
    wanted = [u for page in pages for title, n in page for u in groups[title][:n]]
    # A few tasks (one per CPU at most): each new worker process costs about a second.
    n_tasks = max(1, min(int(cluster_cpus()), -(-len(wanted) // 64)))
    chunks = [list(c) for c in np.array_split(np.asarray(wanted, dtype=object), n_tasks)]
    task = ray.remote(_thumbs_task).options(num_cpus=0.25)
    thumbs = iter([th for part in ray.get([task.remote(c, layout.storage) for c in chunks if c])
                   for th in part])
    total = sum(1 for t in groups if not t.endswith("outliers"))
    first = 1
    for number, page in enumerate(pages, 1):
        entries = []
        for title, n in page:
            names = [os.path.basename(u.replace("\\", "/")) for u in groups[title][:n]]
            entries.append((title, len(groups[title]), [(name, next(thumbs)) for name in names]))
        shown = sum(1 for title, _ in page if not title.endswith("outliers"))
        layout.storage.write_text(layout.path(report_page_name(number)), render_report(
            summary, entries, unreadable if number == 1 else [], page=number, pages=len(pages),
            clusters=(first, first + shown - 1, total) if total > REPORT_PER_PAGE else None))
        first += shown
    return layout.path(report_page_name(1))


def write_results(journal: Journal, config: Any, *, input_uri: str, listing: Listing,
                  results: Sequence[BatchResult], final: dict[int, np.ndarray] | None,
                  merge: MergeResult | None, summary: dict[str, Any], timings: dict[str, float],
                  t_start: float, progress: Progress) -> dict[str, Any]:
    """Transfer the files, write the tables, the report and ``summary.json``.

    Args:
        journal: the run's journal (its layout and storage).
        config: the run's options (``option``, ``transfer``, ``files_per_task``).
        input_uri: the input, for the summary.
        listing: what was listed (the entries that could not be, too).
        results: every batch's result, by batch number.
        final: the final cluster of each file per batch (None: batch folders, dontmerge).
        merge: the merge's result, for its edges.
        summary: the pipeline's own entries (threshold, parameters, comparisons, batches).
        timings: phase timings so far; ``writing_s`` and ``total_s`` are added.
        t_start: when the run started (``time.monotonic()``).
        progress: receives the writing phase's progress.

    Returns:
        The summary, as written.
    """
    layout, storage = journal.layout, journal.storage
    # Destinations: final clusters, or per-batch folders for dontmerge.
    uris: list[str] = []
    folders: list[str] = []
    unreadable: list[tuple[str, str]] = []
    for r in results:
        labels = final[r.batch] if final is not None else r.labels
        for i, uri in enumerate(r.uris):
            if labels[i] == UNREADABLE:
                unreadable.append((str(uri), str(r.error[i])))
                continue
            uris.append(str(uri))
            folders.append(layout.cluster_folder(int(labels[i]),
                                                 None if final is not None else r.batch))
    # Where files are now: a previous dontmerge run with move put them in batch folders.
    sources = journal.current_locations(uris)
    plan_name = journal.plan_name(config.option)
    plan = journal.load_or_make_plan(plan_name, uris, folders, sources)
    # A move deletes only what lives in the input (or in this output, from a dontmerge move):
    # a file reached through a symlinked folder leading out of it is copied and left there.
    keep: frozenset[str] = frozenset()
    if config.transfer == "move":
        srcs = [str(s) for s in plan.src]
        out = {d for d in {os.path.dirname(s) for s in srcs}
               if outside_all(d, (input_uri, layout.root))}
        keep = frozenset(s for s in srcs if os.path.dirname(s) in out)
    if keep:
        logger.warning("%d file(s) reached through a symlinked folder outside the input were "
                       "copied, not moved (summary.json: kept_sources)", len(keep))
    t = time.monotonic()
    outcome = _write_files(plan, config.transfer, journal, plan_name,
                           layout.path("results" if final is not None else "batches"), config,
                           progress, keep)
    timings["writing_s"] = time.monotonic() - t
    location = {u: d for u, d in zip(uris, plan.dst.astype(str))
                if not outcome.get(str(d), "").startswith("error")}
    failed = {u: outcome[str(d)] for u, d in zip(uris, plan.dst.astype(str))
              if outcome.get(str(d), "").startswith("error")}

    summary = {
        "input": input_uri, "output": layout.root, **summary,
        "counts": count_results(results, final, failed, len(listing.problems)),
        "timings": {**{k: round(v, 3) for k, v in timings.items()},
                    "total_s": round(time.monotonic() - t_start, 3)},
        "transfer_errors": failed,
        "kept_sources": sorted(keep),
        "unlisted": dict(listing.problems),
    }
    write_tables(layout, results, final, location, merge, listing.problems)
    failpoint("tables", 1)
    groups: dict[str, list[str]] = defaultdict(list)
    for u, folder in zip(uris, folders):
        groups[layout.relative(folder)].append(location.get(u, u))
    ordered = dict(sorted(groups.items(), key=lambda kv: (kv[0].endswith("outliers"), -len(kv[1]), kv[0])))
    summary["report"] = _report(layout, summary, ordered, unreadable + listing.problems)
    summary["timings"]["total_s"] = round(time.monotonic() - t_start, 3)
    storage.write_text(layout.summary, json.dumps(summary, indent=1, default=str))
    return summary


