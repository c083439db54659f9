#!/usr/bin/env python
"""Convert ClevrSkills' released trajectory directories into our episode files, then into RLDS.

    python data_pipelines/convert_clevrskills.py --input DIR [DIR ...] --out OUT \
        [--dataset-name NAME] [--task TASK [--task-args JSON]] [--require-success | --keep-failed] \
        [--num-workers N] [--image-size S] [--split train|test] [--max-depth D] [--strict] [--no-progress]
    python data_pipelines/build_rlds.py --demos OUT --out RLDS

Input: the original benchmark's trajectory directories (clevrskills_spec.md 7.1: ``traj_<seed>/`` or
``traj_<seed>_variant_<v>/`` with npy arrays, mp4 videos, a bz2-pickled action trace, info.json and
ep_info.json), found under each ``--input`` as the original ``find_trajectories`` finds them (spec
7.4): a directory holding every file of `IS_TRAJECTORY_FILES` is a trajectory, any other directory
is searched recursively (``--max-depth``, default unlimited); with ``--require-success`` (the
default) a trajectory whose ``success.npy`` is all False is skipped. A ``traj_*`` directory that lacks
some of those files is reported as bad (it would be silently ignored by the original loader).

Output: ``OUT/<dataset>/episodes/seed_<seed>[_variant_<v>].json + .npz`` in the layout of
`c2a_jax.sim.rollout` (T actions, T + 1 observations, last action row zeros, rewards and success
padded with their last value), plus ``robot`` (``xarm6_vacuum`` for the 11-joint qpos of the released
data, ``panda_vacuum`` for 12) and ``source`` (the trajectory directory and its ep_info.json) in the
JSON, so that ``build_rlds.py`` picks the builder config of that robot. Mapping:

* images: ``image/{base,hand}_camera/rgb.mp4`` (exactly T + 1 frames), resized to ``--image-size``
  (bilinear) when given, base-camera boxes scaled with them;
* proprioception: ``agent/{qpos,qvel,ee_pose,ee_velocity,vacuum_on,vacuum_grasping,vacuum_ready}.npy``;
* actors: ``extra/actors.npy`` and the boxes ``extra/actor_mesh_bbox/base_camera/<name>_<id>.npy``,
  actors in ascending id order (the order the original loader assumes, spec 7.4);
* ``actions.npy`` (T, 7), ``rewards.npy``, ``success.npy`` (T,); the episode counts as successful when
  any step is (spec 7.2);
* prompts: ``info.json`` placeholder prompts, rendered with our `render_prompt` and its textures;
* seed and variant: ``ep_info.json`` (``reset_kwargs.seed`` / ``episode_seed``) and the directory
  name, which must agree;
* task and arguments: ``--task``/``--task-args``, else a ``task``/``task_args`` (or ``env_kwargs``)
  entry of ep_info.json, else the nearest ancestor directory named by a benchmark key of spec 3.0.5
  (``.../L0/pick/traj_42`` -> Pick ``{}``, as the original data-generation scripts lay data out); a
  variant v != 0 adds ``variant: v`` to the task arguments;
* labels: the action trace, read by a restricted unpickler (`load_action_trace`: plain containers,
  scalars and numpy arrays only; any other global is refused, nothing is executed), normalised
  (`normalise_trace`) and labelled by our `EpisodeLabeler` at both granularities. The stored traces
  leave out the bulky ``prompts``, ``feasible_positions`` and ``path`` fields.

The default dataset name is ``clevrskills-<task>[-<arg>=<value>...]`` (arguments as
generate_demos.py names its datasets, the variant left out so that all variants of a task share a
dataset). Resumable: every attempt is appended to ``OUT/conversion_manifest.jsonl``; a rerun skips
trajectories already converted to the same file with the same ``--image-size`` and ``--split``
whose files exist, converts the rest again, and retries failed ones. Episodes are written
atomically. A bad trajectory (missing, corrupt or inconsistent file, forbidden pickle content) is
reported with the file it concerns and skipped; ``--strict`` stops at the first one instead (exit
status 2; finished episodes stay). The summary (converted / skipped / failed with reasons) is
printed as JSON and written to ``OUT/conversion_summary.json``; exit status 1 if any trajectory
failed.
"""

from __future__ import annotations

import argparse
import bz2
import dataclasses
import io
import json
import os
import pickle
import re
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from c2a_jax.fileio import append_jsonl, atomic_write_bytes, atomic_write_text, latest_jsonl_records  # noqa: E402

