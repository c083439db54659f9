#!/usr/bin/env python
"""Generate oracle demonstrations of one ClevrSkills task in parallel simulator workers.

    python data_pipelines/generate_demos.py --task Pick --num-episodes 100 --out runs/demos \
        [--task-args '{"spawn_at_gripper": true}'] [--seed 0] [--num-workers 2] [--image-size 128]

Every attempt (seed) is recorded in ``<out>/<name>/manifest.jsonl``; successful episodes are kept
as ``<out>/<name>/episodes/seed_<seed>.npz`` (arrays) + ``seed_<seed>.json`` (metadata, labels,
traces); the layout is documented in `c2a_jax.sim.rollout`. ``<name>`` is the task plus its
arguments (e.g. ``PlaceOnTop-spawn_at_gripper=True``). A rerun skips every seed already in the
manifest (successful or not) and retries seeds whose worker crashed. Seeds run from ``--seed``
upwards until ``--num-episodes`` successes are kept or ``--max-attempts`` seeds were tried.
``--save-video`` also writes an mp4 of both cameras for each kept episode.

Many machines: ``--shard-index i --num-shards n`` (e.g. a SLURM array, ``tools/launch/demos_array.sbatch``)
makes this run shard i of the same job: it tries the seeds ``--seed + i, + i + n, ...`` (at most
``ceil(max_attempts / n)``), keeps its share of ``--num-episodes`` (both stay the whole job's totals, so
every shard gets the same command line) and writes to ``<out>/shard-<i>-of-<n>/<name>/``. The shards'
seeds are disjoint, and ``build_rlds.py --demos <out>`` reads all shards as one dataset (after copying
the shard folders into one ``<out>``, unless they share a filesystem); see `c2a_jax.data.demo_shards`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from c2a_jax.data.demo_shards import shard_dir_name, shard_quota, shard_seeds  # noqa: E402
from c2a_jax.fileio import append_jsonl, atomic_write_bytes, atomic_write_text, latest_jsonl_records  # noqa: E402


def dataset_name(task: str, task_args: dict) -> str:
    return "-".join([task] + [f"{k}={task_args[k]}" for k in sorted(task_args)])


def read_manifest(path: str) -> dict[int, dict]:
    """Seed -> latest manifest record (a torn last line from a crash is ignored)."""
    return latest_jsonl_records(path, "seed")


def save_episode(directory: str, seed: int, episode: dict) -> str:
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **episode["arrays"])
    stem = os.path.join(directory, f"seed_{seed:06d}")
    atomic_write_bytes(stem + ".npz", buffer.getvalue())
    atomic_write_text(stem + ".json", json.dumps(episode["meta"]))
    return stem


def save_video(stem: str, arrays: dict, fps: int = 20) -> None:
    import imageio

    frames = np.concatenate([arrays["base_image"], arrays["hand_image"]], axis=2)
    imageio.mimsave(stem + ".mp4", list(frames), fps=fps)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, help="task name, e.g. Pick, PlaceOnTop, PlaceNextTo, Touch")
    ap.add_argument("--task-args", default="{}", help="JSON dict of task arguments")
    ap.add_argument("--num-episodes", type=int, default=10, help="successful episodes to keep")
    ap.add_argument("--max-attempts", type=int, default=None, help="seeds to try at most (default 2x episodes + 10)")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--num-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--split", default="train", choices=("train", "test"))
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before a worker counts as hung")
    ap.add_argument("--save-video", action="store_true")
    ap.add_argument("--shard-index", type=int, default=0, help="this machine's shard (0-based; see above)")
    ap.add_argument("--num-shards", type=int, default=1, help="machines sharing the job (1: no sharding)")
    args = ap.parse_args(argv)
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        ap.error(
            f"need --num-shards >= 1 and 0 <= --shard-index < --num-shards, got {args.shard_index} of {args.num_shards}"
        )
    if args.num_shards > args.num_episodes:
        ap.error(f"--num-shards {args.num_shards} is more than --num-episodes {args.num_episodes}")
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
    if args.num_episodes < 1 or args.num_workers < 1 or args.image_size < 8:
        ap.error("--num-episodes and --num-workers must be >= 1, --image-size >= 8")
    return args


def shard_plan(args: argparse.Namespace) -> dict:
    """This run's share of the job: directory, episodes to keep, seeds to try (all of them when unsharded)."""
    name = dataset_name(args.task, args.task_args)
    max_attempts = args.max_attempts or 2 * args.num_episodes + 10
    root = (
        args.out if args.num_shards == 1 else os.path.join(args.out, shard_dir_name(args.shard_index, args.num_shards))
    )
    return {
        "name": name,
        "directory": os.path.join(root, name),
        "num_episodes": shard_quota(args.num_episodes, args.shard_index, args.num_shards),
        "seeds": shard_seeds(args.seed, max_attempts, args.shard_index, args.num_shards),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    from c2a_jax.sim.worker import WorkerPool

    plan = shard_plan(args)
    name, directory = plan["name"], plan["directory"]
    args.num_episodes = plan["num_episodes"]
    episodes_dir = os.path.join(directory, "episodes")
    os.makedirs(episodes_dir, exist_ok=True)
    manifest_path = os.path.join(directory, "manifest.jsonl")
    done = {s: r for s, r in read_manifest(manifest_path).items() if r["status"] != "error"}
    kept = sum(1 for r in done.values() if r["status"] == "success")
    todo = [s for s in plan["seeds"] if s not in done]

    factory_kwargs = {"task": args.task, "task_args": args.task_args, "image_size": args.image_size,
                      "split": args.split, "max_steps": args.max_steps}  # fmt: skip
    bar = tqdm(total=args.num_episodes, initial=min(kept, args.num_episodes), desc=name, unit="ep")
    start, attempts = time.time(), 0
    if kept < args.num_episodes and todo:
        env = {"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with WorkerPool("c2a_jax.sim.rollout:OracleWorker", factory_kwargs, num_workers=args.num_workers,
                        timeout_s=args.timeout, env=env) as pool:  # fmt: skip

            def jobs():
                for seed in todo:
                    if kept >= args.num_episodes:
                        return
                    yield {"method": "run_episode", "kwargs": {"seed": seed}}

            for result in pool.map(jobs()):
                seed = result.job["kwargs"]["seed"]
                attempts += 1
                record = {"seed": seed, "task": args.task, "task_args": args.task_args, "time": time.time()}
                if not result.ok:
                    record.update(status="error", error=result.error)
                else:
                    meta = result.result["meta"]
                    record.update(steps=meta["num_steps"], seconds=meta["seconds"])
                    if meta["success"] and kept < args.num_episodes:
                        stem = save_episode(episodes_dir, seed, result.result)
                        if args.save_video:
                            save_video(stem, result.result["arrays"])
                        record.update(status="success", path=os.path.relpath(stem, directory))
                        kept += 1
                        bar.update(1)
                    else:
                        record.update(status="success_unused" if meta["success"] else "failed")
                append_jsonl(manifest_path, record)
                minutes = max(time.time() - start, 1e-6) / 60
                bar.set_postfix(attempts=attempts, per_min=f"{bar.n / minutes if bar.n else 0:.1f}")
    bar.close()
    records = read_manifest(manifest_path)
    summary = {
        "dataset": name,
        "kept": sum(1 for r in records.values() if r["status"] == "success"),
        "attempts": len(records),
        "failed": sum(1 for r in records.values() if r["status"] == "failed"),
        "errors": sum(1 for r in records.values() if r["status"] == "error"),
        "seconds": round(time.time() - start, 1),
    }
    if args.num_shards > 1:
        summary.update(shard_index=args.shard_index, num_shards=args.num_shards, quota=args.num_episodes)
    atomic_write_text(os.path.join(directory, "summary.json"), json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0 if summary["kept"] >= args.num_episodes else 1


if __name__ == "__main__":
    sys.exit(main())
