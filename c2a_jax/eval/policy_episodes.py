"""The learned-policy evaluation modes (VLM+DP, flat DP, DP+Oracle): one action per simulator step.

Worker side, `PolicyWorker` (a `VlmOracleWorker` with one more call):

    reset(seed, task, task_args, prompt_index, oracle_code=False) -> {"episode", "prompt", ..., "observation"}
    step(episode, action, images=True) -> observation (images: True, or the observation keys to
        render, the rest blank: the controller says which it reads, `images_needed`)

    observation = {"image": base camera (S, S, 3) uint8, "wrist_image": hand camera, "state": (9,)
                   float32 as the RLDS dataset stores it (TCP position, quaternion qw qx qy qz,
                   vacuum_on, vacuum_grasping), "success": reached at any step so far, "steps",
                   "budget_left", and with ``oracle_code`` (Oracle+DP) "oracle_code": the fine-level
                   line the task's solver would run from this state (`c2a_jax.sim.shadow_oracle`)}

Parent side, `run_policy_episode(sim, controller, job)`: the `HierarchicalController` chooses each
action (its code writer and diffusion policy live in the parent); the record holds the code line
of every step (run-length encoded: ``[[line, steps], ...]``), the chunks drawn and why, and the time
spent in the VLM, the policy and the simulator (``sim_s``; the reset's share, ``reset_s``, costs as
much as many steps and is no part of a control step). Frames with their code line can be kept for
videos.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from c2a_jax.eval.vlm_oracle import MAX_STEPS, SimulatorClient, VlmOracleWorker

FACTORY = "c2a_jax.eval.policy_episodes:PolicyWorker"
CAMERAS = {"image": "base_camera", "wrist_image": "hand_camera"}  # observation key -> camera


class PolicyWorker(VlmOracleWorker):
    """See the module docstring."""

    shadow = None  # a ShadowOracle while an Oracle+DP episode runs

    def _policy_observation(self, images=True) -> dict[str, Any]:
        wanted = CAMERAS.values() if images is True else [CAMERAS[k] for k in images or ()]
        obs = self.env.observe(images=list(wanted) if self.images else False)
        agent = obs["agent"]
        state = np.concatenate([np.asarray(agent["ee_pose"], np.float32).reshape(-1)[:7],
                                np.asarray([agent["vacuum_on"], agent["vacuum_grasping"]], np.float32).reshape(-1)])  # fmt: skip
        success = bool(self.executor.success_seen or self.env.task.evaluate()["success"])
        self.executor.success_seen = success
        images = obs.get("images", {})
        blank = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        out = {
            "image": images.get("base_camera", blank),
            "wrist_image": images.get("hand_camera", blank),
            "state": state,
            "success": success,
            "steps": self.steps,
            "budget_left": max(0, self.max_steps - self.steps),
        }
        if self.shadow is not None:
            out["oracle_code"] = self.shadow.code(success)
        return out

    def reset(self, seed: int, task: str | None = None, task_args: dict | None = None,
              prompt_index: int | None = None, oracle_code: bool = False) -> dict[str, Any]:  # fmt: skip
        """A new episode; with `oracle_code`, every observation carries the solver's code line."""
        from c2a_jax.sim.shadow_oracle import ShadowOracle

        if self.shadow is not None:
            self.shadow.close()
        self.shadow = None
        out = super().reset(seed, task, task_args, prompt_index)
        self.shadow = ShadowOracle(self.env) if oracle_code else None
        out["observation"] = self._policy_observation()
        return out

    def step(self, episode: str, action, images: bool = True) -> dict[str, Any]:
        self._check(episode)
        action = np.asarray(action, np.float32).reshape(-1)
        if action.shape != (7,) or not np.all(np.isfinite(action)):
            raise ValueError(f"an action must be 7 finite numbers, got shape {action.shape}")
        _, _, _, _, info = self.env.step(action)
        self.steps += 1
        if bool(np.asarray(info["success"]).reshape(-1)[0]):
            self.executor.success_seen = True
        if not (images is True or (isinstance(images, list | tuple) and set(images) <= set(CAMERAS))):
            raise ValueError(f"images must be True or a list of {sorted(CAMERAS)}, got {images!r}")
        return self._policy_observation(images)


