"""`make demo`: oracle demonstrations -> RLDS -> a tiny VLM and two tiny diffusion policies ->
evaluation in four modes -> one report, on the machine at hand.

    python -m c2a_jax.demo [--config=configs/demo.py] [--config.<key>=<value> ...] [--from-stage NAME]

Why a module of its own: the demo is the user's first run, so it must go through the same entry
points a user runs by hand (each stage is one of those commands, in a child process: TensorFlow
and the simulator's renderer cannot share one), print what it runs, and lose nothing when it is
stopped. Every stage resumes by itself (demo manifests, orbax checkpoints, episode files);
`<workdir>/stages.json` records finished stages and their wall time, so a rerun skips them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from c2a_jax.config import parse_command_line
from c2a_jax.fileio import atomic_write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "demo.py")
EVAL_MODES = ("oracle", "vlm_oracle", "oracle_dp", "vlm_dp", "dp")


def overrides(section: Any, prefix: str = "") -> list[str]:
    """``--config.<dotted key>=<value>`` for every leaf of a config section (tuples as commas)."""
    out = []
    for key, value in section.items():
        dotted = f"{prefix}{key}"
        if hasattr(value, "items"):
            out += overrides(value, dotted + ".")
        else:
            if isinstance(value, (tuple, list)):
                value = ",".join(str(v) for v in value)
            out.append(f"--config.{dotted}={value}")
    return out


class Stage:
    """One step of the demo: a name, the command it runs, and the paths it writes (`outputs`),
    removed when the stage must start afresh because its command or an earlier stage changed."""

    def __init__(self, name: str, command: Sequence[str], what: str, outputs: Sequence[str] = (), group: str = ""):
        self.name, self.command, self.what, self.outputs = name, list(command), what, list(outputs)
        self.group = group  # consecutive stages of one non-empty group run side by side


def stages(config: Any) -> list[Stage]:
    """The demo's stages in order, as commands over the project's own entry points."""
    from c2a_jax.eval.tasks import resolve

    py = sys.executable
    work = os.path.abspath(str(config.workdir))
    demos, rlds = os.path.join(work, "demos"), os.path.join(work, "rlds")
    size, workers = int(config.image_size), int(config.num_workers)
    out: list[Stage] = []
    levels = "+".join(sorted({resolve(str(t))["level"] or "?" for t in config.tasks}))
    for name in config.tasks:
        task, count = resolve(str(name)), demo_count(config, str(name))
        out.append(Stage(
            f"demos:{name}",
            [py, os.path.join(ROOT, "data_pipelines", "generate_demos.py"), "--task", task["registry"],
             "--task-args", json.dumps(task["task_args"]), "--num-episodes", str(count),
             "--num-workers", str(workers), "--image-size", str(size), "--out", demos, "--seed", "0"],
            f"{count} successful oracle demonstrations of {name}",
        ))  # fmt: skip
    out.append(Stage("rlds", [py, os.path.join(ROOT, "data_pipelines", "build_rlds.py"), "--demos", demos,
                              "--out", rlds, "--overwrite"], "the RLDS dataset", [rlds]))  # fmt: skip
    dataset = f"--config.data.dataset_dir={rlds}"
    common = [f"--config.data.image_size={size}"]
    out.append(Stage(
        "vlm", [py, os.path.join(ROOT, "train_vlm.py"), "--config=" + os.path.join(ROOT, "configs", "vlm", "tiny.py"),
                f"--config.workdir={work}/vlm", dataset, *common, *overrides(config.vlm)],
        "the code-writing VLM", [f"{work}/vlm"], "train",
    ))  # fmt: skip
    dp_config = os.path.join(ROOT, "configs", "dp", "tiny.py")
    for stage, arg, section, what in (
        ("dp", "hierarchical", config.dp, "the code-conditioned diffusion policy"),
        ("dp_flat", "flat", config.dp_flat, "the prompt-conditioned (flat) policy"),
    ):
        out.append(Stage(stage, [py, os.path.join(ROOT, "train_dp.py"), f"--config={dp_config}:{arg}",
                                 f"--config.workdir={work}/{stage}", dataset, *common, *overrides(section)],
                         what, [f"{work}/{stage}"], "train"))  # fmt: skip
    eval_config = os.path.join(ROOT, "configs", "eval", "default.py")
    tasks = ",".join(str(t) for t in config.tasks)
    for mode in EVAL_MODES:
        command = [py, os.path.join(ROOT, "evaluate.py"), f"--config={eval_config}:{mode}",
                   f"--config.workdir={work}/eval_{mode}", f"--config.tasks={tasks}",
                   f"--config.num_seeds={int(config.eval_seeds)}", f"--config.first_seed={int(config.eval_first_seed)}",
                   f"--config.num_workers={workers}", f"--config.videos_per_task={int(config.videos_per_task)}"]  # fmt: skip
        if mode in ("vlm_oracle", "vlm_dp"):
            command.append(f"--config.vlm_checkpoint={work}/vlm")
        if mode in ("vlm_dp", "oracle_dp", "dp"):
            command.append(f"--config.dp_checkpoint={work}/{'dp_flat' if mode == 'dp' else 'dp'}")
            command.append(f"--config.max_steps={int(config.eval.max_steps)}")
            command.append(f"--config.dataset={levels}")
        if mode == "vlm_oracle":
            command.append(f"--config.max_queries={int(config.eval.max_queries)}")
            command.append(f"--config.refusal_temperature={float(config.eval.get('refusal_temperature', 0.0))}")
        out.append(Stage(f"eval_{mode}", command, f"evaluation: {mode}", [f"{work}/eval_{mode}"]))
    return out


def demo_count(config: Any, task: str) -> int:
    """Demonstrations to keep for `task` (``config.demos`` maps every task to a count)."""
    if task not in config.demos:
        raise ValueError(f"config.demos has no count for task {task!r}; it has {sorted(config.demos)}")
    count = int(config.demos[task])
    if count < 1:
        raise ValueError(f"config.demos.{task} must be >= 1, got {count}")
    return count


def _load_state(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
    return env


def run_stage(stage: Stage, log: Any = print) -> float:
    """Run one stage's command with the terminal attached (its progress bars show); its wall time."""
    log(f"\n== {stage.name}: {stage.what}\n$ {shlex.join(stage.command)}", flush=True)
    start = time.time()
    result = subprocess.run(stage.command, cwd=ROOT, env=_child_env(), check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"stage {stage.name!r} failed (exit {result.returncode}); its command is printed above. "
            "Run the demo again to resume from this stage."
        )
    return time.time() - start


