"""chaos: kill `icas cluster` at random moments, resume, and check that nothing is lost.

For copy and move, on local disk and on a loopback S3 server (moto), each scenario runs the
whole command as a user would, kills it (SIGKILL, or SIGINT as Ctrl-C sends it) at a random
moment of an undisturbed run's duration, many times, resuming each time, then lets it finish
and checks:

* every input is in the results exactly once, by content hash (and, for copy, still in the
  input; for move, no longer there);
* the manifest has one row per input, and the partition equals the undisturbed run's;
* no temporary file and no lock is left anywhere under the output (or the input).

    .venv/bin/python scripts/bench.py chaos --kills 60

Writes ``benchmarks/chaos.json`` and ``benchmarks/chaos.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import BENCHMARKS, machine

SCENARIOS = (("local", "copy"), ("local", "move"), ("s3", "copy"), ("s3", "move"))
_TEMP = __import__("re").compile(r"^\..+\.[0-9a-f]{32}\.tmp$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kills", type=int, default=60, help="kills in all, spread over the scenarios")
    parser.add_argument("--count", type=int, default=120, help="images per scenario")
    parser.add_argument("--batch-size", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenarios", default=",".join(f"{s}-{t}" for s, t in SCENARIOS),
                        help="comma-separated, e.g. local-move,s3-copy")
    parser.add_argument("--out", default=BENCHMARKS, help="output folder (default benchmarks/)")


# ---------------------------------------------------------------------------------------------
# Storage of a scenario: a local folder, or a bucket on the loopback S3 server


class _Local:
    name = "local"

    def __init__(self, root: str) -> None:
        self.root = root

    def uri(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def put_dir(self, src: str, prefix: str) -> None:
        shutil.copytree(src, self.uri(prefix))

    def files(self, prefix: str) -> dict[str, bytes]:
        """Relative path -> content of every file under ``prefix``."""
        out: dict[str, bytes] = {}
        base = self.uri(prefix)
        for folder, _, names in os.walk(base):
            for n in names:
                path = os.path.join(folder, n)
                out[os.path.relpath(path, base)] = open(path, "rb").read()
        return out

    def cli(self) -> list[str]:
        return []


class _S3:
    name = "s3"

    def __init__(self, endpoint: str, bucket: str) -> None:
        import boto3

        self.endpoint, self.bucket = endpoint, bucket
        self.client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                                   aws_secret_access_key="testing", region_name="us-east-1")
        self.client.create_bucket(Bucket=bucket)

    def uri(self, *parts: str) -> str:
        return f"s3://{self.bucket}/" + "/".join(parts)

    def put_dir(self, src: str, prefix: str) -> None:
        for n in sorted(os.listdir(src)):
            self.client.put_object(Bucket=self.bucket, Key=f"{prefix}/{n}",
                                   Body=open(os.path.join(src, n), "rb").read())

    def files(self, prefix: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix + "/"):
            for obj in page.get("Contents", []):
                body = self.client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                out[obj["Key"][len(prefix) + 1:]] = body
        return out

    def cli(self) -> list[str]:
        return ["--storage-option", f"endpoint_url={self.endpoint}",
                "--storage-option", "key=testing", "--storage-option", "secret=testing"]


# ---------------------------------------------------------------------------------------------
# Running and killing the command


def _kill_leftovers(ray_tmp: str) -> int:
    """Kill the Ray processes a killed run started (found by its own Ray temp dir)."""
    import psutil

    n = 0
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(ray_tmp in part for part in (p.info["cmdline"] or [])):
                p.kill()
                n += 1
        except psutil.Error:
            pass
    return n


def _run(args: list[str], env: dict[str, str], kill_after: float | None, sig: int,
         ) -> tuple[int | None, float, bool, str]:
    """Run ``icas`` ``args``; kill its process group after ``kill_after`` seconds. Returns
    (exit code, seconds, whether the kill landed while it ran, stderr tail)."""
    t = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "icas_ray", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    killed = False
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        killed = True
        os.killpg(proc.pid, sig)  # Ctrl-C signals the whole foreground group, so does this
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = proc.stderr.read() if proc.stderr else ""  # type: ignore[union-attr]
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything of the run still alive
    except ProcessLookupError:
        pass
    _kill_leftovers(env["RAY_TMPDIR"])
    return proc.returncode, time.monotonic() - t, killed, err[-3000:]


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _partition(manifest: Any) -> set[frozenset[str]]:
    groups: dict[Any, set[str]] = {}
    for uri, c in zip(manifest.uri, manifest.cluster):
        key = ("c", c) if c == c else ("o", uri)
        groups.setdefault(key, set()).add(os.path.basename(uri))
    return {frozenset(g) for g in groups.values()}


def _manifest(store: Any, prefix: str) -> Any:
    import io

    import pandas as pd

    return pd.read_parquet(io.BytesIO(store.files(prefix)["manifest.parquet"])) \
        if store.name == "s3" else pd.read_parquet(store.uri(prefix, "manifest.parquet"))


def _scenario(store: Any, transfer: str, data: str, kills: int, args: argparse.Namespace,
              rng: random.Random, env: dict[str, str]) -> dict[str, Any]:
    tag = f"{store.name}-{transfer}"
    inputs = {_md5(b): n for n, b in ((n, open(os.path.join(data, n), "rb").read())
                                      for n in os.listdir(data))}
    common = ["--threshold", "0.84", "--batch-size", str(args.batch_size), "--num-cpus", "2",
              "--transfer", transfer, *store.cli()]
    # The undisturbed run: its duration spreads the kills, its partition is the reference.
    store.put_dir(data, f"{tag}-ref-in")
    code, duration, _, err = _run(["cluster", store.uri(f"{tag}-ref-in"), "--output",
                                   store.uri(f"{tag}-ref-out"), *common], env, None, 0)
    if code != 0:
        raise SystemExit(f"{tag}: the undisturbed run failed:\n{err}")
    reference = _partition(_manifest(store, f"{tag}-ref-out"))

    landed, rounds, by_signal = 0, 0, {"SIGKILL": 0, "SIGINT": 0}
    unexpected: list[str] = []
    totals = {"lost": 0, "duplicated": 0, "left_behind": 0, "temp_files": 0, "locks_left": 0,
              "manifest_rows_wrong": 0, "partition_differs": 0}
    while landed < kills:
        # A round: a fresh copy of the input, killed up to 6 times while it runs (a resumed
        # run has less left to do, so later kills land earlier), then run to the end.
        rounds += 1
        prefix = f"{tag}-{rounds}"
        store.put_dir(data, f"{prefix}-in")
        cmd = ["cluster", store.uri(f"{prefix}-in"), "--output", store.uri(f"{prefix}-out"), *common]
        finished = False
        for k in range(6):
            if landed >= kills:
                break
            sig = signal.SIGKILL if rng.random() < 0.6 else signal.SIGINT
            # A resumed run has less left to do: the k-th kill of a round lands in the first
            # 1/(k+1) of the undisturbed duration (a third of them in its later half).
            span = duration / (k + 1)
            at = rng.uniform(0.3, span) if rng.random() < 0.66 else rng.uniform(0.5, 1.0) * span
            code, _, hit, err = _run(cmd, env, at, sig)
            if hit and "already holds a finished result" in err:
                finished = True  # the kill before it landed after summary.json, during shutdown
                break
            if not hit:
                if code != 0:
                    unexpected.append(err)
                finished = code == 0
                break  # it finished before the kill
            landed += 1
            by_signal[signal.Signals(sig).name] += 1
        if not finished:
            code, _, _, err = _run(cmd, env, None, 0)
            if code != 0:
                unexpected.append(err)
        check = _check(store, prefix, transfer, inputs, reference)
        for k in totals:
            totals[k] += check[k]
    row = {
        "scenario": tag, "images": len(inputs), "rounds": rounds, "kills": landed,
        "sigkill": by_signal["SIGKILL"], "sigint": by_signal["SIGINT"],
        "undisturbed_s": round(duration, 1), **totals,
        "failed_runs": len(unexpected), "failures": unexpected[:3],
    }
    print(json.dumps({k: v for k, v in row.items() if k != "failures"}), file=sys.stderr)
    return row


def _check(store: Any, prefix: str, transfer: str, inputs: dict[str, str],
           reference: set[frozenset[str]]) -> dict[str, int]:
    """What a finished round left: counts of each kind of problem (0 everywhere is right)."""
    results = store.files(f"{prefix}-out")
    left = store.files(f"{prefix}-in")
    counts: dict[str, int] = {}
    for rel, body in results.items():
        if rel.startswith("results/"):
            counts[_md5(body)] = counts.get(_md5(body), 0) + 1
    in_left = {_md5(b) for b in left.values()}
    lost = sum(1 for h in inputs if counts.get(h, 0) == 0)
    if transfer == "copy":
        lost += sum(1 for h in inputs if h not in in_left)
    duplicated = sum(1 for h in inputs if counts.get(h, 0) > 1) + sum(1 for h in counts if h not in inputs)
    behind = len(left) if transfer == "move" else sum(1 for b in left.values() if _md5(b) not in inputs)
    temps = sum(1 for rel in list(results) + list(left) if _TEMP.match(os.path.basename(rel)))
    locks = sum(1 for rel in results if rel.endswith("_icas/lock.json"))
    manifest = _manifest(store, f"{prefix}-out")
    return {"lost": lost, "duplicated": duplicated, "left_behind": behind, "temp_files": temps,
            "locks_left": locks, "manifest_rows_wrong": int(len(manifest) != len(inputs)),
            "partition_differs": int(_partition(manifest) != reference)}


def run(args: argparse.Namespace) -> int:
    from icas_ray.datasets import make_dataset

    rng = random.Random(args.seed)
    wanted = [tuple(s.split("-")) for s in args.scenarios.split(",")]
    work = tempfile.mkdtemp(prefix="icas-chaos-")
    data = os.path.join(work, "data")
    make_dataset("digits", data, count=args.count, seed=args.seed)
    os.remove(os.path.join(data, "truth.csv"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": os.path.join(work, "ray"),
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    os.makedirs(env["RAY_TMPDIR"], exist_ok=True)
    server = None
    rows = []
    t0 = time.monotonic()
    try:
        per = -(-args.kills // len(wanted))
        for kind, transfer in wanted:
            if kind == "s3" and server is None:
                from moto.server import ThreadedMotoServer

                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                os.environ.update({k: env[k] for k in env if k.startswith("AWS_")})
                import logging

                logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request
                server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
                server.start()
            store = _Local(os.path.join(work, "disk")) if kind == "local" else \
                _S3(f"http://127.0.0.1:{port}", f"chaos-{transfer}")
            rows.append(_scenario(store, transfer, data, per, args, rng, env))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - t0
    os.makedirs(args.out, exist_ok=True)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "elapsed_s": round(elapsed),
              "args": {k: v for k, v in vars(args).items() if k != "func"}, "rows": rows}
    with open(os.path.join(args.out, "chaos.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    m = result["machine"]
    md = [
        "# Fault injection: `icas cluster` killed at random moments, resumed, checked",
        "",
        f"`scripts/bench.py chaos --kills {args.kills} --count {args.count} --batch-size "
        f"{args.batch_size} --seed {args.seed}`, {result['date']}, {round(elapsed / 60, 1)} min, on "
        f"{m['cpu']} ({m['cpus']} cores, {m['memory_gib']} GiB), Python {m['python']}.",
        "",
        "Each scenario: an undisturbed run (its duration spreads the kill times and its partition "
        "is the reference), then the same command on a fresh copy of the input, killed with "
        "SIGKILL or SIGINT (to the whole process group, as Ctrl-C does) at a random moment and "
        "rerun until the kills are done, then run to completion. Checked by content hash: every "
        "input in the results exactly once; for move, nothing left in the input; no temporary "
        "file or lock left; one manifest row per input; the partition of the undisturbed run. "
        "A round is one fresh input killed up to 6 times, then run to the end; counts are summed "
        "over the rounds. "
        "S3 is moto's server on 127.0.0.1.",
        "",
        "| scenario | images | rounds | kills (SIGKILL / SIGINT) | lost | duplicated | left behind | temp files | locks left | wrong manifests | other partition | failed reruns |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        md.append(f"| {r['scenario']} | {r['images']} | {r['rounds']} | {r['kills']} ({r['sigkill']} / "
                  f"{r['sigint']}) | {r['lost']} | {r['duplicated']} | {r['left_behind']} "
                  f"| {r['temp_files']} | {r['locks_left']} | {r['manifest_rows_wrong']} "
                  f"| {r['partition_differs']} | {r['failed_runs']} |")
    total = sum(r["kills"] for r in rows)
    bad = sum(r[k] for r in rows for k in ("lost", "duplicated", "left_behind", "temp_files",
                                            "locks_left", "manifest_rows_wrong", "partition_differs"))
    md += ["", f"{total} kills in all; {bad} problems."]
    with open(os.path.join(args.out, "chaos.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if bad == 0 else 1
