"""Converting ClevrSkills' released trajectory directories (clevrskills_spec.md 7.1) into our episodes.

One real Pick episode is recorded in the simulator (image size 32) and written out in the
original benchmark's layout by `write_original` below: npy arrays, mp4 videos as RecordEnv writes
them, the action trace as a bz2 pickle in the original solvers' form (tuples for actors, numpy
float32 poses, python-id/random-id solver identity, no move roles), info.json and ep_info.json.
Converting it must give back the direct recording: the same arrays (images within codec
tolerance) and the same per-step code labels. Then the hostile cases.
"""

from __future__ import annotations

import bz2
import json
import os
import pickle
import shutil
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np
import pytest

from data_pipelines import convert_clevrskills as conv
from tests.helpers import ROOT

SEED = 0
DATASET = "clevrskills-Pick"
NON_IMAGE = ("qpos", "qvel", "ee_pose", "ee_velocity", "vacuum_on", "vacuum_grasping", "vacuum_ready", "actors",
             "bboxes", "actions", "rewards", "success")  # fmt: skip


# --------------------------------------------------------------------------------------------
# Writing a recorded episode in the original layout


def _ref(value):
    """Our JSON actor reference [name, id] as the original's at_get_actor tuple."""
    return None if value is None else (str(value[0]), int(value[1]))


def _pose(value):
    """Our JSON pose [[p], [q]] as the original's at_get_pose: lists of numpy float32 scalars."""
    return None if value is None else ([np.float32(v) for v in value[0]], [np.float32(v) for v in value[1]])


def original_trace(traces: list[list[dict]], prompts: list[str]) -> list[list[dict]]:
    """Our per-step traces (T + 1, the last empty) in the form of the original oracle's pickle.

    The python ids repeat across solvers (CPython reuses the addresses of freed objects), so only
    the (class, python id, random id) triple tells solvers apart, as in real data."""
    rng = np.random.default_rng(1)
    random_ids: dict[int, int] = {}
    out = []
    for step in traces[:-1]:
        states = []
        for depth, state in enumerate(step):
            sid = state["solver_id"]
            random_ids.setdefault(sid, int(rng.integers(1_000_000_000)))
            s = {"solver_class": state["solver_class"], "solver_python_id": 139_872_000_000 + 16 * (sid % 2),
                 "solver_random_id": random_ids[sid], "action_emitted": depth == len(step) - 1}  # fmt: skip
            for key, value in state.items():
                if key in ("solver_class", "solver_id"):
                    continue
                if state["solver_class"] == "Move3dSolver" and key in ("role", "actor", "target_actor"):
                    continue  # the original's moves record none of these
                if key in ("actor", "target_actor", "area_actor"):
                    value = _ref(value)
                elif key in ("store_pose", "actors"):
                    value = [_ref(v) for v in value]
                elif key == "target_pose":
                    value = _pose(value)
                s[key] = value
            if state["solver_class"] == "Solver":
                s["prompts"] = list(prompts)
            if state["solver_class"] == "Move3dSolver":
                s.update(extend_bounds=0.01, grasped=[], grasped_actors=[])
            states.append(s)
        out.append(states)
    return out


