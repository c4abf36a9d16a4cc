"""The run journal of ``icas cluster``: what a run keeps on storage so that nothing is lost.

Under ``<output>/_icas/``::

    lock.json                 the run holding the output (host, pid): one run per output at a time
    state.json                version, input, options fingerprint, threshold, transfer mode
    listing.parquet           the files (uri, size, batch) a resumed run must see again
    unlisted.parquet          entries that could not be listed, with their reasons
    batches/batch_<b>.npz     one checkpoint per finished batch
    plan_<option>.parquet     where each file goes (src, dst)
    written_<option>/*.json   the transfers this run made: dst, src, size, md5

Rules it enforces: an output that is not empty and holds no icas state is never written
into (its files are not icas's to adopt or replace); an unfinished run of other options or
another icas version is not resumed; a destination counts as written only when it is in the
run's records with its size and content hash, and a moved source is deleted only after that
record is on storage. Nothing here needs Ray: tests drive it on a temp folder.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icas_ray.clustering import BatchResult
from icas_ray.errors import ConfigError, InputError, StorageError
from icas_ray.output import Layout, TransferPlan, plan_transfers
from icas_ray.storage import FileInfo, Listing, Storage, is_remote, is_temp_name

__all__ = ["STATE_VERSION", "Journal", "RunLock", "RunState", "TransferRecord"]

logger = logging.getLogger(__name__)

#: Version of the unfinished-run state and of the batch results it points to; a run of
#: another version is not resumed (2: minhash signatures became pixel positions).
STATE_VERSION = 2

#: What ``--overwrite`` removes of an earlier result (``_icas`` less the lock).
_RESULT_PARTS = ("results", "batches", "manifest.parquet", "edges.parquet", "summary.json",
                 "report.html")


@dataclass
class RunState:
    """What the driver knows about the output folder before it starts."""

    resume: bool
    threshold: float | None
    threshold_source: str
    batches_done: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class TransferRecord:
    """A file this run wrote: where from, where to, its size and content MD5."""

    src: str
    dst: str
    size: int
    md5: str


# ---------------------------------------------------------------------------------------------
# The lock


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    now = _process_start(pid)
    return start is None or now is None or now == start


#: A lock temp younger than this may belong to a run taking the lock right now (it lives for
#: the microseconds between its write and its link); an older one was left by a kill -9.
_LOCK_TEMP_STALE_S = 60.0


def _young_lock_temp(storage: Storage, uri: str, name: str) -> bool:
    """True for another run's lock temp (local only: S3 locks have none) that may be in use."""
    if is_remote(uri) or not name.startswith(".lock.json."):
        return False
    try:
        return time.time() - os.path.getmtime(storage.fs(uri)[1]) < _LOCK_TEMP_STALE_S
    except OSError:
        return True  # gone meanwhile: nothing to remove