# load_traj.is_trajectory's file set (spec 7.1): a directory holding all of them is a trajectory.
IS_TRAJECTORY_FILES = (
    "action_labels.npy",
    "actions.npy",
    "action_trace.pickle.bz2",
    "agent",
    "camera_param",
    "env_states.npy",
    "image",
    "info.json",
    "keysteps",
    "objects",
    "rewards.npy",
    "scene_base.jpg",
    "scene.jpg",
    "success.npy",
)
# Observation arrays of our layout -> the original's files, with the trailing shape each must have
# (None: the robot's joint count).
AGENT_FILES: dict[str, tuple[str, tuple[int | None, ...]]] = {
    "qpos": ("agent/qpos.npy", (None,)),
    "qvel": ("agent/qvel.npy", (None,)),
    "ee_pose": ("agent/ee_pose.npy", (7,)),
    "ee_velocity": ("agent/ee_velocity.npy", (6,)),
    "vacuum_on": ("agent/vacuum_on.npy", ()),
    "vacuum_grasping": ("agent/vacuum_grasping.npy", ()),
    "vacuum_ready": ("agent/vacuum_ready.npy", (5,)),
}
FLOAT_ARRAYS = ("qpos", "qvel", "ee_pose", "ee_velocity")
VIDEOS = {"base_image": "image/base_camera/rgb.mp4", "hand_image": "image/hand_camera/rgb.mp4"}
ACTORS_FILE = "extra/actors.npy"
BBOX_DIR = "extra/actor_mesh_bbox/base_camera"
TRACE_FILE = "action_trace.pickle.bz2"
ACTOR_STATE_DIM = 13  # p(3) q(4) v(3) w(3) per task actor (spec 1.9)
# The robot of a released trajectory, told by its joint count (spec 1.4).
ROBOT_BY_QPOS_DIM = {11: "xarm6_vacuum", 12: "panda_vacuum"}
TRAJ_NAME = re.compile(r"traj_(\d+)(?:_variant_(\d+))?")
MANIFEST = "conversion_manifest.jsonl"
SUMMARY = "conversion_summary.json"
# Trace fields the labels never read and that would bloat every step's JSON.
DROPPED_TRACE_FIELDS = ("prompts", "feasible_positions", "path")

# Benchmark keys of utils/task_utils.py (spec 3.0.5), as directory names -> (task, arguments). The
# three `replace` entries are `restore` (what the data-generation scripts pass).
BENCHMARK_TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "pick": ("Pick", {}),
    "place": ("PlaceOnTop", {"spawn_at_gripper": True}),
    "match_pose": ("MatchPose", {"ngoals": 1}),
    "move_without_hitting": ("MoveWithoutHitting", {}),
    "push": ("Push", {}),
    "rotate": ("Rotate", {"num_actors": 3}),
    "throw": ("Throw", {"spawn_at_gripper": True, "target_2d": False}),
    "throw_topple": ("Throw", {"spawn_at_gripper": True, "target_2d": False, "topple_target": True}),
    "touch": ("Touch", {}),
    "touch_push": ("Touch", {"push": True}),
    "touch_topple": ("Touch", {"topple": True}),
    "trace": ("Trace", {"ngoals": 3}),
    "follow_order": ("FollowOrder", {"num_areas": 4, "num_predicates": 4}),
    "follow_order_restore": ("FollowOrder", {"num_areas": 2, "num_predicates": 2, "restore": True}),
    "rearrange": ("Rearrange", {"num_actors": 3}),
    "rearrange_restore": ("Rearrange", {"num_actors": 3, "restore": True}),
    "rotate_restore": ("Rotate", {"num_actors": 3, "restore": True}),
    "simple_manipulation": ("PlaceOnTop", {"num_actors": 3, "num_areas": 3}),
    "single_stack": ("SingleStack", {"num_actors": 4}),
    "sort2d": ("Sort2d", {"num_actors": 4, "num_areas": 3}),
    "swap": ("Swap", {}),
    "neighbour": ("Neighbour", {"num_areas": 3}),
    "rotate_symmetry": ("RotateSymmetry", {"num_actors": 4}),
    "stack_reversed": ("SingleStack", {"num_actors": 4, "reverse": True}),
    "novel_adj": ("NovelAdjective", {}),
    "novel_noun": ("NovelNoun", {"num_actors": 3, "num_areas": 3}),
    "novel_adj_noun": ("NovelNounAdjective", {}),
    "balance": ("BalanceScale", {"num_actors": 4}),
    "sort_stack": ("SortStack", {"num_actors": 6, "num_areas": 3}),
    "stack_topple": ("SingleStack", {"num_actors": 4, "topple": True}),
    "swap_push": ("Swap", {"push": True}),
    "swap_rotate": ("SwapRotate", {}),
    "throw_sort": ("ThrowAndSort", {"num_actors": 4, "num_areas": 3}),
}


class ConversionError(ValueError):
    """A trajectory cannot be converted; the message names the file (or directory) at fault."""


class ForbiddenPickleError(ConversionError, pickle.UnpicklingError):
    """An action-trace pickle refers to a global outside the allowed set."""


