"""The feature stage's demand on an autoscaling cluster (issue #14): how many ``_extract_chunk``
tasks ``stages._task_parts`` keeps in flight as the cluster's CPUs change.

On cluster.yaml's cluster the head has 0 CPUs; before (or between) CPU workers Ray reports no
CPU at all: ``ray.cluster_resources()`` has no ``CPU`` key (measured with ray 2.60 on a 0-CPU
local Ray), so ``runtime.cluster_cpus()`` is 1.0. The stage must still queue tasks then: queued
tasks are the demand that makes the autoscaler add a CPU worker (tests/test_autoscaler.py runs
that for real). And the listing must be cut for the cluster it grows into: cut for the one CPU
of its start, a job of 1,000 images had four chunks, so at most four tasks however many CPUs
joined (this test's 4-CPU step saw three in flight). Here Ray's task API is replaced by a
recorder; no Ray runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from icas_ray.storage import FileInfo


@pytest.mark.parametrize("no_cpus", [{}, {"CPU": 0.0}], ids=["no CPU key", "CPU 0"])
def test_a_cluster_without_cpus_still_gets_feature_tasks_then_two_per_cpu(
        monkeypatch: pytest.MonkeyPatch, no_cpus: dict[str, float]) -> None:
    import ray

    from icas_ray.pipeline import stages

    resources = [dict(no_cpus)]
    peaks: list[int] = []  # tasks in flight each time the stage waits for one
    rows: list[int] = []

    class Task:
        def options(self, **kwargs: Any) -> Task:
            assert kwargs["num_cpus"] == 1
            return self

        def remote(self, uris: list[str], sizes: np.ndarray, columns: dict[str, np.ndarray],
                   job: Any) -> tuple[float, dict[str, np.ndarray]]:
            rows.append(len(uris))
            return 0.0, {"uri": np.asarray(uris, dtype=object), **columns}

    def wait(refs: list[Any], num_returns: int = 1) -> tuple[list[Any], list[Any]]:
        peaks.append(len(refs))
        if len(peaks) == 1:
            resources[0] = {"CPU": 4.0}  # a worker with 4 CPUs joins while the first tasks wait
        return refs[:num_returns], refs[num_returns:]

    monkeypatch.setattr(ray, "cluster_resources", lambda: resources[0])
    monkeypatch.setattr(ray, "remote", lambda fn: Task())
    monkeypatch.setattr(ray, "put", lambda value: value)
    monkeypatch.setattr(ray, "wait", wait)
    monkeypatch.setattr(ray, "get", lambda ref: ref)

    todo = [FileInfo(f"/in/{i}.png", 100 + i) for i in range(1000)]
    columns = {"batch": np.arange(1000) // 250, "row": np.arange(1000)}
    parts = list(stages._task_parts(todo, columns, {}, grows=True))

    assert peaks[0] == 2, "no CPU yet: two tasks queued (demand for a CPU worker)"
    assert max(peaks) == 8, "then two per CPU of the grown cluster"
    assert sum(rows) == 1000 and sorted(np.concatenate([p["row"] for p in parts])) == list(range(1000))


def test_an_embedded_ray_keeps_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """``grows=False`` (an embedded Ray): the tasks in flight follow the CPUs at the start."""
    import ray

    from icas_ray.pipeline import stages

    peaks: list[int] = []

    class Task:
        def options(self, **kwargs: Any) -> Task:
            return self

        def remote(self, uris: list[str], sizes: np.ndarray, columns: dict[str, np.ndarray],
                   job: Any) -> tuple[float, dict[str, np.ndarray]]:
            return 0.0, {"uri": np.asarray(uris, dtype=object), **columns}

    def wait(refs: list[Any], num_returns: int = 1) -> tuple[list[Any], list[Any]]:
        peaks.append(len(refs))
        return refs[:num_returns], refs[num_returns:]

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "remote", lambda fn: Task())
    monkeypatch.setattr(ray, "put", lambda value: value)
    monkeypatch.setattr(ray, "wait", wait)
    monkeypatch.setattr(ray, "get", lambda ref: ref)
    todo = [FileInfo(f"/in/{i}.png", 100) for i in range(400)]
    list(stages._task_parts(todo, {"batch": np.zeros(400, int), "row": np.arange(400)}, {},
                            grows=False))
    assert max(peaks) == 4


def _cut(total: int, first: int, slots: int) -> list[tuple[int, int]]:
    from icas_ray.pipeline import stages

    chunks, pos = [], 0
    while pos < total:
        n = stages._chunk_rows(pos, total, first, slots)
        assert n > 0
        chunks.append((pos, pos + n))
        pos += n
    return chunks


@pytest.mark.parametrize("total,first,slots", [(20000, 0, 2), (20000, 1000, 2), (2000, 1000, 2),
                                               (37, 10, 2), (100000, 1000, 64), (5, 0, 8)])
def test_chunks_cover_the_listing_the_sample_on_its_own_large_first_small_last(
        total: int, first: int, slots: int) -> None:
    """Guided self-scheduling: every row in one chunk, the threshold's sample in equal chunks of
    its own (one per slot), then chunks that only shrink, from at most ``_MAX_ROWS_PER_TASK``
    down to ``_MIN_ROWS_PER_TASK`` or less at the end."""
    from icas_ray.pipeline import stages

    chunks = _cut(total, first, slots)
    assert chunks[0][0] == 0 and chunks[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    sample = [c for c in chunks if c[0] < first]
    assert all(stop <= first for _, stop in sample), "no chunk mixes the sample and the rest"
    assert len(sample) <= max(slots, -(-first // stages._MAX_ROWS_PER_TASK))
    rest = [stop - start for start, stop in chunks if start >= first]
    assert rest == sorted(rest, reverse=True)
    assert max(rest) <= stages._MAX_ROWS_PER_TASK
    assert rest[-1] <= stages._MIN_ROWS_PER_TASK or len(rest) == 1


def test_a_large_job_has_few_tasks_and_ends_on_small_ones() -> None:
    """20,000 images on 2 CPUs: 40 fixed chunks of 512 rows before; now fewer tasks, and
    the last few together take less than one large chunk (the CPUs finish together)."""
    from icas_ray.pipeline import stages

    sizes = [b - a for a, b in _cut(20000, 0, 2)]
    assert len(sizes) < 30
    assert sizes[0] == stages._MAX_ROWS_PER_TASK
    assert sum(sizes[-4:]) < 200


@pytest.mark.parametrize("method", ["imagehash", "minhash", "TM", "SSIM", "ORB"])
def test_the_warm_up_builds_the_extractor_the_first_task_uses(digits_dir: str, method: str) -> None:
    """``warm_workers``' task builds the worker's extractor for the job and runs it once on a
    generated image, so that the first feature task finds it built (and computes the same
    features as an extractor built cold)."""
    import glob

    from icas_ray.pipeline import stages
    from icas_ray.pipeline.config import ClusterConfig
    from icas_ray.storage import Storage

    job = stages.feature_job(ClusterConfig(method=method), Storage())
    stages._TASK_EXTRACTOR = None
    stages._warm_worker(job)
    assert stages._TASK_EXTRACTOR is not None
    warmed = stages._TASK_EXTRACTOR[1]
    paths = sorted(glob.glob(f"{digits_dir}/*.png"))[:8]
    batch = {"uri": np.array(paths, dtype=object), "size": np.zeros(8, np.int64),
             "batch": np.zeros(8, np.int64), "row": np.arange(8)}
    out = stages.extract_task(batch, **job)
    assert stages._TASK_EXTRACTOR[1] is warmed, "the first task reuses the warmed extractor"
    cold = stages.FeatureExtractor(**job)(batch)
    assert list(out["status"]) == ["ok"] * 8
    for key in (k for k in out if k.startswith("f_")):
        np.testing.assert_array_equal(out[key], cold[key])


def test_the_warm_up_leaves_a_model_to_the_first_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method that loads a network (embedding) is not built by the warm-up: its workers
    only import the stage (building it would load the model in every idle worker)."""
    import ray

    from icas_ray.pipeline import stages
    from icas_ray.pipeline.config import ClusterConfig
    from icas_ray.storage import Storage

    sent: list[Any] = []

    class Task:
        def options(self, **kwargs: Any) -> Task:
            return self

        def remote(self, job: Any) -> None:
            sent.append(job)

    monkeypatch.setattr(ray, "remote", lambda fn: Task())
    monkeypatch.setattr(stages, "cluster_cpus", lambda: 2.0)
    config = ClusterConfig(method="embedding", method_params={"backbone": "resnet18", "weights": "random"},
                           feature_compute="tasks")
    stages.warm_workers(config, Storage())
    assert sent == [None] * 4
    stages.warm_workers(ClusterConfig(method="imagehash"), Storage())
    assert sent[4:] and all(job is not None and job["method"] == "imagehash" for job in sent[4:])
