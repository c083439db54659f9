"""The paper's experiments as plans: which demonstrations, datasets, training runs, relabellings and
evaluations each needs, rendered as the exact shell commands that run them.

    python -m c2a_jax.experiments --config configs/experiments/table1.py --print-commands [--stage train]
    python -m c2a_jax.experiments --config configs/experiments/table1.py:scale=tiny --run [--stage demos]
    python -m c2a_jax.experiments view --config configs/experiments/table1.py --dataset L0   # (a step of a plan)
    python -m c2a_jax.experiments report --config configs/experiments/table1.py             # (its last step)

Why: an experiment of the paper is a few dozen commands whose paths must agree (the VLM a DP's
labels come from, the dataset an evaluation is labelled with). A plan file in
``configs/experiments/`` states the experiment once (`Plan`); this module turns it into commands,
and `check_plan` (run by the tests) loads every training and evaluation config a command names and
applies its dotted overrides, so a printed command cannot name a key that does not exist.

Stages, in order: ``demos`` (`data_pipelines/generate_demos.py`, one command per task and seed
group; shard it over machines with ``--shard-index/--num-shards``, docs/launch.md), ``datasets``
(a folder of links to the demos a dataset holds, then `data_pipelines/build_rlds.py`), ``train_vlm``,
``regenerate`` (`data_pipelines/regenerate_with_vlm_oracle.py`: a new dataset recorded by a trained
VLM's VLM+Oracle policy, then `build_rlds.py`), ``relabel`` (`data_pipelines/relabel_with_vlm.py`),
``train_dp``, ``eval`` (`evaluate.py`) and ``report`` (one report over all of the plan's
evaluations, the paper's table layouts).

Layout: everything shared between experiments lives under one root (default ``runs/experiments``),
named so that two plans asking for the same thing get the same path and the work is done once
(every step resumes or skips finished work): ``demos/<group>/<task dir>``, ``views/<dataset>``,
``regen/<dataset>/<task dir>`` (a regenerated dataset: its own build input),
``rlds/<dataset>``, ``train/<run>``, ``labels/<name>.jsonl``; per plan: ``eval/<plan>/<run>``,
``report/<plan>``. Seeds: training demonstrations start at seed 1000 (group ``base``; the extra
demonstrations of the data-scaling and large-Swap datasets, group ``extra``, at 100000);
evaluation uses seeds 0-63 (Appendix E.4: 64 seeds), so no test scene was seen in training.

Scales: ``paper`` (LLaVA-Phi-3-mini and the paper-size DP on the paper's dataset sizes; needs
``LLAVA_PHI3`` and ``T5_SMALL``, local Hugging Face directories) and ``tiny`` (the tiny configs,
4 demonstrations per task, 2 evaluation seeds: the whole chain on a CPU, to check a plan runs).
Compute estimates come from `DEMOS_PER_CORE_HOUR` (README measurements where marked) and the
paper's Appendix F.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

STAGES = ("demos", "datasets", "train_vlm", "regenerate", "relabel", "train_dp", "eval", "report")
TRAIN_SEED = 1000  # first seed of the training demonstrations (group "base")
EXTRA_SEED = 100_000  # first seed of additional demonstrations (group "extra")
EVAL_FIRST_SEED = 0  # evaluation seeds 0..63 (Appendix E.4)

# Successful oracle demonstrations per CPU core-hour (both cameras rendered on lavapipe, 128 px,
# README "Performance"); True where measured, False where estimated from the number of API calls
# per episode (paper Table 2: stacking ~8 calls, Swap ~11, against ~2.5 for the measured L0 tasks).
DEMOS_PER_CORE_HOUR: dict[str, tuple[float, bool]] = {
    "Pick": (199, True),
    "PlaceOnTop": (172, True),
    "PlaceNextTo": (483, True),
    "Touch": (246, True),
    "Topple": (247, True),
    "Push": (214, True),
    "Rotate": (127, True),
    "PushToTarget": (162, True),
    "NovelNoun": (170, False),
    "SingleStack": (50, False),
    "ReverseStack": (50, False),
    "StackTopple": (45, False),
    "Swap": (40, False),
}

SCALES: dict[str, dict[str, Any]] = {
    "paper": {
        "episodes_per_task": 2000,  # Appendix E.1
        "image_size": 336,  # rendered at the VLM's input size; the DP's pipeline resizes to its 128
        "demo_workers": 16,
        "vlm_config": "configs/vlm/llava_phi3_mini.py",
        "vlm_overrides": {"model.init_from": "${LLAVA_PHI3}", "data.tokenizer": "${LLAVA_PHI3}"},
        "dp_config": "configs/dp/paper.py",
        "dp_overrides": {"model.t5_checkpoint": "${T5_SMALL}"},
        "eval_seeds": 64,  # Appendix E.4
        "eval_overrides": {"num_workers": "8"},
        "relabel_batch": 32,
        "env": {"LLAVA_PHI3": "/models/llava-phi-3-mini-hf", "T5_SMALL": "/models/t5-small"},
    },
    "tiny": {
        "episodes_per_task": 4,
        "image_size": 64,
        "demo_workers": 2,
        "vlm_config": "configs/vlm/tiny.py",
        "vlm_overrides": {"train.steps": "200", "train.eval_every": "100", "train.checkpoint_every": "100"},
        "dp_config": "configs/dp/tiny.py",
        "dp_overrides": {"train.steps": "200", "train.eval_every": "100", "train.checkpoint_every": "100"},
        "eval_seeds": 2,
        "eval_overrides": {"num_workers": "2", "videos_per_task": "0"},
        "relabel_batch": 4,
        "env": {},
    },
}


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
    """``key=value,key=value`` (a plan's `get_config` argument) over `defaults`, typed like them."""
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in out:
            raise ValueError(f"unknown argument {key!r}; known: {sorted(out)}")
        out[key] = type(out[key])(value)
    if out.get("scale", "paper") not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {out['scale']!r}")
    return out


def plan_module(path: str):
    """A sibling plan file as a module (plans build on each other: data_scaling.py on table1.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("c2a_plan_" + os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_hours(task: str, episodes: int) -> tuple[float, bool]:
    """Estimated CPU core-hours for `episodes` successful demonstrations, and whether the rate was measured."""
    from c2a_jax.eval.tasks import resolve

    info = resolve(task)
    key = task if task in DEMOS_PER_CORE_HOUR else info["registry"].replace("Markovian", "")
    rate, measured = DEMOS_PER_CORE_HOUR.get(key, (50, False))
    return episodes / rate, measured


class Plan:
    """Builder of an experiment plan (what a ``configs/experiments`` file returns as a ConfigDict)."""

    def __init__(self, name: str, scale: str = "paper", root: str = "runs/experiments", description: str = ""):
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
        self.name, self.scale, self.root, self.description = name, scale, root, description
        self.s = SCALES[scale]
        self.demos: list[dict] = []
        self.datasets: list[dict] = []
        self.train: list[dict] = []
        self.relabels: list[dict] = []
        self.evals: list[dict] = []
        self.regens: list[dict] = []
        self.missing: list[dict] = []

    # -- what to generate, build, train, evaluate --------------------------------------------------
    def demo(self, task: str, episodes: int | None = None, group: str = "base", seed: int | None = None) -> str:
        """Demonstrations of a paper task (`c2a_jax.eval.tasks`); returns its source id ``group/task``.
        `episodes` is the paper-scale count (the tiny scale uses its own)."""
        from c2a_jax.eval.tasks import resolve

        info = resolve(task)
        n = self.s["episodes_per_task"] if episodes is None or self.scale == "tiny" else int(episodes)
        seed = (TRAIN_SEED if group == "base" else EXTRA_SEED) if seed is None else seed
        source = f"{group}/{task}"
        entry = {"source": source, "group": group, "task": task, "registry": info["registry"],
                 "task_args": info["task_args"], "episodes": n, "seed": seed}  # fmt: skip
        for other in self.demos:
            if other["source"] == source:
                if other != entry:
                    raise ValueError(f"demos {source} asked for twice with different settings")
                return source
        self.demos.append(entry)
        return source

    def dataset(self, label: str, sources: Sequence[str]) -> str:
        """An RLDS dataset built from demo sources (``group/task``, from `demo`)."""
        known = {d["source"] for d in self.demos}
        unknown = [s for s in sources if s not in known]
        if unknown:
            raise ValueError(f"dataset {label}: demos {unknown} not in the plan")
        self.datasets.append({"label": label, "sources": list(sources)})
        return label

    def regenerate(self, label: str, vlm: str, tasks: Sequence[str], episodes: int | None = None,
                   seed: int = TRAIN_SEED) -> str:  # fmt: skip
        """A dataset recorded by the VLM+Oracle policy of the trained VLM `vlm` (paper 5.2, Figure 6):
        its successful episodes, labelled with the VLM's code; built like the others. `episodes` per
        task at paper scale (the tiny scale uses its own)."""
        from c2a_jax.eval.tasks import resolve

        n = self.s["episodes_per_task"] if episodes is None or self.scale == "tiny" else int(episodes)
        entries = [{"task": t, "registry": resolve(t)["registry"], "task_args": resolve(t)["task_args"]} for t in tasks]
        self.regens.append({"label": label, "vlm": vlm, "tasks": entries, "episodes": n, "seed": int(seed)})
        return label

    def train_vlm(self, name: str, dataset: str, **overrides: Any) -> str:
        episodes = self._dataset_episodes(dataset)
        hours = max(6, round(48 * episodes / 20000))  # Appendix F: 48 h on 8 A100s for the ~20k-episode suite
        o = {**self.s["vlm_overrides"], **{k.replace("__", "."): str(v) for k, v in overrides.items()}}
        self._run("train_vlm", name, "train_vlm.py", self.s["vlm_config"], dataset, o, gpus="8x A100-80GB",
                  hours=hours)  # fmt: skip
        return name

    def train_dp(
        self, name: str, dataset: str, conditioning: str = "hierarchical", instruction_source: str = "oracle",
        labels: str = "", shift_k: int = 0, **overrides: Any,
    ) -> str:  # fmt: skip
        o = {**self.s["dp_overrides"], "data.instruction_source": instruction_source}
        if instruction_source == "vlm_file":
            o["data.vlm_labels_file"] = self.labels_path(labels)
        if instruction_source == "shifted":
            o["data.shift_k"] = str(shift_k)
        o.update({k.replace("__", "."): str(v) for k, v in overrides.items()})
        episodes = self._dataset_episodes(dataset)
        hours = min(72, max(24, round(72 * episodes / 14000)))  # Appendix F: 24-72 h, 72 h for the largest
        self._run("train_dp", name, "train_dp.py", f"{self.s['dp_config']}:{conditioning}", dataset, o,
                  gpus="8x V100-32GB", hours=hours, needs_labels=labels if instruction_source == "vlm_file" else "")  # fmt: skip
        return name

    def relabel(self, name: str, vlm: str, dataset: str, split: str = "train") -> str:
        self.relabels.append({"name": name, "vlm": vlm, "dataset": dataset, "split": split})
        return name

    def evaluate(
        self, name: str, mode: str, tasks: Sequence[str], dataset_label: str = "", vlm: str = "", dp: str = "",
        **overrides: Any,
    ) -> str:  # fmt: skip
        o = {k.replace("__", "."): str(v) for k, v in overrides.items()}
        self.evals.append({"name": name, "mode": mode, "tasks": list(tasks), "dataset_label": dataset_label,
                           "vlm": vlm, "dp": dp, "overrides": o})  # fmt: skip
        return name

    def missing_step(self, stage: str, name: str, what: str) -> None:
        """A step the paper takes that this code cannot run yet: printed as a comment, never run."""
        self.missing.append({"stage": stage, "name": name, "what": what})

    # -- helpers -----------------------------------------------------------------------------------
    def labels_path(self, name: str) -> str:
        return f"{self.root}/labels/{name}.jsonl"

    def _dataset_demos(self, label: str) -> list[dict]:
        ds = next((d for d in self.datasets if d["label"] == label), None)
        if ds is None:
            raise ValueError(f"dataset {label!r} not in the plan")
        return [d for d in self.demos if d["source"] in ds["sources"]]

    def _dataset_episodes(self, label: str) -> int:
        """Episodes of a dataset: built from demos, or regenerated."""
        regen = next((r for r in self.regens if r["label"] == label), None)
        if regen is not None:
            return regen["episodes"] * len(regen["tasks"])
        return sum(d["episodes"] for d in self._dataset_demos(label))

    def _run(self, stage, name, script, config, dataset, overrides, gpus, hours, needs_labels="") -> None:
        self._dataset_episodes(dataset)
        self.train.append({"stage": stage, "name": name, "script": script, "config": config, "dataset": dataset,
                           "overrides": {k: str(v) for k, v in overrides.items()}, "gpus": gpus,
                           "hours": hours, "labels": needs_labels})  # fmt: skip

    def to_config(self) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict({
            "name": self.name, "scale": self.scale, "root": self.root, "description": self.description,
            "env": dict(self.s["env"]), "image_size": self.s["image_size"], "demo_workers": self.s["demo_workers"],
            "eval_seeds": self.s["eval_seeds"], "eval_overrides": dict(self.s["eval_overrides"]),
            "relabel_batch": self.s["relabel_batch"], "demos": self.demos, "datasets": self.datasets,
            "train": self.train, "relabels": self.relabels, "evals": self.evals, "regens": self.regens,
            "missing": self.missing,
        })  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Commands


@dataclasses.dataclass
class Command:
    """One step: its stage and name, the argv, and (train/eval) the config it loads and its overrides."""

    stage: str
    name: str
    argv: list[str]
    config: str = ""
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)
    comment: str = ""
    missing: bool = False

    def shell(self) -> str:
        return " ".join(_quote(a) for a in self.argv)


def _quote(arg: str) -> str:
    """Shell quoting that leaves ``${VAR}`` expandable (double quotes around such arguments)."""
    if "${" in arg and not re.search(r'["`\\]', arg.replace("${", "")):
        return arg if re.fullmatch(r"[\w@%+=:,./${}-]+", arg) else f'"{arg}"'
    return shlex.quote(arg)


def _overrides(o: Mapping[str, str]) -> list[str]:
    return [f"--config.{k}={v}" for k, v in o.items()]


def commands(plan: Mapping[str, Any], spec: str = "<plan>") -> list[Command]:
    """Every step of `plan` in stage order (`spec`: the plan's ``--config`` argument, for the view
    and report steps, which call this module)."""
    root, py = plan["root"], "python"
    out: list[Command] = []
    by_source = {d["source"]: d for d in plan["demos"]}
    for d in plan["demos"]:
        hours, measured = demo_hours(d["task"], d["episodes"])
        argv = [py, "data_pipelines/generate_demos.py", "--task", d["registry"], "--task-args",
                json.dumps(d["task_args"], sort_keys=True), "--num-episodes", str(d["episodes"]), "--seed",
                str(d["seed"]), "--out", f"{root}/demos/{d['group']}", "--image-size", str(plan["image_size"]),
                "--num-workers", str(plan["demo_workers"])]  # fmt: skip
        note = f"{d['task']}: ~{hours:.1f} CPU core-hours ({'measured rate' if measured else 'estimate'})"
        out.append(Command("demos", d["source"], argv, comment=note))
    for ds in plan["datasets"]:
        n = sum(by_source[s]["episodes"] for s in ds["sources"])
        out.append(Command("datasets", f"view {ds['label']}",
                           [py, "-m", "c2a_jax.experiments", "view", "--config", spec, "--dataset", ds["label"]],
                           comment=f"{ds['label']}: {', '.join(ds['sources'])} ({n} demonstrations)"))  # fmt: skip
        out.append(Command("datasets", f"build {ds['label']}",
                           [py, "data_pipelines/build_rlds.py", "--demos", f"{root}/views/{ds['label']}",
                            "--out", f"{root}/rlds/{ds['label']}"]))  # fmt: skip

    def train_cmd(t: Mapping[str, Any]) -> Command:
        o = {"workdir": f"{root}/train/{t['name']}", "data.dataset_dir": f"{root}/rlds/{t['dataset']}",
             **t["overrides"]}  # fmt: skip
        note = f"{t['name']}: {t['gpus']}, ~{t['hours']} h (estimate from the paper's Appendix F)"
        if plan["scale"] == "tiny":
            note = f"{t['name']}: a few CPU minutes"
        return Command(t["stage"], t["name"], [py, t["script"], f"--config={t['config']}", *_overrides(o)],
                       config=t["config"], overrides=o, comment=note)  # fmt: skip

    out += [train_cmd(t) for t in plan["train"] if t["stage"] == "train_vlm"]
    for r in plan.get("regens", ()):
        for t in r["tasks"]:
            hours, _ = demo_hours(t["task"], r["episodes"])
            argv = [py, "data_pipelines/regenerate_with_vlm_oracle.py", "--vlm-checkpoint", f"{root}/train/{r['vlm']}",
                    "--task", t["registry"], "--task-args", json.dumps(t["task_args"], sort_keys=True),
                    "--num-episodes", str(r["episodes"]), "--seed", str(r["seed"]), "--out", f"{root}/regen/{r['label']}",
                    "--image-size", str(plan["image_size"]), "--num-workers", str(plan["demo_workers"])]  # fmt: skip
            note = (f"{r['label']}/{t['task']}: VLM+Oracle of {r['vlm']} until {r['episodes']} successes; simulation "
                    f"~{hours:.1f} CPU core-hours at the oracle demos' rate, divided by the VLM+Oracle success rate "
                    "(estimate), plus one VLM query per API call (a GPU)")  # fmt: skip
            out.append(Command("regenerate", f"{r['label']}/{t['task']}", argv, comment=note))
        out.append(Command("regenerate", f"build {r['label']}",
                           [py, "data_pipelines/build_rlds.py", "--demos", f"{root}/regen/{r['label']}",
                            "--out", f"{root}/rlds/{r['label']}"]))  # fmt: skip
    for r in plan["relabels"]:
        argv = [py, "data_pipelines/relabel_with_vlm.py", "--vlm-checkpoint", f"{root}/train/{r['vlm']}",
                "--dataset", f"{root}/rlds/{r['dataset']}", "--out", f"{root}/labels/{r['name']}.jsonl",
                "--split", r["split"], "--batch-size", str(plan["relabel_batch"])]  # fmt: skip
        out.append(Command("relabel", r["name"], argv, comment=f"{r['name']}: the VLM {r['vlm']} writes code for "
                           f"every step of {r['dataset']} ({r['split']}); <= 2 GPU-hours per 1000 episodes "
                           "(estimate: ~150 steps x ~6 tokens at README's batch-1 decode rate)"))  # fmt: skip
    out += [train_cmd(t) for t in plan["train"] if t["stage"] == "train_dp"]
    for e in plan["evals"]:
        o = {"workdir": f"{root}/eval/{plan['name']}/{e['name']}", "tasks": ",".join(e["tasks"]),
             "num_seeds": str(plan["eval_seeds"]), "first_seed": str(EVAL_FIRST_SEED),
             "dataset": e["dataset_label"], **plan["eval_overrides"]}  # fmt: skip
        if e["vlm"]:
            o["vlm_checkpoint"] = f"{root}/train/{e['vlm']}"
        if e["dp"]:
            o["dp_checkpoint"] = f"{root}/train/{e['dp']}"
        o.update(e["overrides"])
        spec_e = f"configs/eval/default.py:{e['mode']}"
        episodes = len(e["tasks"]) * plan["eval_seeds"]
        out.append(Command("eval", e["name"], [py, "evaluate.py", f"--config={spec_e}", *_overrides(o)],
                           config=spec_e, overrides=o, comment=f"{e['name']}: {episodes} episodes"))  # fmt: skip
    out.append(Command("report", "report", [py, "-m", "c2a_jax.experiments", "report", "--config", spec],
                       comment=f"all evaluations -> {root}/report/{plan['name']}"))  # fmt: skip
    for m in plan["missing"]:
        out.append(Command(m["stage"], m["name"], [], comment=f"MISSING: {m['what']}", missing=True))
    order = {s: i for i, s in enumerate(STAGES)}
    return sorted(out, key=lambda c: order[c.stage])  # stable: plan order within a stage


def totals(plan: Mapping[str, Any]) -> dict[str, float]:
    """Estimated compute of the whole plan: demo CPU core-hours, training GPU-hours, evaluation episodes."""
    return {
        "demo_core_hours": round(sum(demo_hours(d["task"], d["episodes"])[0] for d in plan["demos"]), 1),
        "train_gpu_hours": sum(8 * t["hours"] for t in plan["train"]),
        "eval_episodes": sum(len(e["tasks"]) * plan["eval_seeds"] for e in plan["evals"]),
    }


def render(plan: Mapping[str, Any], spec: str, stage: str | None = None) -> str:
    """The plan as a shell script (``--print-commands``)."""
    lines = [f"# Experiment {plan['name']} (scale {plan['scale']}): python -m c2a_jax.experiments --config {spec}"]
    lines += ["set -euo pipefail", "export PYTHONPATH=$PWD"]
    lines += [f': "${{{k}:={v}}}"  # local Hugging Face directory' for k, v in plan["env"].items()]
    if plan["scale"] != "tiny":
        t = totals(plan)
        lines.append(f"# Estimated compute: demos ~{t['demo_core_hours']:.0f} CPU core-hours; training ~"
                     f"{t['train_gpu_hours']} GPU-hours (8-GPU nodes); evaluation {t['eval_episodes']} episodes")  # fmt: skip
    current = None
    for c in commands(plan, spec):
        if stage and c.stage != stage:
            continue
        if c.stage != current:
            lines += ["", f"## {c.stage}"]
            current = c.stage
        if c.comment:
            lines.append(f"# {c.comment}")
        if not c.missing:
            lines.append(c.shell())
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Checks (tests/test_experiments.py)


def _expand(value: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), m.group(0)), value)


def check_consistent(plans: Sequence[Mapping[str, Any]]) -> list[str]:
    """Plans share one root: the same demo source, dataset label or run name must mean the same thing
    in every plan of one scale (else one plan would silently reuse another's different work)."""
    problems: list[str] = []
    seen: dict[tuple, tuple[str, Any]] = {}
    for plan in plans:
        items = [("demos", d["source"], d) for d in plan["demos"]]
        items += [("dataset", d["label"], sorted(d["sources"])) for d in plan["datasets"]]
        items += [("run", t["name"], t) for t in plan["train"]]
        items += [("labels", r["name"], r) for r in plan["relabels"]]
        items += [("regenerated", r["label"], r) for r in plan.get("regens", ())]
        for kind, name, value in items:
            key = (plan["root"], plan["scale"], kind, name)
            if key in seen and seen[key][1] != value:
                problems.append(f"{kind} {name}: defined differently in plans {seen[key][0]} and {plan['name']}")
            seen.setdefault(key, (plan["name"], value))
    return problems


def check_plan(plan: Mapping[str, Any], spec: str = "<plan>") -> list[str]:
    """Problems with `plan` (empty: none): config files that do not exist, overrides that are not keys
    of their config or do not convert, required values left unset, unknown tasks, references to runs,
    datasets or labels the plan does not make, two evaluations with the same (mode, dataset label)."""
    from c2a_jax.config import ConfigError, apply_override, check_required, load_config_file
    from c2a_jax.eval.tasks import resolve

    problems: list[str] = []
    for d in plan["demos"]:
        try:
            resolve(d["task"])
        except ValueError as e:
            problems.append(f"demos {d['source']}: {e}")
    runs = {t["name"] for t in plan["train"]}
    datasets = {d["label"] for d in plan["datasets"]} | {r["label"] for r in plan.get("regens", ())}
    for r in plan.get("regens", ()):
        if r["vlm"] not in runs:
            problems.append(f"regenerate {r['label']}: needs run {r['vlm']}")
        for t in r["tasks"]:
            try:
                resolve(t["task"])
            except ValueError as e:
                problems.append(f"regenerate {r['label']}: {e}")
    labels = {r["name"] for r in plan["relabels"]}
    for t in plan["train"]:
        if t["dataset"] not in datasets:
            problems.append(f"{t['name']}: dataset {t['dataset']} is not built by the plan")
        if t["labels"] and t["labels"] not in labels:
            problems.append(f"{t['name']}: labels {t['labels']} are not made by the plan")
    for r in plan["relabels"]:
        if r["vlm"] not in runs or r["dataset"] not in datasets:
            problems.append(f"relabel {r['name']}: needs run {r['vlm']} and dataset {r['dataset']}")
    seen: dict[tuple[str, str], str] = {}
    for e in plan["evals"]:
        for ref in (e["vlm"], e["dp"]):
            if ref and ref not in runs:
                problems.append(f"eval {e['name']}: run {ref} is not trained by the plan")
        for task in e["tasks"]:
            try:
                resolve(task, markovian=e["mode"] == "dp_oracle")
            except ValueError as err:
                problems.append(f"eval {e['name']}: {err}")
        key = (e["mode"], e["dataset_label"])
        if key in seen:
            problems.append(
                f"evals {seen[key]} and {e['name']} share mode and dataset label {key}: the report merges them"
            )
        seen[key] = e["name"]
    env = dict(plan["env"])
    for c in commands(plan, spec):
        if not c.config:
            continue
        try:
            config = load_config_file(c.config)
            for key, raw in c.overrides.items():
                apply_override(config, key, _expand(raw, env))
            check_required(config)
        except ConfigError as e:
            problems.append(f"{c.stage} {c.name}: {e}")
    return problems


# ---------------------------------------------------------------------------------------------
# The plan's own steps: dataset views, the combined report


def make_view(plan: Mapping[str, Any], label: str) -> str:
    """``<root>/views/<label>``: links to the demo directories of dataset `label` (every shard of
    each), the ``--demos`` of build_rlds.py. Rebuilt from scratch each time; holds links only."""
    import shutil

    from c2a_jax.data.demo_shards import SHARD_DIR_RE, missing_shards

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from data_pipelines.generate_demos import dataset_name

    ds = next((d for d in plan["datasets"] if d["label"] == label), None)
    if ds is None:
        raise ValueError(
            f"plan {plan['name']} has no dataset {label!r}; it has {[d['label'] for d in plan['datasets']]}"
        )
    root = plan["root"]
    view = os.path.join(root, "views", label)
    if os.path.isdir(view):
        shutil.rmtree(view)
    by_source = {d["source"]: d for d in plan["demos"]}
    for source in ds["sources"]:
        d = by_source[source]
        group_dir = os.path.abspath(os.path.join(root, "demos", d["group"]))
        name = dataset_name(d["registry"], d["task_args"])
        problems = missing_shards(group_dir)
        if problems:
            raise FileNotFoundError(f"demos {source} in {group_dir}: {'; '.join(problems)}")
        found = []
        if os.path.isdir(os.path.join(group_dir, name, "episodes")):
            found.append((d["group"], os.path.join(group_dir, name)))
        for shard in sorted(os.listdir(group_dir)) if os.path.isdir(group_dir) else []:
            if SHARD_DIR_RE.match(shard) and os.path.isdir(os.path.join(group_dir, shard, name, "episodes")):
                found.append((f"{d['group']}.{shard}", os.path.join(group_dir, shard, name)))
        if not found:
            raise FileNotFoundError(f"demos {source}: no {name}/episodes in {group_dir} (run the demos stage)")
        for folder, target in found:
            os.makedirs(os.path.join(view, folder), exist_ok=True)
            os.symlink(target, os.path.join(view, folder, name))
    return view


def write_plan_report(plan: Mapping[str, Any]) -> dict:
    """One report (the paper's tables) over every evaluation of the plan that has episodes."""
    from c2a_jax.eval import report

    paths = [os.path.join(plan["root"], "eval", plan["name"], e["name"], "episodes.jsonl") for e in plan["evals"]]
    present = [p for p in paths if os.path.exists(p)]
    if not present:
        raise FileNotFoundError(f"no evaluation of plan {plan['name']} has episodes yet ({paths[0]} ...)")
    out_dir = os.path.join(plan["root"], "report", plan["name"])
    result = report.write_report(report.read_records(present), out_dir, title=f"Experiment {plan['name']}")
    return {**result, "evaluations": len(present), "missing": [p for p in paths if p not in present]}


def load_plan(spec: str) -> ml_collections.ConfigDict:
    from c2a_jax.config import load_config_file

    return load_config_file(spec)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    action = argv.pop(0) if argv and argv[0] in ("view", "report") else "plan"
    ap = argparse.ArgumentParser(prog="python -m c2a_jax.experiments", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--config", required=True, help="configs/experiments/<plan>.py[:arg]")
    ap.add_argument("--stage", choices=STAGES, help="only this stage")
    ap.add_argument("--print-commands", action="store_true", help="print the plan as a shell script (default)")
    ap.add_argument("--run", action="store_true", help="run the commands in order, stopping at the first failure")
    ap.add_argument("--check", action="store_true", help="check every command's config and overrides")
    ap.add_argument("--dataset", help="view: the dataset label")
    args = ap.parse_args(argv)
    from c2a_jax.config import ConfigError

    try:
        plan = load_plan(args.config)
    except ConfigError as e:
        ap.exit(2, f"error: {e}\n")
    if action in ("view", "report"):
        if action == "view" and not args.dataset:
            ap.error("view needs --dataset")
        try:  # a dataset the plan lacks, demos not generated yet, no evaluation yet: one line
            result = make_view(plan, args.dataset) if action == "view" else write_plan_report(plan)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(result if action == "view" else json.dumps(result, indent=2))
        return 0
    if args.check:
        problems = check_plan(plan, args.config)
        print("\n".join(problems) if problems else "plan ok")
        return 1 if problems else 0
    if not args.run:
        sys.stdout.write(render(plan, args.config, args.stage))
        return 0
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in plan["env"].items()}}
    env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
    for c in commands(plan, args.config):
        if (args.stage and c.stage != args.stage) or c.missing:
            continue
        line = _expand(c.shell(), env)
        print(f"+ {line}", flush=True)
        rc = subprocess.call([sys.executable if a == "python" else _expand(a, env) for a in c.argv], env=env)
        if rc != 0:
            print(f"step {c.stage} {c.name} failed with exit status {rc}", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