class RunLock:
    """One run per output folder at a time.

    Local: ``lock.json`` created exclusively (written under a temp name, then hard-linked:
    the link fails if the lock exists). S3: an object written only if
    absent (``If-None-Match: *``). A lock left by a process of this host that is gone (a
    kill -9) is stale and taken over; a lock of another host is reported with the way out.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.uri = layout.work_path("lock.json")
        self.run_id = uuid.uuid4().hex
        self._held = False

    def _body(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "pid_start": _process_start(os.getpid()), "run": self.run_id,
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode()

    def _create(self) -> bool:
        """Write the lock if absent; False if it exists."""
        st = self.layout.storage
        fs, path = st.fs(self.uri)
        if not is_remote(self.uri):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # Written whole under a temp name, then hard-linked to the lock's name (which fails
            # if it exists): another run never reads a lock that is still empty.
            temp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{self.run_id}.tmp")
            with open(temp, "wb") as fh:
                fh.write(self._body())
            try:
                os.link(temp, path)
            except FileExistsError:
                return False
            except FileNotFoundError:
                # the temp went before the link: only the holder's cleanup removes another
                # run's lock temp (when it is stale), so a run holds the lock; it is reported
                if os.path.isdir(os.path.dirname(path)):
                    return False
                raise
            finally:
                try:
                    os.unlink(temp)
                except FileNotFoundError:
                    pass
            return True
        bucket, key = path.split("/", 1)
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=self._body(), IfNoneMatch="*")
        except Exception as e:  # s3fs maps a 412 to an OSError of its own choosing
            if "PreconditionFailed" in repr(e) or "412" in repr(e) or st.exists(self.uri):
                return False
            raise
        return True

    def acquire(self) -> None:
        """Take the lock, or raise :class:`ConfigError` naming the run that holds it."""
        st = self.layout.storage
        for _ in range(3):
            if self._create():
                self._held = True
                return
            try:
                holder = json.loads(st.read_text(self.uri))
            except (InputError, StorageError, OSError, ValueError):
                continue  # released (or half written) meanwhile: try again
            if holder.get("host") == socket.gethostname() and not _alive(
                    int(holder.get("pid", -1)), holder.get("pid_start")):
                logger.warning("taking over the lock of a run that is gone (pid %s)", holder.get("pid"))
                try:
                    st.delete(self.uri)
                except (InputError, StorageError, OSError):
                    pass
                continue
            raise ConfigError(
                f"{self.layout.root!r} is in use by another icas run (host {holder.get('host')}, "
                f"pid {holder.get('pid')}, since {holder.get('started')}): wait for it to finish, "
                f"or, if no such run is alive, delete {self.uri}")
        raise ConfigError(f"cannot take the lock {self.uri}: another run keeps taking it; retry")

    def release(self) -> None:
        if not self._held:
            return
        st = self.layout.storage
        try:
            if json.loads(st.read_text(self.uri)).get("run") == self.run_id:
                st.delete(self.uri)
        except (InputError, StorageError, OSError, ValueError) as e:
            logger.warning("could not release the lock %s: %s", self.uri, e)
        self._held = False

    @contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


# ---------------------------------------------------------------------------------------------
# The journal


class Journal:
    """The run state of one output folder (see the module docstring)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.storage: Storage = layout.storage

    # -- before the run ----------------------------------------------------------------------
    def check_output(self) -> None:
        """Refuse an output that is a file, or a folder with content and no icas state."""
        st, root = self.storage, self.layout.root
        if not st.exists(root):
            return
        if not is_remote(root) and not os.path.isdir(st.fs(root)[1]):
            raise ConfigError(f"output {root!r} is a file: choose a folder for --output")
        if st.exists(self.layout.work) or st.exists(self.layout.summary):
            return
        if st.list_files(root):
            raise ConfigError(
                f"output {root!r} is not empty and holds no icas result: choose an empty or new "
                "folder for --output (icas never writes among files it did not put there)")

    def clean_leftovers(self) -> int:
        """Remove temporary files a killed run left in the output root and ``_icas`` (result
        folders are cleaned as they are listed for the transfers). Returns how many."""
        st = self.storage
        removed = 0
        for folder in (self.layout.root, self.layout.work):
            if not st.exists(folder):
                continue
            for f in st.list_files(folder):
                name = _name(f.uri)
                if not is_temp_name(name) or _young_lock_temp(st, f.uri, name):
                    continue
                try:
                    st.delete(f.uri)
                except InputError:
                    continue  # gone meanwhile (its writer renamed or removed it)
                removed += 1
        if removed:
            logger.info("removed %d temporary files left by an interrupted run", removed)
        return removed

    def prepare(self, input_uri: str, config: Any) -> RunState:
        """Decide between a fresh run and a resume, applying ``--overwrite`` and refusing
        what cannot be resumed (other options, another version, a finished result)."""
        st, layout = self.storage, self.layout
        summary_exists = st.exists(layout.summary)
        previous = self.state()
        if config.overwrite and (summary_exists or previous is not None):
            if previous and previous.get("transfer") == "move" and (
                    st.exists(layout.path("results")) or st.exists(layout.path("batches"))):
                raise ConfigError(
                    f"{layout.root!r} holds images moved there by an earlier run: --overwrite would "
                    "delete them; move them back or choose another --output")
            self.remove_previous()
            previous, summary_exists = None, False
        if summary_exists:
            done = json.loads(st.read_text(layout.summary))
            if done.get("parameters", {}).get("option", "all") != "dontmerge" or \
                    config.option == "dontmerge":
                raise ConfigError(
                    f"{layout.root!r} already holds a finished result: pass --overwrite to replace "
                    "it or --output to write elsewhere")
        if config.option == "merge" and previous is None:
            raise ConfigError(f"--option merge needs the batch results of an earlier run in "
                              f"{layout.root!r}: run with --option dontmerge (or all) first")
        if previous is None:
            return RunState(False, config.threshold,
                            "given" if config.threshold is not None else "")
        if previous.get("version") != STATE_VERSION:
            raise ConfigError(
                f"{layout.root!r} holds an unfinished run of another icas version, whose batch "
                "results this version cannot merge: pass --overwrite to start over")
        if previous.get("input") != input_uri or previous.get("fingerprint") != config.fingerprint():
            raise ConfigError(
                f"{layout.root!r} holds an unfinished run with other parameters: rerun it with the "
                "same options to resume, or pass --overwrite to start over")
        thr = previous.get("threshold")
        if config.threshold is not None and thr is not None and abs(config.threshold - thr) > 1e-12:
            raise ConfigError(f"{layout.root!r} holds an unfinished run with threshold {thr}: rerun "
                              "with the same --threshold to resume, or pass --overwrite")
        if thr is None and config.threshold is not None:
            # The earlier run stopped before its threshold was decided (no batch is clustered
            # without one): the one given now is the run's.
            return RunState(True, config.threshold, "given", self.batches_done())
        return RunState(True, thr, previous.get("threshold_source", "given"), self.batches_done())

    def remove_previous(self) -> None:
        """Delete an earlier (copied) result and its state, keeping this run's lock."""
        st, layout = self.storage, self.layout
        logger.info("--overwrite: removing the previous result in %s", layout.root)
        for part in _RESULT_PARTS:
            target = layout.path(part)
            if st.exists(target):
                if st.isdir(target):
                    st.delete_tree(target)
                else:
                    st.delete(target)
        if st.exists(layout.work):
            for f in st.list_files(layout.work):
                if f.uri != layout.work_path("lock.json"):
                    st.delete(f.uri)
        for f in st.list_files(layout.root):  # further report pages (report_2.html, ...)
            if re.fullmatch(r"report_\d+\.html", _name(f.uri)):
                st.delete(f.uri)

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any] | None:
        uri = self.layout.work_path("state.json")
        return json.loads(self.storage.read_text(uri)) if self.storage.exists(uri) else None

    def save_state(self, state: RunState, input_uri: str, config: Any) -> None:
        self.storage.write_text(self.layout.work_path("state.json"), json.dumps({
            "version": STATE_VERSION, "input": input_uri, "fingerprint": config.fingerprint(),
            "threshold": state.threshold, "threshold_source": state.threshold_source,
            "transfer": config.transfer,
        }, indent=1))

    # -- listing -------------------------------------------------------------------------------
    def save_listing(self, files: Sequence[FileInfo], batches: np.ndarray,
                     problems: Sequence[tuple[str, str]]) -> None:
        import pyarrow as pa

        st = self.storage
        st.write_table(self.layout.work_path("unlisted.parquet"), pa.table({
            "uri": pa.array([u for u, _ in problems], pa.string()),
            "error": pa.array([w for _, w in problems], pa.string())}))
        st.write_table(self.layout.work_path("listing.parquet"), pa.table({
            "uri": [f.uri for f in files], "size": [f.size for f in files], "batch": batches}))

    def load_listing(self) -> tuple[Listing, np.ndarray] | None:
        """The saved listing (files, unlisted entries) and batch numbers, or None."""
        st = self.storage
        uri = self.layout.work_path("listing.parquet")
        if not st.exists(uri):
            return None
        table = st.read_table(uri)
        files = [FileInfo(u, int(s)) for u, s in zip(table.column("uri").to_pylist(),
                                                    table.column("size").to_pylist())]
        batches = np.asarray(table.column("batch").to_pylist(), np.int64)
        problems: list[tuple[str, str]] = []
        unlisted = self.layout.work_path("unlisted.parquet")
        if st.exists(unlisted):
            t = st.read_table(unlisted)
            problems = list(zip(t.column("uri").to_pylist(), t.column("error").to_pylist()))
        return Listing(files, problems), batches

    # -- batches -------------------------------------------------------------------------------
    def batches_done(self) -> set[int]:
        folder = self.layout.work_path("batches")
        if not self.storage.exists(folder):
            return set()
        found = (self.layout.checkpoint_batch(f.uri) for f in self.storage.list_files(folder))
        return {b for b in found if b is not None}

    def load_checkpoints(self, batches: set[int]) -> list[BatchResult]:
        return [BatchResult.from_bytes(self.storage.read_bytes(self.layout.batch_checkpoint(b)))
                for b in sorted(batches)]

    # -- transfers -----------------------------------------------------------------------------
    @staticmethod
    def plan_name(option: str) -> str:
        """``all`` or ``dontmerge``: a merge of dontmerge batches writes the ``all`` plan."""
        return "dontmerge" if option == "dontmerge" else "all"

    def current_locations(self, uris: list[str]) -> list[str]:
        """Each file's current URI: its batch-folder copy if a dontmerge run moved it there."""
        st = self.storage
        prev = self.layout.work_path("plan_dontmerge.parquet")
        if not st.exists(prev) or (self.state() or {}).get("transfer") != "move":
            return uris
        plan = TransferPlan.from_table(st.read_table(prev))
        moved = dict(zip(plan.src.astype(str), plan.dst.astype(str)))
        return [moved.get(u, u) if not st.exists(u) else u for u in uris]

    def load_or_make_plan(self, name: str, uris: list[str], folders: list[str],
                          sources: list[str]) -> TransferPlan:
        st = self.storage
        uri = self.layout.work_path(f"plan_{name}.parquet")
        if st.exists(uri):
            return TransferPlan.from_table(st.read_table(uri))
        plan = plan_transfers(uris, folders, st, sources)
        st.write_table(uri, plan.to_table())
        return plan

    def records_dir(self, name: str) -> str:
        return self.layout.work_path(f"written_{name}")

    def records(self, name: str) -> dict[str, TransferRecord]:
        """The transfers of plan ``name`` recorded so far, by destination."""
        st = self.storage
        folder = self.records_dir(name)
        out: dict[str, TransferRecord] = {}
        if not st.exists(folder):
            return out
        for f in st.list_files(folder):
            if not f.uri.endswith(".json") or is_temp_name(_name(f.uri)):
                continue
            for rec in json.loads(st.read_text(f.uri)):
                out[rec["dst"]] = TransferRecord(**rec)
        return out


