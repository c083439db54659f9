"""`make demo`'s driver (c2a_jax.demo): its commands are valid for the configs they name, finished
stages are skipped on a rerun, a failing stage stops the run naming itself and keeps what finished,
and the report states VLM+Oracle's success as a fraction of the oracle's on the same seeds."""

from __future__ import annotations

import json
import os
import sys

import pytest

from c2a_jax import demo
from c2a_jax.config import ConfigError, apply_override, load_config_file
from tests.helpers import ROOT


def _demo_config(tmp_path, **changes):
    config = load_config_file(os.path.join(ROOT, "configs", "demo.py"))
    config.workdir = str(tmp_path / "demo")
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def test_every_stage_command_names_existing_files_and_valid_config_keys(tmp_path):
    config = _demo_config(tmp_path)
    plan = demo.stages(config)
    names = [s.name for s in plan]
    assert names == ["demos:PlaceNextTo", "demos:Topple", "rlds", "vlm", "dp", "dp_flat", "eval_oracle",
                     "eval_vlm_oracle", "eval_oracle_dp", "eval_vlm_dp", "eval_dp"]  # fmt: skip
    for stage in plan:
        script = stage.command[1]
        assert os.path.isfile(script), script
        spec = next((a.split("=", 1)[1] for a in stage.command if a.startswith("--config=")), None)
        if spec is None:
            continue
        target = load_config_file(spec)
        for arg in stage.command:
            if arg.startswith("--config."):
                key, _, raw = arg[len("--config.") :].partition("=")
                apply_override(target, key, raw)  # raises ConfigError for a key the config lacks
        if stage.name == "vlm":
            assert target.train.steps == config.vlm.train.steps and target.data.image_size == config.image_size
            assert target.data.rename_objects_fraction == config.vlm.data.rename_objects_fraction
        if stage.name == "eval_vlm_oracle":
            assert target.refusal_temperature == config.eval.refusal_temperature
            assert target.max_queries == config.eval.max_queries
        if stage.name == "eval_vlm_dp":
            assert target.dp_checkpoint.endswith("/dp") and target.vlm_checkpoint.endswith("/vlm")
            assert tuple(target.tasks) == tuple(config.tasks) and target.first_seed == config.eval_first_seed
        if stage.name == "eval_oracle_dp":
            assert target.mode == "oracle_dp" and target.dp_checkpoint.endswith("/dp") and not target.vlm_checkpoint
        if stage.name == "eval_dp":
            assert target.dp_checkpoint.endswith("/dp_flat") and not target.vlm_checkpoint


def test_an_override_section_with_a_key_the_target_lacks_is_refused(tmp_path):
    config = _demo_config(tmp_path)
    config.vlm.train.unlock()
    config.vlm.train.stepz = 3
    stage = next(s for s in demo.stages(config) if s.name == "vlm")
    target = load_config_file(next(a.split("=", 1)[1] for a in stage.command if a.startswith("--config=")))
    with pytest.raises(ConfigError, match="stepz"):
        for arg in stage.command:
            if arg.startswith("--config."):
                key, _, raw = arg[len("--config.") :].partition("=")
                apply_override(target, key, raw)


def _records(path, mode, task, successes):
    with open(path, "a", encoding="utf-8") as f:
        for seed, ok in enumerate(successes):
            f.write(json.dumps({"mode": mode, "task": task, "seed": seed, "success": ok, "level": "L0"}) + "\n")


def test_oracle_ratio_counts_successes_on_the_same_tasks():
    records = [{"mode": "oracle", "task": "A", "success": s} for s in (1, 1, 1, 0)]
    records += [{"mode": "vlm_oracle", "task": "A", "success": s} for s in (1, 1, 0, 0)]
    records += [{"mode": "oracle", "task": "B", "success": 1}, {"mode": "vlm_oracle", "task": "B", "success": 1}]
    records += [{"mode": "vlm_oracle", "task": "B", "success": 1, "error": "worker died"}]  # not counted
    records += [{"mode": "vlm_dp", "task": "B", "success": 1}]  # another mode: not counted
    ratio = demo.oracle_ratio(records)
    assert ratio["tasks"]["A"] == {"oracle_successes": 3, "vlm_oracle_successes": 2, "ratio": round(2 / 3, 4)}
    assert (ratio["oracle_successes"], ratio["vlm_oracle_successes"], ratio["ratio"]) == (4, 3, 0.75)


