"""The ClevrSkills RLDS export: real simulator episodes -> TFDS dataset -> read back with plain TFDS.

One module-scoped fixture generates two tiny Pick episodes in the simulator (image size 32) and
builds the dataset once; the tests read it back (in a subprocess that cannot import our code, as
another lab would), check the statistics file, and break episode files on purpose.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf  # noqa: E402

from tests.helpers import ROOT

tf.config.set_visible_devices([], "GPU")
import tensorflow_datasets as tfds  # noqa: E402

from data_pipelines import build_rlds  # noqa: E402
from data_pipelines.clevrskills_rlds import clevrskills_rlds_dataset_builder as rlds  # noqa: E402

VERSION_DIR = os.path.join("clevrskills_rlds", "panda_vacuum", "1.0.0")  # the default config: our Panda


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> str:
    """Two successful Pick episodes written by generate_demos.py (seeds 2 and 3: short ones)."""
    out = str(tmp_path_factory.mktemp("demos"))
    cmd = [sys.executable, os.path.join(ROOT, "data_pipelines", "generate_demos.py"), "--task", "Pick",
           "--num-episodes", "2", "--seed", "2", "--num-workers", "1", "--image-size", "32", "--max-steps", "200", "--out", out]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def built(demos, tmp_path_factory) -> str:
    """The dataset built from `demos`; returns its version directory."""
    out = str(tmp_path_factory.mktemp("rlds"))
    builder = build_rlds.build(demos, out, progress=False)
    assert os.fspath(builder.data_dir) == os.path.join(out, VERSION_DIR)
    return os.fspath(builder.data_dir)


# Runs in a fresh interpreter that cannot import c2a_jax or data_pipelines: only TFDS reads the data.
READER = """
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("c2a_jax", "data_pipelines", "tests"):
            raise ImportError(f"{name} must not be needed to read the dataset")

sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p not in ("", ".", ROOT)]
import tensorflow as tf
tf.config.set_visible_devices([], "GPU")
import tensorflow_datasets as tfds

builder = tfds.builder_from_directory(DATA_DIR)
report = {"splits": {k: v.num_examples for k, v in builder.info.splits.items()}, "episodes": []}
for split in report["splits"]:
    for episode in tfds.as_numpy(builder.as_dataset(split=split)):
        meta = {k: v.decode() if isinstance(v, bytes) else v for k, v in episode["episode_metadata"].items()}
        steps = list(episode["steps"])
        report["episodes"].append({
            "split": split,
            "meta": {k: [x.decode() for x in v] if k in ("prompts", "actor_names") else
                     (int(v) if k == "seed" else v) for k, v in meta.items()},
            "num_steps": len(steps),
            "is_first": [bool(s["is_first"]) for s in steps],
            "is_last": [bool(s["is_last"]) for s in steps],
            "is_terminal": [bool(s["is_terminal"]) for s in steps],
            "language": sorted({s["language_instruction"].decode() for s in steps}),
            "image": [list(steps[0]["observation"]["image"].shape), str(steps[0]["observation"]["image"].dtype)],
            "wrist": list(steps[0]["observation"]["wrist_image"].shape),
            "state": list(steps[0]["observation"]["state"].shape),
            "qpos": list(steps[0]["observation"]["qpos"].shape),
            "action": [list(steps[0]["action"].shape), str(steps[0]["action"].dtype)],
            "last_action": steps[-1]["action"].tolist(),
            "reward_last": float(steps[-1]["reward"]),
            "discount": sorted({float(s["discount"]) for s in steps}),
            "grid": [s["actor_grid_positions"].tolist() for s in steps],
            **{f"{f}_{lv}": [s[f"{f}_{lv}"].decode() if f != "is_keystep" else bool(s[f"{f}_{lv}"]) for s in steps]
               for f in ("code", "is_keystep", "past_actions", "cache_info") for lv in ("fine", "level1")},
        })
