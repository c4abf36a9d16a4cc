"""e2e: the whole `icas cluster` command as a process, against imagededup PHash and the original's loop.

    .venv/bin/python scripts/bench.py e2e [--sizes 2000,20000] [--methods imagehash,minhash,TM,SSIM,ORB]
        [--budget 120] [--imagededup-threshold 2] [--out-dir benchmarks/]
    .venv/bin/python scripts/bench.py e2e --sizes 200 --methods imagehash --budget 30 --out-dir /tmp/e2e
    .venv/bin/python scripts/bench.py e2e --table [--out-dir DIR]    # print the tables of DIR/e2e.json

Speed as a user times it: every tool runs as its own process on the same files (the original
tool's digit generator, ``ensure_dataset``), one after the other, and the benchmark measures the
process's wall time and the peak memory of its whole process tree (``MemorySampler(tree=True)``
rooted at the child: the sum of VmRSS over the child and all its descendants, sampled every
0.1 s; shared pages count once per process). Per size and method, in this order:

* **decode floor**: a plain loop decoding the same files on all cores (a ``multiprocessing``
  pool of ``os.cpu_count()`` processes, OpenCV at one thread each): the file's bytes,
  ``cv2.imdecode(..., IMREAD_COLOR_RGB)`` and the resize to the method's read size, as
  ``icas_ray.images.decode`` does for plain PNGs; images/s of the fastest of four timed maps
  (pool started and warm), two before the method's runs and two after icas's. The classic methods read grey: icas then decodes the same way and converts to grey
  (more work than the floor's), and resizes the grey image where the floor resizes RGB (a
  third of that step, for the methods read at a fixed size: minhash, TM, SSIM).
* **method loop**: the same pool and passes, its processes running the ``FeatureExtractor`` of
  icas's feature tasks (read, decode at the method's read size, ``prepare``, ``extract_prepared``
  per chunk): what the method itself allows on these cores, with no Ray, no per-batch
  clustering and no threshold decision beside it.
* **imagededup** (``imagededup==0.3.3.post2`` in its own venv with ``torch==2.14.1
  torchvision==0.29.1``, created by this script when missing): ``PHash().find_duplicates(image_dir,
  max_distance_threshold)``, the connected components of its duplicate map as clusters (single
  images are outliers), every file copied into ``cluster_<k>/`` or ``outliers/`` (icas copies
  too). Threshold: tuned once on digits_2000 over 0..32 bits (connected components): 0 -> ARI
  0.05, 2 -> 0.886, 4 -> 0.770, 6 -> 0.285, 8 -> 0.108, 10 (its default) and above -> 0.0 (every
  image in one component); ``--imagededup-threshold`` (default 2).
* **icas, suggested threshold**: ``icas cluster INPUT --output OUT --method M --batch-size B``
  (cold embedded Ray: the driver starts gcs/raylet/workers, all in its process tree; the
  benchmark checks that no process of the driver's Ray session is outside the tree).
* **icas, given threshold**: the same with ``--threshold`` (``bench_cluster.THRESHOLDS['digits']``).
* **original**: the port of the original's per-pair loop (``bench_cluster.run_reference``) in a
  ``python`` process of its own. Over ``--budget`` seconds it stops after the batch that crossed
  it and its job time is extrapolated as in ``bench cluster`` (the process's start-up, imports
  and warm-up measured, the rest from ``run_reference``'s estimate); its ARI is then on the
  measured images only.

The features phase of icas is read from the run's ``summary.json``: ``timings.features_s`` (the
feature stage from its start to its last image, with the per-batch clustering beside it on the
same cores; older summaries: ``timings.batches_s``, which adds the last batches' clustering), less
``timings.features_wait_s`` (its wait for the first task to start: Ray's worker processes still
starting, a fixed cost of the process, shown in a column of its own, as the floor's pool start is
not timed either). Its throughput (images / that time) is given as a % of the decode floor of the
same method and as a % of the method loop (the floor shows what decoding allows, the loop what
the method does; the rest is icas's framework and the clustering beside the features); the
given-threshold run is the headline (no threshold sample).

This machine's kernel pages out what was not touched for about a minute (DAMON ``pageout``,
``age/min`` 12 intervals of 5 s), where a user's machine keeps a tool it has run before and
its input in the page cache. So right before each measured run, the tool runs once unmeasured
on 50 images (its libraries, hence its start, as after a first run: icas's 20,000-image
suggested run, right after imagededup's 100 s, took 4.9 s to Ray ready against 3.1 s for the
given run after it, and 14.4 s once for minhash), and before every timed process (each run,
each floor) the input files are read once, untimed (``warm_inputs``): a run that followed a
long one read its images from disk (the same 20,000-image icas job's feature stage took 6.1 s
with 21,704 blocks read, 4.5 s right after). Each measured process still starts everything
it starts (a cold Ray, Python's imports).

Writes ``<out-dir>/e2e.json`` (after every row) and ``<out-dir>/e2e.md``; ``--table`` prints the
markdown tables of an existing e2e.json (what the README quotes).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_METHODS = "imagehash,minhash,TM,SSIM,ORB"
DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "icas-bench", "imagededup-venv")
IMAGEDEDUP_PINS = ("torch==2.14.1", "torchvision==0.29.1", "imagededup==0.3.3.post2")
#: Tuned once on digits_2000 (see the module docstring); imagededup's own default is 10.
IMAGEDEDUP_THRESHOLD = 2
#: Set by bench.py for in-process kernels; a user's shell does not set them, so the tools'
#: processes run without them.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="2000,20000", help="image counts (default 2000,20000)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})")
    parser.add_argument("--batch-size", type=int, default=1000, help="--batch-size of icas and the original")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds the original's loop may run per method and size before it stops "
                             "after the current batch and is extrapolated (default 120)")
    parser.add_argument("--imagededup-threshold", type=int, default=IMAGEDEDUP_THRESHOLD,
                        help=f"PHash max_distance_threshold in bits (default {IMAGEDEDUP_THRESHOLD}, tuned; "
                             "imagededup's default 10 joins every digit into one component)")
    parser.add_argument("--imagededup-venv", default=DEFAULT_VENV,
                        help=f"imagededup's venv, created when missing (default {DEFAULT_VENV})")
    parser.add_argument("--skip", default="", help="tools to leave out: imagededup,original,suggested,given")
    parser.add_argument("--large-methods", default=None,
                        help="the methods at sizes above 2,000 (default: all of --methods; each costs "
                             "minutes there, imagededup's run included)")
    parser.add_argument("--process-timeout", type=float, default=3600.0,
                        help="seconds before a tool's process is killed (default 3600)")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "icas_bench_data"),
                        help="where generated data sets are cached")
    parser.add_argument("--out-dir", default=None, help="where e2e.json / e2e.md go (default benchmarks/)")
    parser.add_argument("--table", action="store_true",
                        help="only print the markdown tables of <out-dir>/e2e.json (and rewrite e2e.md)")


# -- processes and their trees ---------------------------------------------------------------------
def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _tree_sampler(root: int) -> Any:
    """A ``MemorySampler`` of ``root``'s process tree that also records what the tree held and
    checks that no process of a Ray session started by ``root`` is outside it."""
    from bench_cluster import MemorySampler

    class TreeSampler(MemorySampler):
        def __init__(self) -> None:
            super().__init__(tree=True, root=root)
            self.max_procs = 0
            self.names: set[str] = set()
            self.session_procs: set[int] = set()
            self.escaped: dict[int, str] = {}
            # Ray names a session after the pid of the process that called ray.init
            # (session_<date>_<time>_<micros>_<pid>): its gcs, raylet and workers carry it.
            self._session = re.compile(rf"session_[0-9_\-]+_{root}(?![0-9])".encode())
            self._scanned = 0.0

        def _pids(self) -> list[int]:
            pids = super()._pids()
            alive = [p for p in pids if _comm(p)]
            if not alive:
                return pids
            self.max_procs = max(self.max_procs, len(alive))
            self.names.update(_comm(p) for p in alive)
            now = time.monotonic()
            if now - self._scanned >= 1.0 and _comm(root):
                self._scanned = now
                tree = set(pids)
                for pid in _all_pids():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            cmd = f.read()
                    except OSError:
                        continue
                    if self._session.search(cmd):
                        self.session_procs.add(pid)
                        if pid not in tree:
                            self.escaped[pid] = _comm(pid)
            return pids

    return TreeSampler()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return ""
    name, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
    return "" if state == "Z" else name


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def run_process(cmd: list[str], *, log: str, timeout: float) -> dict[str, Any]:
    """Run ``cmd`` as a child; its wall time, the peak RSS of its tree and what the tree held.

    The disk's dirty pages are written out first (not timed): otherwise the previous tool's
    copies (20,000 files at 20,000 images) and their deletion were written back during this
    one's run, adding seconds to whichever tool came next.
    """
    os.sync()
    t, started = time.perf_counter(), time.time()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_child_env(), cwd=ROOT,
                                start_new_session=True)
        mem = _tree_sampler(proc.pid)
        with mem:
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)  # our child's own process group
                rc = proc.wait()
    wall = time.perf_counter() - t
    with open(log, "rb") as f:
        tail = f.read()[-3000:].decode(errors="replace")
    res = {"cmd": " ".join(cmd), "rc": rc, "started": started, "wall_s": round(wall, 3), "peak_rss_mib": round(mem.peak / 2**20, 1),
           "tree_max_processes": mem.max_procs, "tree_process_names": sorted(mem.names)}
    if mem.session_procs:
        res["ray_session_processes"] = len(mem.session_procs)
        res["ray_session_processes_outside_tree"] = sorted(mem.escaped.values())
    if rc != 0:
        res["log_tail"] = tail
        print(f"    FAILED (rc {rc}): {' '.join(cmd)}\n{tail}", flush=True)
    return res


# -- the page cache --------------------------------------------------------------------------------
def warm_inputs(paths: list[str]) -> float:
    """Read every input file once (untimed), so that the next timed run finds them in the page
    cache; returns the seconds it took (long when the kernel had paged them out)."""
    from concurrent.futures import ThreadPoolExecutor

    def read(p: str) -> None:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass

    t = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(read, paths, chunksize=256))
    return round(time.perf_counter() - t, 3)


# -- the decode floor ------------------------------------------------------------------------------
_FLOOR_READ: Any = None


def _floor_init(read: Any) -> None:
    import cv2

    global _FLOOR_READ
    cv2.setNumThreads(1)  # one process per core
    _FLOOR_READ = read


def _floor_decode(paths: list[str]) -> int:
    import cv2
    import numpy as np

    from icas_ray.images import resize

    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
        if arr is None:
            raise ValueError(f"cannot decode {p}")
        h, w = arr.shape[:2]
        tw, th = _FLOOR_READ.target_size(w, h)
        if (tw, th) != (w, h):
            arr = resize(arr, (tw, th))
    return len(paths)


def decode_floor(paths: list[str], read: Any) -> dict[str, Any]:
    """Images/s of decoding ``paths`` (and resizing as ``read`` says) on every core."""
    return {**_timed_pool(paths, _floor_init, (read,), _floor_decode), "read": str(read)}


#: The method loop's extractor in this pool process.
_LOOP_EXTRACTOR: Any = None


def _loop_init(method: str) -> None:
    from icas_ray.features import get_method
    from icas_ray.pipeline.stages import FeatureExtractor
    from icas_ray.storage import Storage

    global _LOOP_EXTRACTOR
    # FeatureExtractor sets OpenCV to one thread, as in icas's feature tasks.
    _LOOP_EXTRACTOR = FeatureExtractor(method, {}, Storage(), get_method(method).default_read)


def _loop_extract(paths: list[str]) -> int:
    import numpy as np

    n = len(paths)
    out = _LOOP_EXTRACTOR({"uri": np.array(paths, dtype=object), "size": np.zeros(n, np.int64),
                           "batch": np.zeros(n, np.int64), "row": np.arange(n)})
    bad = np.flatnonzero(out["status"] != "ok")
    if len(bad):
        raise ValueError(f"cannot extract {paths[bad[0]]}: {out['error'][bad[0]]}")
    return n


def method_loop(paths: list[str], method: str) -> dict[str, Any]:
    """Images/s of icas's own per-image feature work on every core, without Ray.

    A ``multiprocessing`` pool like the floor's whose processes each hold the
    :class:`~icas_ray.pipeline.stages.FeatureExtractor` that icas's feature tasks run: reading,
    ``icas_ray.images.decode`` at the method's read size, the method's ``prepare`` and its
    ``extract_prepared`` per chunk. What the method itself allows on these cores: no Ray, no
    per-batch clustering beside it, no threshold decision.
    """
    return _timed_pool(paths, _loop_init, (method,), _loop_extract)


def _timed_pool(paths: list[str], init: Any, initargs: tuple[Any, ...], work: Any) -> dict[str, Any]:
    """The faster of two timed maps of ``work`` over chunks of ``paths`` in a warm pool of one
    process per CPU."""
    os.sync()
    import multiprocessing

    procs = os.cpu_count() or 1
    chunk = max(1, min(64, len(paths) // (procs * 8) or 1))
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    with multiprocessing.get_context("fork").Pool(procs, initializer=init, initargs=initargs) as pool:
        pool.map(work, [paths[:4]] * procs)  # warm: imports and first calls, not timed
        passes = []
        for _ in range(2):  # the faster of two passes: a pass slowed by the machine lowers no bar
            t = time.perf_counter()
            done = sum(pool.map(work, chunks, chunksize=1))
            passes.append(time.perf_counter() - t)
        s = min(passes)
    return {"processes": procs, "images": done, "seconds": round(s, 3), "images_per_s": round(done / s, 1),
            "passes_s": [round(p, 3) for p in passes]}


def faster_of(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One measurement (a floor, a method loop) from two of it: the faster pass of either, every
    pass listed."""
    best = before if before["seconds"] <= after["seconds"] else after
    return {**best, "passes_s": before["passes_s"] + after["passes_s"]}