# --------------------------------------------------------------------------------------------
# The action trace: a restricted unpickler


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals an action-trace pickle may name: numpy's array and scalar reconstruction
    (under both numpy 1's ``numpy.core`` and numpy 2's ``numpy._core`` names, so that files written
    with either load here), the builtin container types pickle cannot spell without a global, and
    ``_codecs.encode`` (protocol <= 2 writes bytes through it). None of them runs code of the
    file's choosing."""
    core = getattr(np, "_core", None) or np.core
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{prefix}.numeric", "_frombuffer")] = core.numeric._frombuffer
    for module in ("builtins", "__builtin__"):
        for kind in (set, frozenset, complex, bytearray):
            allowed[(module, kind.__name__)] = kind
    allowed[("_codecs", "encode")] = _codecs_encode
    return allowed


def _codecs_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to str -> bytes (all protocol-2 pickles use it for)."""
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise pickle.UnpicklingError("_codecs.encode is allowed for str -> bytes only")
    return text.encode(encoding, errors)


_ALLOWED_GLOBALS = _allowed_globals()


class _TraceUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise ForbiddenPickleError(
                f"{self.path}: refusing to load the global {module}.{name} (an action trace holds only plain "
                "containers, scalars and numpy arrays; this file may be corrupt or malicious, nothing was executed)"
            )
        return obj

    def persistent_load(self, pid):
        raise ForbiddenPickleError(f"{self.path}: refusing a persistent id in the pickle ({pid!r:.80})")


def load_action_trace(path: str) -> list[list[dict]]:
    """The action trace of a trajectory (``action_trace.pickle.bz2``): per step, the active
    solvers' action states, top first (spec 5.9). Refuses any global but `_ALLOWED_GLOBALS`
    (`ForbiddenPickleError` naming the file and the global); other damage raises `ConversionError`."""
    try:
        with bz2.open(path, "rb") as f:
            trace = _TraceUnpickler(f, path).load()
    except ForbiddenPickleError:
        raise
    except Exception as e:  # noqa: BLE001  (a damaged pickle can raise nearly anything; name the file)
        raise ConversionError(f"cannot read the action trace {path}: {type(e).__name__}: {e}") from e
    if not isinstance(trace, list):
        raise ConversionError(f"action trace {path} is a {type(trace).__name__}, expected a list of steps")
    for t, step in enumerate(trace):
        if not isinstance(step, list | tuple) or not step:
            raise ConversionError(f"action trace {path}: step {t} is not a non-empty list of solver states")
        for state in step:
            if not isinstance(state, dict) or not isinstance(state.get("solver_class"), str):
                raise ConversionError(f"action trace {path}: step {t} holds a state without a solver_class")
    return trace


# --------------------------------------------------------------------------------------------
# Trace normalisation: the original's values and solvers -> what EpisodeLabeler reads


def plain(value: Any) -> Any:
    """`value` as JSON-able Python: numpy scalars and arrays to numbers and lists, tuples (actor
    references ``(name, id)``, poses ``([p], [q])``) to lists, dict keys to strings."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(plain(k)): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, complex):
        return [value.real, value.imag]
    return value


def _infer_move_role(state: dict, parent: dict) -> None:
    """Give an original `Move3dSolver` state the ``role`` and actors our solvers record (what the
    fine labels name), from its parent, as the original solvers create their moves:
    `PickMove3dPlaceSolver` approaches with the vacuum off, holds a lifted actor with
    ``check_done=False`` and otherwise carries; `Move3dTouchSolver` and `PushSolver` approach, or
    back off to a ``"neutral pose..."``."""
    cls = parent.get("solver_class")
    actor, target = parent.get("actor"), parent.get("target_actor")
    if cls == "PickMove3dPlaceSolver":
        if not state.get("vacuum"):
            role, actor, target = "approach", None, actor
        elif state.get("check_done") is False:
            role, target = "hold", None
        else:
            role = "carry"
    elif cls in ("Move3dTouchSolver", "PushSolver"):
        if str(state.get("target_pose_name") or "").startswith("neutral pose"):
            role, actor, target = "retreat", None, None
        else:
            role, actor, target = "approach", None, actor
    else:
        return
    state["role"] = role
    state["actor"] = actor
    state["target_actor"] = target


def normalise_trace(step: Iterable[dict]) -> list[dict]:
    """One step of an original action trace (top solver first) in the form our recorder writes:
    JSON-able values (`plain`), without `DROPPED_TRACE_FIELDS`, `Move3dSolver` roles inferred
    (`_infer_move_role`), and a `PushAlongPathSolver` under a push *towards* an actor naming that
    actor as ours does. Solver identity stays the original triple (`c2a_jax.codeapi.trace.solver_key`)."""
    out: list[dict] = []
    for state in step:
        s = {k: plain(v) for k, v in state.items() if k not in DROPPED_TRACE_FIELDS}
        parent = out[-1] if out else None
        if parent is not None and s["solver_class"] == "Move3dSolver" and "role" not in s:
            _infer_move_role(s, parent)
        if (
            parent is not None
            and s["solver_class"] == "PushAlongPathSolver"
            and s.get("target_actor") is None
            and parent.get("target_pose_function") == "towards"
            and parent.get("target_actor") is not None
        ):
            s["target_actor"] = parent["target_actor"]
        out.append(s)
    return out


