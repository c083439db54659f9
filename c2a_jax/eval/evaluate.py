"""`evaluate.py`'s work: build the policy of a mode from its checkpoints, run every (task, seed) on
parallel simulator workers (resuming from the episode file), write videos, then the report.

Modes (paper sections 4.2, 4.3, 5.1):

* ``oracle``: the task's scripted solver alone (no learned model, no rendering): the upper bound
  VLM+Oracle is measured against, on the same seeds;
* ``vlm_oracle``: the trained VLM writes key-steps, the oracle solvers execute them
  (`c2a_jax.eval.vlm_oracle`);
* ``vlm_dp``: the hierarchical policy, VLM above and code-conditioned DP below
  (`c2a_jax.infer.controller`, `c2a_jax.eval.policy_episodes`);
* ``oracle_dp``: the code-conditioned DP of ``vlm_dp`` driving the robot, with the task's solver
  beside it writing the code line (and so the cache info) of the state it reached
  (`c2a_jax.sim.shadow_oracle`): the low level alone, as VLM+Oracle is the high level alone;
* ``dp``: the flat baseline, a DP conditioned on the task prompt only;
* ``dp_oracle``: a prompt-conditioned DP on the task's Markovian form, whose prompt carries the
  oracle's information (`c2a_jax.eval.tasks.MARKOVIAN`; Swap in the paper).

Config keys (configs/eval/default.py): workdir, mode, tasks (paper names or registry names),
num_seeds, first_seed, seeds (explicit seeds instead of that range), object_split, num_workers,
vlm_checkpoint, dp_checkpoint, dataset (a label for the report: the DP's training set),
early_stop_chars, regenerate_chunk_on_keystep, videos_per_task, max_steps, max_queries,
refusal_temperature (VLM+Oracle: 0 is the paper's greedy decoding; above 0, a query after a refused
line is sampled, `c2a_jax.eval.vlm_oracle`),
n_action_steps (0: the DP's own), image_size (only where no checkpoint fixes it). The simulator
renders at the larger of the two models' image sizes and each model resizes to its own
(`c2a_jax.infer.resize`).

`evaluate(config, code_writer_for=...)` answers the VLM's queries with a stand-in instead:
``code_writer_for(job)`` gives each episode its own writer ``(image, prompt, memory,
keystep_request) -> str`` (the oracle's lines replayed by `c2a_jax.infer.replay.ReplayCodeWriter`,
or a benchmark's scripted writer that runs a real model for its cost). The VLM of
``vlm_checkpoint`` is then optional (it still fixes the image size when given).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from c2a_jax.config import config_value
from c2a_jax.eval import report
from c2a_jax.eval.runner import make_jobs, run_jobs
from c2a_jax.eval.tasks import resolve

MODES = ("oracle", "vlm_oracle", "vlm_dp", "oracle_dp", "dp", "dp_oracle")


def _code_writer(config: Any):
    """The trained VLM of ``vlm_checkpoint`` as a `CodeWriter`, and its training config."""
    from c2a_jax.infer.code_writer import CodeWriter
    from c2a_jax.train.vlm_task import load_trained_vlm

    path = str(config_value(config, "vlm_checkpoint", ""))
    if not path:
        raise FileNotFoundError(f"mode {config.mode!r} needs --config.vlm_checkpoint (a train_vlm.py work directory)")
    model, tokenizer, vlm_config = load_trained_vlm(path)
    writer = CodeWriter(
        model, tokenizer, template=str(vlm_config.data.template),
        prefix_attention=str(config_value(vlm_config.model, "prefix_attention", "full")),
        max_new_tokens=int(config_value(getattr(vlm_config, "eval", {}), "max_new_tokens", 96) or 96),
        early_stop_k=int(config_value(config, "early_stop_chars", 0)),
    )  # fmt: skip
    return writer, vlm_config


def episode_seeds(config: Any) -> list[int]:
    """The seeds every task is evaluated on: ``seeds`` when given (e.g. a DP's own training seeds,
    to check that it replays them), else ``first_seed`` .. ``first_seed + num_seeds - 1``."""
    explicit = [int(s) for s in (config_value(config, "seeds", ()) or ())]
    if explicit:
        if len(set(explicit)) != len(explicit):
            raise ValueError(f"config.seeds repeats a seed: {explicit}")
        return explicit
    first = int(config_value(config, "first_seed", 0))
    return list(range(first, first + int(config.num_seeds)))


def oracle_record(meta: dict[str, Any], level: str) -> dict[str, Any]:
    """An evaluation record from an oracle episode's metadata (`record_oracle_episode`): success,
    steps, and the API calls it made (its fine-level key-steps, Table 2's "average actions")."""
    calls = [label["fine"] for label in meta.get("labels", []) if label and label.get("fine_keystep")]
    return {"success": bool(meta["success"]), "steps": int(meta["num_steps"]), "queries": len(calls),
            "code": calls, "end_reason": "success" if meta["success"] else "step_budget",
            "total_s": round(float(meta.get("seconds", 0.0)), 4), "level": level}  # fmt: skip


def _locked(fn, lock: threading.Lock | None = None):
    """One caller at a time (per `lock`, default a new one): the worker threads share one model
    (and its text-embedding cache)."""
    lock = lock or threading.Lock()

    def call(*args, **kwargs):
        with lock:
            return fn(*args, **kwargs)

    return call


def evaluate(config: Any, *, code_writer_for: Callable[[dict], Any] | None = None) -> dict[str, Any]:
    """Run the evaluation `config` describes; returns counts and the report's paths.
    `code_writer_for(job)`: a stand-in code writer per episode (VLM modes; module docstring)."""
    from c2a_jax.sim.worker import WorkerError

    mode = str(config.mode)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    workdir = os.path.abspath(str(config.workdir))
    os.makedirs(os.path.join(workdir, "report", "videos"), exist_ok=True)
    tasks = [resolve(str(name), markovian=mode == "dp_oracle") for name in config.tasks]
    seeds = episode_seeds(config)
    split = str(config_value(config, "object_split", "train"))
    jobs = make_jobs(tasks, seeds, mode=mode, dataset=str(config_value(config, "dataset", "")), object_split=split)
    by_task = {t["task"]: t for t in tasks}
    for job in jobs:
        job["registry"], job["level"] = by_task[job["task"]]["registry"], by_task[job["task"]]["level"]
    video_seeds = set(list(seeds)[: int(config_value(config, "videos_per_task", 0))])
    max_steps = int(config_value(config, "max_steps", 0)) or None

    writer = vlm_config = runner = None
    uses_vlm = mode in ("vlm_oracle", "vlm_dp")
    if uses_vlm and (code_writer_for is None or str(config_value(config, "vlm_checkpoint", ""))):
        writer, vlm_config = _code_writer(config)
    vlm_lock = threading.Lock()  # the checkpoint's writer and the stand-ins may share one model

    def episode_writer(job):
        return _locked(code_writer_for(job), vlm_lock) if code_writer_for is not None else generate

    if mode not in ("oracle", "vlm_oracle"):
        from c2a_jax.infer.dp_runner import DiffusionPolicyRunner

        path = str(config_value(config, "dp_checkpoint", ""))
        if not path:
            raise FileNotFoundError(f"mode {mode!r} needs --config.dp_checkpoint (a train_dp.py work directory)")
        runner = DiffusionPolicyRunner.from_checkpoint(path)
    # One rendering for both models: at the larger of their sizes; the code writer and the DP runner
    # each resize to their own as training did (the paper's LLaVA reads 336 px, its DP 128 px).
    sizes = {int(c.data.image_size) for c in (vlm_config, runner.config if runner else None) if c is not None}
    image_size = max(sizes) if sizes else int(config_value(config, "image_size", 0) or 0)
    if not image_size and mode == "oracle":
        image_size = 64  # the oracle mode renders nothing
    if not image_size:
        raise ValueError("no checkpoint fixes the image size: set --config.image_size")
    first = tasks[0]

    if mode == "oracle":
        from c2a_jax.eval.vlm_oracle import SimulatorClient

        def make_sim(slot: int):
            return SimulatorClient(task=first["registry"], task_args=first["task_args"], image_size=image_size,
                                   split=split, max_steps=max_steps or 1000, images=False,
                                   log_path=os.path.join(workdir, f"worker{slot}.log"))  # fmt: skip

        def episode_fn(sim, job):
            meta = sim.record_oracle(seed=job["seed"], task=job["registry"], task_args=job["task_args"],
                                     max_steps=max_steps)  # fmt: skip
            return oracle_record(meta, job["level"])
    elif mode == "vlm_oracle":
        from c2a_jax.eval.vlm_oracle import SimulatorClient, run_episode

        generate = _locked(writer.generate_code, vlm_lock) if writer is not None else None

        def make_sim(slot: int):
            return SimulatorClient(task=first["registry"], task_args=first["task_args"], image_size=image_size,
                                   split=split, max_steps=max_steps or 1000,
                                   log_path=os.path.join(workdir, f"worker{slot}.log"))  # fmt: skip

        def episode_fn(sim, job):
            record = run_episode(sim, episode_writer(job), job["seed"], task=job["registry"],
                                 task_args=job["task_args"], max_queries=int(config_value(config, "max_queries", 25)),
                                 record_frames=job["seed"] in video_seeds,
                                 refusal_temperature=float(config_value(config, "refusal_temperature", 0.0)))  # fmt: skip
            if record.frames:
                actions = [c["code"] for c in record.calls if c.get("status") == "action"]
                frames = [f for chunk in record.frames for f in chunk]
                captions = [code for code, chunk in zip(actions, record.frames, strict=False) for _ in chunk]
                captions += [""] * (len(frames) - len(captions))
                report.write_video(
                    frames, captions, os.path.join(workdir, "report", "videos", f"{job['task']}_{job['seed']}.mp4")
                )
            out = record.to_json()
            out["level"] = job["level"]
            return out
    else:
        from c2a_jax.eval.policy_episodes import policy_client, run_policy_episode
        from c2a_jax.infer.controller import ORACLE_CODE, HierarchicalController

        sample = _locked(runner.sample)
        generate = _locked(writer.generate_code, vlm_lock) if writer is not None else None
        n_action = int(config_value(config, "n_action_steps", 0)) or int(runner.config.data.n_action_steps)

        def make_sim(slot: int):
            pool = policy_client(task=first["registry"], task_args=first["task_args"], image_size=image_size,
                                 split=split, log_path=os.path.join(workdir, f"worker{slot}.log"))  # fmt: skip
            code_writer = {"vlm_dp": generate, "oracle_dp": ORACLE_CODE}.get(mode)
            controller = HierarchicalController(
                sample, code_writer, n_action_steps=n_action,
                regenerate_on_keystep=bool(config_value(config, "regenerate_chunk_on_keystep", True)), seed=slot,
            )  # fmt: skip
            pool.controller = controller
            return pool

        def episode_fn(sim, job):
            if mode == "vlm_dp":
                sim.controller.code_writer = episode_writer(job)
            record = run_policy_episode(sim, sim.controller, job, max_steps=max_steps,
                                        record_frames=job["seed"] in video_seeds)  # fmt: skip
            frames, captions = record.pop("_frames", None), record.pop("_captions", None)
            if frames:
                report.write_video(
                    frames, captions, os.path.join(workdir, "report", "videos", f"{job['task']}_{job['seed']}.mp4")
                )
            record["level"] = job["level"]
            return record

    def safe_episode(sim, job):
        try:
            return episode_fn(sim, job)
        except WorkerError as e:
            return {"end_reason": "worker_error", "error": str(e), "success": False}

    out_path = os.path.join(workdir, "episodes.jsonl")
    counts = run_jobs(jobs, make_sim=make_sim, episode_fn=safe_episode, out_path=out_path,
                      num_workers=int(config_value(config, "num_workers", 1)))  # fmt: skip
    records = [r for r in report.read_records(out_path) if r.get("mode") == mode]
    paths = report.write_report(records, os.path.join(workdir, "report"), title=f"Evaluation: {mode}")
    successes = [bool(r.get("success")) for r in records if not r.get("error")]
    return {**counts, "episodes": len(records), "success_rate": float(np.mean(successes)) if successes else None,
            "report": paths["report"]}  # fmt: skip