def test_the_demo_resumes_skips_finished_stages_and_names_a_failing_one(tmp_path, monkeypatch):
    config = _demo_config(tmp_path)
    work = config.workdir
    runs = tmp_path / "runs.txt"

    outputs = {name: tmp_path / f"out_{name}" for name in ("first", "second", "third")}

    def plan(_config, fail=None, changed=None):
        out = []
        for name in ("first", "second", "third"):
            code = f"import os; os.makedirs({str(outputs[name])!r}, exist_ok=True); "
            code += f"open({str(runs)!r}, 'a').write({name!r} + '\\n')"
            code += "; raise SystemExit(3)" if name == fail else ""
            command = [sys.executable, "-c", code] + (["--changed"] if name == changed else [])
            out.append(demo.Stage(name, command, f"stage {name}", [str(outputs[name])]))
        return out

    os.makedirs(work, exist_ok=True)
    for mode in demo.EVAL_MODES:
        os.makedirs(os.path.join(work, f"eval_{mode}"), exist_ok=True)
    _records(os.path.join(work, "eval_oracle", "episodes.jsonl"), "oracle", "Topple", [True] * 4)
    _records(os.path.join(work, "eval_vlm_oracle", "episodes.jsonl"), "vlm_oracle", "Topple", [True, True, True, False])
    _records(os.path.join(work, "eval_dp", "episodes.jsonl"), "dp", "Topple", [False] * 4)

    monkeypatch.setattr(demo, "stages", lambda c: plan(c, fail="second"))
    with pytest.raises(RuntimeError, match="'second' failed"):
        demo.run_demo(config, log=lambda *a, **k: None)
    state = json.loads(open(os.path.join(work, "stages.json")).read())
    assert list(state) == ["first"]

    monkeypatch.setattr(demo, "stages", plan)
    summary = demo.run_demo(config, log=lambda *a, **k: None)
    assert runs.read_text().split() == ["first", "second", "second", "third"]  # first ran once
    assert summary["oracle_ratio"]["ratio"] == 0.75
    text = open(os.path.join(work, "report.md"), encoding="utf-8").read()
    assert "VLM+Oracle / oracle success: 3/4 = 75.0%" in text
    assert "sampled at temperature 1 after a refused line" in text and "50% of code examples" in text
    assert "| second |" in text and "Oracle (scripted solver)" in text and "Task Prompt Only (DP)" in text
    assert os.path.isfile(os.path.join(work, "success.png"))

    demo.run_demo(config, log=lambda *a, **k: None)  # everything finished: nothing runs again
    assert len(runs.read_text().split()) == 4
    demo.run_demo(config, from_stage="third", log=lambda *a, **k: None)
    assert runs.read_text().split()[-1] == "third" and len(runs.read_text().split()) == 5
    with pytest.raises(ValueError, match="unknown stage"):
        demo.run_demo(config, from_stage="fourth", log=lambda *a, **k: None)

    # A changed command reruns its stage and every later one afresh (their old outputs removed).
    (outputs["third"] / "stale.txt").write_text("from the old inputs")
    (outputs["first"] / "kept.txt").write_text("still valid")
    monkeypatch.setattr(demo, "stages", lambda c: plan(c, changed="second"))
    demo.run_demo(config, log=lambda *a, **k: None)
    assert runs.read_text().split()[-2:] == ["second", "third"] and len(runs.read_text().split()) == 7
    assert not (outputs["third"] / "stale.txt").exists() and (outputs["first"] / "kept.txt").exists()


def test_a_task_without_a_demonstration_count_is_named(tmp_path):
    config = _demo_config(tmp_path, tasks=("PlaceNextTo", "Pick"))
    with pytest.raises(ValueError, match="no count for task 'Pick'"):
        demo.stages(config)
    config = _demo_config(tmp_path)
    config.demos.Topple = 0
    with pytest.raises(ValueError, match="Topple must be >= 1"):
        demo.stages(config)


def test_stages_of_one_group_run_side_by_side_and_a_failure_keeps_the_others(tmp_path, monkeypatch):
    config = _demo_config(tmp_path)
    flag = tmp_path / "b_started"
    # "a" finishes only once "b" has started: run one after the other, "a" would time out and fail.
    wait_for_b = (
        f"import os, time\nt = time.time()\nwhile not os.path.exists({str(flag)!r}):\n"
        "    time.sleep(0.05)\n    if time.time() - t > 60: raise SystemExit(4)\n"
    )
    start_b = f"open({str(flag)!r}, 'w').write('1')"

    def plan(_config, fail_c=False):
        return [
            demo.Stage("a", [sys.executable, "-c", wait_for_b], "waits for b", group="train"),
            demo.Stage("b", [sys.executable, "-c", start_b], "starts", group="train"),
            demo.Stage("c", [sys.executable, "-c", "raise SystemExit(5)" if fail_c else "pass"], "c", group="train"),
            demo.Stage("d", [sys.executable, "-c", "pass"], "after the group"),
        ]

    monkeypatch.setattr(demo, "stages", lambda c: plan(c, fail_c=True))
    with pytest.raises(RuntimeError, match="'c \\(exit 5"):
        demo.run_demo(config, log=lambda *a, **k: None)
    state = json.loads(open(os.path.join(config.workdir, "stages.json")).read())
    assert set(state) == {"a", "b"} and state["a"]["group"] == "train"  # the finished ones are kept
    assert os.path.isfile(os.path.join(config.workdir, "logs", "c.log"))

    monkeypatch.setattr(demo, "stages", plan)
    os.makedirs(os.path.join(config.workdir, "eval_oracle"), exist_ok=True)
    _records(os.path.join(config.workdir, "eval_oracle", "episodes.jsonl"), "oracle", "Topple", [True])
    summary = demo.run_demo(config, log=lambda *a, **k: None)
    times = summary["stages_s"]
    assert set(times) == {"a", "b", "c", "d"}
    state = json.loads(open(os.path.join(config.workdir, "stages.json")).read())
    groups = {name: record["group"] for name, record in state.items()}
    assert groups == {"a": "train", "b": "train", "c": "", "d": ""}  # c was resumed alone
    # wall time: the group counts as its longest stage, not the sum
    assert summary["total_s"] == pytest.approx(max(times["a"], times["b"]) + times["c"] + times["d"], abs=0.1)
    assert demo.wall_time({"x": 3.0, "y": 5.0, "z": 1.0}, {"x": "g", "y": "g"}) == 6.0

    # --from-stage a reruns the whole group from a on (b and c with it) and what follows
    flag.unlink()
    summary = demo.run_demo(config, from_stage="a", log=lambda *a, **k: None)
    state = json.loads(open(os.path.join(config.workdir, "stages.json")).read())
    assert {name: record["group"] for name, record in state.items()} == {"a": "train", "b": "train", "c": "train",
                                                                          "d": ""}  # fmt: skip
