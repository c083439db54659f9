"""A released-ClevrSkills (xArm6) trajectory -> convert_clevrskills.py -> RLDS -> plain TFDS.

Our simulator has no xArm6, so the trajectory directory is synthesised with numpy in the original
layout (clevrskills_spec.md 7.1): 11 joints, mp4 videos, an action trace pickled in the original
solvers' form. It is converted by the CLI (in its own process: the converter renders prompts with
the simulator package, which must not share a process with TensorFlow), built with
build_rlds.py, which picks the ``xarm6_vacuum`` config from the episode, and read back with TFDS.
"""

from __future__ import annotations

import bz2
import json
import os
import pickle
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np
import pytest
import tensorflow as tf  # noqa: E402

from tests.helpers import ROOT

tf.config.set_visible_devices([], "GPU")
import tensorflow_datasets as tfds  # noqa: E402

from data_pipelines import build_rlds  # noqa: E402
from data_pipelines.clevrskills_rlds import clevrskills_rlds_dataset_builder as rlds  # noqa: E402

SEED, STEPS, SIZE, JOINTS = 7, 8, 32, 11
ACTOR = ("red cube", 5)
KEY = f"{ACTOR[0]}_{ACTOR[1]}"


def _frames(rng: np.random.Generator) -> np.ndarray:
    """Smooth, moving test images (codec-friendly)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    frames = [np.stack([(x * 8 + t * 9) % 256, (y * 8 + t * 5) % 256, np.full_like(x, 40 * t % 256)], -1)
              for t in range(STEPS + 1)]  # fmt: skip
    return np.asarray(frames, np.uint8)


def _state(cls: str, python_id: int, random_id: int, **fields) -> dict:
    return {"solver_class": cls, "solver_python_id": python_id, "solver_random_id": random_id, **fields}


def _trace(prompts: list[str]) -> list[list[dict]]:
    """Pick in the original's trace form: approach (vacuum off), pick, hold (check_done False)."""
    top = _state("Solver", 11, 1, action_emitted=False, prompts=prompts)
    pmp = _state("PickMove3dPlaceSolver", 12, 2, action_emitted=False, actor=ACTOR, target_actor=None,
                 target_pose=None, target_pose_name="lifted pose", match_ori=False, lift=0.1)  # fmt: skip
    pose = ([np.float32(-0.1), np.float32(0.0), np.float32(0.1)], [np.float32(0), np.float32(1), 0.0, 0.0])
    approach = _state("Move3dSolver", 13, 3, action_emitted=True, target_pose=pose, match_ori=False, vacuum=False,
                      extend_bounds=0.01, target_pose_name="{obj:red cube_5}", grasped=[], check_done=True,
                      grasped_actors=[])  # fmt: skip
    pick = _state("PickSolver", 13, 4, action_emitted=True, actor=ACTOR, lift=0.1)  # python id reused
    hold = _state("Move3dSolver", 14, 5, action_emitted=True, target_pose=pose, match_ori=False, vacuum=True,
                  extend_bounds=0.01, target_pose_name="lifted pose", grasped=[], check_done=False,
                  grasped_actors=[ACTOR])  # fmt: skip
    return [[top, pmp, child] for child in [approach] * 3 + [pick] * 3 + [hold] * 2]


