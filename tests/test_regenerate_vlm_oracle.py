"""The VLM+Oracle-regenerated dataset (paper 5.2, Figure 6): data_pipelines/regenerate_with_vlm_oracle.py
records episodes driven by a code writer (here the oracle's own lines replayed, so they succeed) in
generate_demos' layout, every step with both cameras, its action and the writer's running line as its
label; a rerun skips finished seeds and retries crashed ones; build_rlds' episode reader (in a
TensorFlow subprocess) accepts the files. The labelling rules are checked on a stand-in simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

from c2a_jax.codeapi import comment, parse
from c2a_jax.data.labels import step_labels
from c2a_jax.infer.replay import oracle_keysteps
from c2a_jax.sim.code_episode import CodeEpisodeRecorder
from c2a_jax.sim.rollout import OBS_KEYS
from data_pipelines.regenerate_with_vlm_oracle import main as regenerate
from tests.helpers import ROOT

TASK, TASK_ARGS, IMAGE = "PlaceNextTo", {"spawn_at_gripper": True}, 32
NAME = "PlaceNextTo-spawn_at_gripper=True"


def _args(out, episodes):
    return ["--replay-oracle", "fine", "--task", TASK, "--task-args", json.dumps(TASK_ARGS), "--num-episodes",
            str(episodes), "--out", str(out), "--image-size", str(IMAGE), "--no-progress", "--max-steps", "300"]  # fmt: skip


def _manifest(out):
    with open(os.path.join(out, NAME, "manifest.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("regen")
    assert regenerate(_args(out, 2)) == 0
    return out


@pytest.fixture(scope="module")
def oracle_lines():
    """The oracle's own fine key-steps on seeds 0 and 1 (what the replayed writer answered)."""
    import c2a_jax.sim.env  # noqa: F401
    from c2a_jax.sim.rollout import record_oracle_episode

    env = gym.make("ClevrSkills-v0", task=TASK, task_args=TASK_ARGS, image_size=IMAGE).unwrapped
    try:
        return {s: oracle_keysteps(record_oracle_episode(env, s, 300, images=False)["meta"], "fine") for s in (0, 1)}
    finally:
        env.close()


def test_episodes_hold_every_steps_images_actions_and_the_writers_lines(regenerated, oracle_lines):
    assert [(r["seed"], r["status"]) for r in _manifest(regenerated)] == [(0, "success"), (1, "success")]
    for seed in (0, 1):
        stem = os.path.join(regenerated, NAME, "episodes", f"seed_{seed:06d}")
        with open(stem + ".json") as f:
            meta = json.load(f)
        with np.load(stem + ".npz") as data:
            arrays = {k: data[k] for k in data.files}
        rows = meta["num_steps"] + 1
        assert meta["success"] and meta["code_source"] == "vlm_oracle" and meta["code_level"] == "fine"
        assert meta["seed"] == seed and meta["task"] == TASK and meta["task_args"] == TASK_ARGS
        for camera in ("base_image", "hand_image"):
            assert arrays[camera].shape == (rows, IMAGE, IMAGE, 3) and arrays[camera].dtype == np.uint8
            assert arrays[camera].std() > 5  # rendered scenes
        assert not np.array_equal(arrays["base_image"][0], arrays["base_image"][-1])  # the scene moved
        for key in ("actions", "rewards", "success", "actors", "bboxes", *OBS_KEYS):
            assert len(arrays[key]) == rows, key
        assert np.abs(arrays["actions"][:-1]).sum(axis=1).min() > 0 and not arrays["actions"][-1].any()
        assert arrays["success"][-1] and not arrays["success"][0]
        labels = meta["labels"]
        assert len(labels) == rows
        for lab in labels:
            parse(lab["fine"], "fine")
            assert lab["fine"] == lab["level1"] and lab["fine_keystep"] == lab["level1_keystep"]
        keysteps = [lab["fine"] for lab in labels if lab["fine_keystep"]]
        assert keysteps == oracle_lines[seed]  # the writer's lines, done() at the step that succeeded
        assert meta["vlm_oracle"]["code"] == oracle_lines[seed][:-1]  # what the writer was asked for
        first_success = int(np.flatnonzero(arrays["success"])[0])
        assert labels[first_success] == {"level1": "done()", "level1_keystep": True, "fine": "done()",
                                         "fine_keystep": True}  # fmt: skip
        steps = step_labels(meta, "fine", arrays["success"])  # what the RLDS builder computes per step
        assert [s.code for s in steps[:2]] == [keysteps[0], comment(keysteps[0])]
        assert steps[-1].memory == tuple(keysteps)  # the memory: every key-step line before


