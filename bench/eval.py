"""Evaluation speed in the simulator: episodes per hour per core in each mode, the control step's
split into VLM, DP and simulator, and the hierarchical policy's control rate, against the scripted
oracle and the bare simulator in the same run (JSON).

    .venv/bin/python bench/eval.py [--modes vlm_oracle,vlm_dp,dp,dp_oracle] [--seeds 2] [--max-steps 30]

Each mode runs through `c2a_jax.eval.evaluate.evaluate` itself (worker process, episode file,
report), one simulator worker (``num_workers=1``: the parent's inference and the worker's
simulation alternate, so one episode stream keeps about one core busy), every episode cut at
``--max-steps`` control steps so that episodes have a known length, and tiny untrained models
(configs/vlm/tiny.py, configs/dp/tiny.py at 64 px) built here: the DP as a `train_dp.py`
checkpoint of step 0 (random weights, normalisers from synthetic episodes), the VLM in memory.

Speed does not depend on the weights, but the control flow does depend on what the VLM writes (a
key-step line enters memory, lengthens the next prompt and draws a new chunk; a VLM+Oracle line is
executed by the oracle). Random weights write neither, so the VLM modes use
`evaluate(code_writer_for=...)` with a writer that runs the real tiny VLM on every query for its
cost -- decoding exactly ``--key-tokens`` tokens for a key-step and ``--other-tokens`` for a
commented line, the means bench/vlm_infer.py measured on oracle labels with the early stop at
k=10 (16.5 and 5.2) -- and answers with the oracle's own labels of the same seed (VLM+DP: the fine
label of each step; VLM+Oracle: the level1 key-steps, `ReplayCodeWriter`). The flat DP (``dp``)
and DP+Oracle (``dp_oracle``, Swap in its Markovian form, the only task with one) need no VLM.

Figures per mode: ``episodes_per_hour_per_core`` = 3600 / mean episode wall time (as the runner
records it, worker round trips included); ``step_ms``: per control step, the time in the VLM, the
DP and the simulator (reset included, parent-side, so pipe transfers of both camera images count
as simulator time) and the rest (controller, bookkeeping), which sum to the episode's total;
``control_hz`` = control steps / episode time. Peers (same task, seeds, image size and step cap):
the task's oracle (`c2a_jax.sim.rollout.OracleWorker` in a worker process, after a warm-up
episode) for the episode rate -- with both cameras rendered every step for the policy modes, with
none for VLM+Oracle (its executor renders only when the VLM is queried) -- and the simulator alone
stepping the Pick oracle with both cameras rendered, in this process (bench/sim.py's figure), for
the control rate. Timed seeds are
1..``--seeds``; each mode first runs seed 0 untimed (compilation). A reset (scene building) costs
as much as many steps: it counts in the episode rates (ours and the peer's) but not in the per-step
figures (``reset_s_per_episode`` apart). Default: a quick run, about 10 minutes on a loaded 2-core
machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from c2a_jax.host_memory import reexec_with_huge_page_malloc  # noqa: E402

MODES = ("vlm_oracle", "vlm_dp", "dp", "dp_oracle")
IMAGE_SIZE = 64  # configs/vlm/tiny.py and configs/dp/tiny.py


def dp_checkpoint(workdir: str, conditioning: str) -> str:
    """A `train_dp.py` checkpoint of step 0: configs/dp/tiny.py:<conditioning>, random weights,
    normalisers from synthetic episodes (actions in [-1, 1]). Its data runs out before the first
    step, so the loop saves the initial state without compiling a train step."""
    from c2a_jax.config import load_config_file
    from c2a_jax.data.synthetic import make_episode
    from c2a_jax.train import dp_task

    config = load_config_file(os.path.join(ROOT, "configs", "dp", "tiny.py") + f":{conditioning}")
    config.workdir = workdir
    config.eval.frames = 0
    config.train.update(dict(steps=1, warmup_steps=0, progress=False, tensorboard=False))
    episodes = [make_episode(size=int(config.data.image_size), key=f"bench/{i}") for i in range(4)]
    empty = dp_task.EpisodeSource(lambda *_: iter(()), lambda: iter(()), dp_task.episode_statistics(episodes))
    dp_task.train_dp(config, source=empty)
    return workdir


def tiny_vlm_writers(key_tokens: int, other_tokens: int) -> dict:
    """Two `CodeWriter`s of one random configs/vlm/tiny.py LLaVA that decode exactly `key_tokens`
    and `other_tokens` tokens: {True: key-step, False: commented line}."""
    from flax import nnx

    from c2a_jax.config import load_config_file
    from c2a_jax.data import tokenizer as tokenizer_lib
    from c2a_jax.infer.code_writer import CodeWriter
    from c2a_jax.models.llava import LlavaForConditionalGeneration
    from c2a_jax.train import vlm_task

    config = load_config_file(os.path.join(ROOT, "configs", "vlm", "tiny.py"))
    tok = tokenizer_lib.load_tokenizer(str(config.data.tokenizer))
    model = LlavaForConditionalGeneration(vlm_task.llava_config(config.model, IMAGE_SIZE, tok), rngs=nnx.Rngs(0))
    writers = {}
    for keystep, n in ((True, key_tokens), (False, other_tokens)):
        w = CodeWriter(model, tok, template=str(config.data.template), max_new_tokens=n,
                       prefix_attention=str(config.model.prefix_attention))  # fmt: skip
        w.stop_table[:] = 0  # exactly n tokens (random weights would stop anywhere)
        writers[keystep] = w
    return writers


class CostedWriter:
    """Answers with `answer(image, prompt, memory, keystep_request)` after running the real VLM on
    the same inputs (its key-step or commented-line writer, by the answer's kind)."""

    def __init__(self, answer, writers: dict):
        self.answer, self.writers = answer, writers

    def __call__(self, image, prompt, memory, keystep_request=False) -> str:
        from c2a_jax.codeapi import is_keystep

        code = self.answer(image, prompt, memory, keystep_request)
        self.writers[is_keystep(code)].generate_code(image, prompt, memory, keystep_request)
        return code


def step_replayer(labels):
    """The VLM+DP answer of control step i: the oracle's fine label of step i (its commented last
    key-step after the oracle's episode ends)."""
    from c2a_jax.codeapi import comment

    codes = [label.code for label in labels]
    count = [0]

    def answer(image, prompt, memory, keystep_request=False) -> str:
        i = count[0]
        count[0] += 1
        if i < len(codes):
            return codes[i]
        return comment(memory[-1]) if memory else codes[-1]

    return answer


def oracle_peer(task: dict, seeds: list[int], max_steps: int) -> dict:
    """The task's oracle on `seeds` (`max_steps` cap) in one worker process, after an untimed
    episode of seed 0 (a fresh process's first reset loads every asset): per seed its episode
    metadata and success flags, and the episode rates with both cameras rendered every step (what
    a policy needs) and without (VLM+Oracle renders only when it queries the VLM)."""
    from c2a_jax.sim.worker import WorkerPool

    kwargs = {"task": task["registry"], "task_args": task["task_args"], "image_size": IMAGE_SIZE,
              "max_steps": max_steps}  # fmt: skip
    jobs = [{"method": "run_episode", "kwargs": {"seed": s, "images": images}}
            for images, run in ((True, [0]), (False, seeds), (True, seeds)) for s in run]  # fmt: skip
    with WorkerPool("c2a_jax.sim.rollout:OracleWorker", kwargs, num_workers=1, env={"PYTHONPATH": ROOT}) as pool:
        results = list(pool.map(jobs))[1:]
    for r in results:
        if not r.ok:
            raise RuntimeError(f"oracle {task['registry']} {r.job['kwargs']}: {r.error}")
    plain, imaged = results[: len(seeds)], results[len(seeds) :]
    episodes = {
        seed: {"meta": r.result["meta"], "success": np.asarray(r.result["arrays"]["success"])}
        for seed, r in zip(seeds, imaged, strict=True)
    }

    def rate(rs) -> float:
        return round(3600 / float(np.mean([r.result["meta"]["seconds"] for r in rs])), 1)

    return {
        "episodes": episodes,
        "summary": {
            "episodes_per_hour_per_core": rate(imaged),
            "episodes_per_hour_per_core_no_images": rate(plain),
            "steps_per_episode": round(float(np.mean([r.result["meta"]["num_steps"] for r in imaged])), 1),
            "success_rate": round(float(np.mean([r.result["meta"]["success"] for r in imaged])), 3),
        },
    }


def warm_writers(writers: dict, max_memory: int = 8) -> None:
    """Compile the VLM writers for every prompt length an episode reaches (prompts are padded to
    buckets of 32 tokens, one compilation each): memories of 0..`max_memory` key-step lines."""
    line = "place_next_to(actor=get_actor('small red cube'), target=get_actor('large blue cylinder'))"
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for n in range(max_memory + 1):
        for writer in writers.values():
            writer.generate_code(image, "Place the small red cube to the left of the large blue cylinder", [line] * n)


def summarize(records: list[dict]) -> dict:
    """Per-mode figures from `evaluate`'s episode records (see the module docstring); the resets
    are left out of the per-step figures and reported apart."""
    steps = sum(r["steps"] for r in records)
    reset = sum(r["reset_s"] for r in records)
    total = sum(r["total_s"] for r in records) - reset
    parts = {k: sum(r.get(f"{k}_s", 0.0) for r in records) for k in ("vlm", "dp", "sim")}
    parts["sim"] -= reset
    per_step = {k: round(v / max(steps, 1) * 1e3, 2) for k, v in parts.items()}
    per_step["other"] = round((total - sum(parts.values())) / max(steps, 1) * 1e3, 2)
    per_step["total"] = round(total / max(steps, 1) * 1e3, 2)
    out = {
        "episodes": len(records),
        "errors": sum(bool(r.get("error")) for r in records),
        "steps_per_episode": round(steps / len(records), 1),
        "episodes_per_hour_per_core": round(3600 / float(np.mean([r["wall_s"] for r in records])), 1),
        "reset_s_per_episode": round(reset / len(records), 2),
        "step_ms": per_step,
        "control_hz": round(steps / total, 2),
        "success_rate": round(float(np.mean([bool(r.get("success")) for r in records])), 3),
        "end_reasons": sorted({r.get("end_reason", "") for r in records}),
    }
    if "queries" in records[0]:  # VLM+Oracle: one query per API call
        queries = sum(r["queries"] for r in records)
        out["queries_per_episode"] = round(queries / len(records), 1)
        out["vlm_ms_per_query"] = round(parts["vlm"] / max(queries, 1) * 1e3, 2)
    if "chunks" in records[0]:
        out["chunks_per_episode"] = round(sum(sum(r["chunks"].values()) for r in records) / len(records), 1)
    return out


def run_mode(mode: str, task_name: str, seeds: int, max_steps: int, workdir: str, dp_dirs: dict,
             writer_for) -> list[dict]:  # fmt: skip
    """Seeds 0..`seeds` through `evaluate` on one worker, in order; seed 0 is the untimed warm-up
    (compilation). The records of seeds 1..`seeds`."""
    from c2a_jax.config import load_config_file
    from c2a_jax.eval.evaluate import evaluate
    from c2a_jax.eval.report import read_records

    config = load_config_file(os.path.join(ROOT, "configs", "eval", "default.py") + f":{mode}")
    config.update(dict(tasks=(task_name,), num_workers=1, videos_per_task=0, max_steps=max_steps,
                       image_size=IMAGE_SIZE, dp_checkpoint=dp_dirs.get(mode, ""), workdir=os.path.join(workdir, mode),
                       first_seed=0, num_seeds=seeds + 1))  # fmt: skip
    evaluate(config, code_writer_for=writer_for if mode in ("vlm_oracle", "vlm_dp") else None)
    return [r for r in read_records(os.path.join(workdir, mode, "episodes.jsonl")) if r["seed"] != 0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--task", default="PlaceNextTo", help="paper task name for vlm_oracle, vlm_dp and dp")
    ap.add_argument("--seeds", type=int, default=2, help="timed episodes per mode (seeds 1..n; 0 warms up)")
    ap.add_argument("--max-steps", type=int, default=30, help="control steps per episode (the cap)")
    ap.add_argument("--key-tokens", type=int, default=17, help="tokens decoded per key-step query")
    ap.add_argument("--other-tokens", type=int, default=5, help="tokens decoded per commented-line query")
    ap.add_argument("--sim-steps", type=int, default=40, help="steps timed for the bare simulator's rate")
    args = ap.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes takes some of {MODES}")
    import jax

    from c2a_jax.data.labels import step_labels
    from c2a_jax.eval.tasks import resolve
    from c2a_jax.infer.replay import ReplayCodeWriter

    t0 = time.perf_counter()
    load_start = os.getloadavg()
    seeds = list(range(1, args.seeds + 1))  # seed 0: each mode's warm-up episode
    tasks = {m: resolve("Swap" if m == "dp_oracle" else args.task, markovian=m == "dp_oracle") for m in modes}
    result: dict = {"bench": "eval", "task": args.task, "seeds": len(seeds), "max_steps": args.max_steps,
                    "image_size": IMAGE_SIZE, "num_workers": 1, "modes": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        dp_dirs = {}
        for m, conditioning in (("vlm_dp", "hierarchical"), ("dp", "flat"), ("dp_oracle", "flat")):
            if m in modes:
                path = os.path.join(tmp, f"dp_{conditioning}")
                with contextlib.redirect_stdout(sys.stderr):  # the loop's messages: stdout is for the JSON
                    dp_dirs[m] = path if os.path.isdir(path) else dp_checkpoint(path, conditioning)
        writers = tiny_vlm_writers(args.key_tokens, args.other_tokens) if {"vlm_oracle", "vlm_dp"} & set(modes) else {}
        warm_writers(writers)
        peers = {}
        for m in modes:
            key = (tasks[m]["registry"], json.dumps(tasks[m]["task_args"], sort_keys=True))
            if key not in peers:
                peers[key] = oracle_peer(tasks[m], seeds, args.max_steps)
        for m in modes:
            key = (tasks[m]["registry"], json.dumps(tasks[m]["task_args"], sort_keys=True))
            episodes = peers[key]["episodes"]

            def writer_for(job, m=m, episodes=episodes):
                episode = episodes.get(int(job["seed"]), episodes[seeds[0]])  # the warm-up (seed 0): seed 1's lines
                if m == "vlm_oracle":
                    return CostedWriter(ReplayCodeWriter.from_episode(episode["meta"]), writers)
                return CostedWriter(step_replayer(step_labels(episode["meta"], "fine", episode["success"])), writers)

            records = run_mode(m, tasks[m]["task"], args.seeds, args.max_steps, tmp, dp_dirs, writer_for)
            ours = summarize(records)
            peer = peers[key]["summary"]
            peer_key = "episodes_per_hour_per_core" + ("_no_images" if m == "vlm_oracle" else "")
            result["modes"][m] = {
                "task": tasks[m]["task"], "registry": tasks[m]["registry"], **ours, "peer_oracle": peer,
                "ratio_episodes_per_hour": round(ours["episodes_per_hour_per_core"] / peer[peer_key], 3),
            }  # fmt: skip
    if "vlm_dp" in result["modes"]:
        from bench.sim import ours_steps_per_s

        sim_rate = ours_steps_per_s(IMAGE_SIZE, args.sim_steps)
        hz = result["modes"]["vlm_dp"]["control_hz"]
        result["control_rate"] = {
            "vlm_dp_hz": hz,
            "peer": f"simulator alone, Pick oracle, both cameras rendered at {IMAGE_SIZE} px, in-process",
            "peer_sim_steps_per_s": round(sim_rate, 2),
            "ratio": round(hz / sim_rate, 3),
        }
    result["peer"] = (
        "the task's scripted oracle (OracleWorker, worker process, warmed up) on the same seeds and step cap, both "
        "cameras rendered every step (vlm_oracle: none, as its executor renders only per query); ratio = ours / peer (below 1: what the policy and the evaluation loop cost over pure simulation)"
    )
    result["assumptions"] = {"key_tokens": args.key_tokens, "other_tokens": args.other_tokens,
                             "vlm": "configs/vlm/tiny.py, random", "dp": "configs/dp/tiny.py, random"}  # fmt: skip
    result["jax_devices"] = [str(d) for d in jax.devices()]
    result["load_average_start"] = [round(x, 2) for x in load_start]
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    reexec_with_huge_page_malloc()  # XLA's large CPU buffers on huge pages (c2a_jax/host_memory.py)
    sys.exit(main())
