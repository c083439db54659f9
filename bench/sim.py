"""Simulator speed and oracle success: our ClevrSkills-v0 against ManiSkill3's PickCube-v1.

    .venv/bin/python bench/sim.py [--steps 60] [--oracle-seeds 0] [--tasks Pick,PlaceOnTop,...]
    .venv/bin/python bench/sim.py --skip-speed --oracle-seeds 100 --imaged-seeds 0 --seed-log runs/oracle

Speed: env steps per second with both cameras rendered every step (128x128 and 256x256), and
PickCube-v1 with its one 128x128 camera in the same run; the ratio compares cost per rendered
camera (goal: ours <= 1.5x PickCube's). Oracle: success rate over `--oracle-seeds` seeds per task
and successful demos per core-hour. Prints one JSON object.

A 100-seed oracle run of the long tasks takes hours on two cores; with ``--seed-log DIR`` every
finished seed is appended to ``DIR/<task>.jsonl`` at once, and a rerun skips the seeds already
there, so an interrupted run loses at most the episodes in flight.
"""

import argparse
import json
import time

import gymnasium as gym
import numpy as np

TASKS = {  # name -> task arguments (Topple and Push-away are Touch variants); L1/L2 as in task_utils
    "Pick": {},
    "PlaceOnTop": {"spawn_at_gripper": True},
    "PlaceNextTo": {"spawn_at_gripper": True},
    "PickPlaceOnTop": {},  # the L1 forms: the object starts on the table ("Pick and place ...")
    "PickPlaceNextTo": {},
    "Touch": {},
    "Topple": {"topple": True},
    "Push-away": {"push": True},
    "Rotate": {"num_actors": 3},
    "Rotate-restore": {"num_actors": 3, "restore": True},
    "Push": {},
    "SingleStack": {"num_actors": 4},
    "ReverseStack": {"num_actors": 4},
    "StackTopple": {"num_actors": 4},
    "NovelNoun": {"num_actors": 3, "num_areas": 3},
    "NovelAdjective": {},
    "NovelNounAdjective": {},
    "Swap": {},
    "SwapMarkovian": {},
    "FollowOrder": {"num_areas": 4, "num_predicates": 4},
    "FollowOrder-restore": {"num_areas": 2, "num_predicates": 2, "restore": True},
    "Neighbour": {"num_areas": 3},
    "Sort2d": {"num_actors": 4, "num_areas": 3},
    "RotateSymmetry": {"num_actors": 4},
    "SwapPush": {"push": True},
    "SwapRotate": {},
    "ThrowAt": {"spawn_at_gripper": True, "target_2d": False},
    "ThrowToTopple": {"spawn_at_gripper": True, "target_2d": False, "topple_target": True},
    "ThrowOnto": {},
    "ThrowAndSort": {"num_actors": 4, "num_areas": 3},
    "BalanceScale": {"num_actors": 4},
    "SortStack": {"num_actors": 6, "num_areas": 3},
}
# Bench names that are another registry task with arguments.
REGISTRY = {"Topple": "Touch", "Push-away": "Touch", "FollowOrder-restore": "FollowOrder", "SwapPush": "Swap",
            "Rotate-restore": "Rotate", "PickPlaceOnTop": "PlaceOnTop", "PickPlaceNextTo": "PlaceNextTo",
            "ThrowAt": "Throw", "ThrowToTopple": "Throw", "ThrowOnto": "Throw"}  # fmt: skip
# Episode limit per task: 500 steps for the L0 tasks, the environment's 1000 for the longer ones.
MAX_STEPS = dict.fromkeys(
    ("PickPlaceOnTop", "PickPlaceNextTo", "Rotate-restore", "SingleStack", "ReverseStack", "StackTopple",
     "NovelNoun", "NovelAdjective", "NovelNounAdjective", "Swap", "SwapMarkovian", "FollowOrder",
     "FollowOrder-restore", "Neighbour", "Sort2d", "RotateSymmetry", "SwapPush", "SwapRotate", "ThrowAndSort",
     "BalanceScale", "SortStack"),
    1000,
)  # fmt: skip


def ours_steps_per_s(size: int, steps: int) -> float:
    import c2a_jax.sim.env  # noqa: F401

    env = gym.make("ClevrSkills-v0", task="Pick", image_size=size).unwrapped
    env.reset(seed=0)
    solver = env.task.solver()
    env.render_cameras()
    start = time.perf_counter()
    for _ in range(steps):
        env.step(solver.step())
        env.render_cameras()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def pickcube_steps_per_s(steps: int) -> float:
    import mani_skill.envs  # noqa: F401

    env = gym.make("PickCube-v1", obs_mode="rgb", sim_backend="physx_cpu", render_backend="cpu",
                   sensor_configs=dict(width=128, height=128))  # fmt: skip
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(env.action_space.sample())
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def seed_record(seed: int, result) -> dict:
    """A `WorkerPool` result as a log line: success, steps, seconds, or why it failed."""
    if not result.ok:
        return {"seed": seed, "success": False, "error": (result.error or "")[:300]}
    meta = result.result["meta"]
    return {"seed": seed, "success": bool(meta["success"]), "steps": int(meta["num_steps"]),
            "seconds": round(float(meta["seconds"]), 1)}  # fmt: skip


