"""Issue #11, data safety of `icas cluster`: each test is the reproduction of one item.

Every test checks what a careful user would: each input's bytes are somewhere (its source or
the results), foreign files are untouched, the exit code and the one-line message.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from icas_ray.errors import ConfigError

pytestmark = pytest.mark.usefixtures("ray_session")


def _cli(*args: str, env: dict | None = None, cwd: str | None = None, timeout: int = 300,
         ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "icas_ray", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)


def _input(src: str, tmp_path, name: str = "in", count: int | None = None) -> str:  # type: ignore[no-untyped-def]
    dst = tmp_path / name
    dst.mkdir()
    names = sorted(n for n in os.listdir(src) if n.endswith(".png"))
    for n in names[:count]:
        shutil.copy(os.path.join(src, n), dst / n)
    return str(dst)


def _digests(folder: str) -> dict[str, int]:
    """Content hash -> number of files with it, under ``folder``."""
    out: dict[str, int] = {}
    for root, _, names in os.walk(folder):
        for n in names:
            if n.endswith(".png"):
                h = hashlib.md5(open(os.path.join(root, n), "rb").read()).hexdigest()
                out[h] = out.get(h, 0) + 1
    return out


def _settle(folder: str, quiet_s: float = 2.0, limit_s: float = 60.0) -> None:
    """Wait until nothing under ``folder`` has changed for ``quiet_s`` seconds (the writer
    tasks of a killed run may still be finishing their group)."""
    def snapshot() -> set[tuple[str, int]]:
        seen = set()
        for d, _, files in os.walk(folder):
            for f in files:
                try:
                    seen.add((os.path.join(d, f), os.stat(os.path.join(d, f)).st_size))
                except FileNotFoundError:
                    seen.add((os.path.join(d, f), -1))  # renamed or removed meanwhile
        return seen

    deadline = time.monotonic() + limit_s
    last, since = snapshot(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"{folder} kept changing for {limit_s} s"
        time.sleep(0.5)
        now = snapshot()
        if now != last:
            last, since = now, time.monotonic()


def _all_accounted(before: dict[str, int], src: str, out: str) -> None:
    """Every input's content is in the results or still in the input, exactly once."""
    now = _digests(os.path.join(out, "results"))
    for h, n in _digests(src).items():
        now[h] = now.get(h, 0) + n
    assert {h: now.get(h, 0) for h in before} == before


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_move_into_a_foreign_folder_is_refused_and_deletes_nothing(digits200, tmp_path, relative):
    """Item 1: an output holding a same-name, same-size file and no icas state is refused;
    the source and the foreign file stay as they are (with a relative --output too)."""
    src = _input(digits200, tmp_path, count=40)
    victim = sorted(os.listdir(src))[0]
    size = os.path.getsize(os.path.join(src, victim))
    foreign = tmp_path / "out" / "results" / "cluster_0" / victim
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"\0" * size)
    out = "out" if relative else str(tmp_path / "out")
    for extra in ([], ["--overwrite"]):
        r = _cli("cluster", src, "--output", out, "--transfer", "move", "--threshold", "0.84",
                 *extra, cwd=str(tmp_path))
        assert r.returncode == 1, r.stderr[-2000:]
        assert "is not empty and holds no icas result" in r.stderr
        assert "Traceback" not in r.stderr
    assert len(os.listdir(src)) == 40
    assert foreign.read_bytes() == b"\0" * size


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_move_resumed_beside_a_planted_file_keeps_both(digits200, tmp_path, relative):
    """Items 1 and 2: a move interrupted while writing resumes (relative --output too) to
    the end; a file planted meanwhile at a planned destination is neither adopted nor
    overwritten, and its source is kept and reported."""
    src = _input(digits200, tmp_path)
    before = _digests(src)
    out = "out" if relative else str(tmp_path / "out")
    out_abs = str(tmp_path / "out")
    conf = tmp_path / "small_tasks.toml"
    conf.write_text("files_per_task = 20\n")  # many writer tasks: the kill leaves most to do
    args = ["cluster", src, "--output", out, "--transfer", "move", "--threshold", "0.84",
            "--batch-size", "40", "--num-cpus", "2", "--config", str(conf)]
    r = _cli(*args, env={"ICAS_FAILPOINT": "transfers:1"}, cwd=str(tmp_path))
    assert r.returncode == 75, r.stderr[-2000:]
    # Writer tasks in flight when the driver died may still finish their group: let them end
    # before picking a destination that is still free (else the planted file races them).
    _settle(out_abs)
    plan = pd.read_parquet(os.path.join(out_abs, "_icas", "plan_all.parquet"))
    waiting = [(s, d) for s, d in zip(plan.src, plan.dst) if os.path.exists(s) and not os.path.exists(d)]
    assert waiting, "the failpoint left nothing to do"
    planted_src, planted_dst = waiting[0]
    planted = b"\0" * os.path.getsize(planted_src)
    os.makedirs(os.path.dirname(planted_dst), exist_ok=True)
    with open(planted_dst, "wb") as f:
        f.write(planted)
    r = _cli(*args, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 failed" in r.stderr
    assert open(planted_dst, "rb").read() == planted
    assert os.listdir(src) == [os.path.basename(planted_src)]
    summary = json.load(open(os.path.join(out_abs, "summary.json")))
    assert summary["counts"]["transfer_errors"] == 1
    assert "not written by this run" in summary["transfer_errors"][planted_src]
    m = pd.read_parquet(os.path.join(out_abs, "manifest.parquet"))
    assert len(m) == 200 and m.set_index("uri").location[planted_src] == planted_src
    os.remove(planted_dst)  # what the user does: nothing of theirs is lost either
    _all_accounted(before, src, out_abs)


def test_two_runs_into_one_output(digits200, tmp_path):
    """Item 3: two runs started together into one output: one writes it, the other stops
    with a one-line error; the manifest describes the files that are there."""
    src = _input(digits200, tmp_path, count=80)
    out = str(tmp_path / "out")
    args = [sys.executable, "-m", "icas_ray", "cluster", src, "--output", out, "--threshold",
            "0.84", "--batch-size", "40", "--num-cpus", "1"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 1], results
    err = next(e for c, e in results if c == 1)
    assert "in use by another icas run" in err or "already holds a finished result" in err
    m = pd.read_parquet(os.path.join(out, "manifest.parquet"))
    assert len(m) == 80 and all(os.path.exists(loc) for loc in m.location)
    assert not os.path.exists(os.path.join(out, "_icas", "lock.json"))


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(digits200, tmp_path):
    from icas_ray.pipeline.classic import cluster
    from icas_ray.pipeline.config import ClusterConfig

    src = _input(digits200, tmp_path, count=20)
    out = tmp_path / "out"
    (out / "_icas").mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (out / "_icas" / "lock.json").write_text(json.dumps(
            {"host": socket.gethostname(), "pid": sleeper.pid, "started": "then"}))
        with pytest.raises(ConfigError, match=f"in use by another icas run .*pid {sleeper.pid}"):
            cluster(src, str(out), ClusterConfig(threshold=0.84, batch_size=10))
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone (a kill -9 leaves its lock behind): the next run takes it over
    summary = cluster(src, str(out), ClusterConfig(threshold=0.84, batch_size=10))
    assert summary["counts"]["images"] == 20
    assert not (out / "_icas" / "lock.json").exists()


@pytest.mark.s3
def test_s3_lock_is_written_only_if_absent(s3_server, s3_bucket):
    from icas_ray.output import Layout
    from icas_ray.pipeline.journal import RunLock

    st = s3_server.storage()
    layout = Layout(f"s3://{s3_bucket}/out", st)
    first, second = RunLock(layout), RunLock(layout)
    first.acquire()
    holder = json.loads(st.read_text(first.uri))
    holder["host"] = "another-host"  # a run elsewhere: its pid cannot be checked from here
    st.write_text(first.uri, json.dumps(holder))
    with pytest.raises(ConfigError, match="in use by another icas run .*another-host.*delete"):
        second.acquire()
    st.delete(first.uri)
    second.acquire()
    second.release()
    assert not st.exists(second.uri)


def test_output_through_a_symlink_into_the_input_is_refused(digits200, tmp_path):
    """Item 4: --output L/out with L a symlink to the input."""
    src = _input(digits200, tmp_path, count=10)
    os.symlink(src, tmp_path / "L")
    r = _cli("cluster", src, "--output", str(tmp_path / "L" / "out"), "--threshold", "0.84")
    assert r.returncode == 1 and "is inside the input" in r.stderr, r.stderr[-2000:]
    assert os.listdir(src) and not os.path.exists(os.path.join(src, "out"))


def test_output_naming_a_file_is_one_line_before_ray(digits200, tmp_path):
    """Item 4: --output naming an existing file: one line, before Ray starts."""
    src = _input(digits200, tmp_path, count=10)
    target = tmp_path / "file.txt"
    target.write_text("mine")
    t = time.monotonic()
    r = _cli("cluster", src, "--output", str(target), "--threshold", "0.84")
    assert r.returncode == 1, r.stderr[-2000:]
    assert "is a file: choose a folder" in r.stderr and "Traceback" not in r.stderr
    assert "embedded local Ray" not in r.stderr and time.monotonic() - t < 20
    assert target.read_text() == "mine"


def test_resume_removes_its_temp_leftovers(digits200, tmp_path):
    """Item 5: a kill while the tables are written leaves `.manifest.parquet.<hex>.tmp`;
    the resumed run removes it (and its own other leftovers)."""
    src = _input(digits200, tmp_path, count=40)
    out = str(tmp_path / "out")
    args = ["cluster", src, "--output", out, "--threshold", "0.84", "--batch-size", "20",
            "--num-cpus", "2"]
    r = _cli(*args, env={"ICAS_FAILPOINT": "transfers:1"})
    assert r.returncode == 75, r.stderr[-2000:]
    leftovers = [os.path.join(out, ".manifest.parquet.0123456789abcdef0123456789abcdef.tmp"),
                 os.path.join(out, "_icas", ".state.json.fedcba9876543210fedcba9876543210.tmp")]
    for path in leftovers:
        with open(path, "wb") as f:
            f.write(b"PAR1 half")
    mine = os.path.join(out, "notes.tmp")  # not one of icas's: kept
    open(mine, "w").write("x")
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not any(os.path.exists(p) for p in leftovers) and os.path.exists(mine)
    hidden = [n for _, _, names in os.walk(out) for n in names if n.endswith(".tmp") and n != "notes.tmp"]
    assert hidden == []


# ---------------------------------------------------------------------------------------------
# Item 6: listing follows symlinks, reports what it cannot list or read


def _rgb(seed: int, size: int = 48):  # type: ignore[no-untyped-def]
    import numpy as np

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.kron(small, np.ones((size // 6, size // 6, 1), np.uint8))


def test_symlinks_are_followed_and_cycles_reported(tmp_path):
    from PIL import Image

    from icas_ray.pipeline.classic import cluster
    from icas_ray.pipeline.config import ClusterConfig

    src = tmp_path / "in"
    (src / "real").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for i in range(3):
        Image.fromarray(_rgb(i)).save(src / "real" / f"a{i}.png")
        Image.fromarray(_rgb(10 + i)).save(elsewhere / f"b{i}.png")
    os.symlink(elsewhere / "b0.png", src / "linked_file.png")
    os.symlink(elsewhere, src / "linked_dir")
    os.symlink(src, src / "real" / "loop")  # a cycle back to the top
    os.symlink(tmp_path / "gone.png", src / "broken.png")
    out = str(tmp_path / "out")
    summary = cluster(str(src), out, ClusterConfig(threshold=0.9, batch_size=10))
    m = pd.read_parquet(os.path.join(out, "manifest.parquet"))
    listed = m[m.status != "unlisted"]
    assert sorted(os.path.basename(u) for u in listed.uri) == sorted(
        ["a0.png", "a1.png", "a2.png", "linked_file.png", "b0.png", "b1.png", "b2.png"])
    unlisted = dict(zip(m[m.status == "unlisted"].uri, m[m.status == "unlisted"].error))
    assert "broken symlink" in unlisted[str(src / "broken.png")]
    assert "already listed" in unlisted[str(src / "real" / "loop")]
    assert summary["counts"]["unlisted"] == 2 and summary["counts"]["images"] == 7
    copied = _digests(os.path.join(out, "results"))
    assert sum(copied.values()) == 7
    assert os.path.isfile(elsewhere / "b0.png")  # a copy never touches a link's target


def test_a_refused_run_leaves_no_output_behind(digits200, tmp_path):
    """--option merge with no earlier batches is refused; the output it would have created is
    not left behind (an output that existed before is kept)."""
    from icas_ray.pipeline.classic import cluster
    from icas_ray.pipeline.config import ClusterConfig

    src = _input(digits200, tmp_path, count=5)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="needs the batch results of an earlier run"):
        cluster(src, str(out), ClusterConfig(threshold=0.8, option="merge"))
    assert not out.exists()
    out.mkdir()
    with pytest.raises(ConfigError, match="needs the batch results of an earlier run"):
        cluster(src, str(out), ClusterConfig(threshold=0.8, option="merge"))
    assert out.is_dir()


def test_move_keeps_files_reached_through_a_symlinked_folder_outside_the_input(tmp_path):
    """A move deletes what lives in the input only: a file reached through a symlinked
    folder that leads out of the input is copied and stays where it is (as a symlinked
    file's target does); a symlinked folder inside the input moves as usual."""
    from PIL import Image

    from icas_ray.pipeline.classic import cluster
    from icas_ray.pipeline.config import ClusterConfig

    src = tmp_path / "in"
    (src / "real").mkdir(parents=True)
    (src / "inner").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    for i in range(3):
        Image.fromarray(_rgb(i)).save(src / "real" / f"a{i}.png")
        Image.fromarray(_rgb(10 + i)).save(outside / f"b{i}.png")
        Image.fromarray(_rgb(20 + i)).save(src / "inner" / f"c{i}.png")
    os.symlink(outside, src / "real" / "lnk")
    os.symlink(src / "inner", src / "alias")  # inside the input: one of the two is listed
    os.symlink(outside / "b0.png", src / "linked_file.png")
    before = {**_digests(str(src)), **_digests(str(outside))}
    out = str(tmp_path / "out")
    summary = cluster(str(src), out, ClusterConfig(threshold=0.9, batch_size=10, transfer="move"))
    assert sorted(os.listdir(outside)) == ["b0.png", "b1.png", "b2.png"]  # all kept
    assert os.path.islink(src / "real" / "lnk")
    assert not os.path.lexists(src / "linked_file.png")  # the link itself was in the input
    left = sorted(os.path.relpath(os.path.join(d, f), src) for d, _, fs in os.walk(src) for f in fs)
    assert left == []  # everything that lives in the input moved
    results = _digests(os.path.join(out, "results"))
    assert {h: results.get(h, 0) >= 1 for h in before} == {h: True for h in before}
    assert sorted(os.path.basename(u) for u in summary["kept_sources"]) == ["b0.png", "b1.png", "b2.png"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_unreadable_folder_and_file_say_permission_denied(tmp_path):
    """Run as root without the capabilities that bypass file permissions (as a normal user)."""
    from PIL import Image

    src = tmp_path / "in"
    (src / "secret").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(_rgb(i)).save(src / f"a{i}.png")
    Image.fromarray(_rgb(9)).save(src / "secret" / "s.png")
    Image.fromarray(_rgb(8)).save(src / "locked.png")
    os.chmod(src / "secret", 0)
    os.chmod(src / "locked.png", 0)
    out = str(tmp_path / "out")
    try:
        r = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable,
                            "-m", "icas_ray", "cluster", str(src), "--output", out,
                            "--threshold", "0.9", "--num-cpus", "2"],
                           capture_output=True, text=True, timeout=300)
    finally:
        os.chmod(src / "secret", 0o755)
        os.chmod(src / "locked.png", 0o644)
    assert r.returncode == 0, r.stderr[-3000:]
    m = pd.read_parquet(os.path.join(out, "manifest.parquet")).set_index("uri")
    assert m.status[str(src / "secret")] == "unlisted"
    assert "permission denied" in m.error[str(src / "secret")]
    assert m.status[str(src / "locked.png")] == "unreadable"
    assert "permission denied" in m.error[str(src / "locked.png")]
    assert "AWS" not in m.error[str(src / "locked.png")]
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["counts"]["unlisted"] == 1 and summary["counts"]["unreadable"] == 1


# ---------------------------------------------------------------------------------------------
# Item 7: EXIF orientation, end to end


def test_rotated_phone_photo_joins_its_upright_copy(tmp_path):
    import numpy as np
    from PIL import Image
    from skimage import data

    from icas_ray.pipeline.classic import cluster
    from icas_ray.pipeline.config import ClusterConfig

    src = tmp_path / "in"
    src.mkdir()
    photos = [data.astronaut(), data.chelsea(), data.coffee()]
    for i, photo in enumerate(photos):
        img = Image.fromarray(np.ascontiguousarray(photo))
        img.save(src / f"p{i}_upright.jpg", quality=92)
        # a phone stores the sensor's pixels and says how to turn them: orientation 6 means
        # "rotate 90 degrees clockwise to view"
        exif = Image.Exif()
        exif[0x0112] = 6
        img.transpose(Image.Transpose.ROTATE_90).save(src / f"p{i}_phone.jpg", quality=92,
                                                      exif=exif.tobytes())
    out = str(tmp_path / "out")
    cluster(str(src), out, ClusterConfig(method="imagehash", threshold=0.8, batch_size=10))
    m = pd.read_parquet(os.path.join(out, "manifest.parquet"))
    by_name = dict(zip((os.path.basename(u) for u in m.uri), m.cluster))
    for i in range(3):
        assert by_name[f"p{i}_upright.jpg"] == by_name[f"p{i}_phone.jpg"] is not None
    assert len({by_name[f"p{i}_upright.jpg"] for i in range(3)}) == 3


# ---------------------------------------------------------------------------------------------
# Item 16: configuration errors are one line


@pytest.mark.parametrize("content, message", [
    ('methd = "minhash"\n', "unknown key 'methd': valid keys are batch_size,"),
    ('batch_size = "fifty"\n', "batch_size='fifty' is not an integer"),
    ('threshold = "high"\n', "threshold='high' is not a number"),
    ('overwrite = "maybe"\n', "overwrite='maybe' is not a boolean"),
], ids=["unknown-key", "wrong-int", "wrong-float", "wrong-bool"])
def test_config_file_mistakes_are_one_line(tmp_path, content, message):
    (tmp_path / "in").mkdir()
    conf = tmp_path / "c.toml"
    conf.write_text(content)
    r = subprocess.run([sys.executable, "-m", "icas_ray", "cluster", str(tmp_path / "in"),
                        "--config", str(conf)], capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"Error: config file {conf}: {message}"), r.stderr


def test_cluster_config_from_python_names_the_key():
    from icas_ray.pipeline.config import ClusterConfig

    with pytest.raises(ConfigError, match=r"^batch_size='x' is not an integer$"):
        ClusterConfig(batch_size="x")
    assert ClusterConfig(batch_size="50", overwrite="false").batch_size == 50  # type: ignore[arg-type]
    assert ClusterConfig(overwrite="false").overwrite is False  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Item 17: the report never drops content silently


def test_report_pages_every_cluster_and_shows_outliers_and_unreadable(tmp_path):
    from PIL import Image

    from icas_ray.pipeline.classic import cluster
    from icas_ray.pipeline.config import ClusterConfig

    src = tmp_path / "in"
    src.mkdir()
    pairs = 130
    for i in range(pairs):
        img = Image.fromarray(_rgb(1000 + i))
        img.save(src / f"c{i:03d}_a.png")
        img.save(src / f"c{i:03d}_b.png")
    for i in range(5):
        Image.fromarray(_rgb(5000 + i, size=60)).save(src / f"single{i}.png")
    (src / "empty.png").write_bytes(b"")
    summary = cluster(str(src), str(tmp_path / "out"),
                      ClusterConfig(method="imagehash", threshold=0.97, batch_size=1000))
    assert summary["counts"]["clusters"] == pairs
    first = open(tmp_path / "out" / "report.html").read()
    second = open(tmp_path / "out" / "report_2.html").read()
    assert "page 1 of 2" in first and "href='report_2.html'" in first
    assert "clusters 1-100 of 130" in first and "clusters 101-130 of 130" in second
    assert "results/outliers: 5 images" in first
    assert "unreadable: 1 files" in first and "empty.png" in first
    titles = {f"results/cluster_{k}:" for k in range(pairs)}
    assert all(t in first + second for t in titles)


# ---------------------------------------------------------------------------------------------
# Item 8 (cluster's part): every destination is derived from a sanitised name, inside its folder


def test_cluster_destinations_stay_inside_their_folder(tmp_path):
    from icas_ray.output import Layout, plan_transfers
    from icas_ray.paths import is_inside
    from icas_ray.storage import Storage

    st = Storage()
    local = Layout(str(tmp_path / "out"), st)
    remote = Layout("s3://bucket/out", st)
    uris = ["/in/x\\..\\..\\..\\ESCAPED.png", "/in/a/../../b.png", "/in/..", "/in/ok.png"]
    s3_uris = ["s3://bucket/in/x/../../ESCAPED.png", "s3://bucket/in/..", "s3://bucket/in/k.png"]
    for layout, batch in ((local, uris), (remote, s3_uris)):
        folders = [layout.cluster_folder(0)] * len(batch)
        plan = plan_transfers(batch, folders, st)
        for dst, folder in zip(plan.dst, folders):
            assert is_inside(folder, dst) and dst != folder, dst
        assert len(set(plan.dst)) == len(batch)


# ---------------------------------------------------------------------------------------------
# A fixed kill point per phase (scripts/bench.py chaos kills at random moments)


@pytest.mark.parametrize("phase", ["listing", "batches:1", "merge", "transfers:1", "tables"])
def test_a_move_killed_in_any_phase_resumes_with_nothing_lost(digits200, tmp_path, phase):
    src = _input(digits200, tmp_path, count=60)
    before = _digests(src)
    out = str(tmp_path / "out")
    conf = tmp_path / "c.toml"
    conf.write_text("files_per_task = 15\n")
    args = ["cluster", src, "--output", out, "--transfer", "move", "--threshold", "0.84",
            "--batch-size", "20", "--num-cpus", "2", "--config", str(conf)]
    point = phase if ":" in phase else f"{phase}:1"
    r = _cli(*args, env={"ICAS_FAILPOINT": point})
    assert r.returncode == 75, r.stderr[-2000:]
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.listdir(src) == []
    _all_accounted(before, src, out)
    assert len(pd.read_parquet(os.path.join(out, "manifest.parquet"))) == 60
    left = [n for _, _, names in os.walk(out) for n in names if n.endswith(".tmp") or n == "lock.json"]
    assert left == []


def test_gpu_without_a_gpu_is_one_line(digits200, tmp_path):
    """--gpu asks for GPUs; an embedded Ray on a machine without one says so instead of waiting
    forever for a GPU that will never come (issue #14: nothing assumes a GPU without --gpu)."""
    src = _input(digits200, tmp_path, count=10)
    r = _cli("cluster", src, "--output", str(tmp_path / "out"), "--method", "SSIM",
             "--threshold", "0.9", "--gpu", "--num-cpus", "2")
    if "sees no GPU" not in r.stderr and r.returncode == 0:
        pytest.skip("this machine has a GPU")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "--gpu: the embedded Ray sees no GPU on this machine" in r.stderr


@pytest.mark.s3
def test_an_s3_move_killed_after_its_transfers_resumes(s3_server, s3_bucket, digits200, tmp_path):
    """A move that emptied an S3 input (an empty prefix does not exist) and was killed before
    its tables resumes from the saved listing (found by bench.py chaos)."""
    client = s3_server.client()
    names = sorted(n for n in os.listdir(digits200) if n.endswith(".png"))[:12]
    for n in names:
        client.put_object(Bucket=s3_bucket, Key=f"in/{n}", Body=open(os.path.join(digits200, n), "rb").read())
    args = ["cluster", f"s3://{s3_bucket}/in", "--output", f"s3://{s3_bucket}/out", "--transfer",
            "move", "--threshold", "0.84", "--num-cpus", "2", *s3_server.cli_options()]
    r = _cli(*args, env={"ICAS_FAILPOINT": "tables:1"})
    assert r.returncode == 75, r.stderr[-2000:]
    assert "Contents" not in client.list_objects_v2(Bucket=s3_bucket, Prefix="in/")
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="out/results/")["Contents"]]
    assert sorted(os.path.basename(k) for k in keys) == names