def write_xarm6_trajectory(path: str) -> dict:
    """An xArm6 trajectory directory in the original layout; returns the arrays written."""
    rng = np.random.default_rng(SEED)
    rows = STEPS + 1
    arrays = {
        "qpos": rng.uniform(-1, 1, (rows, JOINTS)).astype(np.float32),
        "qvel": rng.uniform(-1, 1, (rows, JOINTS)).astype(np.float32),
        "ee_pose": rng.uniform(-1, 1, (rows, 7)).astype(np.float32),
        "ee_velocity": rng.uniform(-1, 1, (rows, 6)).astype(np.float32),
        "vacuum_on": np.arange(rows) >= 4,
        "vacuum_grasping": np.arange(rows) >= 5,
        "vacuum_ready": np.zeros((rows, 5), bool),
        "actions": rng.uniform(-1, 1, (STEPS, 7)),
        "rewards": np.linspace(0.2, 1.0, STEPS),
        "success": np.arange(STEPS) == STEPS - 1,
        "actors": rng.uniform(-1, 1, (rows, 13)).astype(np.float32),
        "bbox": np.tile(np.array([[10, 12, 1], [16, 18, 1]], np.int32), (rows, 1, 1)),
        "images": _frames(rng),
    }
    files = {
        **{
            f"agent/{k}.npy": arrays[k]
            for k in ("qpos", "qvel", "ee_pose", "ee_velocity", "vacuum_on", "vacuum_grasping", "vacuum_ready")
        },  # fmt: skip
        "agent/base_pose.npy": np.zeros((rows, 7), np.float32),
        "actions.npy": arrays["actions"],
        "rewards.npy": arrays["rewards"],
        "success.npy": arrays["success"],
        "env_states.npy": np.zeros((rows, 13), np.float32),
        "extra/actors.npy": arrays["actors"],
        f"extra/actor_mesh_bbox/base_camera/{KEY}.npy": arrays["bbox"],
        "camera_param/base_camera/intrinsic_cv.npy": np.eye(3)[None].repeat(rows, 0),
    }
    for name, array in files.items():
        os.makedirs(os.path.dirname(os.path.join(path, name)) or path, exist_ok=True)
        np.save(os.path.join(path, name), array)
    np.save(os.path.join(path, "action_labels.npy"), {t: {} for t in range(1, STEPS + 1)})
    for camera in ("base_camera", "hand_camera"):
        os.makedirs(os.path.join(path, "image", camera))
        writer = imageio.get_writer(os.path.join(path, "image", camera, "rgb.mp4"), fps=20, quality=10,
                                    pixelformat="yuv444p")  # fmt: skip
        for frame in arrays["images"]:
            writer.append_data(frame)
        writer.close()
    for name in ("keysteps/0_bimg.jpg", "objects/red cube_5.png", "scene.jpg", "scene_base.jpg"):
        os.makedirs(os.path.dirname(os.path.join(path, name)) or path, exist_ok=True)
        imageio.imwrite(os.path.join(path, name), arrays["images"][0])
    prompts = ["Pick up the {obj:red cube_5}", "Lift the object with {tex:red cube_5} texture"]
    with open(os.path.join(path, "info.json"), "w") as f:
        json.dump({"prompts": prompts, "textual_description": prompts[0], "textures": {KEY: ["red", [1, 0, 0, 1]]}}, f)
    with open(os.path.join(path, "ep_info.json"), "w") as f:
        json.dump({"episode_id": 0, "episode_seed": SEED, "reset_kwargs": {"seed": SEED, "options": {}},
                   "control_mode": "pd_ee_delta_pose", "elapsed_steps": STEPS}, f)  # fmt: skip
    with bz2.open(os.path.join(path, "action_trace.pickle.bz2"), "wb") as f:
        pickle.dump(_trace(prompts), f, protocol=4)
    return arrays


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[str, dict]:
    """The synthetic trajectory converted by the CLI; returns (its --out, the arrays written)."""
    raw = tmp_path_factory.mktemp("released")
    arrays = write_xarm6_trajectory(str(raw / "L0" / "pick" / f"traj_{SEED}"))
    out = str(tmp_path_factory.mktemp("converted"))
    cmd = [sys.executable, os.path.join(ROOT, "data_pipelines", "convert_clevrskills.py"), "--input", str(raw),
           "--out", out, "--no-progress"]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["converted"] == 1 and summary["robots"] == ["xarm6_vacuum"], summary
    return out, arrays