def _last_line(path: str, width: int = 70) -> str:
    """The newest progress line of a log (tqdm redraws with carriage returns)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    parts = [p.strip() for p in tail.replace("\r", "\n").split("\n") if p.strip()]
    return parts[-1][:width] if parts else ""


class StageFailed(RuntimeError):
    """A stage of a side-by-side group failed; `finished` holds the wall times of those that did not."""

    def __init__(self, message: str, finished: dict[str, float]):
        super().__init__(message)
        self.finished = finished


def run_side_by_side(group: Sequence[Stage], logs_dir: str, log: Any = print, every_s: float = 30.0) -> dict:
    """Run independent stages at once (the trainings: their single-threaded start-up and compile
    phases overlap), each writing to ``<logs_dir>/<stage>.log``, with a status line every
    `every_s` seconds; their wall times. A failed stage is named with its log after all ended."""
    os.makedirs(logs_dir, exist_ok=True)
    running, started, seconds = {}, time.time(), {}
    for stage in group:
        path = os.path.join(logs_dir, stage.name.replace(":", "_") + ".log")
        log(f"\n== {stage.name}: {stage.what} (side by side; log {path})\n$ {shlex.join(stage.command)}", flush=True)
        handle = open(path, "wb")  # noqa: SIM115  (closed when the stage ends)
        process = subprocess.Popen(stage.command, cwd=ROOT, env=_child_env(), stdout=handle, stderr=subprocess.STDOUT)
        running[stage.name] = (process, handle, path)
    failed: dict[str, str] = {}  # name -> what to tell the user
    last_status = time.time()
    while running:
        time.sleep(1.0)
        for name, (process, handle, path) in list(running.items()):
            if process.poll() is None:
                continue
            handle.close()
            del running[name]
            seconds[name] = time.time() - started
            if process.returncode != 0:
                failed[name] = f"{name} (exit {process.returncode}, log {path})"
            log(f"== {name}: finished in {seconds[name] / 60:.1f} min" + (" (failed)" if process.returncode else ""))
        if running and time.time() - last_status >= every_s:
            last_status = time.time()
            status = " | ".join(f"{n}: {_last_line(p)}" for n, (_, _, p) in running.items())
            log(f"   [{time.time() - started:.0f}s] {status}", flush=True)
    if failed:
        finished = {k: v for k, v in seconds.items() if k not in failed}
        raise StageFailed(
            f"stage {next(iter(failed.values()))!r} failed; run the demo again to resume from it", finished
        )
    return seconds


def oracle_ratio(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """VLM+Oracle success over the oracle's own, per task and over all tasks (same seeds)."""
    by: dict[tuple[str, str], list[bool]] = {}
    for r in records:
        if r.get("error") or r.get("mode") not in ("oracle", "vlm_oracle"):
            continue
        by.setdefault((r["mode"], r["task"]), []).append(bool(r.get("success")))
    tasks = sorted({task for _, task in by})
    out: dict[str, Any] = {"tasks": {}}
    totals = {"oracle": 0, "vlm_oracle": 0}
    for task in tasks:
        oracle, vlm = sum(by.get(("oracle", task), [])), sum(by.get(("vlm_oracle", task), []))
        totals["oracle"] += oracle
        totals["vlm_oracle"] += vlm
        out["tasks"][task] = {"oracle_successes": oracle, "vlm_oracle_successes": vlm,
                              "ratio": round(vlm / oracle, 4) if oracle else None}  # fmt: skip
    out["oracle_successes"], out["vlm_oracle_successes"] = totals["oracle"], totals["vlm_oracle"]
    out["ratio"] = round(totals["vlm_oracle"] / totals["oracle"], 4) if totals["oracle"] else None
    return out