def policy_client(task: str = "Pick", task_args: dict | None = None, image_size: int = 64, split: str = "train",
                  max_steps: int = MAX_STEPS, timeout_s: float = 600.0, log_path: str | None = None) -> SimulatorClient:  # fmt: skip
    """A `PolicyWorker` in a child process: `SimulatorClient` with this module's factory (a crash
    restarts the worker and the episode's calls fail with `WorkerError`)."""
    return SimulatorClient(task=task, task_args=task_args, image_size=image_size, split=split, max_steps=max_steps,
                           timeout_s=timeout_s, log_path=log_path, factory=FACTORY)  # fmt: skip


def _call(sim, method: str, **kwargs):
    return sim.call(method, **kwargs) if hasattr(sim, "call") else getattr(sim, method)(**kwargs)


def run_policy_episode(
    sim, controller, job: Mapping[str, Any], *, max_steps: int | None = None, record_frames: bool = False
) -> dict[str, Any]:
    """One episode of `controller` (`c2a_jax.infer.controller.HierarchicalController`) on `sim`
    (a `policy_client` or a `PolicyWorker` in this process). A lost worker ends the episode with
    ``end_reason`` "worker_error" (the runner retries it); nothing the policy outputs raises."""
    from c2a_jax.sim.worker import WorkerError

    start = time.perf_counter()
    record: dict[str, Any] = {"task": job["task"], "seed": int(job["seed"]), "success": False, "steps": 0,
                              "code_runs": [], "chunks": {}, "vlm_s": 0.0, "dp_s": 0.0, "sim_s": 0.0,
                              "reset_s": 0.0}  # fmt: skip
    frames: list[np.ndarray] = []
    captions: list[str] = []
    try:
        t = time.perf_counter()
        reset = _call(sim, "reset", seed=int(job["seed"]), task=job.get("registry", job["task"]),
                      task_args=dict(job.get("task_args") or {}), prompt_index=job.get("prompt_index"),
                      oracle_code=bool(getattr(controller, "reads_oracle_code", False)))  # fmt: skip
        record["reset_s"] = time.perf_counter() - t
        record["sim_s"] += record["reset_s"]
    except WorkerError as e:
        return {**record, "end_reason": "worker_error", "error": f"reset: {e}"}
    record["prompt"] = reset["prompt"]
    episode, obs = reset["episode"], reset["observation"]
    controller.reset(reset["prompt"], episode_seed=int(job["seed"]))
    limit = int(max_steps) if max_steps else None
    end = "success" if obs["success"] else ""
    while not end:
        if obs["budget_left"] <= 0 or (limit is not None and obs["steps"] >= limit):
            end = "step_budget"
            break
        action, info = controller.act(obs)
        record["vlm_s"] += info.vlm_s
        record["dp_s"] += info.dp_s
        line = info.code if info.code is not None else "(prompt) " + reset["prompt"]
        runs = record["code_runs"]
        if runs and runs[-1][0] == line:
            runs[-1][1] += 1
        else:
            runs.append([line, 1])
        if info.reason:
            record["chunks"][info.reason] = record["chunks"].get(info.reason, 0) + 1
        if record_frames:
            frames.append(np.asarray(obs["image"]))
            captions.append(line)
        try:
            t = time.perf_counter()
            images = (
                True if record_frames or not hasattr(controller, "images_needed") else list(controller.images_needed())
            )
            obs = _call(sim, "step", episode=episode, action=np.asarray(action, np.float32), images=images)
            record["sim_s"] += time.perf_counter() - t
        except WorkerError as e:
            record.update(end_reason="worker_error", error=f"step {obs['steps']}: {e}")
            return record
        if obs["success"]:
            end = "success"
    record.update(success=bool(obs["success"]), steps=int(obs["steps"]), end_reason=end,
                  total_s=round(time.perf_counter() - start, 4))  # fmt: skip
    for key in ("vlm_s", "dp_s", "sim_s", "reset_s"):
        record[key] = round(record[key], 4)
    if record_frames:
        record["_frames"], record["_captions"] = frames, captions
    return record