def label_episode(traces: list[list[dict]], success: np.ndarray, trace_path: str = "") -> list[dict]:
    """Per-step labels (T + 1: the recorder's final step too) of normalised traces, as
    `c2a_jax.sim.rollout.record_oracle_episode` labels its own: step t says ``done()`` from the first
    step whose action led to success."""
    from c2a_jax.codeapi.trace import EpisodeLabeler

    labeler = EpisodeLabeler()
    labels = []
    for t, trace in enumerate(traces):
        try:
            labels.append(labeler.label(trace, success_before=bool(success[t])))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ConversionError(
                f"action trace {trace_path}: step {t} cannot be labelled ({type(e).__name__}: {e})"
            ) from e
    final = labeler.label([], success_before=True) if np.any(success) else labels[-1]
    return [vars(label) for label in [*labels, final]]


# --------------------------------------------------------------------------------------------
# Reading one trajectory


def missing_files(path: str, names: Iterable[str] = IS_TRAJECTORY_FILES) -> list[str]:
    return [n for n in names if not os.path.exists(os.path.join(path, n))]


def is_trajectory(path: str, require_success: bool = False) -> bool:
    """``load_traj.is_trajectory`` (spec 7.1): every file of `IS_TRAJECTORY_FILES` is present and,
    with `require_success`, any step succeeded. An unreadable success.npy raises ConversionError."""
    if not os.path.isdir(path) or missing_files(path):
        return False
    return not require_success or bool(np.any(read_npy(path, "success.npy")))


def read_npy(directory: str, name: str) -> np.ndarray:
    """``<directory>/<name>`` without pickles; missing or damaged files raise ConversionError."""
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise ConversionError(f"missing file {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ConversionError(f"cannot read {path}: {e}") from e


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read {path}: {e}") from e


def _check_rows(path: str, array: np.ndarray, rows: int, tail: tuple[int, ...], what: str) -> None:
    if array.ndim != 1 + len(tail) or len(array) != rows or array.shape[1:] != tail:
        want = (rows, *tail)
        raise ConversionError(f"{path}: shape {array.shape}, expected {want} ({what})")


def read_video(path: str, frames: int) -> np.ndarray:
    """The (frames, H, W, 3) uint8 frames of an mp4; a missing, undecodable or wrong-length video
    raises ConversionError naming it."""
    if not os.path.isfile(path):
        raise ConversionError(f"missing file {path}")
    import imageio.v2 as imageio

    try:
        reader = imageio.get_reader(path, format="FFMPEG")
        try:
            images = [np.asarray(frame) for frame in reader]
        finally:
            reader.close()
    except Exception as e:  # noqa: BLE001  (ffmpeg failures surface as many types; name the file)
        raise ConversionError(f"cannot decode video {path}: {type(e).__name__}: {e}") from e
    if len(images) != frames:
        raise ConversionError(f"{path}: {len(images)} frames, expected {frames} (one per observation)")
    video = np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ConversionError(f"{path}: frames of shape {video.shape[1:]} {video.dtype}, expected (H, W, 3) uint8")
    return video


def resize_video(video: np.ndarray, size: int) -> np.ndarray:
    """Frames resized to `size` x `size` (bilinear, antialiased when shrinking)."""
    if video.shape[1:3] == (size, size):
        return video
    from PIL import Image

    resample = Image.Resampling.BILINEAR
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), resample)) for f in video])