def _decoding(config: Any) -> str:
    """How the demo's VLM+Oracle decodes, in words for the report."""
    temperature = float(config.eval.get("refusal_temperature", 0.0))
    rename = float(config.vlm.get("data", {}).get("rename_objects_fraction", 0.0))
    text = (f"Decoding: greedy, and sampled at temperature {temperature:g} after a refused line."
            if temperature > 0 else "Decoding: greedy (the paper's).")  # fmt: skip
    if rename > 0:
        text += f" VLM trained with {100 * rename:.0f}% of code examples' object names swapped (not in the paper)."
    return text


def wall_time(timings: Mapping[str, float], groups: Mapping[str, str]) -> float:
    """The demo's wall time: stages one after the other, a side-by-side group as its longest stage."""
    longest: dict[str, float] = {}
    total = 0.0
    for name, seconds in timings.items():
        group = groups.get(name, "")
        if group:
            longest[group] = max(longest.get(group, 0.0), seconds)
        else:
            total += seconds
    return total + sum(longest.values())


def write_demo_report(config: Any, timings: Mapping[str, float], groups: Mapping[str, str] | None = None) -> dict:
    """`<workdir>/report.md` (with tables, chart, videos) from every evaluation's episodes."""
    groups = dict(groups or {})
    from c2a_jax.eval import report

    work = os.path.abspath(str(config.workdir))
    records: list[dict[str, Any]] = []
    videos = os.path.join(work, "videos")
    os.makedirs(videos, exist_ok=True)
    for mode in EVAL_MODES:
        path = os.path.join(work, f"eval_{mode}", "episodes.jsonl")
        if os.path.exists(path):
            records += [r for r in report.read_records(path) if r.get("mode") == mode]
        source = os.path.join(work, f"eval_{mode}", "report", "videos")
        for name in sorted(os.listdir(source)) if os.path.isdir(source) else []:
            shutil.copyfile(os.path.join(source, name), os.path.join(videos, f"{mode}_{name}"))
    ratio = oracle_ratio(records)
    total = wall_time(timings, groups)
    lines = [
        "Tasks and oracle demonstrations: "
        + ", ".join(f"{t} {demo_count(config, str(t))}" for t in config.tasks)
        + f", at {int(config.image_size)} px; evaluation on {int(config.eval_seeds)} held-out seeds per task "
        f"(seeds {int(config.eval_first_seed)}-{int(config.eval_first_seed) + int(config.eval_seeds) - 1}).",
        "",
        f"**VLM+Oracle / oracle success: {ratio['vlm_oracle_successes']}/{ratio['oracle_successes']}"
        + (f" = {100 * ratio['ratio']:.1f}%**" if ratio["ratio"] is not None else "**")
        + " (goal: 90% or more). "
        + _decoding(config),
        "",
        "| stage | wall time |",
        "|---|---|",
        *[
            f"| {name}{' (side by side)' if groups.get(name) else ''} | {seconds / 60:.1f} min |"
            for name, seconds in timings.items()
        ],  # fmt: skip
        f"| **total** | **{total / 60:.1f} min** |",
    ]
    paths = report.write_report(records, work, title="c2a-jax demo", preamble="\n".join(lines))
    summary = {"stages_s": {k: round(v, 1) for k, v in timings.items()}, "total_s": round(total, 1),
               "oracle_ratio": ratio, "report": paths["report"]}  # fmt: skip
    atomic_write_text(os.path.join(work, "demo_summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary


def run_demo(config: Any, from_stage: str | None = None, log: Any = print) -> dict[str, Any]:
    """Run every stage not finished with the same command, then the report; returns the summary.

    A stage recorded in ``stages.json`` with the command it would run now is skipped. A stage that
    never finished resumes from what it left. A stage whose command changed (or `from_stage` and
    everything after it) starts afresh: its outputs are removed first, and every later stage
    starts afresh too, since its inputs changed."""
    work = os.path.abspath(str(config.workdir))
    os.makedirs(work, exist_ok=True)
    state_path = os.path.join(work, "stages.json")
    state = _load_state(state_path)
    plan = stages(config)
    names = [s.name for s in plan]
    if from_stage is not None and from_stage not in names:
        raise ValueError(f"unknown stage {from_stage!r}; stages: {names}")
    steps: list[list[Stage]] = []  # consecutive stages of one group run together
    for stage in plan:
        if steps and stage.group and steps[-1][0].group == stage.group:
            steps[-1].append(stage)
        else:
            steps.append([stage])
    start, fresh, done = time.time(), False, 0
    for step in steps:
        todo = []
        for stage in step:
            record = state.get(stage.name)
            fresh = fresh or stage.name == from_stage  # from there on, every stage (its group's too)
            again = fresh
            if not again and record is not None and record.get("command") == stage.command:
                log(f"== {stage.name}: done before ({record['seconds'] / 60:.1f} min), skipped")
                continue
            if again or record is not None:  # changed inputs: what the stage wrote before is stale
                for path in stage.outputs:
                    shutil.rmtree(path, ignore_errors=True)
            state.pop(stage.name, None)
            todo.append(stage)
        done += len(step) - len(todo)
        if not todo:
            continue
        log(f"[{done + 1}/{len(plan)}] {time.time() - start:.0f}s into this run")
        failure = None
        if len(todo) == 1:
            seconds = {todo[0].name: run_stage(todo[0], log)}
        else:
            try:
                seconds = run_side_by_side(todo, os.path.join(work, "logs"), log)
            except StageFailed as e:
                seconds, failure = e.finished, e
        for stage in todo:
            if stage.name in seconds:
                state[stage.name] = {"seconds": round(seconds[stage.name], 1), "command": stage.command,
                                     "group": stage.group if len(todo) > 1 else ""}  # fmt: skip
        atomic_write_text(state_path, json.dumps(state, indent=2) + "\n")
        if failure is not None:
            raise failure
        done += len(todo)
        fresh = True  # every later stage reads what these wrote
    timings = {name: state[name]["seconds"] for name in names if name in state}
    groups = {name: state[name].get("group", "") for name in names if name in state}
    summary = write_demo_report(config, timings, groups)
    log(f"\nreport: {summary['report']}\n{json.dumps(summary['oracle_ratio'])}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from_stage = None
    if "--from-stage" in argv:
        i = argv.index("--from-stage")
        if i + 1 >= len(argv):
            print("error: --from-stage needs a stage name", file=sys.stderr)
            return 2
        from_stage = argv[i + 1]
        del argv[i : i + 2]
    config, _ = parse_command_line(argv, __doc__, DEFAULT_CONFIG)
    try:
        run_demo(config, from_stage=from_stage)
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