# -- the tools -------------------------------------------------------------------------------------
def ensure_imagededup_venv(venv: str) -> dict[str, str]:
    """imagededup's own venv (created when missing) and the versions in it."""
    py = os.path.join(venv, "bin", "python")
    probe = ("import importlib.metadata as m, json, imagededup, torch; print(json.dumps({p: m.version(p) for p "
             "in ('imagededup', 'torch', 'torchvision', 'numpy', 'scipy', 'Pillow', 'PyWavelets')}))")
    ok = os.path.exists(py) and subprocess.run([py, "-c", probe], capture_output=True, check=False).returncode == 0
    if not ok:
        print(f"creating imagededup's venv at {venv} ({' '.join(IMAGEDEDUP_PINS)})", flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--clear", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", *IMAGEDEDUP_PINS], check=True)
    out = subprocess.run([py, "-c", probe], capture_output=True, text=True, check=True)
    return {"python": py, **json.loads(out.stdout.strip().splitlines()[-1])}


def _imagededup_main(spec: dict[str, Any]) -> None:
    """In imagededup's venv: PHash duplicates, their connected components, files copied."""
    from imagededup.methods import PHash

    dups = PHash(verbose=False).find_duplicates(image_dir=spec["path"],
                                                max_distance_threshold=spec["threshold"])
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, others in dups.items():
        for b in others:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[ra] = rb
    members: dict[str, list[str]] = {}
    for f in dups:
        members.setdefault(find(f), []).append(f)
    pred: dict[str, int | None] = {}
    for k, group in enumerate(sorted((g for g in members.values() if len(g) > 1), key=len, reverse=True)):
        for f in group:
            pred[f] = k
    for f in dups:
        pred.setdefault(f, None)
    for f, c in pred.items():
        d = os.path.join(spec["output"], "outliers" if c is None else f"cluster_{c}")
        os.makedirs(d, exist_ok=True)
        shutil.copy(os.path.join(spec["path"], f), d)
    with open(spec["result"], "w") as f:
        json.dump({"pred": pred}, f)