def write_records(storage: Storage, folder: str, records: Sequence[TransferRecord]) -> None:
    """Persist a group of transfer records (one small file per group, atomically)."""
    if records:
        storage.write_text(storage.join(folder, f"{uuid.uuid4().hex}.json"),
                           json.dumps([r.__dict__ for r in records]))


def _name(uri: str) -> str:
    return posixpath.basename(uri.replace("\\", "/"))


def transfer_group(items: Sequence[tuple[str, str]], mode: str, storage: Storage, *,
                   existing: dict[str, int], records: dict[str, TransferRecord],
                   record_dir: str, keep: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Copy or move a group of files ``(src, dst)`` idempotently; ``(dst, outcome)`` each,
    the outcome ``done``, ``skipped`` (finished earlier) or ``error: ...``.

    Args:
        items: the files of the group.
        mode: ``copy`` or ``move``.
        storage: where the files are.
        existing: size of each destination that existed when the output was listed.
        records: this run's earlier transfers, by destination.
        record_dir: where this group's records are written.
        keep: sources a move copies and never deletes (files that do not live in the input:
            reached through a symlinked folder leading out of it).

    A destination counts as this run's only if recorded (or if its content hash equals the
    source's: then the copy was made and the record lost to a kill). A destination with
    other content is not this run's: it is left alone, the source too, and reported. Sources
    of a move are deleted only after the group's records are on storage, and only when
    their content still matches the record.
    """
    from icas_ray.errors import IcasError
    from icas_ray.storage import DestinationExists

    outcome: dict[str, str] = {}
    new: list[TransferRecord] = []
    # (src, dst, the md5 it must still have, None when just checked)
    delete: list[tuple[str, str, str | None]] = []
    for src, dst in items:
        move = mode == "move" and src not in keep
        try:
            rec = records.get(dst)
            if rec is not None and dst in existing:
                if existing[dst] != rec.size:
                    outcome[dst] = (f"error: {dst} changed since this run wrote it; "
                                    "the source is kept")
                    continue
                outcome[dst] = "skipped"
                if move and storage.exists(src):
                    delete.append((src, dst, rec.md5))
                continue
            if dst in existing:
                if not storage.exists(src):
                    outcome[dst] = "skipped"  # moved before this run's records were kept
                    continue
                h = storage.content_hash(src)
                if storage.content_hash(dst) != h:
                    outcome[dst] = (f"error: {dst} exists and was not written by this run; move it "
                                    "away and rerun (the source is kept)")
                    continue
                new.append(TransferRecord(src, dst, existing[dst], h))
                outcome[dst] = "skipped"
                if move:
                    delete.append((src, dst, None))  # just compared
                continue
            try:
                size, md5 = storage.transfer_new(src, dst, move=move)
            except InputError:
                outcome[dst] = f"error: source {src} is missing"
                continue
            except DestinationExists:
                # Not there when the output was listed: an earlier attempt of this task (Ray
                # retries it when its node dies) made it, if it holds the source's content.
                h = storage.content_hash(src)
                if storage.content_hash(dst) != h:
                    raise
                new.append(TransferRecord(src, dst, storage.size(dst), h))
                outcome[dst] = "skipped"
                if move:
                    delete.append((src, dst, None))  # just compared
                continue
            new.append(TransferRecord(src, dst, size, md5))
            outcome[dst] = "done"
            if move:
                delete.append((src, dst, None))  # the copy was made from it just now
        except DestinationExists:
            outcome[dst] = (f"error: {dst} appeared during the transfer and was not written by "
                            "this run (the source is kept)")
        except (OSError, IcasError) as e:
            outcome[dst] = f"error: {e}"
    write_records(storage, record_dir, new)  # before any source is deleted
    for src, dst, md5 in delete:
        try:
            if md5 is not None and storage.content_hash(src) != md5:
                outcome[dst] = f"error: {src} changed after it was copied; the source is kept"
                continue
            storage.delete(src)
        except (OSError, IcasError) as e:
            outcome[dst] = f"error: copied, but the source could not be deleted: {e}"
    return [(dst, outcome[dst]) for _, dst in items]