print("REPORT" + json.dumps(report))
"""


@pytest.fixture(scope="module")
def read_back(built) -> dict:
    code = textwrap.dedent(READER).replace("DATA_DIR", repr(built)).replace("ROOT", repr(ROOT))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.split("REPORT", 1)[1])


def test_splits_hold_every_episode_with_one_in_val(read_back, demos):
    assert read_back["splits"] == {"train": 1, "val": 1}
    seeds = sorted(e["meta"]["seed"] for e in read_back["episodes"])
    assert seeds == [2, 3]
    for episode in read_back["episodes"]:
        assert episode["meta"]["file_path"].startswith(os.path.join(demos, "Pick", "episodes"))


def test_steps_follow_rlds_and_oxe_conventions(read_back):
    for episode in read_back["episodes"]:
        n = episode["num_steps"]
        assert n >= 3
        assert episode["is_first"] == [True] + [False] * (n - 1)
        assert episode["is_last"] == [False] * (n - 1) + [True]
        assert episode["is_terminal"] == [False] * (n - 1) + [True]
        meta = episode["meta"]
        assert episode["language"] == [meta["prompts"][0]] and meta["prompts"][0]  # on every step
        assert episode["image"] == [[32, 32, 3], "uint8"] and episode["wrist"] == [32, 32, 3]
        assert episode["state"] == [9] and episode["qpos"] == [12]
        assert episode["action"] == [[7], "float32"] and episode["last_action"] == [0.0] * 7
        assert episode["reward_last"] == pytest.approx(1.0) and episode["discount"] == [1.0]
        assert meta["task"] == "Pick" and meta["task_args"] == "{}" and meta["level"] == "L0"
        assert meta["split"] == "train" and meta["dataset"] == "Pick" and len(meta["actor_names"]) >= 1


def test_code_fields_and_grid_positions(read_back):
    for episode in read_back["episodes"]:
        k = len(episode["meta"]["actor_names"])
        grid = np.array(episode["grid"])
        assert grid.shape == (episode["num_steps"], k, 2)
        assert grid.min() >= -1 and grid.max() <= 10 and (grid >= 0).any()
        with np.load(episode["meta"]["file_path"]) as arrays:  # spec 6.3, computed independently
            boxes, size = arrays["bboxes"].astype(float), arrays["base_image"].shape[1]
        expected = np.round(boxes[..., :2].mean(axis=-2) / size * 10)
        expected[np.any(boxes[..., :2] < 0, axis=(-2, -1))] = -1
        np.testing.assert_array_equal(grid, expected)
        for level in ("fine", "level1"):
            code, key = episode[f"code_{level}"], episode[f"is_keystep_{level}"]
            past, cache = episode[f"past_actions_{level}"], episode[f"cache_info_{level}"]
            assert key[0] and not code[0].startswith("#") and past[0] == ""
            assert code[-2:] == ["done()", "# done()"] and key[-2:] == [True, False]
            assert all(c.startswith("# ") != k for c, k in zip(code, key, strict=True))
            keysteps = [c for c, k in zip(code, key, strict=True) if k]
            assert past[-1] == "; ".join(keysteps)  # memory at the terminal step: every key-step
            assert set(cache) == {"pose_dict = {}"}  # Pick stores no pose
        assert "move3d(" in episode["code_fine"][0] and "pick_move3d_place(" in episode["code_level1"][0]


def test_statistics_file(built):
    with open(os.path.join(built, rlds.STATISTICS_FILE)) as f:
        stats = json.load(f)
    assert set(stats) == {"action", "state", "qpos", "qvel", "num_transitions", "num_steps", "num_trajectories"}
    builder = tfds.builder_from_directory(built)
    train = list(tfds.as_numpy(builder.as_dataset(split="train")))
    steps = sum(len(list(ep["steps"])) for ep in train)
    assert stats["num_trajectories"] == len(train) == 1
    assert stats["num_steps"] == steps and stats["num_transitions"] == steps - len(train)
    for key, dim in (("action", 7), ("state", 9), ("qpos", 12), ("qvel", 12)):
        entry = {k: np.array(v) for k, v in stats[key].items()}
        assert set(entry) == {"mean", "std", "min", "max", "p01", "p99"}
        assert all(v.shape == (dim,) for v in entry.values())
        assert np.all(entry["min"] <= entry["p01"] + 1e-9) and np.all(entry["p99"] <= entry["max"] + 1e-9)
        assert np.all(entry["std"] >= 0)
        if key != "qvel":
            assert np.all(entry["p01"] - 1e-6 <= entry["mean"]) and np.all(entry["mean"] <= entry["p99"] + 1e-6)
    assert np.all(np.abs(stats["action"]["max"]) <= 1.0 + 1e-6)  # normalised actions
    assert rlds.compute_statistics(built) == stats  # the standalone function, from the directory


RLDS_VENV_PYTHON = os.path.join(ROOT, ".venv-rlds", "bin", "python")
# Runs under other labs' reading stack (TF 2.15, TFDS 4.9.4, rlds 0.1.8; requirements-rlds.txt), not ours.
RLDS_READER = """
import json
import tensorflow as tf
tf.config.set_visible_devices([], "GPU")
import tensorflow_datasets as tfds
import rlds
from rlds import transformations as T