def _reference_main(spec: dict[str, Any]) -> None:
    """In the main venv: the original's per-pair loop (``bench_cluster.run_reference``)."""
    from bench_cluster import RefMethod, run_reference, sorted_files

    files = sorted_files(spec["path"])
    res = run_reference(spec["path"], files, RefMethod(spec["method"]), spec["threshold"], spec["batch_size"],
                        spec["budget"], keep_in=spec["keep_in"])
    with open(spec["result"], "w") as f:
        json.dump(res, f, default=str)


def _child(role: str, spec: dict[str, Any], python: str, work: str, timeout: float) -> dict[str, Any]:
    spec = {**spec, "result": os.path.join(work, f"{role}.json")}
    res = run_process([python, os.path.abspath(__file__), role, json.dumps(spec)],
                      log=os.path.join(work, f"{role}.log"), timeout=timeout)
    if res["rc"] == 0:
        with open(spec["result"]) as f:
            res["result"] = json.load(f)
    return res


def _retired(work: str) -> str:
    folder = os.path.join(work, "retired")
    os.makedirs(folder, exist_ok=True)
    return folder


def retire(out: str, work: str) -> None:
    """Put a tool's output aside, to be deleted after the last timed run (with ``work``).

    Deleting it between runs slowed the next tool's file creation by seconds: an ext4 without a
    journal (this machine's disk) does not reuse an inode freed in the last 60 s (more while its
    inode table block is dirty) and scans past each one on every create; perf showed 40% of a
    copy loop's kernel time in ext4's ``recently_deleted`` after the previous tool's 20,000
    copies were removed.
    """
    if os.path.exists(out):
        os.rename(out, os.path.join(_retired(work), f"{os.path.basename(out)}.{uuid.uuid4().hex}"))