def test_xarm6_episode_builds_and_reads_back_with_plain_tfds(converted, tmp_path):
    demos, arrays = converted
    builder = build_rlds.build(demos, str(tmp_path / "rlds"), progress=False)  # robot: from the episode
    data_dir = os.fspath(builder.data_dir)
    assert data_dir == os.path.join(str(tmp_path / "rlds"), "clevrskills_rlds", "xarm6_vacuum", "1.0.0")

    reader = tfds.builder_from_directory(data_dir)
    assert reader.builder_config.name == "xarm6_vacuum"
    qpos = reader.info.features["steps"]["observation"]["qpos"]
    assert qpos.shape == (JOINTS,) and "xArm6" in qpos.doc.desc
    episodes = list(tfds.as_numpy(reader.as_dataset(split="train")))
    assert len(episodes) == 1
    steps, meta = list(episodes[0]["steps"]), episodes[0]["episode_metadata"]
    assert len(steps) == STEPS + 1
    assert meta["task"].decode() == "Pick" and int(meta["seed"]) == SEED and meta["level"].decode() == "L0"
    assert meta["dataset"].decode() == "clevrskills-Pick"
    assert [p.decode() for p in meta["prompts"]] == ["Pick up the the red cube", "Lift the object with red texture"]
    np.testing.assert_array_equal(np.stack([s["observation"]["qpos"] for s in steps]), arrays["qpos"])
    np.testing.assert_array_equal(np.stack([s["observation"]["qvel"] for s in steps]), arrays["qvel"])
    actions = np.stack([s["action"] for s in steps])
    np.testing.assert_array_equal(actions[:-1], arrays["actions"].astype(np.float32))
    assert not actions[-1].any()
    images = np.stack([s["observation"]["image"] for s in steps]).astype(int)
    assert images.shape == (STEPS + 1, SIZE, SIZE, 3) and np.abs(images - arrays["images"]).mean() < 1.0
    assert {s["language_instruction"].decode() for s in steps} == {"Pick up the the red cube"}
    assert [s["is_terminal"] for s in steps] == [False] * STEPS + [True]
    assert {tuple(s["actor_grid_positions"][0]) for s in steps} == {(4, 5)}  # box centre (13, 15) of 32 px
    fine = [s["code_fine"].decode() for s in steps]
    keys = [bool(s["is_keystep_fine"]) for s in steps]
    assert [c for c, k in zip(fine, keys, strict=True) if k] == [
        "move3d(target_actor=get_actor('red cube'))",  # approach: vacuum off under PickMove3dPlaceSolver
        "pick(actor=get_actor('red cube'))",
        "move3d(actor=get_actor('red cube'))",  # hold: check_done False
        "done()",
    ]
    assert fine[STEPS - 1 :] == ["done()", "# done()"]  # the successful action's step, then the last one
    level1 = [s["code_level1"].decode() for s in steps]
    assert level1[0] == "pick_move3d_place(actor=get_actor('red cube'))" and level1[-1] == "# done()"
    with open(os.path.join(data_dir, rlds.STATISTICS_FILE)) as f:
        stats = json.load(f)
    assert len(stats["qpos"]["mean"]) == JOINTS and stats["num_trajectories"] == 1


def test_robot_mismatch_is_named(converted, tmp_path, capsys):
    demos, _ = converted
    rc = build_rlds.main(["--demos", demos, "--out", str(tmp_path / "rlds"), "--robot", "panda_vacuum",
                          "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    episode = os.path.join(demos, "clevrskills-Pick", "episodes", f"seed_{SEED:06d}.json")
    assert rc == 2 and episode in err and "xarm6_vacuum" in err, err


def test_episode_file_names_with_variants():
    files = rlds.EpisodeFiles(
        "d", "/x/d/episodes/seed_000042_variant_3.json", "/x/d/episodes/seed_000042_variant_3.npz"
    )
    assert (files.seed, files.variant, files.key) == ("42", 3, "d/seed_000042_variant_3")
    plain = rlds.EpisodeFiles("d", "/x/d/episodes/seed_000042.json", "/x/d/episodes/seed_000042.npz")
    assert (plain.seed, plain.variant) == ("42", 0)
    # all variants of a scene land in the same split (the hash reads dataset and seed)
    assert rlds._hash_fraction(files) == rlds._hash_fraction(plain)
