"""One oracle episode, recorded: observations, actions, rewards, action traces and code labels.

`OracleWorker` is what a simulator worker process hosts (`c2a_jax.sim.worker`): it owns one
environment and answers `run_episode(seed)` with numpy arrays and a JSON-able metadata dict, which
is all that crosses the process boundary.

Episode layout (T actions, T + 1 observations; the last step carries no action, as in RLDS):
  arrays  base_image, hand_image (T+1, H, W, 3) uint8; qpos, qvel (T+1, 12); ee_pose (T+1, 7);
          ee_velocity (T+1, 6); vacuum_on, vacuum_grasping (T+1,) bool; vacuum_ready (T+1, 5) bool;
          actors (T+1, 13 K); bboxes (T+1, K, 2, 3) int32 (base camera); actions (T+1, 7) float32
          (last row zeros); rewards (T+1,); success (T+1,) bool (after the step's action).
  meta    task, task_args, seed, split, image_size, prompts (placeholder form), natural_prompts,
          actors [{name, id, key, colour, shape, size}], labels [{level1, level1_keystep, fine,
          fine_keystep}] per step, traces (per step, the active solver chain), success, num_steps.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from c2a_jax.codeapi.trace import EpisodeLabeler
from c2a_jax.sim.grid_refs import with_grid_positions

OBS_KEYS = ("qpos", "qvel", "ee_pose", "ee_velocity", "vacuum_on", "vacuum_grasping", "vacuum_ready")


def json_trace(trace: list[dict]) -> list[dict]:
    """A solver chain's action states as JSON values (numpy arrays and scalars made plain)."""
    out = []
    for state in trace:
        clean = {}
        for k, v in state.items():
            if k == "prompts":
                continue
            if isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, np.generic):
                v = v.item()
            clean[k] = v
        out.append(clean)
    return out


class StepRecorder:
    """The per-step arrays of one episode in the layout above, fed step by step; shared by the
    oracle's recorder and the VLM+Oracle regeneration recorder (`c2a_jax.eval.vlm_oracle`), so
    both write the same episode files. Records the observation after `env.reset` at once."""

    def __init__(self, env, images: bool = True):
        self.env, self.images = env, bool(images)
        self.keys = [o.key for o in env.task.task_actors()]
        self.frames: dict[str, list] = {k: [] for k in ("base_image", "hand_image", "actors", "bboxes", *OBS_KEYS)}
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.successes: list[bool] = []
        self.observe()

    def observe(self) -> None:
        obs = self.env.observe(images=self.images)
        for k in OBS_KEYS:
            self.frames[k].append(obs["agent"][k])
        self.frames["actors"].append(obs["actors"])
        keys = self.keys
        self.frames["bboxes"].append(
            np.stack([obs["bboxes"][k] for k in keys]) if keys else np.zeros((0, 2, 3), np.int32)
        )
        if self.images:
            self.frames["base_image"].append(obs["images"]["base_camera"])
            self.frames["hand_image"].append(obs["images"]["hand_camera"])

    def step(self, action: np.ndarray, reward: float, success: bool) -> None:
        """One control step taken (`action`, then its reward and success flag); observes the result."""
        self.actions.append(np.asarray(action, np.float32))
        self.rewards.append(float(reward))
        self.successes.append(bool(success))
        self.observe()

    @property
    def num_steps(self) -> int:
        return len(self.actions)

    @property
    def last_base_image(self) -> np.ndarray | None:
        return self.frames["base_image"][-1] if self.images else None

    def arrays(self) -> dict[str, np.ndarray]:
        """The episode's arrays: the last observation gets a zero action and repeats the last reward
        and success flag."""
        actions = [*self.actions, np.zeros(7, np.float32)]
        rewards = [*self.rewards, self.rewards[-1] if self.rewards else 0.0]
        successes = [*self.successes, self.successes[-1] if self.successes else False]
        out = {k: np.asarray(v) for k, v in self.frames.items() if v}
        out["actions"] = np.asarray(actions, np.float32)
        out["rewards"] = np.asarray(rewards, np.float32)
        out["success"] = np.asarray(successes, bool)
        return out


def episode_meta(env, seed: int, labels: list, success: bool, num_steps: int, seconds: float) -> dict[str, Any]:
    """The JSON metadata of a recorded episode (everything but the traces)."""
    task = env.task
    return {
        **task.describe(),
        "task_args": dict(env.task_args),
        "seed": int(seed),
        "split": env.split,
        "image_size": env.image_size,
        "actors": [{**a, "key": f"{a['name']}_{a['id']}"} for a in task.describe()["actors"]],
        "labels": labels,
        "success": bool(success),
        "num_steps": int(num_steps),
        "seconds": round(seconds, 3),
    }


def record_oracle_episode(env, seed: int, max_steps: int = 1000, images: bool = True) -> dict[str, Any]:
    """Run the task's oracle from `reset(seed)` until success or `max_steps`; return the episode."""
    start = time.time()
    env.reset(seed=seed)
    solver = env.task.solver()
    labeler = EpisodeLabeler()
    recorder = StepRecorder(env, images)
    labels, traces = [], []
    success = False
    for _ in range(max_steps):
        action = np.asarray(solver.step(), dtype=np.float32)
        trace = with_grid_positions(json_trace(solver.trace()), env)
        _, reward, terminated, truncated, info = env.step(action)
        success = bool(info["success"][0])
        labels.append(labeler.label(trace, success_before=success))
        traces.append(trace)
        recorder.step(action, float(reward[0]), success)
        if success:
            break
    final = labeler.label([], success_before=True) if success else labels[-1] if labels else None
    labels.append(final)
    traces.append([])
    stored = [vars(label) if label is not None else None for label in labels]
    meta = episode_meta(env, seed, stored, success, recorder.num_steps, time.time() - start)
    meta["traces"] = traces
    return {"arrays": recorder.arrays(), "meta": meta}


class OracleWorker:
    """A simulator worker's payload: one environment, episodes on request."""

    def __init__(self, task: str, task_args: dict | None = None, image_size: int = 128, split: str = "train",
                 max_steps: int = 1000):  # fmt: skip
        import gymnasium as gym

        import c2a_jax.sim.env  # noqa: F401  (registers ClevrSkills-v0)

        self.env = gym.make("ClevrSkills-v0", task=task, task_args=task_args or {}, image_size=image_size,
                            split=split).unwrapped  # fmt: skip
        self.max_steps = max_steps

    def run_episode(self, seed: int, images: bool = True) -> dict[str, Any]:
        return record_oracle_episode(self.env, seed, self.max_steps, images)

    def ping(self) -> str:
        return "ok"