def run_imagededup(path: str, threshold: int, python: str, work: str, timeout: float) -> dict[str, Any]:
    out = os.path.join(work, "imagededup_out")
    res = _child("imagededup", {"path": path, "threshold": threshold, "output": out}, python, work, timeout)
    retire(out, work)
    res["pred"] = res.pop("result", {}).get("pred")
    return res


def run_original(path: str, method: str, threshold: float, batch_size: int, budget: float, work: str,
                 timeout: float) -> dict[str, Any]:
    res = _child("reference", {"path": path, "method": method, "threshold": threshold, "batch_size": batch_size,
                               "budget": budget, "keep_in": _retired(work)}, sys.executable, work, timeout)
    ref = res.pop("result", None)
    if ref is None:
        return res
    res["pred"] = ref.pop("pred")
    res["reference"] = ref
    # run_reference times listing..copying; the process adds Python's start, imports and warm-up.
    res["outside_loop_s"] = round(res["wall_s"] - ref["measured_wall_s"], 3)
    res["job_s"] = round(res["wall_s"] if not ref["extrapolated"] else res["outside_loop_s"] + ref["total_s"], 3)
    return res


def run_icas(path: str, method: str, threshold: float | None, batch_size: int, work: str,
             timeout: float) -> dict[str, Any]:
    from bench_cluster import manifest_pred

    out = os.path.join(work, "icas_out")
    retire(out, work)
    icas = os.path.join(os.path.dirname(sys.executable), "icas")
    cmd = [icas, "cluster", path, "--output", out, "--method", method, "--batch-size", str(batch_size)]
    if threshold is not None:
        cmd += ["--threshold", str(threshold)]
    res = run_process(cmd, log=os.path.join(work, f"icas_{'given' if threshold is not None else 'suggested'}.log"),
                      timeout=timeout)
    if res["rc"] == 0:
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
        tm = summary["timings"]
        res.update(threshold=summary["threshold"], threshold_source=summary.get("threshold_source"),
                   timings=tm, counts=summary.get("counts"),
                   outside_cluster_s=round(res["wall_s"] - tm.get("total_s", 0.0), 3), unphased_s=_unphased(tm))
        field = "features_s" if "features_s" in tm else "batches_s"
        res["features_field"] = field
        seconds = tm[field] - tm.get("features_wait_s", 0.0)
        res["features_images_per_s"] = round(summary["counts"]["images"] / max(seconds, 1e-9), 1)
        res["pred"] = manifest_pred(out, path)
        ready = _ray_ready(os.path.join(work, f"icas_{'given' if threshold is not None else 'suggested'}.log"))
        if ready is not None:
            res["ray_ready_s"] = round(ready - res["started"], 3)
    retire(out, work)
    return res


