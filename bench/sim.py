"""Simulator speed and oracle success: our ClevrSkills-v0 against ManiSkill3's PickCube-v1.

    .venv/bin/python bench/sim.py [--steps 60] [--oracle-seeds 0] [--tasks Pick,PlaceOnTop,...]

Speed: env steps per second with both cameras rendered every step (128x128 and 256x256), and
PickCube-v1 with its one 128x128 camera in the same run; the ratio compares cost per rendered
camera (goal: ours <= 1.5x PickCube's). Oracle: success rate over `--oracle-seeds` seeds per task
and successful demos per core-hour. Prints one JSON object.
"""

import argparse
import json
import time

import gymnasium as gym
import numpy as np

TASKS = {
    "Pick": {},
    "PlaceOnTop": {"spawn_at_gripper": True},
    "PlaceNextTo": {"spawn_at_gripper": True},
    "Touch": {},
    "Topple": {"topple": True},
    "Push": {"push": True},
}


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


def oracle(task: str, seeds: int) -> dict:
    from c2a_jax.sim.rollout import OracleWorker

    name, args = ("Touch", TASKS[task]) if task in ("Topple", "Push") else (task, TASKS[task])
    worker = OracleWorker(name, args, image_size=128, max_steps=500)
    wins, start = 0, time.perf_counter()
    for seed in range(seeds):
        wins += bool(worker.run_episode(seed, images=True)["meta"]["success"])
    hours = (time.perf_counter() - start) / 3600
    worker.env.close()
    return {"success_rate": wins / seeds, "seeds": seeds, "demos_per_core_hour": round(wins / hours, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--oracle-seeds", type=int, default=0)
    ap.add_argument("--tasks", default=",".join(TASKS))
    args = ap.parse_args()
    ours128 = ours_steps_per_s(128, args.steps)
    ours256 = ours_steps_per_s(256, args.steps)
    peer = pickcube_steps_per_s(args.steps)
    result = {
        "bench": "sim",
        "ours_2cams_128_steps_per_s": round(ours128, 2),
        "ours_2cams_256_steps_per_s": round(ours256, 2),
        "peer": "ManiSkill3 PickCube-v1, 1 camera 128x128, physx_cpu",
        "peer_steps_per_s": round(peer, 2),
        "cost_per_camera_ratio_128": round((1 / ours128 / 2) / (1 / peer), 3),  # our seconds per camera / theirs
    }
    if args.oracle_seeds:
        result["oracle"] = {t: oracle(t, args.oracle_seeds) for t in args.tasks.split(",")}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