def write_video(path: str, frames: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = imageio.get_writer(path, fps=20, quality=10, pixelformat="yuv444p")  # as the original RecordEnv
    for frame in frames:
        writer.append_data(frame)
    writer.close()


def write_original(episode: dict, path: str, seed: int = SEED) -> str:
    """Write a recorded episode as an original trajectory directory (spec 7.1) at `path`."""
    arrays, meta = episode["arrays"], episode["meta"]
    steps = meta["num_steps"]
    os.makedirs(path)

    def save(name: str, array) -> None:
        os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
        np.save(os.path.join(path, name), array)

    save("actions.npy", arrays["actions"][:steps].astype(np.float64))
    save("rewards.npy", arrays["rewards"][:steps].astype(np.float64))
    save("success.npy", arrays["success"][:steps])
    save("env_states.npy", np.zeros((steps + 1, arrays["actors"].shape[1]), np.float32))
    np.save(os.path.join(path, "action_labels.npy"), {t: {"mid_act_label": "", "low_act_label": ""}
                                                      for t in range(1, steps + 1)})  # fmt: skip
    for key in conv.AGENT_FILES:
        save(f"agent/{key}.npy", arrays[key])
    save("agent/base_pose.npy", np.zeros((steps + 1, 7), np.float32))
    save("extra/actors.npy", arrays["actors"])
    for i, actor in enumerate(meta["actors"]):
        save(f"extra/actor_mesh_bbox/base_camera/{actor['key']}.npy", arrays["bboxes"][:, i])
        save(f"extra/actor_is_visible/base_camera/{actor['key']}.npy", np.ones(steps + 1, np.float32))
    save("camera_param/base_camera/intrinsic_cv.npy", np.eye(3)[None].repeat(steps + 1, 0))
    write_video(os.path.join(path, "image/base_camera/rgb.mp4"), arrays["base_image"])
    write_video(os.path.join(path, "image/hand_camera/rgb.mp4"), arrays["hand_image"])
    for name in ("keysteps/0_bimg.jpg", "keysteps/0_rimg.jpg", "scene.jpg", "scene_base.jpg",
                 *(f"objects/{a['key']}.png" for a in meta["actors"])):  # fmt: skip
        os.makedirs(os.path.dirname(os.path.join(path, name)) or path, exist_ok=True)
        imageio.imwrite(os.path.join(path, name), arrays["base_image"][0])
    with bz2.open(os.path.join(path, "action_trace.pickle.bz2"), "wb") as f:
        pickle.dump(original_trace(meta["traces"], meta["prompts"]), f, protocol=4)
    textures = {a["key"]: [a["colour"], [0.5, 0.5, 0.5, 1.0]] for a in meta["actors"]}
    with open(os.path.join(path, "info.json"), "w") as f:
        json.dump({"prompts": meta["prompts"], "textual_description": meta["prompts"][0], "textures": textures}, f)
    write_ep_info(path, seed, steps)
    return path


def write_ep_info(path: str, seed: int, steps: int = 1) -> None:
    """ManiSkill2 RecordEpisode's episode info (no task name in it, as in the released data)."""
    ep_info = {"episode_id": 0, "episode_seed": seed, "control_mode": "pd_ee_delta_pose", "elapsed_steps": steps,
               "reset_kwargs": {"seed": seed, "options": {"record_dir": path, "reconfigure": True}},
               "info": {"success": True, "elapsed_steps": steps}}  # fmt: skip
    with open(os.path.join(path, "ep_info.json"), "w") as f:
        json.dump(ep_info, f)


@pytest.fixture(scope="module")
def recorded() -> dict:
    """A real Pick episode (seed 0, 15 steps), recorded directly."""
    from c2a_jax.sim.rollout import OracleWorker

    worker = OracleWorker("Pick", {}, image_size=32, max_steps=200)
    try:
        episode = worker.run_episode(SEED, images=True)
    finally:
        worker.env.close()
    assert episode["meta"]["success"]
    return episode


@pytest.fixture(scope="module")
def original(recorded, tmp_path_factory) -> str:
    """The recorded episode as an original trajectory directory, under a benchmark-key directory."""
    root = tmp_path_factory.mktemp("released")
    return write_original(recorded, str(root / "L0" / "pick" / f"traj_{SEED}"))


def convert(inputs: list[str], out: str, *extra: str) -> tuple[int, dict]:
    rc = conv.main(["--input", *inputs, "--out", out, "--no-progress", *extra])
    with open(os.path.join(out, conv.SUMMARY)) as f:
        return rc, json.load(f)


def load(out: str, stem: str = f"seed_{SEED:06d}", dataset: str = DATASET) -> tuple[dict, dict]:
    base = os.path.join(out, dataset, "episodes", stem)
    with open(base + ".json") as f:
        meta = json.load(f)
    with np.load(base + ".npz") as data:
        return meta, {k: data[k] for k in data.files}


def copy_with_seed(original: str, directory: str, seed: int) -> str:
    """A copy of the trajectory as traj_<seed> (its ep_info.json saying that seed)."""
    path = os.path.join(directory, f"traj_{seed}")
    shutil.copytree(original, path)
    write_ep_info(path, seed)
    return path


# --------------------------------------------------------------------------------------------
# The round trip


def test_converted_episode_equals_the_direct_recording(recorded, original, tmp_path):
    out = str(tmp_path / "out")
    rc, summary = convert([os.path.dirname(os.path.dirname(original))], out)
    assert rc == 0 and summary["converted"] == 1 and summary["failed"] == 0, summary
    assert summary["datasets"] == {DATASET: 1} and summary["robots"] == ["panda_vacuum"]
    meta, arrays = load(out)
    direct, direct_meta = recorded["arrays"], recorded["meta"]
    assert set(arrays) == set(direct)
    for key in NON_IMAGE:
        assert arrays[key].dtype == direct[key].dtype, key
        np.testing.assert_array_equal(arrays[key], direct[key], err_msg=key)
    for key in ("base_image", "hand_image"):  # through an mp4 (yuv444p, quality 10) and back
        assert arrays[key].shape == direct[key].shape and arrays[key].dtype == np.uint8
        diff = np.abs(arrays[key].astype(int) - direct[key].astype(int))
        assert diff.mean() < 1.0 and diff.max() <= 12, (key, diff.mean(), diff.max())
    assert meta["labels"] == direct_meta["labels"]  # both granularities, key-steps, done()
    for key in ("task", "task_args", "seed", "prompts", "natural_prompts", "success", "num_steps", "image_size"):
        assert meta[key] == direct_meta[key], key
    assert [(a["name"], a["id"], a["key"], a["colour"]) for a in meta["actors"]] == [
        (a["name"], a["id"], a["key"], a["colour"]) for a in direct_meta["actors"]
    ]
    assert meta["robot"] == "panda_vacuum" and meta["split"] == "train" and meta["variant"] == 0
    assert meta["source"]["path"] == original and meta["source"]["task_from"].endswith(os.path.join("L0", "pick"))

    def moves(traces):  # what the fine labels read of each move: inferred from the parent for the original
        return [[(s["solver_class"], s.get("role"), s.get("actor"), s.get("target_actor")) for s in step]
                for step in traces]  # fmt: skip

    assert moves(meta["traces"]) == moves(direct_meta["traces"])
    assert all("prompts" not in s for step in meta["traces"] for s in step)


def test_image_size_resizes_frames_and_boxes(recorded, original, tmp_path):
    out = str(tmp_path / "out")
    rc, summary = convert([original], out, "--image-size", "16")
    assert rc == 0 and summary["converted"] == 1, summary
    meta, arrays = load(out)
    steps = recorded["meta"]["num_steps"] + 1
    assert arrays["base_image"].shape == arrays["hand_image"].shape == (steps, 16, 16, 3)
    assert meta["image_size"] == 16
    from PIL import Image

    halved = np.stack([np.asarray(Image.fromarray(f).resize((16, 16), Image.Resampling.BILINEAR))
                       for f in recorded["arrays"]["base_image"]])  # fmt: skip
    assert np.abs(arrays["base_image"].astype(int) - halved).mean() < 2.0
    boxes, before = arrays["bboxes"], recorded["arrays"]["bboxes"]
    visible = np.all(before[..., :2] >= 0, axis=(-2, -1))
    assert visible.any()
    assert np.all(np.abs(boxes[visible][..., :2] - before[visible][..., :2] / 2) <= 1)
    assert boxes[..., :2].max() <= 15 and np.all(boxes[~visible] == before[~visible])


def test_cli_converts_variants_in_parallel_and_resumes(original, tmp_path):
    released = tmp_path / "released" / "pick"
    shutil.copytree(original, released / f"traj_{SEED}")
    shutil.copytree(original, released / f"traj_{SEED}_variant_1")  # same scene, actor roles permuted
    out = str(tmp_path / "out")
    cmd = [sys.executable, os.path.join(ROOT, "data_pipelines", "convert_clevrskills.py"), "--input", str(released),
           "--out", out, "--num-workers", "2", "--no-progress"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["converted"] == 2 and summary["failed"] == 0, summary
    names = sorted(os.listdir(os.path.join(out, DATASET, "episodes")))
    assert names == [f"seed_{SEED:06d}{v}.{ext}" for v in ("", "_variant_1") for ext in ("json", "npz")]
    variant, _ = load(out, f"seed_{SEED:06d}_variant_1")
    assert variant["variant"] == 1 and variant["task_args"] == {"variant": 1} and variant["seed"] == SEED
    stamps = {n: os.stat(os.path.join(out, DATASET, "episodes", n)).st_mtime_ns for n in names}

    rc, again = convert([str(released)], out)  # resume: nothing left to do
    assert rc == 0 and again["converted"] == 0 and again["skipped"]["already_converted"] == 2, again
    assert stamps == {n: os.stat(os.path.join(out, DATASET, "episodes", n)).st_mtime_ns for n in names}
    os.remove(os.path.join(out, DATASET, "episodes", f"seed_{SEED:06d}.npz"))  # a lost file is redone
    rc, redo = convert([str(released)], out)
    assert rc == 0 and redo["converted"] == 1 and redo["skipped"]["already_converted"] == 1, redo
    rc, resized = convert([str(released)], out, "--image-size", "16")  # other options: converted again
    assert rc == 0 and resized["converted"] == 2 and resized["skipped"]["already_converted"] == 0, resized
    assert load(out)[1]["base_image"].shape[1:] == (16, 16, 3)


def test_success_filter_and_explicit_task(original, tmp_path):
    failed = copy_with_seed(original, str(tmp_path / "in"), 5)
    np.save(os.path.join(failed, "success.npy"), np.zeros_like(np.load(os.path.join(failed, "success.npy"))))
    rc, summary = convert([str(tmp_path / "in")], str(tmp_path / "a"), "--task", "Pick")
    assert rc == 0 and summary["converted"] == 0 and summary["skipped"]["unsuccessful"] == 1, summary
    rc, summary = convert([str(tmp_path / "in")], str(tmp_path / "b"), "--keep-failed", "--task", "Pick",
                          "--dataset-name", "mine")  # fmt: skip
    assert rc == 0 and summary["converted"] == 1, summary
    meta, arrays = load(str(tmp_path / "b"), "seed_000005", "mine")
    assert not meta["success"] and not arrays["success"].any() and meta["task"] == "Pick" and meta["seed"] == 5
    assert "done()" not in {lab["fine"] for lab in meta["labels"]}
    rc, summary = convert([str(tmp_path / "in")], str(tmp_path / "c"), "--keep-failed")  # no task anywhere
    assert rc == 1 and "--task" in summary["failures"][0]["error"], summary


# --------------------------------------------------------------------------------------------
# Hostile input


def _truncate(path: str, size: int = 60) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def test_bad_trajectories_are_named_skipped_and_strict_stops(recorded, original, tmp_path):
    root = tmp_path / "in"
    seed = iter(range(100, 200))
    expected = {}

    def broken(what: str) -> str:
        path = copy_with_seed(original, str(root / what), next(seed))
        expected[path] = what
        return path

    os.remove(os.path.join(broken("missing"), "agent", "qpos.npy"))
    _truncate(os.path.join(broken("corrupt_npy"), "agent", "qvel.npy"))
    with open(os.path.join(broken("corrupt_mp4"), "image", "base_camera", "rgb.mp4"), "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
    write_video(os.path.join(broken("frames"), "image", "hand_camera", "rgb.mp4"),
                recorded["arrays"]["hand_image"][:-1])  # fmt: skip
    _truncate(os.path.join(broken("corrupt_pickle"), "action_trace.pickle.bz2"), 40)
    os.remove(os.path.join(broken("incomplete"), "info.json"))
    names = {
        "missing": "agent/qpos.npy",
        "corrupt_npy": "agent/qvel.npy",
        "corrupt_mp4": "image/base_camera/rgb.mp4",
        "frames": "image/hand_camera/rgb.mp4",
        "corrupt_pickle": "action_trace.pickle.bz2",
        "incomplete": "info.json",
    }
    good = copy_with_seed(original, str(root / "zz_good"), 7)

    out = str(tmp_path / "out")
    rc, summary = convert([str(root)], out, "--task", "Pick")
    assert rc == 1 and summary["converted"] == 1 and summary["failed"] == len(expected), summary
    errors = {f["source"]: f["error"] for f in summary["failures"]}
    assert set(errors) == set(expected)
    for path, what in expected.items():
        named = f"{path}: incomplete trajectory directory, missing info.json" if what == "incomplete" else None
        assert (named or os.path.join(path, names[what])) in errors[path], (what, errors[path])
    frames = next(p for p, w in expected.items() if w == "frames")
    assert f"{len(recorded['arrays']['hand_image']) - 1} frames, expected" in errors[frames]
    assert sorted(os.listdir(os.path.join(out, DATASET, "episodes"))) == ["seed_000007.json", "seed_000007.npz"]
    with open(os.path.join(out, conv.MANIFEST)) as f:
        records = [json.loads(line) for line in f]
    assert {r["source"] for r in records if r["status"] == "failed"} == set(expected)
    assert [r["source"] for r in records if r["status"] == "converted"] == [good]

    strict = str(tmp_path / "strict")  # an incomplete directory stops the run before any conversion
    rc = conv.main(["--input", str(root), "--out", strict, "--no-progress", "--task", "Pick", "--strict"])
    assert rc == 2 and not os.path.exists(os.path.join(strict, DATASET))
    strict = str(tmp_path / "strict2")  # a bad file stops it at that trajectory: the good one after it waits
    bad_mp4 = next(p for p, w in expected.items() if w == "corrupt_mp4")
    rc = conv.main(["--input", os.path.dirname(bad_mp4), str(root / "zz_good"), "--out", strict, "--no-progress",
                    "--task", "Pick", "--strict"])  # fmt: skip
    assert rc == 2 and not os.path.exists(os.path.join(strict, DATASET, "episodes"))


EVIL_OS_SYSTEM = b"cos\nsystem\n(VMARKER\ntR."  # protocol 0: os.system("MARKER")


class _Evil:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_pickle_with_forbidden_globals_is_refused_and_nothing_runs(original, tmp_path):
    marker = tmp_path / "pwned"
    evil_cases = {
        "os.system": EVIL_OS_SYSTEM.replace(b"MARKER", f"touch {marker}".encode()),
        "posix.system": pickle.dumps([[{"solver_class": "Solver", "x": _Evil(f"touch {marker}")}]], protocol=4),
        "builtins.eval": pickle.dumps([[{"solver_class": "Solver", "x": eval}]], protocol=2),
    }
    for name, payload in evil_cases.items():
        path = str(tmp_path / f"{name}.pickle.bz2")
        with bz2.open(path, "wb") as f:
            f.write(payload)
        with pytest.raises(conv.ForbiddenPickleError) as error:
            conv.load_action_trace(path)
        assert name in str(error.value) and path in str(error.value)
    assert not marker.exists()

    trajectory = copy_with_seed(original, str(tmp_path / "in"), 3)
    trace_path = os.path.join(trajectory, conv.TRACE_FILE)
    with bz2.open(trace_path, "wb") as f:
        f.write(evil_cases["os.system"])
    rc, summary = convert([str(tmp_path / "in")], str(tmp_path / "out"), "--task", "Pick")
    assert rc == 1 and summary["failed"] == 1 and summary["converted"] == 0
    error = summary["failures"][0]["error"]
    assert "os.system" in error and trace_path in error
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_allowed_pickle_content_loads_at_every_protocol(tmp_path, protocol):
    trace = [[{"solver_class": "PickMove3dPlaceSolver", "actor": ("red cube", 12), "lift": np.float64(0.1),
               "target_pose": ([np.float32(0.5), np.float32(-0.25)], [np.float32(1.0)]),
               "feasible_positions": np.arange(12, dtype=np.float32).reshape(4, 3), "mask": np.array([True, False]),
               "ids": {np.int64(3), 4}, "frozen": frozenset({"a"}), "blob": b"\x00\xff", "c": complex(1, 2),
               "solver_random_id": np.int64(123456789), "nothing": None}]]  # fmt: skip
    path = str(tmp_path / "trace.pickle.bz2")
    with bz2.open(path, "wb") as f:
        pickle.dump(trace, f, protocol=protocol)
    loaded = conv.load_action_trace(path)
    state = loaded[0][0]
    assert state["actor"] == ("red cube", 12) and state["lift"] == 0.1 and state["ids"] == {3, 4}
    assert state["target_pose"][0][0].dtype == np.float32 and state["target_pose"][0][1] == -0.25
    np.testing.assert_array_equal(state["feasible_positions"], trace[0][0]["feasible_positions"])
    assert state["mask"].dtype == bool and state["blob"] == b"\x00\xff" and state["c"] == complex(1, 2)
    json.dumps(conv.normalise_trace(loaded[0]))  # JSON-able after normalisation


# --------------------------------------------------------------------------------------------
# Original trace forms the recorder never writes


def _native(cls: str, sid: int, **fields) -> dict:
    return {"solver_class": cls, "solver_id": sid, **fields}


def _orig(cls: str, sid: int, **fields) -> dict:
    """The original form of a state: triple identity, tuples, numpy values, no move roles."""

    def convert(key, value):
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and key != "area_direction":
            return (value[0], np.int64(value[1]) if key == "target_actor" else value[1])
        if key == "area_direction":
            return np.array(value, dtype=np.float64)
        return value

    out = {"solver_class": cls, "solver_python_id": 140_000_000_000, "solver_random_id": 1000 + sid}
    out.update({k: convert(k, v) for k, v in fields.items() if k not in ("role", "actor", "target_actor")
                or cls != "Move3dSolver"})  # fmt: skip
    return out


def test_original_trace_forms_label_as_the_native_ones():
    """A PlaceNextTo-style pick-and-place (in_area, ndarray direction, approach/pick/carry/place) and a
    push towards an actor (approach, push, retreat), each in native and original form: the same labels."""
    a, b = ["red cube", 5], ["blue cylinder", 6]
    place = {"actor": a, "target_actor": None, "target_pose": None, "target_pose_name": "area left of",
             "match_ori": False, "lift": 0.03, "target_pose_function": "in_area", "area_description": "left of",
             "area_actor": b, "area_direction": [0.0, 1.0, 0.0]}  # fmt: skip
    push = {"actor": a, "target_actor": b, "target_pose": [[0.1, 0.2, 0.0], [1.0, 0.0, 0.0, 0.0]],
            "target_pose_function": "towards"}  # fmt: skip
    phases = [  # (level-1 solver, its id, fields, [(child class, child id, fields, steps)])
        ("PickMove3dPlaceSolver", 2, place, [
            ("Move3dSolver", 3, {"vacuum": False, "check_done": True, "match_ori": False, "role": "approach",
                                 "actor": None, "target_actor": a}, 2),
            ("PickSolver", 4, {"actor": a, "lift": 0.03}, 2),
            ("Move3dSolver", 5, {"vacuum": True, "check_done": True, "match_ori": False, "role": "carry",
                                 "actor": a, "target_actor": None, "target_pose_name": "area left of"}, 2),
            ("PlaceSolver", 6, {"actor": a, "match_ori_2d": False, "drop_distance": 0.03}, 2),
        ]),
        ("PushSolver", 7, push, [
            ("Move3dSolver", 8, {"vacuum": False, "check_done": True, "match_ori": True, "role": "approach",
                                 "actor": None, "target_actor": a, "target_pose_name": "a good place to push"}, 2),
            ("PushAlongPathSolver", 9, {"actor": a, "target_actor": b}, 2),
            ("Move3dSolver", 10, {"vacuum": False, "check_done": True, "match_ori": True, "role": "retreat",
                                  "actor": None, "target_actor": None,
                                  "target_pose_name": "neutral pose away from actor"}, 2),
        ]),
    ]  # fmt: skip
    native, original = [], []
    for cls, sid, fields, children in phases:
        for child, cid, child_fields, steps in children:
            orig_child = {
                k: v for k, v in child_fields.items() if not (child == "PushAlongPathSolver" and k == "target_actor")
            }
            for _ in range(steps):
                native.append([_native("Solver", 1), _native(cls, sid, **fields), _native(child, cid, **child_fields)])
                original.append([_orig("Solver", 1, prompts=["p"]), _orig(cls, sid, **fields),
                                 _orig(child, cid, path=[[0.0, 0.1]], **orig_child)])  # fmt: skip
    success = np.zeros(len(native), bool)
    success[-1] = True
    expected = conv.label_episode(native, success)
    got = conv.label_episode([conv.normalise_trace(step) for step in original], success)
    assert got == expected
    fine = [lab["fine"] for lab in got if lab["fine_keystep"]]
    assert fine[0].startswith("pose_dict['red cube target'] = free_space_next_to(actor=get_actor('red cube')")
    assert "push(actor=get_actor('red cube'), target_actor=get_actor('blue cylinder'))" in fine
    assert fine[-2:] == ["move3d()", "done()"]  # the retreat, then success
    level1 = [lab["level1"] for lab in got if lab["level1_keystep"]]
    assert level1[1] == "push(actor=get_actor('red cube'), target_actor=get_actor('blue cylinder'))"
    assert len(level1) == 3 and level1[-1] == "done()"