def test_a_rerun_skips_finished_seeds_and_retries_crashed_ones(regenerated):
    files = sorted(os.listdir(os.path.join(regenerated, NAME, "episodes")))
    mtimes = [os.path.getmtime(os.path.join(regenerated, NAME, "episodes", f)) for f in files]
    assert regenerate(_args(regenerated, 2)) == 0  # nothing left to do
    assert len(_manifest(regenerated)) == 2
    with open(os.path.join(regenerated, NAME, "manifest.jsonl"), "a") as f:
        f.write(json.dumps({"seed": 2, "status": "error", "error": "worker crashed"}) + "\n")
    assert regenerate(_args(regenerated, 3)) == 0  # seed 2 again, seeds 0 and 1 not
    assert [(r["seed"], r["status"]) for r in _manifest(regenerated)][2:] == [(2, "error"), (2, "success")]
    assert [os.path.getmtime(os.path.join(regenerated, NAME, "episodes", f)) for f in files] == mtimes
    with open(os.path.join(regenerated, NAME, "summary.json")) as f:
        assert json.load(f)["kept"] == 3


def test_build_rlds_reads_the_regenerated_episodes(regenerated):
    """build_rlds' reader (`discover_episodes`, `parse_episode`) in a subprocess: TensorFlow stays out
    of this one (tests/conftest.py)."""
    code = textwrap.dedent(f"""
        import json
        from data_pipelines.clevrskills_rlds import discover_episodes
        from data_pipelines.clevrskills_rlds.clevrskills_rlds_dataset_builder import parse_episode
        out = {{}}
        for episode in discover_episodes({str(regenerated)!r}):
            [(key, example)] = parse_episode(episode)
            steps = example["steps"]
            out[key] = {{"steps": len(steps), "image": list(steps[0]["observation"]["image"].shape),
                        "keysteps": [s["code_fine"] for s in steps if s["is_keystep_fine"]],
                        "past": steps[-1]["past_actions_fine"], "last": bool(steps[-1]["is_last"])}}
        print("RESULT " + json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert sorted(built) == [f"{NAME}/seed_{s:06d}" for s in (0, 1, 2)]
    for key, b in built.items():
        with open(os.path.join(regenerated, NAME, "episodes", key.split("/")[1] + ".json")) as f:
            meta = json.load(f)
        assert b["steps"] == meta["num_steps"] + 1 and b["image"] == [IMAGE, IMAGE, 3] and b["last"]
        assert b["keysteps"] == [lab["fine"] for lab in meta["labels"] if lab["fine_keystep"]]
        assert b["past"] == "; ".join(b["keysteps"])  # the last row: after done()


# ---------------------------------------------------------------------------------------------
# Labelling rules on a stand-in simulator


class _Env:
    """Just what `StepRecorder` and `episode_meta` read; success at control step `success_at`."""

    def __init__(self, success_at: int):
        self.task = SimpleNamespace(task_actors=lambda: [], describe=lambda: {"task": "Fake", "actors": []})
        self.task_args, self.split, self.image_size, self.success_at, self.t = {}, "train", 4, success_at, 0

    def observe(self, images=True):
        agent = {k: np.full(3, self.t, np.float32) for k in OBS_KEYS}
        image = np.full((4, 4, 3), self.t, np.uint8)
        return {"agent": agent, "actors": np.zeros(0), "bboxes": {}, "images": {"base_camera": image,
                                                                               "hand_camera": image}}  # fmt: skip


class _Executor:
    """Runs a unit for the number of steps its text says (``move(n)``); ``pose_dict`` writes take none."""

    def __init__(self, env):
        self.env, self.on_step = env, None

    def execute(self, code, **kwargs):
        if code.startswith("bad"):
            return SimpleNamespace(ok=False, kind="invalid")
        if code.startswith("pose_dict"):
            return SimpleNamespace(ok=True, kind="memory")
        for _ in range(int(code[5:-1])):
            self.env.t += 1
            self.on_step(np.ones(7, np.float32), 0.0, {"success": np.array([self.env.t >= self.env.success_at])})
            if self.env.t >= self.env.success_at:
                break
        return SimpleNamespace(ok=True, kind="action")


def test_labels_merge_assignments_into_the_next_call_skip_invalid_units_and_end_in_done():
    env = _Env(success_at=6)
    recorder = CodeEpisodeRecorder(env, _Executor(env), seed=3)
    for code in ("move(2)", "bad()", "pose_dict['x'] = 1", "move(3)", "move(9)"):  # success in the last
        recorder.execute(code)
    episode = recorder.episode()
    fine = [(lab["fine"], lab["fine_keystep"]) for lab in episode["meta"]["labels"]]
    merged = "pose_dict['x'] = 1\nmove(3)"
    assert fine == [("move(2)", True), ("move(2)", False), (merged, True), (merged, False), (merged, False),
                    ("done()", True), ("done()", False)]  # fmt: skip
    assert episode["meta"]["success"] and episode["meta"]["num_steps"] == 6 and episode["meta"]["seed"] == 3
    assert [u["kind"] for u in episode["meta"]["units"]] == ["action", "invalid", "memory", "action", "action"]
    assert episode["arrays"]["base_image"][:, 0, 0, 0].tolist() == list(range(7))  # one row per step + the first
    assert len(episode["arrays"]["actions"]) == 7 and not episode["arrays"]["actions"][-1].any()
    recorder.close()
    assert recorder.executor.on_step is None