_RAY_STARTED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\s+INFO \S+ -- Started a local Ray instance",
                          re.MULTILINE)


def _ray_ready(log: str) -> float | None:
    """When Ray's driver logged "Started a local Ray instance" (epoch seconds), from the log."""
    with open(log, errors="replace") as f:
        m = _RAY_STARTED.search(f.read())
    if m is None:
        return None
    return time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000


#: cluster()'s sequential phases after Ray is up, in summary.json's timings. (``threshold_s``, the
#: suggestion's decision, lies inside ``batches_s`` since the threshold sample is part of the main
#: feature pass.)
_PHASES = ("batches_s", "merge_s", "writing_s")


def _listing_wait(timings: dict[str, float]) -> float:
    """The listing's share of the sequential time: the wait for it once Ray was up (it runs
    beside Ray's start; summaries from before ``listing_wait_s`` count all of ``listing_s``)."""
    return timings.get("listing_wait_s", timings.get("listing_s", 0.0))


def _phased(timings: dict[str, float]) -> float:
    return _listing_wait(timings) + sum(timings.get(k, 0.0) for k in _PHASES)


def _unphased(timings: dict[str, float]) -> float:
    """Seconds of ``cluster()`` in none of its phases: starting Ray (``open_run``), the journal,
    the manifest and the report."""
    return round(timings.get("total_s", 0.0) - _phased(timings), 3)


def _rest(run: dict[str, Any]) -> float | None:
    """Seconds of an icas process after Ray was up in none of the phases: opening the run, the
    manifest and the report, Ray's shutdown and the exit."""
    if run.get("ray_ready_s") is None:
        return None
    return run["wall_s"] - run["ray_ready_s"] - _phased(run["timings"])


# -- the benchmark ---------------------------------------------------------------------------------
def _scores(truth: dict[str, str], pred: dict[str, Any] | None) -> dict[str, float] | None:
    from bench_cluster import partition_scores

    if not pred:
        return None
    return partition_scores({f: truth[f] for f in pred}, pred)


def _versions() -> dict[str, str]:
    import importlib.metadata as m

    out = {p: m.version(p) for p in ("ray", "numpy", "opencv-contrib-python-headless", "ImageHash",
                                     "datasketch", "scikit-image") if _has_dist(p)}
    try:
        out["icas_ray_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "icas_ray"], cwd=ROOT,
                               capture_output=True, text=True, check=False).stdout.strip()
        out["icas_ray_tree"] = "modified" if dirty else "clean"
    except OSError:
        pass
    return out


def _has_dist(name: str) -> bool:
    import importlib.metadata as m

    try:
        m.version(name)
        return True
    except m.PackageNotFoundError:
        return False