def scale_boxes(boxes: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """Base-camera boxes ``[[xmin, ymin, 1], [xmax, ymax, 1]]`` of an H x W image on a `size` x
    `size` image (min floored, max ceiled, clipped); ``-1`` boxes (not in view) stay."""
    out = boxes.astype(np.int32).copy()
    h, w = shape
    scale = np.array([size / w, size / h])
    xy = boxes[..., :2].astype(np.float64) * scale
    lo = np.clip(np.floor(xy[..., 0, :]), 0, size - 1)
    hi = np.clip(np.ceil(xy[..., 1, :]), 0, size - 1)
    valid = np.all(boxes[..., :2] >= 0, axis=(-2, -1))
    out[..., 0, :2] = np.where(valid[..., None], lo, out[..., 0, :2])
    out[..., 1, :2] = np.where(valid[..., None], hi, out[..., 1, :2])
    return out


def task_actors(path: str) -> list[tuple[str, int]]:
    """(name, id) of the task actors, by ascending id, from the base-camera box files."""
    directory = os.path.join(path, BBOX_DIR)
    if not os.path.isdir(directory):
        raise ConversionError(f"missing directory {directory} (per-actor bounding boxes)")
    actors = []
    for filename in os.listdir(directory):
        stem, ext = os.path.splitext(filename)
        name, _, actor_id = stem.rpartition("_")
        if ext != ".npy":
            continue
        if not name or not actor_id.isdigit():
            raise ConversionError(f"{os.path.join(directory, filename)}: not named <actor name>_<id>.npy")
        actors.append((name, int(actor_id)))
    if not actors:
        raise ConversionError(f"{directory} holds no <name>_<id>.npy box files")
    return sorted(actors, key=lambda a: (a[1], a[0]))


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a trajectory goes and what it is."""

    source: str
    dataset: str
    stem: str
    task: str
    task_args: dict
    seed: int
    variant: int
    task_from: str

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.stem}"

    def paths(self, out: str) -> tuple[str, str]:
        base = os.path.join(out, self.dataset, "episodes", self.stem)
        return base + ".json", base + ".npz"


def dataset_name(task: str, task_args: dict) -> str:
    """generate_demos.py's name of a (task, arguments) dataset, prefixed ``clevrskills-``."""
    from data_pipelines.generate_demos import dataset_name as demos_name

    return "clevrskills-" + demos_name(task, {k: v for k, v in task_args.items() if k != "variant"})


def _task_from_ep_info(ep_info: dict) -> tuple[str, dict] | None:
    for entry in (ep_info, ep_info.get("env_kwargs")):
        if isinstance(entry, dict) and isinstance(entry.get("task"), str):
            args = entry.get("task_args") or {}
            if isinstance(args, dict):
                return entry["task"], dict(args)
    return None


def identify(source: str, task: str | None = None, task_args: dict | None = None, dataset: str | None = None) -> Target:
    """The target of a trajectory directory: seed and variant (ep_info.json and the directory name),
    task (`task` / ep_info.json / an ancestor named by a benchmark key), dataset and file stem."""
    source = os.path.abspath(source)
    match = TRAJ_NAME.fullmatch(os.path.basename(source))
    dir_seed = int(match.group(1)) if match else None
    variant = int(match.group(2)) if match and match.group(2) else 0
    ep_path = os.path.join(source, "ep_info.json")
    ep_info = read_json(ep_path) if os.path.exists(ep_path) else {}
    if not isinstance(ep_info, dict):
        raise ConversionError(f"{ep_path} is not a JSON object")
    reset = ep_info.get("reset_kwargs") if isinstance(ep_info.get("reset_kwargs"), dict) else {}
    ep_seed = reset.get("seed", ep_info.get("episode_seed"))
    if ep_seed is not None and not isinstance(ep_seed, int):
        raise ConversionError(f"{ep_path}: seed {ep_seed!r} is not an integer")
    if ep_seed is not None and dir_seed is not None and ep_seed != dir_seed:
        raise ConversionError(
            f"{ep_path} says seed {ep_seed}, the directory name {os.path.basename(source)} {dir_seed}"
        )
    seed = ep_seed if ep_seed is not None else dir_seed
    if seed is None:
        raise ConversionError(f"{source}: no seed (no ep_info.json seed and no traj_<seed> directory name)")
    if task is not None:
        found, task_from = (task, dict(task_args or {})), "--task"
    elif (found := _task_from_ep_info(ep_info)) is not None:
        task_from = ep_path
    else:
        found, task_from, parent = None, "", os.path.dirname(source)
        while parent and found is None:
            key = os.path.basename(parent)
            if key in BENCHMARK_TASKS:
                found, task_from = BENCHMARK_TASKS[key], f"directory {parent}"
            parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
        if found is None:
            raise ConversionError(
                f"{source}: cannot tell the task (ep_info.json does not name it and no enclosing directory is a "
                f"benchmark key such as 'pick' or 'touch_push'); pass --task and --task-args"
            )
    name, args = found[0], dict(found[1])
    if variant and "variant" not in args:
        args["variant"] = variant
    stem = f"seed_{seed:06d}" + (f"_variant_{variant}" if variant else "")
    return Target(source, dataset or dataset_name(name, args), stem, name, args, int(seed), variant, task_from)


def convert_trajectory(target: Target, image_size: int | None = None, split: str = "train") -> dict[str, Any]:
    """One released trajectory as ``{"arrays", "meta"}`` in the layout of `c2a_jax.sim.rollout`."""
    path = target.source
    actions = read_npy(path, "actions.npy")
    if actions.ndim != 2 or actions.shape[1] != 7 or len(actions) < 1:
        raise ConversionError(f"{os.path.join(path, 'actions.npy')}: shape {actions.shape}, expected (T >= 1, 7)")
    steps = len(actions)
    rows = steps + 1
    rewards = read_npy(path, "rewards.npy")
    success = read_npy(path, "success.npy")
    for name, array in (("rewards.npy", rewards), ("success.npy", success)):
        _check_rows(os.path.join(path, name), array, steps, (), f"one per action in actions.npy, T={steps}")
    success = success.astype(bool)

    arrays: dict[str, np.ndarray] = {}
    for key, (name, tail) in AGENT_FILES.items():
        array = read_npy(path, name)
        if tail == (None,):
            if array.ndim != 2 or array.shape[1] not in ROBOT_BY_QPOS_DIM:
                raise ConversionError(
                    f"{os.path.join(path, name)}: shape {array.shape}, expected (T+1, D) with D in "
                    f"{sorted(ROBOT_BY_QPOS_DIM)} (xArm6 or Panda with the vacuum tool)"
                )
            tail = (array.shape[1],)
        _check_rows(os.path.join(path, name), array, rows, tail, f"T+1={rows} observations")
        arrays[key] = array.astype(np.float32) if key in FLOAT_ARRAYS else array.astype(bool)
    if arrays["qvel"].shape != arrays["qpos"].shape:
        raise ConversionError(f"{os.path.join(path, 'agent/qvel.npy')}: shape differs from agent/qpos.npy")
    robot = ROBOT_BY_QPOS_DIM[arrays["qpos"].shape[1]]

    actors = task_actors(path)
    states = read_npy(path, ACTORS_FILE)
    _check_rows(os.path.join(path, ACTORS_FILE), states, rows, (ACTOR_STATE_DIM * len(actors),),
                f"T+1 rows of 13 per task actor, {len(actors)} actors in {BBOX_DIR}")  # fmt: skip
    boxes = []
    for name, actor_id in actors:
        box_name = f"{BBOX_DIR}/{name}_{actor_id}.npy"
        box = read_npy(path, box_name)
        _check_rows(os.path.join(path, box_name), box, rows, (2, 3), f"T+1={rows} observations")
        boxes.append(box)
    bboxes = np.stack(boxes, axis=1).astype(np.int32)

    for key, name in VIDEOS.items():
        arrays[key] = read_video(os.path.join(path, name), rows)
    if image_size is not None:
        bboxes = scale_boxes(bboxes, arrays["base_image"].shape[1:3], image_size)
        for key in VIDEOS:
            arrays[key] = resize_video(arrays[key], image_size)
    arrays["actors"] = states.astype(np.float32)
    arrays["bboxes"] = bboxes
    arrays["actions"] = np.concatenate([actions.astype(np.float32), np.zeros((1, 7), np.float32)])
    arrays["rewards"] = np.append(rewards.astype(np.float32), np.float32(rewards[-1]))
    arrays["success"] = np.append(success, success[-1])

    info_path = os.path.join(path, "info.json")
    info = read_json(info_path)
    prompts = info.get("prompts") if isinstance(info, dict) else None
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ConversionError(f"{info_path}: no list of prompts")
    if not isinstance(info.get("textures") or {}, dict):
        raise ConversionError(f"{info_path}: textures is not a JSON object")
    textures = {}
    for key, value in (info.get("textures") or {}).items():
        textures[str(key)] = str(value[0] if isinstance(value, list | tuple) and value else value)
    from c2a_jax.sim.prompts import render_prompt

    trace_path = os.path.join(path, TRACE_FILE)
    if not os.path.isfile(trace_path):
        raise ConversionError(f"missing file {trace_path}")
    trace = load_action_trace(trace_path)
    if len(trace) != steps:
        raise ConversionError(f"action trace {trace_path}: {len(trace)} steps, actions.npy has {steps}")
    try:
        traces = [normalise_trace(step) for step in trace]
    except (TypeError, ValueError, KeyError) as e:
        raise ConversionError(f"action trace {trace_path}: {type(e).__name__}: {e}") from e
    labels = label_episode(traces, success, trace_path)

    ep_path = os.path.join(path, "ep_info.json")
    meta = {
        "task": target.task,
        "task_args": target.task_args,
        "seed": target.seed,
        "variant": target.variant,
        "split": split,
        "image_size": int(arrays["base_image"].shape[1]),
        "robot": robot,
        "prompts": prompts,
        "natural_prompts": [render_prompt(p, textures) for p in prompts],
        "textures": textures,
        "actors": [
            {
                "name": name,
                "id": actor_id,
                "key": f"{name}_{actor_id}",
                "colour": textures.get(f"{name}_{actor_id}"),
                "shape": None,
                "size": None,
            }
            for name, actor_id in actors
        ],
        "labels": labels,
        "traces": [*traces, []],
        "success": bool(np.any(success)),
        "num_steps": steps,
        "source": {
            "format": "ClevrSkills trajectory directory (clevrskills_spec.md 7.1)",
            "path": path,
            "task_from": target.task_from,
            "ep_info": read_json(ep_path) if os.path.exists(ep_path) else None,
        },
    }
    return {"arrays": arrays, "meta": meta}


def write_episode(target: Target, out: str, episode: dict) -> tuple[str, str]:
    """Write an episode atomically: arrays first, then the JSON that marks it complete."""
    json_path, npz_path = target.paths(out)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **episode["arrays"])
    atomic_write_bytes(npz_path, buffer.getvalue())
    atomic_write_text(json_path, json.dumps(episode["meta"]))
    return json_path, npz_path


