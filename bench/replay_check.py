"""The closed-loop replay check: a hierarchical DP trained on N demonstrations of one L0 task must
succeed on those same N seeds in Oracle+DP mode (JSON).

    .venv/bin/python bench/replay_check.py [--task PlaceNextTo] [--demos 8] [--steps 1000]
        [--workdir runs/replay_check] [--dp-override KEY=VALUE ...]

Why: a pipeline that cannot replay what it was trained on has a defect between the dataset and the
simulator (action representation, normalisation, crops, chunk timing, the sampler, the loss), and
finding it beats tuning. Oracle+DP (`evaluate.py --config=configs/eval/default.py:oracle_dp`)
isolates the low level: the task's solver writes the code line of the state the DP reached, so the
VLM plays no part. The goal is 7 of 8.

Stages, each the project's own entry point in a child process, each resuming what an earlier run
left in ``--workdir`` (``--fresh`` starts over): ``generate_demos.py`` (successful demonstrations
from seed 0 on, 64 px), ``build_rlds.py`` (its hashed train/val split puts some episodes in ``val``:
demonstrations are added until ``train`` holds ``--demos``), ``train_dp.py`` (configs/dp/tiny.py,
hierarchical, the demo's ``dp`` settings: sample prediction with the unweighted loss, batch 32,
96 text tokens; ``--steps`` and ``--dp-override`` on top), ``evaluate.py`` in Oracle+DP mode on the
``train`` seeds and, apart, on the ``val`` seeds (held out: not part of the goal).

Output: successes on the training seeds (and which failed), on the val seeds, the wall time of
each stage, and the commands run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

L0_TASKS = ("PlaceNextTo", "PlaceOnTop", "Topple", "Push")  # the paper's Table 1 L0 tasks
DP_SETTINGS = [  # the demo's `dp` stage (configs/demo.py)
    "--config.data.image_size=64",
    "--config.diffusion.prediction_type=sample",
    "--config.diffusion.loss_weighting=mse",
    "--config.eval.frames=0",
    "--config.text.max_length=96",
    "--config.train.batch_size=32",
    "--config.train.warmup_steps=30",
    "--config.train.log_every=100",
    "--config.train.progress=False",
]


def run(command: list[str], log: list[dict], what: str) -> float:
    """Run one stage with its output on our stderr; its wall time (an error names the stage)."""
    print(f"== {what}\n$ {shlex.join(command)}", file=sys.stderr, flush=True)
    start = time.time()
    result = subprocess.run(command, cwd=ROOT, stdout=sys.stderr, check=False)
    seconds = time.time() - start
    log.append({"stage": what, "command": shlex.join(command), "seconds": round(seconds, 1)})
    if result.returncode != 0:
        raise SystemExit(f"replay_check: stage {what!r} failed (exit {result.returncode}): {shlex.join(command)}")
    return seconds


def split_seeds(rlds_dir: str) -> dict[str, list[int]]:
    """The seeds of each split of a built dataset (from the episode keys ``<dataset>/seed_<n>``)."""
    from c2a_jax.data.rlds import open_dataset, rlds_episodes

    builder = open_dataset(rlds_dir)
    out = {}
    for split in builder.info.splits:
        keys = [e["key"] for e in rlds_episodes(rlds_dir, split, shuffle=False, process_index=0, process_count=1)]
        out[split] = sorted(int(k.rsplit("seed_", 1)[1].split("_")[0]) for k in keys)
    return out


def successes(episodes_file: str) -> dict[int, bool]:
    """Success per seed of an `evaluate.py` episode file."""
    from c2a_jax.eval.report import read_records

    return {int(r["seed"]): bool(r.get("success")) for r in read_records(episodes_file)}


def main(argv: list[str] | None = None) -> int:
    from c2a_jax.eval.tasks import resolve

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="PlaceNextTo", choices=L0_TASKS)
    ap.add_argument("--demos", type=int, default=8, help="training demonstrations (and seeds evaluated)")
    ap.add_argument("--steps", type=int, default=1000, help="DP training steps")
    ap.add_argument("--max-steps", type=int, default=100, help="control steps per evaluated episode")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "runs", "replay_check"))
    ap.add_argument("--dp-override", action="append", default=[], help="KEY=VALUE for train_dp.py's config")
    ap.add_argument("--fresh", action="store_true", help="remove the work directory first")
    args = ap.parse_args(argv)
    if args.demos < 1 or args.steps < 1:
        ap.error("--demos and --steps must be >= 1")
    work = os.path.abspath(os.path.join(args.workdir, args.task))
    if args.fresh and os.path.isdir(work):
        shutil.rmtree(work)
    py, log, start = sys.executable, [], time.time()
    task = resolve(args.task)
    demos, rlds = os.path.join(work, "demos"), os.path.join(work, "rlds")
    count = args.demos
    for _ in range(5):  # the hashed split puts some episodes in val: add demonstrations until train holds N
        run([py, os.path.join(ROOT, "data_pipelines", "generate_demos.py"), "--task", task["registry"], "--task-args",
             json.dumps(task["task_args"]), "--num-episodes", str(count), "--num-workers", str(args.workers),
             "--image-size", "64", "--out", demos, "--seed", "0"], log, f"demonstrations ({count})")  # fmt: skip
        run([py, os.path.join(ROOT, "data_pipelines", "build_rlds.py"), "--demos", demos, "--out", rlds, "--overwrite",
             "--no-progress"], log, "RLDS")  # fmt: skip
        data_dir = os.path.dirname(glob.glob(os.path.join(rlds, "**", "dataset_info.json"), recursive=True)[0])
        seeds = split_seeds(data_dir)
        short = args.demos - len(seeds.get("train", []))
        if short <= 0:
            break
        count += short
    if len(seeds.get("train", [])) != args.demos:
        raise SystemExit(
            f"replay_check: the train split holds {len(seeds.get('train', []))} episodes, not {args.demos}"
        )
    dp = os.path.join(work, f"dp_{args.steps}")
    overrides = [f"--config.{o}" for o in args.dp_override]
    run([py, os.path.join(ROOT, "train_dp.py"), f"--config={os.path.join(ROOT, 'configs', 'dp', 'tiny.py')}:hierarchical",
         f"--config.workdir={dp}", f"--config.data.dataset_dir={data_dir}", *DP_SETTINGS,
         f"--config.train.steps={args.steps}", f"--config.train.checkpoint_every={args.steps}", *overrides],
        log, "train the hierarchical DP")  # fmt: skip
    results = {}
    for split, split_seed_list in seeds.items():
        out = os.path.join(work, f"eval_{args.steps}_{split}")
        run([py, os.path.join(ROOT, "evaluate.py"), f"--config={os.path.join(ROOT, 'configs', 'eval', 'default.py')}:oracle_dp",
             f"--config.workdir={out}", f"--config.tasks={args.task}", f"--config.seeds={','.join(map(str, split_seed_list))}",
             f"--config.num_workers={args.workers}", "--config.videos_per_task=1", f"--config.dp_checkpoint={dp}",
             f"--config.max_steps={args.max_steps}", "--config.dataset=L0"], log, f"Oracle+DP on the {split} seeds")  # fmt: skip
        results[split] = successes(os.path.join(out, "episodes.jsonl"))
    train = results.get("train", {})
    report = {
        "bench": "replay_check",
        "task": args.task,
        "train_seeds": seeds.get("train", []),
        "val_seeds": seeds.get("val", []),
        "dp_steps": args.steps,
        "dp_overrides": args.dp_override,
        "train_successes": sum(train.values()),
        "train_episodes": len(train),
        "train_failed_seeds": sorted(s for s, ok in train.items() if not ok),
        "val_successes": sum(results.get("val", {}).values()),
        "val_episodes": len(results.get("val", {})),
        "goal": f"at least {args.demos - args.demos // 8} of {args.demos} training seeds",
        "goal_met": sum(train.values()) >= args.demos - args.demos // 8,
        "stages": log,
        "wall_s": round(time.time() - start, 1),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