def oracle(tasks: list[str], seeds: int, imaged: int, workers: int, seed_log: str | None = None) -> dict:
    """Success over `seeds` seeds per task (physics only, in parallel workers), and successful demos
    per core-hour measured on `imaged` seeds recorded with both cameras at 128 px. With `seed_log`
    (a directory) seeds already logged there are not run again."""
    import os

    from tqdm import tqdm

    from c2a_jax.fileio import append_jsonl, latest_jsonl_records
    from c2a_jax.sim.worker import WorkerPool

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if seed_log:
        os.makedirs(seed_log, exist_ok=True)
    out = {}
    for task in tasks:
        if task not in TASKS:
            raise SystemExit(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        log_path = os.path.join(seed_log, f"{task}.jsonl") if seed_log else None
        records = latest_jsonl_records(log_path, "seed") if log_path else {}
        todo = [s for s in range(seeds) if s not in records]
        name, args = REGISTRY.get(task, task), TASKS[task]
        kwargs = {"task": name, "task_args": args, "image_size": 128, "max_steps": MAX_STEPS.get(task, 500)}
        core_seconds, imaged_wins = 0.0, 0
        with WorkerPool("c2a_jax.sim.rollout:OracleWorker", kwargs, num_workers=workers,
                        env={"PYTHONPATH": root}) as pool:  # fmt: skip
            jobs = [{"method": "run_episode", "kwargs": {"seed": s, "images": False}} for s in todo]
            for r in tqdm(pool.map(jobs), total=len(jobs), desc=task, disable=not jobs):
                record = seed_record(todo[r.index], r)
                records[record["seed"]] = record
                if log_path:
                    append_jsonl(log_path, record)
            if imaged:
                imaged_jobs = [
                    {"method": "run_episode", "kwargs": {"seed": seeds + s, "images": True}} for s in range(imaged)
                ]
                timed = list(pool.map(imaged_jobs))
                core_seconds = sum(r.result["meta"]["seconds"] for r in timed if r.ok)
                imaged_wins = sum(bool(r.ok and r.result["meta"]["success"]) for r in timed)
        chosen = [records[s] for s in range(seeds)]
        steps = [r["steps"] for r in chosen if r["success"]]
        out[task] = {
            "success_rate": round(sum(r["success"] for r in chosen) / seeds, 3),
            "successes": sum(r["success"] for r in chosen),
            "seeds": seeds,
            "mean_steps": round(float(np.mean(steps)), 1) if steps else None,
            "failed_seeds": [r["seed"] for r in chosen if not r["success"]],
            "errors": {r["seed"]: r["error"] for r in chosen if "error" in r},
            "demos_per_core_hour_128px": round(imaged_wins / (core_seconds / 3600), 1) if core_seconds else None,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--oracle-seeds", type=int, default=0, help="seeds per task for oracle success (0: skip)")
    ap.add_argument("--imaged-seeds", type=int, default=4, help="seeds per task timed with images")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seed-log", default=None, help="directory of per-seed logs <task>.jsonl (resumable)")
    args = ap.parse_args()
    result = {"bench": "sim"}
    if not args.skip_speed:
        ours128 = ours_steps_per_s(128, args.steps)
        ours256 = ours_steps_per_s(256, args.steps)
        peer = pickcube_steps_per_s(args.steps)
        result.update(speed(ours128, ours256, peer))
    if args.oracle_seeds:
        result["oracle"] = oracle(
            args.tasks.split(","), args.oracle_seeds, args.imaged_seeds, args.workers, args.seed_log
        )
    print(json.dumps(result, indent=2))


def speed(ours128: float, ours256: float, peer: float) -> dict:
    return {
        "ours_2cams_128_steps_per_s": round(ours128, 2),
        "ours_2cams_256_steps_per_s": round(ours256, 2),
        "peer": "ManiSkill3 PickCube-v1, 1 camera 128x128, physx_cpu",
        "peer_steps_per_s": round(peer, 2),
        "cost_per_camera_ratio_128": round((1 / ours128 / 2) / (1 / peer), 3),  # our seconds per camera / theirs
    }


if __name__ == "__main__":
    main()
