#!/usr/bin/env python
"""Record a new demonstration dataset with the VLM+Oracle policy (paper 5.2, Figure 6, "VLM+Oracle-
regenerated"): the trained VLM writes each key-step, the oracle solvers execute it, and successful
episodes are kept with their observations, actions and the VLM's own code as per-step labels.

    python data_pipelines/regenerate_with_vlm_oracle.py --vlm-checkpoint runs/vlm --task PlaceOnTop \
        --task-args '{"spawn_at_gripper": true}' --num-episodes 100 --out runs/regen \
        [--seed 1000] [--num-workers 2] [--image-size 336] [--max-queries 25] [--shard-index i --num-shards n]

Output: exactly ``data_pipelines/generate_demos.py``'s layout (``<out>/<name>/manifest.jsonl``,
``episodes/seed_<seed>.npz`` + ``.json``, ``summary.json``; shards in ``shard-XXXXX-of-YYYYY``), so
``build_rlds.py --demos <out>`` builds it and ``train_dp.py --config.data.instruction_source=oracle``
trains on the labels stored in the episodes, which here are the VLM's (`c2a_jax.sim.code_episode`:
the line running at each step, its first step the key-step; ``done()`` from the first successful
step; the same text at both granularities, the VLM's ``data.code_level`` named in each episode's
``code_level``). Images are rendered at ``--image-size`` (default the VLM's input size), both
cameras, every control step. The VLM is asked for a key-step once per call, at the image of that
moment, with its own memory, as in ``evaluate.py``'s ``vlm_oracle`` mode; lines of the other
granularity are parse errors (they could not be labelled at the VLM's level).

Seeds and resuming as generate_demos: seeds from ``--seed`` upwards until ``--num-episodes``
successes or ``--max-attempts`` tries; a rerun skips every seed in the manifest and retries those
whose simulator worker crashed (each is also retried once at once, on the restarted worker).
Several workers: ``--num-workers`` simulator processes, one VLM in this process answering their
queries in turn.

``--replay-oracle LEVEL`` replaces the VLM with the oracle's own key-steps at LEVEL
(`c2a_jax.infer.replay`), replayed through the same loop: a check of the pipeline without a model.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from c2a_jax.fileio import append_jsonl, atomic_write_text  # noqa: E402
from data_pipelines.generate_demos import read_manifest, save_episode, shard_plan  # noqa: E402

CODE_SOURCE = "vlm_oracle"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--vlm-checkpoint", help="a train_vlm.py work directory: the code writer")
    src.add_argument("--replay-oracle", choices=("fine", "level1"), help="no VLM: replay the oracle's lines")
    ap.add_argument("--task", required=True, help="registry task name, e.g. Pick, PlaceOnTop, PlaceNextTo")
    ap.add_argument("--task-args", default="{}", help="JSON dict of task arguments")
    ap.add_argument("--num-episodes", type=int, default=10, help="successful episodes to keep")
    ap.add_argument("--max-attempts", type=int, default=None, help="seeds to try at most (default 2x episodes + 10)")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--num-workers", type=int, default=1, help="simulator worker processes")
    ap.add_argument("--out", required=True)
    ap.add_argument("--image-size", type=int, default=0, help="rendered size (0: the VLM's; 128 with --replay-oracle)")
    ap.add_argument("--split", default="train", choices=("train", "test"))
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--max-queries", type=int, default=25)
    ap.add_argument("--early-stop-chars", type=int, default=0, help="the code writer's early stop (0: off)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before a worker counts as hung")
    ap.add_argument("--shard-index", type=int, default=0)
    ap.add_argument("--num-shards", type=int, default=1)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        ap.error(f"need 0 <= --shard-index < --num-shards, got {args.shard_index} of {args.num_shards}")
    if args.num_episodes < 1 or args.num_workers < 1 or args.num_shards > args.num_episodes:
        ap.error("--num-episodes and --num-workers must be >= 1, --num-shards <= --num-episodes")
    try:
        args.task_args = json.loads(args.task_args)
        if not isinstance(args.task_args, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        ap.error(f"--task-args must be a JSON object: {e}")
    from c2a_jax.sim.tasks import get_task_class

    try:
        get_task_class(args.task)
    except KeyError as e:
        ap.error(str(e.args[0]))
    return args


def _code_writer(args):
    """(writer_for(sim, seed) -> code writer, code level, image size, provenance for the metadata)."""
    if args.replay_oracle:
        from c2a_jax.infer.replay import ReplayCodeWriter

        def replay_for(sim, seed):
            meta = sim.record_oracle(seed=seed, max_steps=args.max_steps)
            return ReplayCodeWriter.from_episode(meta, args.replay_oracle)

        return replay_for, args.replay_oracle, args.image_size or 128, {"code_writer": "oracle_replay"}
    import ml_collections

    from c2a_jax.eval.evaluate import _code_writer as load_writer
    from c2a_jax.eval.evaluate import _locked

    config = ml_collections.ConfigDict({"mode": "vlm_oracle", "vlm_checkpoint": args.vlm_checkpoint,
                                        "early_stop_chars": args.early_stop_chars})  # fmt: skip
    writer, vlm_config = load_writer(config)
    generate = _locked(writer.generate_code)  # the worker threads share one model
    size = args.image_size or int(vlm_config.data.image_size)
    info = {"code_writer": "vlm", "vlm_checkpoint": os.path.abspath(args.vlm_checkpoint)}
    return (lambda sim, seed: generate), str(vlm_config.data.code_level), size, info


def main(argv=None) -> int:
    args = parse_args(argv)
    from c2a_jax.eval.vlm_oracle import SimulatorClient, run_episode
    from c2a_jax.sim.worker import WorkerError

    plan = shard_plan(args)
    name, directory = plan["name"], plan["directory"]
    quota = plan["num_episodes"]
    episodes_dir = os.path.join(directory, "episodes")
    os.makedirs(episodes_dir, exist_ok=True)
    manifest_path = os.path.join(directory, "manifest.jsonl")
    done = {s: r for s, r in read_manifest(manifest_path).items() if r["status"] != "error"}
    state = {"kept": sum(1 for r in done.values() if r["status"] == "success"), "attempts": 0}
    todo: queue.Queue = queue.Queue()
    for seed in plan["seeds"]:
        if seed not in done:
            todo.put(seed)
    start = time.time()
    if state["kept"] < quota and not todo.empty():
        writer_for, level, image_size, provenance = _code_writer(args)
        from tqdm import tqdm

        lock = threading.Lock()
        bar = tqdm(total=quota, initial=min(state["kept"], quota), desc=name, unit="ep", disable=args.no_progress)
        env = {"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        failures: list[BaseException] = []

        def one(sim, seed):
            record = None
            for attempt in (1, 2):  # a crashed worker is restarted by its pool: one more try there
                try:
                    writer = writer_for(sim, seed)
                    record = run_episode(sim, writer, seed, level=level, split=args.split,
                                         max_queries=args.max_queries, record_episode=True)  # fmt: skip
                except WorkerError as e:
                    record = None
                    error = f"{type(e).__name__}: {e}"
                    continue
                if record.end_reason != "worker_error":
                    return record, attempt, None
                error = record.error
            return record, 2, error

        def drive(slot):
            try:
                with SimulatorClient(args.task, args.task_args, image_size=image_size, split=args.split,
                                     max_steps=args.max_steps, timeout_s=args.timeout, env=env,
                                     log_path=os.path.join(directory, f"worker{slot}.log")) as sim:  # fmt: skip
                    while True:
                        with lock:
                            if state["kept"] >= quota:
                                return
                        try:
                            seed = todo.get_nowait()
                        except queue.Empty:
                            return
                        record, attempts, error = one(sim, seed)
                        entry = {"seed": seed, "task": args.task, "task_args": args.task_args, "time": time.time(),
                                 "attempts": attempts}  # fmt: skip
                        episode = record.episode if record is not None else None
                        if record is not None:
                            entry.update(steps=record.steps, queries=record.queries, end_reason=record.end_reason,
                                         parse_errors=record.parse_errors, invalid_calls=record.invalid_calls,
                                         seconds=round(record.total_s, 3))  # fmt: skip
                        with lock:
                            state["attempts"] += 1
                            if error is not None:
                                entry.update(status="error", error=error)
                            elif episode is None or not episode["meta"]["success"]:
                                entry.update(status="failed")
                            elif state["kept"] < quota:
                                episode["meta"].update(code_source=CODE_SOURCE, code_level=level, **provenance,
                                                       vlm_oracle=record.to_json())  # fmt: skip
                                stem = save_episode(episodes_dir, seed, episode)
                                entry.update(status="success", path=os.path.relpath(stem, directory))
                                state["kept"] += 1
                                bar.update(1)
                            else:
                                entry.update(status="success_unused")
                            append_jsonl(manifest_path, entry)
                            bar.set_postfix(attempts=state["attempts"])
            except BaseException as e:  # noqa: BLE001  (raised again in the main thread)
                failures.append(e)

        threads = [threading.Thread(target=drive, args=(slot,), daemon=True) for slot in range(args.num_workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bar.close()
        if failures:
            raise failures[0]
    records = read_manifest(manifest_path)
    summary = {
        "dataset": name,
        "code_source": CODE_SOURCE,
        "kept": sum(1 for r in records.values() if r["status"] == "success"),
        "attempts": len(records),
        "failed": sum(1 for r in records.values() if r["status"] == "failed"),
        "errors": sum(1 for r in records.values() if r["status"] == "error"),
        "seconds": round(time.time() - start, 1),
    }
    if args.num_shards > 1:
        summary.update(shard_index=args.shard_index, num_shards=args.num_shards, quota=quota)
    atomic_write_text(os.path.join(directory, "summary.json"), json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0 if summary["kept"] >= quota else 1


if __name__ == "__main__":
    sys.exit(main())