builder = tfds.builder_from_directory(DATA_DIR)
episodes = builder.as_dataset(split="train")
lengths = [int(T.episode_length(ep[rlds.STEPS])) for ep in episodes]
reward = float(T.sum_nested_steps(episodes, lambda step: step[rlds.REWARD]))

def fields(step):
    valid = tf.logical_not(step[rlds.IS_LAST])  # the last step carries no action
    return {"action": step[rlds.ACTION]}, {"action": valid}

mean, std = T.mean_and_std(episodes, fields)
firsts = [bool(s[rlds.IS_FIRST]) for s in T.batch(next(iter(episodes))[rlds.STEPS], size=1).unbatch()]
print("REPORT" + json.dumps({"versions": [tf.__version__, tfds.__version__], "lengths": lengths, "reward": reward,
                             "mean": [float(x) for x in mean["action"]], "std": [float(x) for x in std["action"]],
                             "firsts": firsts}))
"""


def test_readable_with_the_rlds_package(built):
    """Another lab's stack (rlds needs dm-reverb, which needs TF <= 2.15) reads the dataset and its
    rlds transformations agree with our statistics."""
    assert os.path.exists(RLDS_VENV_PYTHON), "make setup builds .venv-rlds (requirements-rlds.txt)"
    code = textwrap.dedent(RLDS_READER).replace("DATA_DIR", repr(built))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [RLDS_VENV_PYTHON, "-c", code], capture_output=True, text=True, timeout=300, cwd="/", env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT", 1)[1])
    assert report["versions"][0].startswith("2.15")
    with open(os.path.join(built, rlds.STATISTICS_FILE)) as f:
        stats = json.load(f)
    assert sum(report["lengths"]) == stats["num_steps"] and len(report["lengths"]) == stats["num_trajectories"]
    np.testing.assert_allclose(report["mean"], stats["action"]["mean"], atol=1e-5)
    n = stats["num_transitions"]  # rlds reports the sample std (n - 1), our file the population std
    np.testing.assert_allclose(report["std"], np.array(stats["action"]["std"]) * np.sqrt(n / (n - 1)), atol=1e-4)
    assert report["firsts"][0] and not any(report["firsts"][1:])
    builder = tfds.builder_from_directory(built)
    (episode,) = tfds.as_numpy(builder.as_dataset(split="train"))
    assert report["reward"] == pytest.approx(float(sum(s["reward"] for s in episode["steps"])), rel=1e-5)


def _broken_copy(demos: str, tmp_path) -> tuple[str, str]:
    copy = str(tmp_path / "demos")
    shutil.copytree(demos, copy)
    return copy, os.path.join(copy, "Pick", "episodes", "seed_000003")


def test_corrupt_npz_is_named(demos, tmp_path, capsys):
    copy, stem = _broken_copy(demos, tmp_path)
    with open(stem + ".npz", "r+b") as f:
        f.truncate(200)
    rc = build_rlds.main(["--demos", copy, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and stem + ".npz" in err, err
    assert not os.path.exists(os.path.join(tmp_path, "out", VERSION_DIR, "dataset_info.json"))


def test_missing_npz_names_both_files(demos, tmp_path, capsys):
    copy, stem = _broken_copy(demos, tmp_path)
    os.remove(stem + ".npz")
    rc = build_rlds.main(["--demos", copy, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and stem + ".json" in err and stem + ".npz" in err, err


def test_missing_demos_dir_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no episodes under"):
        rlds.discover_episodes(str(tmp_path))


def _episode(dataset: str, seed: int) -> rlds.EpisodeFiles:
    stem = f"/d/{dataset}/episodes/seed_{seed:06d}"
    return rlds.EpisodeFiles(dataset, stem + ".json", stem + ".npz")


def test_split_assignment_is_deterministic_and_about_five_percent():
    episodes = [_episode(name, s) for name in ("Pick", "Touch") for s in range(1000)]
    splits = rlds.assign_splits(episodes)
    assert len(splits["train"]) + len(splits["val"]) == 2000
    assert 60 <= len(splits["val"]) <= 140
    assert rlds.assign_splits(list(reversed(episodes)))["val"] == list(reversed(splits["val"]))
    # Moving the demos elsewhere keeps the split (only the directory *name* and seed count).
    moved = [rlds.EpisodeFiles(e.dataset, "/x" + e.json_path, "/x" + e.npz_path) for e in episodes]
    assert [e.seed for e in rlds.assign_splits(moved)["val"]] == [e.seed for e in splits["val"]]
    for n in (2, 3, 5):
        small = rlds.assign_splits([_episode("Pick", s) for s in range(n)])
        assert len(small["val"]) >= 1 and len(small["train"]) >= 1
    assert rlds.assign_splits([_episode("Pick", 0)]) == {"train": [_episode("Pick", 0)]}
    everything_val = rlds.assign_splits([_episode("Pick", s) for s in range(4)], val_fraction=1.0)
    assert len(everything_val["train"]) == 1 and len(everything_val["val"]) == 3


@pytest.mark.parametrize(
    ("task", "args", "level"),
    [
        ("Pick", {}, "L0"),
        ("PlaceOnTop", {"spawn_at_gripper": True}, "L0"),
        ("PlaceOnTop", {"num_actors": 3, "num_areas": 3}, "L1"),
        ("PlaceNextTo", {"spawn_at_gripper": True}, "L0"),
        ("PlaceNextTo", {"num_actors": 2}, "L1"),
        ("Touch", {"push": True}, "L0"),
        ("Touch", {"topple": True}, "L0"),
        ("Rotate", {"num_actors": 3}, "L0"),
        ("Rotate", {"num_actors": 3, "restore": True}, "L1"),
        ("Push", {}, "L1"),  # the paper's PushToTarget
        ("SingleStack", {"num_actors": 4}, "L1"),
    ],
)
def test_task_levels(task, args, level):
    assert rlds.task_level(task, args) == level


def test_tfds_build_command_line(demos, tmp_path):
    """`tfds build` on the builder directory (the CLI of TFDS 4.9.4 in .venv-rlds; 4.9.10's CLI imports
    apache-beam at start-up) writes a dataset that our TFDS reads, with its statistics file."""
    tfds_cli = os.path.join(ROOT, ".venv-rlds", "bin", "tfds")
    assert os.path.exists(tfds_cli), "make setup builds .venv-rlds (requirements-rlds.txt)"
    cmd = [tfds_cli, "build", os.path.join(ROOT, "data_pipelines", "clevrskills_rlds"), "--config", "panda_vacuum",
           "--manual_dir", demos, "--data_dir", str(tmp_path)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data_dir = os.path.join(str(tmp_path), VERSION_DIR)
    builder = tfds.builder_from_directory(data_dir)
    assert builder.info.splits["train"].num_examples + builder.info.splits["val"].num_examples == 2
    assert os.path.exists(os.path.join(data_dir, rlds.STATISTICS_FILE))