def run(args: argparse.Namespace) -> int:
    from bench import BENCHMARKS, machine

    out_dir = args.out_dir or BENCHMARKS
    if args.table:
        with open(os.path.join(out_dir, "e2e.json")) as f:
            saved = json.load(f)
        write_markdown(saved, out_dir)
        print(markdown_tables(saved))
        return 0
    from bench_cluster import THRESHOLDS, ensure_dataset, sorted_files

    from icas_ray.datasets import read_truth
    from icas_ray.features import get_method

    sizes = [int(s) for s in args.sizes.split(",") if s]
    methods = [get_method(m.strip()).name for m in args.methods.split(",") if m.strip()]
    large = (methods if args.large_methods is None else
             [get_method(m.strip()).name for m in args.large_methods.split(",") if m.strip()])
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    ded = ensure_imagededup_venv(args.imagededup_venv) if "imagededup" not in skip else None
    result: dict[str, Any] = {
        "benchmark": "e2e", "dataset": "digits", "batch_size": args.batch_size, "budget_s": args.budget,
        "imagededup_threshold": args.imagededup_threshold, "imagededup": ded, "versions": _versions(),
        "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "scripts/bench.py e2e " + " ".join(sys.argv[2:]), "rows": [],
    }
    t_bench = time.perf_counter()
    work = tempfile.mkdtemp(prefix="icas_e2e_")
    try:
        # One small unmeasured run of each tool first: the first measured row then does not pay
        # for reading their libraries from disk (every measured run still starts cold otherwise).
        warm = ensure_dataset(args.data, "digits", 50)
        print(f"warm-up runs on {warm} (not measured)", flush=True)
        if ded is not None:
            run_imagededup(warm, args.imagededup_threshold, ded["python"], work, args.process_timeout)
        run_icas(warm, "imagehash", 0.84, args.batch_size, work, args.process_timeout)
        t_bench = time.perf_counter()
        for n in sizes:
            path = ensure_dataset(args.data, "digits", n)
            truth = read_truth(path)
            paths = [os.path.join(path, f) for f in sorted_files(path)]
            for method in (methods if n <= 2000 else large):
                m = get_method(method)
                thr = THRESHOLDS["digits"][method]
                log = functools.partial(_log, t_bench, f"N={n} {method}")
                row: dict[str, Any] = {"n": n, "method": method, "given_threshold": thr}
                log("decode floor")
                warm_inputs(paths)
                row["floor"] = decode_floor(paths, m.default_read)
                log(f"decode floor {row['floor']['images_per_s']} img/s")
                warm_inputs(paths)
                row["method_loop"] = method_loop(paths, method)
                log(f"method loop {row['method_loop']['images_per_s']} img/s")
                if ded is not None:
                    run_imagededup(warm, args.imagededup_threshold, ded["python"], work, args.process_timeout)
                    warm_inputs(paths)
                    r = run_imagededup(path, args.imagededup_threshold, ded["python"], work, args.process_timeout)
                    r["scores"] = _scores(truth, r.pop("pred", None))
                    row["imagededup"] = r
                    log("imagededup", r)
                for variant, t in (("suggested", None), ("given", thr)):
                    if variant in skip:
                        continue
                    run_icas(warm, method, thr, args.batch_size, work, args.process_timeout)
                    warm_inputs(paths)
                    r = run_icas(path, method, t, args.batch_size, work, args.process_timeout)
                    r["scores"] = _scores(truth, r.pop("pred", None))
                    row[f"icas_{variant}"] = r
                    log(f"icas {variant} (threshold {r.get('threshold')})", r)
                # The floor again after icas's runs: the faster of all its passes is the bar, so
                # that a machine slowed before the runs (or during them) lowers no bar.
                warm_inputs(paths)
                row["floor"] = faster_of(row["floor"], decode_floor(paths, m.default_read))
                log(f"decode floor again: {row['floor']['images_per_s']} img/s")
                warm_inputs(paths)
                row["method_loop"] = faster_of(row["method_loop"], method_loop(paths, method))
                log(f"method loop again: {row['method_loop']['images_per_s']} img/s")
                row["method_loop"]["pct_of_floor"] = round(100 * row["method_loop"]["images_per_s"]
                                                           / row["floor"]["images_per_s"], 1)
                for variant in ("suggested", "given"):
                    r = row.get(f"icas_{variant}") or {}
                    if "features_images_per_s" in r:
                        r["features_pct_of_floor"] = round(100 * r["features_images_per_s"]
                                                           / row["floor"]["images_per_s"], 1)
                        r["features_pct_of_method_loop"] = round(100 * r["features_images_per_s"]
                                                                 / row["method_loop"]["images_per_s"], 1)
                if "original" not in skip:
                    run_original(warm, method, thr, args.batch_size, args.budget, work, args.process_timeout)
                    warm_inputs(paths)
                    r = run_original(path, method, thr, args.batch_size, args.budget, work, args.process_timeout)
                    r["scores"] = _scores(truth, r.pop("pred", None))
                    row["original"] = r
                    log(f"original (job {r.get('job_s')} s"
                        + (", extrapolated" if r.get("reference", {}).get("extrapolated") else "") + ")", r)
                result["rows"].append(row)
                result["elapsed_s"] = round(time.perf_counter() - t_bench, 1)
                _save(result, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown_tables(result))
    return 0


def _log(t0: float, what: str, event: str, res: dict[str, Any] | None = None) -> None:
    extra = ""
    if res is not None:
        sc = res.get("scores") or {}
        extra = f": {res.get('wall_s')} s, peak {res.get('peak_rss_mib')} MiB, ARI {sc.get('ari')}"
    print(f"[{time.perf_counter() - t0:7.1f}s] {what} {event}{extra}", flush=True)