# --------------------------------------------------------------------------------------------
# Finding trajectories


@dataclasses.dataclass
class Scan:
    found: list[str] = dataclasses.field(default_factory=list)  # trajectories to convert
    unsuccessful: list[str] = dataclasses.field(default_factory=list)  # left out by --require-success
    bad: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (directory, reason)


def scan(inputs: Iterable[str], require_success: bool = True, max_depth: int = -1) -> Scan:
    """`find_trajectories` over every input (spec 7.4), in sorted order; ``traj_*`` directories
    that are incomplete, and trajectories whose success.npy is unreadable, are collected as bad."""
    result, seen = Scan(), set()

    def visit(path: str, depth: int) -> None:
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        if not missing_files(path):
            try:
                ok = is_trajectory(path, require_success)
            except ConversionError as e:
                result.bad.append((path, str(e)))
                return
            (result.found if ok else result.unsuccessful).append(path)
            return
        if TRAJ_NAME.fullmatch(os.path.basename(path)):
            missing = ", ".join(missing_files(path))
            result.bad.append((path, f"{path}: incomplete trajectory directory, missing {missing}"))
            return
        if depth == 0:
            return
        try:
            names = sorted(os.listdir(path))
        except OSError as e:
            result.bad.append((path, f"cannot list {path}: {e}"))
            return
        for name in names:
            child = os.path.join(path, name)
            if os.path.isdir(child):
                visit(child, depth - 1)

    for path in inputs:
        visit(os.path.abspath(path), max_depth)
    return result


