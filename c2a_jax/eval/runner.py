"""Running many evaluation episodes on parallel simulator workers without losing any.

Why a module of its own: every evaluation mode has the same bookkeeping -- a list of (task, seed)
jobs, several simulator worker processes, a per-episode JSONL file that a rerun resumes from, and
the rule that an episode whose worker died is retried once and then recorded as an error (never as
a failure, never silently dropped). The modes differ only in `episode_fn`.

The policy side (the VLM, the diffusion policy) runs in this process, shared by all workers; each
worker is driven by one thread, which spends most of its time waiting for the simulator, so the
threads overlap simulation with inference. Records are appended under a lock, one JSON line each,
flushed and fsynced: a killed run loses at most the episodes in flight, and a half-written last
line is skipped by the reader (`c2a_jax.eval.report.read_records`).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from c2a_jax.eval.report import read_records
from c2a_jax.fileio import append_jsonl


def job_key(job: Mapping[str, Any]) -> tuple:
    """What identifies an episode across reruns: mode, training-set label, task, its arguments,
    seed and object split."""
    return (
        str(job.get("mode", "")),
        str(job.get("dataset", "")),
        str(job["task"]),
        json.dumps(job.get("task_args") or {}, sort_keys=True),
        int(job["seed"]),
        str(job.get("object_split", "train")),
    )


def finished_keys(path: str | os.PathLike) -> set[tuple]:
    """Keys of the episodes `path` already holds (missing file: none)."""
    if not os.path.exists(path):
        return set()
    return {job_key(r) for r in read_records(path) if "task" in r and "seed" in r}


class JsonlWriter:
    """Thread-safe appends of one JSON record per line, each flushed and fsynced."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._lock = threading.Lock()
        self._repair()

    def _repair(self) -> None:
        """A killed writer may have left a partial last line: cut it, so the next record starts clean."""
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def write(self, record: Mapping[str, Any]) -> None:
        with self._lock:
            append_jsonl(self.path, record, default=_json_default)


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def run_jobs(
    jobs: Sequence[Mapping[str, Any]],
    *,
    make_sim: Callable[[int], Any],
    episode_fn: Callable[[Any, Mapping[str, Any]], Mapping[str, Any]],
    out_path: str | os.PathLike,
    num_workers: int = 1,
    is_worker_error: Callable[[Mapping[str, Any]], bool] = lambda r: r.get("end_reason") == "worker_error",
    progress: bool = True,
    on_record: Callable[[Mapping[str, Any]], None] | None = None,
) -> dict[str, int]:
    """Run every job not already in `out_path` and append one record per episode.

    `make_sim(slot)` builds simulator slot `slot` (a `SimulatorClient`; closed at the end if it
    has ``close``); `episode_fn(sim, job) -> record` runs one episode and must not raise for
    anything the policy does. A record for which `is_worker_error` holds is retried once on the
    same (restarted) worker, then written with ``error`` set. Any exception from `episode_fn`
    counts as a worker error too. Records get the job's fields (mode, dataset, task, task_args,
    seed, object_split) and ``attempts``. Returns counts: ``skipped``, ``run``, ``errors``."""
    writer = JsonlWriter(out_path)
    done = finished_keys(out_path)
    todo = [j for j in jobs if job_key(j) not in done]
    counts = {"skipped": len(jobs) - len(todo), "run": 0, "errors": 0}
    if not todo:
        return counts
    pending: queue.Queue = queue.Queue()
    for job in todo:
        pending.put(job)
    lock = threading.Lock()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="episodes", unit="ep", dynamic_ncols=True)
    failures: list[BaseException] = []

    def one(sim, job) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for attempt in (1, 2):
            start = time.perf_counter()
            try:
                record = dict(episode_fn(sim, job))
            except Exception as e:  # noqa: BLE001  (a crashed worker, a broken pipe: retried, then recorded)
                record = {"end_reason": "worker_error", "error": f"{type(e).__name__}: {e}", "success": False}
            record.setdefault("wall_s", round(time.perf_counter() - start, 3))
            record["attempts"] = attempt
            if not is_worker_error(record):
                if record.get("error") is None:
                    record.pop("error", None)
                return record
        record["error"] = record.get("error") or "worker error"
        return record

    def drive(slot: int) -> None:
        sim = None
        try:
            sim = make_sim(slot)
            while True:
                try:
                    job = pending.get_nowait()
                except queue.Empty:
                    return
                record = one(sim, job)
                fields = {
                    k: job[k] for k in ("mode", "dataset", "task", "task_args", "seed", "object_split") if k in job
                }
                record.update(fields)
                writer.write(record)
                if on_record is not None:
                    on_record(record)
                with lock:
                    counts["run"] += 1
                    counts["errors"] += bool(record.get("error"))
                    if bar is not None:
                        bar.update(1)
        except BaseException as e:  # noqa: BLE001  (a slot that cannot start: the others carry on)
            failures.append(e)
        finally:
            if sim is not None and hasattr(sim, "close"):
                sim.close()

    threads = [threading.Thread(target=drive, args=(slot,), daemon=True) for slot in range(max(1, num_workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if bar is not None:
        bar.close()
    if failures and counts["run"] < len(todo):
        raise RuntimeError(f"{len(todo) - counts['run']} episodes not run: a simulator slot failed") from failures[0]
    return counts


def make_jobs(tasks: Iterable[Mapping[str, Any]], seeds: Iterable[int], **fields: Any) -> list[dict[str, Any]]:
    """One job per (task, seed): ``tasks`` are ``{"task", "task_args"?}``; `fields` (mode,
    dataset, object_split, ...) are copied into every job."""
    seeds = list(seeds)
    return [{**fields, "task": t["task"], "task_args": dict(t.get("task_args") or {}), "seed": int(s)}
            for t in tasks for s in seeds]  # fmt: skip