# -- output ----------------------------------------------------------------------------------------
def _save(result: dict[str, Any], out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "e2e.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    write_markdown(result, out_dir)


def _f(x: Any, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _get(row: dict[str, Any], tool: str, *keys: str) -> Any:
    v: Any = row.get(tool)
    for k in keys:
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return v


def _time(row: dict[str, Any], tool: str) -> float | None:
    r = row.get(tool)
    if not r or r.get("rc") != 0:
        return None
    return r.get("job_s", r["wall_s"])


def markdown_tables(result: dict[str, Any]) -> str:
    """The markdown tables of an e2e result, one per size (what README and e2e.md quote)."""
    out: list[str] = []
    for n in sorted({r["n"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["n"] == n]
        out += [f"**{n:,} images** (digits, batches of {result['batch_size']}; wall time of each process; "
                "peak MiB of its process tree; ARI against the truth):", "",
                "| method | original s | icas s (suggested / given) | imagededup s | icas speed-up vs original "
                "(s / g) | vs imagededup (s / g) | peak MiB (orig / icas s / icas g / imagededup) "
                "| ARI (orig / icas s / icas g / imagededup) | features % of floor (s / g) "
                "| method loop % of floor | features % of method loop (s / g) |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            t_o, t_s, t_g, t_d = (_time(r, k) for k in ("original", "icas_suggested", "icas_given", "imagededup"))
            extrap = _get(r, "original", "reference", "extrapolated")

            def ratio(a: float | None, b: float | None) -> str:
                return "-" if a is None or b is None else f"{a / b:.1f}x"

            ari_o = _get(r, "original", "scores", "ari")
            ref = r.get("original", {}).get("reference") or {}
            out.append("| " + " | ".join([
                r["method"],
                _f(t_o) + (" (extrap.)" if extrap else ""),
                f"{_f(t_s)} / {_f(t_g)}", _f(t_d),
                f"{ratio(t_o, t_s)} / {ratio(t_o, t_g)}", f"{ratio(t_d, t_s)} / {ratio(t_d, t_g)}",
                " / ".join(_f(_get(r, k, "peak_rss_mib"), 0)
                           for k in ("original", "icas_suggested", "icas_given", "imagededup")),
                " / ".join([_f(ari_o, 3) + (f" (on {ref['images_measured']})" if extrap else "")]
                           + [_f(_get(r, k, "scores", "ari"), 3) for k in ("icas_suggested", "icas_given", "imagededup")]),
                f"{_f(_get(r, 'icas_suggested', 'features_pct_of_floor'), 0)} / "
                f"{_f(_get(r, 'icas_given', 'features_pct_of_floor'), 0)}",
                _f(_get(r, "method_loop", "pct_of_floor"), 0),
                f"{_f(_get(r, 'icas_suggested', 'features_pct_of_method_loop'), 0)} / "
                f"{_f(_get(r, 'icas_given', 'features_pct_of_method_loop'), 0)}",
            ]) + " |")
        out.append("")
    return "\n".join(out)


def _breakdown(result: dict[str, Any]) -> list[str]:
    md = ["| N | method | run | threshold | process s | to Ray ready s | listing s (wait) | threshold s | batches s "
          "| first task wait s | merge s | writing s | rest s | features img/s | floor img/s | method loop img/s "
          "| processes in tree |",
          "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        for v in ("suggested", "given"):
            x = r.get(f"icas_{v}")
            if not x or x.get("rc") != 0:
                continue
            tm = x["timings"]
            md.append("| " + " | ".join([
                str(r["n"]), r["method"], v, _f(x["threshold"], 4), _f(x["wall_s"]), _f(x.get("ray_ready_s")),
                f"{_f(tm.get('listing_s'), 2)} ({_f(_listing_wait(tm), 2)})", _f(tm.get("threshold_s"), 1), _f(tm.get("batches_s"), 1),
                _f(tm.get("features_wait_s"), 2), _f(tm.get("merge_s"), 1), _f(tm.get("writing_s"), 1), _f(_rest(x)), _f(x["features_images_per_s"], 0),
                _f(r["floor"]["images_per_s"], 0), _f(_get(r, "method_loop", "images_per_s"), 0),
                str(x["tree_max_processes"]),
            ]) + " |")
    return md


def write_markdown(result: dict[str, Any], out_dir: str) -> None:
    mach, ded = result["machine"], result.get("imagededup") or {}
    vers = result.get("versions", {})
    escaped = sorted({p for r in result["rows"] for v in ("icas_suggested", "icas_given")
                      for p in (_get(r, v, "ray_session_processes_outside_tree") or [])})
    seen = [(_get(r, v, "ray_session_processes") or 0) for r in result["rows"] for v in ("icas_suggested", "icas_given")]
    md = [
        "# The whole `icas cluster` process against imagededup and the original's loop", "",
        f"Machine: {mach.get('cpu')}, {mach.get('cpus')} CPUs, {mach.get('memory_gib')} GiB, GPU: {mach.get('gpu')}; "
        f"Python {mach.get('python')}; {result['date']}; icas-ray {vers.get('icas_ray_commit')} "
        f"({vers.get('icas_ray_tree')} tree), Ray {vers.get('ray')}. Produced by `.venv/bin/python "
        f"{result.get('command', 'scripts/bench.py e2e')}` in {result.get('elapsed_s', 0) / 60:.1f} min.", "",
        "Every tool is a process of its own, run one after the other on the same files (the original's digit "
        "generator): wall time of the process, peak memory of its whole process tree (the sum of VmRSS of the "
        "process and its descendants, sampled every 0.1 s: shared pages count once per process, so trees of "
        "many processes look larger than they are). Each tool's output is kept until the last timed run (this "
        "disk's ext4 has no journal and scans past every inode freed in the last minute on each file it "
        "creates: deleting the previous tool's 20,000 copies slowed the next tool's by seconds). This machine's kernel "
        "pages out what was not touched for about a minute (DAMON `pageout`), where a user's machine keeps a "
        "tool it has run before and its input in the page cache: so right before each measured run the tool "
        "runs once, unmeasured, on 50 images, and before every timed process (each run, each floor) the input "
        "files are read once, untimed (without them, a 20,000-image icas run right after imagededup's took 4.9 s "
        "to Ray ready against 3.1 s for the next, 14.4 s once, and the same job's feature stage 6.1 s with its "
        "images read from disk against 4.5 s right after). Each measured process still starts everything it "
        "starts: a cold Ray, Python's imports.", "",
        "* **icas**: `icas cluster INPUT --output OUT --method M --batch-size "
        f"{result['batch_size']}` (suggested threshold), and with `--threshold T` (given: the thresholds of "
        "`bench cluster`). A cold embedded Ray each time; its gcs, raylet and workers are in the driver's "
        f"tree (checked: {max(seen, default=0)} processes of the driver's Ray session seen at most, "
        f"{len(escaped)} outside the tree{': ' + ', '.join(escaped) if escaped else ''}).",
        f"* **imagededup** {ded.get('imagededup')} (torch {ded.get('torch')}, torchvision {ded.get('torchvision')}, "
        f"numpy {ded.get('numpy')}, its own venv): `PHash().find_duplicates(image_dir, max_distance_threshold="
        f"{result['imagededup_threshold']})`, clusters = connected components of the duplicate map, every file "
        "copied into its cluster folder. The threshold was tuned once on digits_2000 (0 -> ARI 0.05, 2 -> 0.886, "
        "4 -> 0.770, 6 -> 0.285, 10 = its default -> 0.0: every digit in one component).",
        "* **original**: the port of the original's per-pair loop (`bench_cluster.run_reference`: native-size "
        "reading, one similarity call per pair, list-based clustering, merge, copies) in its own process. Over "
        f"the budget ({result['budget_s']:.0f} s) it stops after the batch in progress and its time is "
        "*extrapolated* (process start-up and imports measured, the loop from `run_reference`'s estimate); "
        "its ARI is then on the measured images.",
        "* **features % of floor**: icas's feature throughput (images / (`timings.features_s` - "
        "`timings.features_wait_s`) of summary.json: the feature stage from its first task's start to its last "
        "image, the per-batch clustering beside it on the same cores; the wait before the first task started, "
        "Ray's workers still starting, is the *first task wait* column below, a fixed cost of the process like "
        "the floor pool's start, which is not timed; `batches_s` where a summary has no `features_s`) against "
        "the decode floor: a `multiprocessing` "
        "pool over all CPUs decoding the same files, the fastest of four passes, two before the method's runs and two after icas's (`cv2.imdecode` to RGB and the "
        "resize to the method's read size, as `icas_ray.images.decode` does for plain PNGs; icas's classic methods then convert to grey, "
        "and resize grey pixels where the floor resizes RGB).",
        "* **method loop**: what the method itself allows on these cores, without Ray: a pool like the floor's "
        "whose processes run the `FeatureExtractor` of icas's feature tasks (reading, `icas_ray.images.decode` at "
        "the method's read size, the method's `prepare` and `extract_prepared`) on the same files, the fastest "
        "of four passes (two before the method's runs, two after icas's); *method loop % of floor* is its "
        "throughput against the floor, *features % of method loop* icas's feature stage against it (what Ray, "
        "the scheduling and the per-batch clustering beside the features cost).", "",
        markdown_tables(result),
        "Where icas's process time goes: *to Ray ready*: from the process's start to Ray's \"Started a local "
        "Ray instance\" in its log (Python start-up, imports, starting the embedded Ray); *listing s*: the "
        "listing's own seconds, beside Ray's start, and in brackets the wait for it once Ray was up; then the "
        "phases of summary.json's timings (*threshold s* is the suggestion's decision, inside *batches s*: features "
        "and per-batch clustering; *first task wait s*, also inside it, is the feature stage's wait for its "
        "first task to start); *rest*: the remainder of the wall time, less the listing's wait (opening the run, the manifest and "
        "the report, Ray's shutdown, the exit):", "",
        *_breakdown(result), "",
    ]
    with open(os.path.join(out_dir, "e2e.md"), "w") as f:
        f.write("\n".join(md))


if __name__ == "__main__":
    # The tools' child processes: ``bench_e2e.py imagededup|reference '<json spec>'``. The
    # imagededup child runs in imagededup's venv: it imports nothing of icas or bench.
    role, spec = sys.argv[1], json.loads(sys.argv[2])
    {"imagededup": _imagededup_main, "reference": _reference_main}[role](spec)