# --------------------------------------------------------------------------------------------
# The run: manifest, workers, summary


def read_manifest(path: str) -> dict[str, dict]:
    """Source directory -> its latest manifest record (a torn last line from a crash is ignored)."""
    return {k: r for k, r in latest_jsonl_records(path, "source").items() if isinstance(k, str)}


def convert_job(target: Target, out: str, image_size: int | None, split: str) -> dict:
    """Convert and write one trajectory; a record for the manifest (never raises for a bad
    trajectory: the record says why it failed). Runs in worker processes."""
    start = time.time()
    options = {"image_size": image_size, "split": split}
    record = {"source": target.source, "target": target.key, "options": options, "time": start}
    try:
        episode = convert_trajectory(target, image_size=image_size, split=split)
        write_episode(target, out, episode)
    except ConversionError as e:
        return {**record, "status": "failed", "error": str(e)}
    except Exception as e:  # noqa: BLE001  (report anything else against the trajectory, keep the run going)
        return {**record, "status": "failed", "error": f"{target.source}: {type(e).__name__}: {e}"}
    meta = episode["meta"]
    return {**record, "status": "converted", "steps": meta["num_steps"], "robot": meta["robot"],
            "success": meta["success"], "seconds": round(time.time() - start, 3)}  # fmt: skip


