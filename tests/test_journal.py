"""The run journal of `icas cluster` (pipeline/journal.py), driven on a temp folder without Ray."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import numpy as np
import pytest

from icas_ray.errors import ConfigError
from icas_ray.output import Layout
from icas_ray.pipeline.config import ClusterConfig
from icas_ray.pipeline.journal import Journal, RunLock, RunState, TransferRecord, transfer_group
from icas_ray.storage import FileInfo, Storage


@pytest.fixture
def journal(tmp_path) -> Journal:  # type: ignore[no-untyped-def]
    return Journal(Layout(str(tmp_path / "out"), Storage()))


def test_a_fresh_output_starts_a_fresh_run(journal):
    journal.check_output()  # does not exist yet: fine
    state = journal.prepare("/in", ClusterConfig(threshold=0.8))
    assert state == RunState(False, 0.8, "given", set())


def test_foreign_files_and_a_file_output_are_refused(tmp_path):
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    (out / "results" / "a.png").write_bytes(b"mine")
    with pytest.raises(ConfigError, match="is not empty and holds no icas result"):
        Journal(Layout(str(out), Storage())).check_output()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file: choose a folder"):
        Journal(Layout(str(tmp_path / "file"), Storage())).check_output()


def test_resume_rules(journal):
    config = ClusterConfig(threshold=0.8, batch_size=10)
    journal.save_state(RunState(False, 0.8, "given"), "/in", config)
    files = [FileInfo(f"/in/{i}.png", i) for i in range(25)]
    journal.save_listing(files, np.arange(25) // 10, [("/in/broken.png", "broken symlink")])
    listing, batches = journal.load_listing()  # type: ignore[misc]
    assert listing.files == files and batches.tolist() == (np.arange(25) // 10).tolist()
    assert listing.problems == [("/in/broken.png", "broken symlink")]
    journal.storage.write_bytes(journal.layout.batch_checkpoint(1), b"x")
    state = journal.prepare("/in", config)
    assert state.resume and state.batches_done == {1} and state.threshold == 0.8
    with pytest.raises(ConfigError, match="unfinished run with other parameters"):
        journal.prepare("/in", ClusterConfig(threshold=0.8, batch_size=20))
    with pytest.raises(ConfigError, match="unfinished run with threshold 0.8"):
        journal.prepare("/in", ClusterConfig(threshold=0.7, batch_size=10))
    state_file = journal.layout.work_path("state.json")
    old = json.load(open(state_file))
    json.dump({**old, "version": 1}, open(state_file, "w"))
    with pytest.raises(ConfigError, match="another icas version"):
        journal.prepare("/in", config)


def test_a_run_stopped_before_its_threshold_resumes_with_the_one_given(journal):
    """An unfinished run whose suggestion failed ("give --threshold explicitly") resumes with
    the --threshold the message asked for."""
    journal.save_state(RunState(False, None, ""), "/in", ClusterConfig(batch_size=10))
    state = journal.prepare("/in", ClusterConfig(threshold=0.5, batch_size=10))
    assert (state.resume, state.threshold, state.threshold_source) == (True, 0.5, "given")
    assert journal.prepare("/in", ClusterConfig(batch_size=10)).threshold is None


def test_overwrite_keeps_the_lock_and_refuses_after_a_move(journal):
    st, layout = journal.storage, journal.layout
    lock = RunLock(layout)
    lock.acquire()
    for part in ("summary.json", "report.html", "report_2.html", "results/cluster_0/a.png"):
        st.write_bytes(layout.path(part), b"{}" if part.endswith(".json") else b"x")
    journal.save_state(RunState(False, 0.8, "given"), "/in", ClusterConfig(threshold=0.8))
    with pytest.raises(ConfigError, match="already holds a finished result"):
        journal.prepare("/in", ClusterConfig(threshold=0.8))
    state = journal.prepare("/in", ClusterConfig(threshold=0.8, overwrite=True))
    assert not state.resume
    left = sorted(os.path.relpath(f.uri, layout.root) for f in st.list_files(layout.root))
    assert left == [os.path.join("_icas", "lock.json")]
    lock.release()
    st.write_bytes(layout.path("results/cluster_0/a.png"), b"x")
    journal.save_state(RunState(False, 0.8, "given"), "/in", ClusterConfig(threshold=0.8, transfer="move"))
    with pytest.raises(ConfigError, match="moved there by an earlier run"):
        journal.prepare("/in", ClusterConfig(threshold=0.8, overwrite=True))


def test_leftover_temp_files_are_removed_and_others_kept(journal):
    st, layout = journal.storage, journal.layout
    mine = layout.path(".manifest.parquet.0123456789abcdef0123456789abcdef.tmp")
    work = layout.work_path(".state.json.0123456789abcdef0123456789abcdef.tmp")
    user = layout.path("notes.tmp")
    for uri in (mine, work, user):
        os.makedirs(os.path.dirname(uri), exist_ok=True)
        open(uri, "wb").write(b"x")
    assert journal.clean_leftovers() == 2
    assert not os.path.exists(mine) and not os.path.exists(work) and os.path.exists(user)


def test_records_are_what_counts_as_written(journal, tmp_path):
    st = journal.storage
    src = tmp_path / "a.png"
    src.write_bytes(b"content")
    dst = journal.layout.path("results", "cluster_0", "a.png")
    folder = journal.records_dir("all")
    assert transfer_group([(str(src), dst)], "move", st, existing={}, records={},
                          record_dir=folder) == [(dst, "done")]
    records = journal.records("all")
    assert records[dst] == TransferRecord(str(src), dst, 7, st.content_hash(dst))
    # a rerun: the record says it is done; nothing to redo
    assert transfer_group([(str(src), dst)], "move", st, existing={dst: 7}, records=records,
                          record_dir=folder) == [(dst, "skipped")]
    assert open(dst, "rb").read() == b"content" and not src.exists()


def test_a_lock_of_a_live_process_is_kept_and_a_dead_ones_taken(journal):
    sleeper = subprocess.Popen(["sleep", "30"])
    uri = journal.layout.work_path("lock.json")
    os.makedirs(os.path.dirname(uri))
    try:
        json.dump({"host": socket.gethostname(), "pid": sleeper.pid}, open(uri, "w"))
        with pytest.raises(ConfigError, match=f"pid {sleeper.pid}"):
            RunLock(journal.layout).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    lock = RunLock(journal.layout)
    lock.acquire()
    assert json.load(open(uri))["pid"] == os.getpid()
    lock.release()
    assert not os.path.exists(uri)


@pytest.mark.parametrize("n", [5, 40_000], ids=["16-bit indices", "32-bit indices"])
def test_a_batch_checkpoint_keeps_every_edge_exactly(n):
    """A checkpoint stores a batch's edge indices in 16 bits where they fit, 32 where the batch
    is larger than 32,767 images: both come back as written."""
    from icas_ray.clustering import BatchResult

    rng = np.random.default_rng(0)
    a = np.sort(rng.integers(0, n - 1, 1000))
    b = np.minimum(a + 1 + rng.integers(0, 50, 1000), n - 1)
    result = BatchResult(
        batch=3, uris=np.array([f"/in/{i}.png" for i in range(n)], dtype=object),
        sizes=np.arange(n), status=np.full(n, "ok", dtype=object), error=np.full(n, "", dtype=object),
        labels=np.zeros(n, np.int64), edge_a=a.astype(np.int64), edge_b=b.astype(np.int64),
        edge_sim=rng.random(1000, dtype=np.float32), comparisons=7, possible=9, complete=True,
        rep_index=np.array([0]), rep_unit=np.array([0]), rep_features={"hash": np.ones((1, 4), np.uint64)})
    back = BatchResult.from_bytes(result.to_bytes())
    assert (b.max() > 32767) == (n > 32767)
    np.testing.assert_array_equal(back.edge_a, a)
    np.testing.assert_array_equal(back.edge_b, b)
    np.testing.assert_array_equal(back.edge_sim, result.edge_sim)
    assert list(back.uris) == list(result.uris) and back.comparisons == 7 and back.complete


def test_cleanup_keeps_the_lock_temp_of_a_run_taking_the_lock_now(journal):
    """CI race: run A cleaned its leftovers while run B was taking the lock: A removed B's
    lock temp (B crashed) or B removed it first (A's delete failed): both runs failed."""
    layout = journal.layout
    holder = RunLock(layout)
    holder.acquire()
    fresh = layout.work_path(".lock.json.0123456789abcdef0123456789abcdef.tmp")
    stale = layout.work_path(".lock.json.fedcba9876543210fedcba9876543210.tmp")
    for uri in (fresh, stale):
        open(uri, "wb").write(b"{}")
    hour_ago = os.path.getmtime(stale) - 3600
    os.utime(stale, (hour_ago, hour_ago))  # a kill -9 between the write and the link
    assert journal.clean_leftovers() == 1
    assert os.path.exists(fresh) and not os.path.exists(stale)
    holder.release()


def test_cleanup_does_not_fail_on_a_temp_that_is_gone_meanwhile(journal, monkeypatch):
    st, layout = journal.storage, journal.layout
    gone = layout.work_path(".state.json.0123456789abcdef0123456789abcdef.tmp")
    os.makedirs(os.path.dirname(gone))
    listed = [FileInfo(gone, 2)]  # listed, then removed by its writer before the delete
    monkeypatch.setattr(st, "list_files", lambda uri: listed if uri == layout.work else [])
    assert journal.clean_leftovers() == 0


def test_a_lock_temp_removed_before_its_link_reports_the_holder(journal, monkeypatch):
    """The other order of the race: the holder's cleanup took this run's temp before the
    link; this run reports the run in the way, it does not crash."""
    holder = RunLock(journal.layout)
    holder.acquire()
    real_link = os.link

    def cleaned_first(src, dst):  # type: ignore[no-untyped-def]
        os.unlink(src)
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", cleaned_first)
    with pytest.raises(ConfigError, match=f"in use by another icas run .*pid {os.getpid()}"):
        RunLock(journal.layout).acquire()
    monkeypatch.undo()
    holder.release()