def _run_jobs(jobs: list[Target], args: argparse.Namespace) -> Iterator[dict]:
    """Records of `jobs` as they finish: inline with one worker, else in a spawned process pool."""
    if args.num_workers <= 1 or len(jobs) <= 1:
        for target in jobs:
            yield convert_job(target, args.out, args.image_size, args.split)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")  # no state inherited from this process
    pending = iter(jobs)
    with ProcessPoolExecutor(max_workers=args.num_workers, mp_context=context) as pool:
        running = {}

        def submit() -> None:
            target = next(pending, None)
            if target is not None:
                running[pool.submit(convert_job, target, args.out, args.image_size, args.split)] = target

        for _ in range(2 * args.num_workers):
            submit()
        try:
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    target = running.pop(future)
                    try:
                        yield future.result()
                    except BrokenProcessPool as e:
                        yield {"source": target.source, "target": target.key, "time": time.time(),
                               "status": "failed", "error": f"{target.source}: worker process died: {e}"}  # fmt: skip
                        raise
                    submit()
        finally:
            for future in running:
                future.cancel()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", nargs="+", required=True, help="directories holding ClevrSkills trajectories")
    ap.add_argument("--out", required=True, help="output directory (build_rlds.py --demos)")
    ap.add_argument("--dataset-name", default=None, help="dataset directory name (default: clevrskills-<task+args>)")
    ap.add_argument("--task", default=None, help="task of every input trajectory (default: ep_info.json/directory)")
    ap.add_argument("--task-args", default=None, help="JSON object of task arguments (with --task)")
    success = ap.add_mutually_exclusive_group()
    success.add_argument("--require-success", dest="require_success", action="store_true", default=True,
                         help="convert only trajectories with a successful step (default)")  # fmt: skip
    success.add_argument("--keep-failed", dest="require_success", action="store_false",
                         help="convert unsuccessful trajectories too")  # fmt: skip
    ap.add_argument("--num-workers", type=int, default=1, help="worker processes")
    ap.add_argument("--image-size", type=int, default=None, help="resize images to S x S (default: as recorded)")
    ap.add_argument("--split", default="train", choices=("train", "test"), help="object split of the data")
    ap.add_argument("--max-depth", type=int, default=-1, help="directory levels to search (-1: all)")
    ap.add_argument("--strict", action="store_true", help="stop at the first bad trajectory (exit status 2)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    for path in args.input:
        if not os.path.isdir(path):
            ap.error(f"--input {path!r} is not a directory")
    if args.task_args is not None:
        if args.task is None:
            ap.error("--task-args needs --task")
        try:
            args.task_args = json.loads(args.task_args)
        except ValueError as e:
            ap.error(f"--task-args must be a JSON object: {e}")
        if not isinstance(args.task_args, dict):
            ap.error("--task-args must be a JSON object")
    if args.num_workers < 1:
        ap.error("--num-workers must be >= 1")
    if args.image_size is not None and args.image_size < 8:
        ap.error("--image-size must be >= 8")
    if args.dataset_name is not None and (not args.dataset_name or os.sep in args.dataset_name):
        ap.error("--dataset-name must be a plain directory name")
    args.out = os.path.abspath(args.out)
    return args


def _fail_strict(error: str) -> int:
    print(f"error: {error}", file=sys.stderr)
    print("stopped (--strict); episodes converted so far are kept, a rerun resumes", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    manifest_path = os.path.join(args.out, MANIFEST)
    manifest = read_manifest(manifest_path)
    found = scan(args.input, require_success=args.require_success, max_depth=args.max_depth)

    options = {"image_size": args.image_size, "split": args.split}

    def converted(record: dict | None) -> bool:
        """Was the record's trajectory converted, and are its files still there?"""
        if not record or record.get("status") != "converted" or "/" not in str(record.get("target")):
            return False
        dataset, stem = record["target"].split("/", 1)
        base = os.path.join(args.out, dataset, "episodes", stem)
        return os.path.exists(base + ".json") and os.path.exists(base + ".npz")

    failures: list[dict] = []
    skipped: list[str] = []
    claimed = {r["target"]: s for s, r in manifest.items() if converted(r)}
    jobs: list[Target] = []

    def fail(source: str, error: str) -> None:
        record = {"source": source, "status": "failed", "error": error, "time": time.time()}
        append_jsonl(manifest_path, record)
        failures.append(record)

    for source, reason in found.bad:
        fail(source, reason)
        if args.strict:
            return _fail_strict(reason)
    for source in found.found:
        try:
            target = identify(source, args.task, args.task_args, args.dataset_name)
        except ConversionError as e:
            fail(source, str(e))
            if args.strict:
                return _fail_strict(str(e))
            continue
        record = manifest.get(source)
        if converted(record) and record["target"] == target.key and record.get("options") == options:
            skipped.append(source)  # done before, with these options, and its files are there
            continue
        if claimed.get(target.key, source) != source:
            error = f"{source}: would overwrite {target.key}, converted from {claimed[target.key]} (same seed and task)"
            fail(source, error)
            if args.strict:
                return _fail_strict(error)
            continue
        claimed[target.key] = source
        jobs.append(target)

    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="convert", unit="traj", disable=args.no_progress)
    converted_now: list[dict] = []
    start = time.time()
    status = 0
    try:
        for record in _run_jobs(jobs, args):
            append_jsonl(manifest_path, record)
            bar.update(1)
            if record["status"] == "converted":
                converted_now.append(record)
                continue
            failures.append(record)
            bar.write(f"failed: {record['error']}")
            if args.strict:
                status = _fail_strict(record["error"])
                break
    except Exception as e:  # noqa: BLE001  (a dead worker pool: what finished is in the manifest)
        failures.append({"source": "", "status": "failed", "error": f"conversion stopped: {type(e).__name__}: {e}"})
        status = 2
    finally:
        bar.close()
    datasets: dict[str, int] = {}
    for record in converted_now:
        name = record["target"].split("/", 1)[0]
        datasets[name] = datasets.get(name, 0) + 1
    summary = {
        "out": args.out,
        "converted": len(converted_now),
        "skipped": {"already_converted": len(skipped), "unsuccessful": len(found.unsuccessful)},
        "failed": len(failures),
        "failures": [{"source": r["source"], "error": r["error"]} for r in failures],
        "datasets": datasets,
        "robots": sorted({r["robot"] for r in converted_now}),
        "seconds": round(time.time() - start, 1),
    }
    atomic_write_text(os.path.join(args.out, SUMMARY), json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    if status:
        return status
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
