"""ClevrSkills oracle demonstrations as an RLDS dataset (TFDS), in the Open X-Embodiment layout.

Why: RLDS through TFDS is what robot-learning code reads (Octo, OpenVLA, dlimp); following the
``kpertsch/rlds_dataset_builder`` template (anchors.md section 6) lets other labs load our data with
nothing but ``tensorflow_datasets``, and lets our own loaders treat it like any OXE dataset. On top
of the OXE fields every step carries the paper's code labels (key-step line or its commented form,
memory as past actions, cache info) at both granularities, so the VLM and the diffusion policy train
from the same files.

Source: episodes written by ``data_pipelines/generate_demos.py`` (layout in `c2a_jax.sim.rollout`)
or converted from ClevrSkills' released trajectories by ``data_pipelines/convert_clevrskills.py``,
read from the TFDS *manual directory*, which holds one or more dataset directories::

    <manual_dir>/<dataset>/episodes/seed_000000.json + seed_000000.npz
    <manual_dir>/<dataset>/episodes/seed_000000_variant_1.json + .npz   (task variant 1 of seed 0)
    <manual_dir>/shard-00003-of-00016/<dataset>/episodes/...           (generate_demos.py --num-shards)

Shards of one dataset merge into it (same dataset name); an episode found twice is an error.

Robots: one builder config per robot, since the joint vector differs: ``panda_vacuum`` (the
default: our simulator's Panda with the vacuum tool, 12 joints) and ``xarm6_vacuum`` (the xArm6
with the vacuum tool of the released ClevrSkills dataset, 11 joints). An episode names its robot in
the ``robot`` field of its JSON (absent = ``panda_vacuum``); every episode of a build must match the
config. TFDS puts the config into the path: ``<data_dir>/clevrskills_rlds/<robot>/1.0.0``.

Build with the TFDS CLI (``--data_dir`` defaults to ~/tensorflow_datasets)::

    tfds build data_pipelines/clevrskills_rlds --manual_dir runs/demos --data_dir runs/rlds \
        [--config xarm6_vacuum]

or ``python data_pipelines/build_rlds.py --demos runs/demos --out runs/rlds`` (same result, with a
progress bar, and the config picked from the episodes' robot). Note: the ``tfds`` CLI of
tensorflow-datasets 4.9.10 imports apache-beam and mlcroissant when it starts
(tensorflow/datasets#5463), whichever dataset it builds; the builder itself needs neither. Either way ``dataset_statistics.json`` (Octo's per-dimension statistics) is written
beside the built data. Read it back without this code::

    builder = tfds.builder_from_directory("runs/rlds/clevrskills_rlds/panda_vacuum/1.0.0")

Beam: pass ``--beam_pipeline_options=...`` to ``tfds build`` (or a ``beam_runner`` /
``beam_options`` in the ``DownloadConfig``) and `_generate_examples` returns a Beam PTransform
(``beam.Create(episodes) | beam.FlatMap(...)``) instead of a Python generator, so large datasets
convert in parallel. apache-beam is imported only then (``tfds.core.lazy_imports``).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import stat
import sys
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


def _hide_gpus_from_tensorflow() -> None:
    """TensorFlow is for data only: leave every GPU to JAX (design.md section 5)."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised its devices; nothing more can be done here
        pass


_hide_gpus_from_tensorflow()

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    from c2a_jax.data.demo_shards import dataset_dirs
    from c2a_jax.data.grid import grid_positions
    from c2a_jax.data.labels import LEVELS, step_labels
    from c2a_jax.fileio import atomic_write_text
except ImportError:  # `tfds build` from a checkout that was not `pip install -e`-ed
    sys.path.insert(0, _ROOT)
    from c2a_jax.data.demo_shards import dataset_dirs
    from c2a_jax.data.grid import grid_positions
    from c2a_jax.data.labels import LEVELS, step_labels
    from c2a_jax.fileio import atomic_write_text

DESCRIPTION = (
    "ClevrSkills oracle demonstrations (scripted solvers on a ManiSkill3 port) in the Open X-Embodiment RLDS "
    "layout, with the robot-API code being executed at every step (key-step or commented line), the VLM's memory "
    "as past actions and the diffusion policy's cache info, at two granularities (fine and level-1)."
)
# Share of episodes in the `val` split (Octo's fallback split is train[95%:]).
VAL_FRACTION = 0.05
STATISTICS_FILE = "dataset_statistics.json"
STATE_NAMES = ("ee_x", "ee_y", "ee_z", "ee_qw", "ee_qx", "ee_qy", "ee_qz", "vacuum_on", "vacuum_grasping")


@dataclasses.dataclass(frozen=True)
class Robot:
    """A robot whose episodes the dataset can hold: its joint vector (qpos/qvel) and its meaning."""

    name: str
    qpos_dim: int
    qpos_doc: str


# clevrskills_spec.md 1.4: the same five-cup vacuum tool on two arms.
ROBOTS: dict[str, Robot] = {
    r.name: r
    for r in (
        Robot(
            "panda_vacuum",
            12,
            "Robot joint positions, 12 dims: [0:7] Panda arm joints 1-7 (rad); [7:12] the five suction-cup "
            "prismatic joints (m, compliant, +-1.5 mm). Our simulator's robot (c2a_jax.sim.robot).",
        ),
        Robot(
            "xarm6_vacuum",
            11,
            "Robot joint positions, 11 dims: [0:6] xArm6 arm joints 1-6 (rad); [6:11] the five suction-cup "
            "prismatic joints (m, compliant, +-1.5 mm). The robot of ClevrSkills' released dataset "
            "(clevrskills_spec.md 1.4.1), converted by data_pipelines/convert_clevrskills.py.",
        ),
    )
}
# The robot of episodes whose JSON has no `robot` field (our own recorder's).
DEFAULT_ROBOT = "panda_vacuum"
# The default robot's joint count (Panda arm 7 + five suction cups).
QPOS_DIM = ROBOTS[DEFAULT_ROBOT].qpos_dim
ACTION_NAMES = ("dx", "dy", "dz", "rx", "ry", "rz", "vacuum")
# Arrays every episode .npz must hold (see c2a_jax.sim.rollout).
REQUIRED_ARRAYS = (
    "base_image",
    "hand_image",
    "qpos",
    "qvel",
    "ee_pose",
    "vacuum_on",
    "vacuum_grasping",
    "bboxes",
    "actions",
    "rewards",
    "success",
)

# The paper's task levels (section 5.1 and clevrskills_spec.md decision 5): L0 = primitive
# behaviours, L1 = tasks composed of them. A (task, arguments) pair is L0 when it matches a row
# here (an argument missing from task_args counts as False); everything else is L1. Rows:
#   Pick                                     -> Pick
#   PlaceOnTop with spawn_at_gripper         -> the paper's L0 PlaceOnTop (prompt verb "Place")
#   PlaceNextTo with spawn_at_gripper        -> the paper's L0 PlaceNextTo
#   Touch (plain, push=True, topple=True)    -> Touch, the paper's Push and Topple
#   Rotate without restore                   -> Rotate (Rotate-restore is L1 in ClevrSkills)
# Not L0: the registry task "Push", which is the paper's *PushToTarget*, an L1 task (paper 5.1);
# the full pick-and-place forms of PlaceOnTop / PlaceNextTo; stacking, swapping, etc.
L0_FORMS: tuple[tuple[str, Mapping[str, bool]], ...] = (
    ("Pick", {}),
    ("PlaceOnTop", {"spawn_at_gripper": True}),
    ("PlaceNextTo", {"spawn_at_gripper": True}),
    ("Touch", {}),
    ("Rotate", {"restore": False}),
)


def task_level(task: str, task_args: Mapping[str, Any]) -> str:
    """The paper level of a task and its arguments, "L0" or "L1" (table `L0_FORMS`)."""
    for name, required in L0_FORMS:
        if task == name and all(bool(task_args.get(k, False)) == v for k, v in required.items()):
            return "L0"
    return "L1"


class EpisodeFileError(ValueError):
    """An episode file is missing, unreadable or inconsistent; the message names the file(s)."""


@dataclasses.dataclass(frozen=True)
class EpisodeFiles:
    """One recorded episode: its dataset directory name and its two files."""

    dataset: str
    json_path: str
    npz_path: str

    @property
    def stem(self) -> str:
        return os.path.splitext(os.path.basename(self.json_path))[0]

    @property
    def key(self) -> str:
        """Unique, deterministic example key."""
        return f"{self.dataset}/{self.stem}"

    @property
    def seed(self) -> str:
        """The seed from the file name (``seed_000042`` -> ``"42"``; a task variant's
        ``seed_000042_variant_1`` -> ``"42"`` too, so that all variants of a scene share a split),
        or the stem."""
        match = _STEM.fullmatch(self.stem)
        return str(int(match.group(1))) if match else self.stem

    @property
    def variant(self) -> int:
        """The task variant from the file name (``seed_000042_variant_1`` -> 1), 0 if none."""
        match = _STEM.fullmatch(self.stem)
        return int(match.group(2)) if match and match.group(2) else 0


# Episode file stems: seed_<seed>[_variant_<v>] (data_pipelines/convert_clevrskills.py writes variants).
_STEM = re.compile(r"seed_(\d+)(?:_variant_(\d+))?")


def episode_robot(meta: Mapping[str, Any]) -> str:
    """The robot an episode was recorded with: its JSON's ``robot`` field, else `DEFAULT_ROBOT`."""
    return str(meta.get("robot") or DEFAULT_ROBOT)


def robot_of_episodes(episodes: list[EpisodeFiles]) -> str:
    """The robot of the first of `episodes` (every other one is checked against it while the
    dataset is built); an unreadable file raises `EpisodeFileError` naming it."""
    if not episodes:
        raise FileNotFoundError("no episodes to tell the robot from")
    path = episodes[0].json_path
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise EpisodeFileError(f"cannot read episode metadata {path}: {e}") from e
    if not isinstance(meta, dict):
        raise EpisodeFileError(f"episode metadata {path} is not a JSON object")
    robot = episode_robot(meta)
    if robot not in ROBOTS:
        raise EpisodeFileError(f"episode metadata {path}: unknown robot {robot!r} (known: {sorted(ROBOTS)})")
    return robot


def _dataset_dirs(manual_dir: str) -> list[str]:
    """Dataset directories (those with an ``episodes/`` folder) in `manual_dir` and in its
    ``shard-XXXXX-of-YYYYY`` folders (`c2a_jax.data.demo_shards`), or itself."""
    return dataset_dirs(manual_dir)


def discover_episodes(manual_dir: str | os.PathLike) -> list[EpisodeFiles]:
    """Every episode under `manual_dir`, in a deterministic order; a .json without its .npz (or
    the reverse) is an error naming both paths."""
    manual_dir = os.fspath(manual_dir)
    dirs = _dataset_dirs(manual_dir)
    if not dirs:
        raise FileNotFoundError(
            f"no episodes under {manual_dir!r}: expected <manual_dir>/<dataset>/episodes/seed_*.json (+ .npz) "
            "as written by data_pipelines/generate_demos.py"
        )
    episodes = []
    for directory in dirs:
        pattern = os.path.join(directory, "episodes", "*")
        jsons = {os.path.splitext(p)[0] for p in glob.glob(pattern + ".json")}
        npzs = {os.path.splitext(p)[0] for p in glob.glob(pattern + ".npz")}
        if jsons - npzs:
            stem = min(jsons - npzs)
            raise EpisodeFileError(f"episode metadata {stem}.json has no arrays: {stem}.npz is missing")
        if npzs - jsons:
            stem = min(npzs - jsons)
            raise EpisodeFileError(
                f"episode arrays {stem}.npz have no metadata: {stem}.json is missing "
                "(an interrupted generate_demos run? rerun it, or delete the .npz)"
            )
        name = os.path.basename(os.path.normpath(directory))
        episodes += [EpisodeFiles(name, stem + ".json", stem + ".npz") for stem in sorted(jsons)]
    seen: dict[str, str] = {}
    for episode in episodes:  # shards of one dataset must hold disjoint seeds
        if episode.key in seen:
            raise EpisodeFileError(
                f"episode {episode.key} is in two places: {seen[episode.key]} and {episode.json_path} "
                "(overlapping shards? each shard must run its own seeds)"
            )
        seen[episode.key] = episode.json_path
    return episodes


def _hash_fraction(episode: EpisodeFiles) -> float:
    """A deterministic number in [0, 1) from (dataset directory name, seed)."""
    digest = hashlib.sha256(f"{episode.dataset}/{episode.seed}".encode()).hexdigest()
    return int(digest[:16], 16) / 2**64


def assign_splits(episodes: list[EpisodeFiles], val_fraction: float = VAL_FRACTION) -> dict[str, list[EpisodeFiles]]:
    """``train`` / ``val`` by a hash of (dataset directory name, seed): stable when episodes are
    added or the directory moves. With two or more episodes both splits are non-empty (the
    episode with the smallest hash goes to ``val`` if none did, the largest to ``train`` if all
    did); a single episode makes a ``train`` split alone (TFDS cannot write an empty split)."""
    val = [e for e in episodes if _hash_fraction(e) < val_fraction]
    if len(episodes) >= 2:
        if not val:
            val = [min(episodes, key=_hash_fraction)]
        elif len(val) == len(episodes):
            val.remove(max(val, key=_hash_fraction))
    val_keys = {e.key for e in val}
    splits = {"train": [e for e in episodes if e.key not in val_keys], "val": val}
    return {name: split for name, split in splits.items() if split}


def load_episode(episode: EpisodeFiles, robot: str = DEFAULT_ROBOT) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The metadata and arrays of an episode of `robot`; unreadable or inconsistent files, and an
    episode of another robot, raise `EpisodeFileError` naming them."""
    try:
        with open(episode.json_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise EpisodeFileError(f"cannot read episode metadata {episode.json_path}: {e}") from e
    if not isinstance(meta, dict):
        raise EpisodeFileError(f"episode metadata {episode.json_path} is not a JSON object")
    if episode_robot(meta) != robot:
        raise EpisodeFileError(
            f"episode {episode.json_path} was recorded with the {episode_robot(meta)} robot, this dataset holds "
            f"{robot} episodes (build each robot's episodes separately: build_rlds.py --robot ...)"
        )
    qpos_dim = ROBOTS[robot].qpos_dim
    try:
        with np.load(episode.npz_path) as data:
            missing = [k for k in REQUIRED_ARRAYS if k not in data.files]
            arrays = {k: data[k] for k in REQUIRED_ARRAYS if k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise EpisodeFileError(
            f"cannot read episode arrays {episode.npz_path} (metadata {episode.json_path}): {e}"
        ) from e
    if missing:
        raise EpisodeFileError(f"episode arrays {episode.npz_path} lack {missing} (recorded without images?)")
    if arrays["qpos"].shape[1:] != (qpos_dim,) or arrays["qvel"].shape[1:] != (qpos_dim,):
        raise EpisodeFileError(
            f"episode arrays {episode.npz_path}: qpos/qvel of shape {arrays['qpos'].shape[1:]}, "
            f"the {robot} robot has {qpos_dim} joints"
        )
    lengths = {k: len(v) for k, v in arrays.items()}
    num_labels = len(meta.get("labels") or ())
    if len(set(lengths.values())) != 1 or num_labels != lengths["actions"]:
        raise EpisodeFileError(
            f"episode {episode.json_path} / {episode.npz_path}: inconsistent step counts "
            f"(arrays {lengths}, {num_labels} labels)"
        )
    return meta, arrays


def _state(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Proprioception, one row per step, dimensions `STATE_NAMES`."""
    vacuum = np.stack([arrays["vacuum_on"], arrays["vacuum_grasping"]], axis=-1).astype(np.float32)
    return np.concatenate([arrays["ee_pose"].astype(np.float32), vacuum], axis=-1)


def _grid_per_step(bboxes: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """Grid positions (T, K, 2) int32 of base-camera boxes (T, K, 2, 3), spec 6.3 (c2a_jax.data.grid)."""
    if bboxes.ndim != 4 or bboxes.shape[2:] != (2, 3):
        raise ValueError(f"bboxes must have shape (T, K, 2, 3), got {bboxes.shape}")
    return (
        np.stack([grid_positions(boxes, image_shape) for boxes in bboxes]).reshape(len(bboxes), -1, 2).astype(np.int32)
    )


def episode_example(episode: EpisodeFiles, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> dict:
    """The RLDS example (``steps`` + ``episode_metadata``) of one loaded episode."""
    try:
        labels = {level: step_labels(meta, level, arrays["success"]) for level in LEVELS}
    except (KeyError, ValueError) as e:
        raise EpisodeFileError(f"bad labels in episode metadata {episode.json_path}: {e}") from e
    num_steps = len(arrays["actions"])
    image_shape = arrays["base_image"].shape[1:3]
    grid = _grid_per_step(arrays["bboxes"], image_shape)
    state = _state(arrays)
    prompts = [str(p) for p in meta.get("natural_prompts") or meta.get("prompts") or ()]
    if not prompts:
        raise EpisodeFileError(f"episode metadata {episode.json_path} has no prompts")
    steps = []
    for t in range(num_steps):
        step = {
            "observation": {
                "image": arrays["base_image"][t],
                "wrist_image": arrays["hand_image"][t],
                "state": state[t],
                "qpos": arrays["qpos"][t].astype(np.float32),
                "qvel": arrays["qvel"][t].astype(np.float32),
            },
            "action": arrays["actions"][t].astype(np.float32),
            "reward": np.float32(arrays["rewards"][t]),
            "discount": np.float32(1.0),
            "is_first": t == 0,
            "is_last": t == num_steps - 1,
            "is_terminal": t == num_steps - 1 and bool(meta.get("success")),
            "language_instruction": prompts[0],
            "actor_grid_positions": grid[t],
        }
        for level in LEVELS:
            label = labels[level][t]
            step[f"code_{level}"] = label.code
            step[f"is_keystep_{level}"] = label.is_keystep
            step[f"past_actions_{level}"] = label.past_actions
            step[f"cache_info_{level}"] = label.cache_info
        steps.append(step)
    task_args = meta.get("task_args") or {}
    metadata = {
        "task": str(meta["task"]),
        "task_args": json.dumps(task_args, sort_keys=True),
        "seed": int(meta["seed"]),
        "level": task_level(str(meta["task"]), task_args),
        "split": str(meta.get("split", "train")),
        "prompts": prompts,
        "actor_names": [str(a["name"]) for a in meta.get("actors") or ()],
        "dataset": episode.dataset,
        "file_path": os.path.abspath(episode.npz_path),
    }
    return {"steps": steps, "episode_metadata": metadata}


def parse_episode(episode: EpisodeFiles, robot: str = DEFAULT_ROBOT) -> list[tuple[str, dict]]:
    """``[(key, example)]`` for a successful episode, ``[]`` for an unsuccessful one (dropped, as in
    paper section 4.1). A module-level function so that Beam workers can pickle it."""
    meta, arrays = load_episode(episode, robot)
    if not meta.get("success") or not np.any(arrays["success"]):
        return []
    try:
        return [(episode.key, episode_example(episode, meta, arrays))]
    except EpisodeFileError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise EpisodeFileError(f"episode {episode.json_path} / {episode.npz_path}: {type(e).__name__}: {e}") from e


def _text(doc: str) -> tfds.features.Text:
    return tfds.features.Text(doc=doc)


def _flag(doc: str) -> tfds.features.Scalar:
    return tfds.features.Scalar(dtype=np.bool_, doc=doc)


def _level_features() -> dict[str, tfds.features.FeatureConnector]:
    """The code-label fields of a step, at each granularity (see c2a_jax.data.labels)."""
    what = {
        "fine": "the deepest oracle solver's call (pick/move3d/place/...), the paper's granularity",
        "level1": "ClevrSkills' level-1 converter strings (pick_move3d_place/push/touch/...)",
    }
    features: dict[str, tfds.features.FeatureConnector] = {}
    for level in LEVELS:
        features[f"code_{level}"] = _text(
            f"Robot-API code being executed, {what[level]}: the plain call on its key-step (first step), every line "
            "commented with '# ' on the steps after it; 'done()' from the first successful step on."
        )
        features[f"is_keystep_{level}"] = _flag(f"True on the first step of a {level} call (code_{level} is plain).")
        features[f"past_actions_{level}"] = _text(
            f"The VLM's memory before this step: the {level} key-step lines of the earlier steps joined with '; ' "
            "(the 'Past actions:' part of the prompt, clevrskills_spec.md 6.6); empty at step 0."
        )
        features[f"cache_info_{level}"] = _text(
            f"What the diffusion policy conditions on besides the code: the latest pose_dict assignment per key in "
            f"the {level} key-steps up to and including this step (paper Appendix E.3), 'pose_dict = {{}}' if none."
        )
    return features


def _step_features(robot: str = DEFAULT_ROBOT) -> tfds.features.FeaturesDict:
    qpos_dim = ROBOTS[robot].qpos_dim
    observation = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(
                shape=(None, None, 3),
                dtype=np.uint8,
                encoding_format="png",
                doc="Base (third-person) camera RGB, HxWx3 uint8, square, of the generator's --image-size; "
                "png: lossless, so the policy trains on exactly the pixels the simulator renders at test time.",
            ),
            "wrist_image": tfds.features.Image(
                shape=(None, None, 3),
                dtype=np.uint8,
                encoding_format="png",
                doc="Hand (wrist) camera RGB, same size and encoding as image.",
            ),
            "state": tfds.features.Tensor(
                shape=(len(STATE_NAMES),),
                dtype=np.float32,
                doc="Proprioception, 9 dims: [0:3] TCP position x, y, z (m, world frame); [3:7] TCP orientation "
                "quaternion qw, qx, qy, qz (world frame); [7] vacuum_on (1.0 = suction commanded on); "
                "[8] vacuum_grasping (1.0 = an object is held).",
            ),
            "qpos": tfds.features.Tensor(shape=(qpos_dim,), dtype=np.float32, doc=ROBOTS[robot].qpos_doc),
            "qvel": tfds.features.Tensor(
                shape=(qpos_dim,), dtype=np.float32, doc="Robot joint velocities, same order and units per second."
            ),
        },
        doc="Observation before this step's action.",
    )
    return tfds.features.FeaturesDict(
        {
            "observation": observation,
            "action": tfds.features.Tensor(
                shape=(len(ACTION_NAMES),),
                dtype=np.float32,
                doc="Raw oracle action (pd_ee_delta_pose, clevrskills_spec.md 1.6), 7 dims: [0:3] dx, dy, dz "
                "translation of the TCP target in the current TCP frame, normalised to [-1, 1] (x 0.1 m); "
                "[3:6] rx, ry, rz axis-angle rotation in the TCP frame, normalised (x 0.1 rad); [6] vacuum, on iff "
                "> 0. Zeros on the last step (no action follows the final observation).",
            ),
            "reward": tfds.features.Scalar(
                dtype=np.float32,
                doc="Dense task reward after this step's action, 1.0 when solved; the last step repeats the final "
                "reward (1.0 for these successful demonstrations, as the OXE convention has it).",
            ),
            "discount": tfds.features.Scalar(dtype=np.float32, doc="Always 1.0."),
            "is_first": _flag("True on the first step of the episode."),
            "is_last": _flag("True on the last step: the observation after the final action; its action is invalid."),
            "is_terminal": _flag("True on the last step of a successful episode (all episodes here)."),
            "language_instruction": _text("Natural-language task prompt (prompt variant 0), on every step."),
            "actor_grid_positions": tfds.features.Tensor(
                shape=(None, 2),
                dtype=np.int32,
                encoding=tfds.features.Encoding.BYTES,  # K varies per episode: a ragged dim inside steps
                doc="Per task actor (order of episode_metadata.actor_names): (gx, gy) of its base-camera box on the "
                "VLM's 10x10 grid, gx = round(mean(xmin, xmax) / H * 10), gy = round(mean(ymin, ymax) / W * 10) "
                "(round half to even), (-1, -1) when not visible (clevrskills_spec.md 6.3).",
            ),
            **_level_features(),
        }
    )


def _metadata_features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "task": _text("ClevrSkills task registry name, e.g. Pick, PlaceNextTo, Touch."),
            "task_args": _text("Task constructor arguments as a JSON object (sorted keys)."),
            "seed": tfds.features.Scalar(dtype=np.int64, doc="Episode seed: reset(seed) reproduces the scene."),
            "level": _text("Paper task level: 'L0' (primitive) or 'L1' (composed); table L0_FORMS in the builder."),
            "split": _text("Object split of the scene: 'train' or 'test' (held-out colour/shape pairs)."),
            "prompts": tfds.features.Sequence(_text("A prompt."), doc="All natural-language prompt variants."),
            "actor_names": tfds.features.Sequence(
                _text("An actor name."), doc="Task actor names, in the order of steps.actor_grid_positions."
            ),
            "dataset": _text("Name of the source dataset directory (task plus arguments)."),
            "file_path": _text("Path of the source episode .npz (metadata in the .json beside it)."),
        }
    )


@dataclasses.dataclass(eq=False)
class ClevrskillsRldsConfig(tfds.core.BuilderConfig):
    """A builder config per robot (`ROBOTS`): the config name is the robot name."""

    robot: str = DEFAULT_ROBOT


class ClevrskillsRlds(tfds.core.GeneratorBasedBuilder):
    """ClevrSkills oracle demonstrations with per-step robot-API code labels (RLDS)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        ClevrskillsRldsConfig(
            name="panda_vacuum",
            robot="panda_vacuum",
            description="Panda with the ClevrSkills vacuum tool (our simulator; qpos 12).",
        ),
        ClevrskillsRldsConfig(
            name="xarm6_vacuum",
            robot="xarm6_vacuum",
            description="xArm6 with the ClevrSkills vacuum tool (the released ClevrSkills dataset; qpos 11).",
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = DEFAULT_ROBOT
    RELEASE_NOTES = {
        "1.0.0": "Initial release: OXE step fields, fine and level-1 code labels with key-step flags, past actions "
        "and cache info, actor grid positions, train/val splits, dataset_statistics.json.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Generate episodes with data_pipelines/generate_demos.py (one or more tasks into the same --out), or
    convert ClevrSkills' released trajectories with data_pipelines/convert_clevrskills.py, and pass that
    --out directory as --manual_dir: <manual_dir>/<dataset>/episodes/seed_*.json + .npz. Choose the config
    of the episodes' robot (panda_vacuum, the default, or xarm6_vacuum for the released dataset).
    """

    # Set by data_pipelines/build_rlds.py: show a tqdm bar per split while converting episodes.
    show_progress = False

    @property
    def robot(self) -> str:
        """The robot of this config's episodes."""
        config = self.builder_config
        return getattr(config, "robot", None) or (config.name if config is not None else DEFAULT_ROBOT)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "steps": tfds.features.Dataset(_step_features(self.robot), doc="The episode's steps, in order."),
                    "episode_metadata": _metadata_features(),
                }
            ),
            homepage="https://github.com/Qualcomm-AI-research/ClevrSkills",
            citation="""@article{peschl2025code2action,
  title={From Code to Action: Hierarchical Learning of Diffusion-VLM Policies},
  author={Peschl, Markus and Mazzaglia, Pietro and Dijkman, Daniel},
  year={2025}
}""",
        )

    def _generate_splits(self, dl_manager, download_config):
        # Beam only when the caller asked for it (a runner or pipeline options); see _generate_examples.
        self._use_beam = download_config.beam_runner is not None or download_config.beam_options is not None
        return super()._generate_splits(dl_manager, download_config)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        splits = assign_splits(discover_episodes(dl_manager.manual_dir))
        return {name: self._generate_examples(episodes, name) for name, episodes in splits.items()}

    def _generate_examples(self, episodes: list[EpisodeFiles], split: str = "train"):
        """Examples of `episodes`: a Python generator, or under Beam a PTransform that parses the
        episodes in parallel workers (returned, not yielded, so that TFDS can tell the two apart)."""
        if getattr(self, "_use_beam", False):
            beam = tfds.core.lazy_imports.apache_beam
            return beam.Create(episodes) | beam.FlatMap(parse_episode, robot=self.robot)
        return self._iterate_examples(episodes, split)

    def _iterate_examples(self, episodes: list[EpisodeFiles], split: str) -> Iterator[tuple[str, dict]]:
        items: Iterable[EpisodeFiles] = episodes
        if self.show_progress:
            from tqdm import tqdm

            items = tqdm(episodes, desc=f"{self.name} {split}", unit="ep")
        shape = None
        for episode in items:
            for key, example in parse_episode(episode, self.robot):
                image = example["steps"][0]["observation"]["image"].shape
                if shape is not None and image != shape:
                    raise EpisodeFileError(f"{episode.npz_path}: images of shape {image}, earlier episodes {shape}")
                shape = image
                yield key, example

    def download_and_prepare(self, **kwargs) -> None:
        """TFDS' download_and_prepare, then `dataset_statistics.json` beside the data."""
        super().download_and_prepare(**kwargs)
        path = os.path.join(os.fspath(self.data_dir), STATISTICS_FILE)
        info = os.path.join(os.fspath(self.data_dir), "dataset_info.json")
        if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(info):
            write_statistics(self, progress=self.show_progress)


def _summary(x: np.ndarray) -> dict[str, list[float]]:
    """Per-dimension statistics of rows `x` (Octo's dataset_statistics keys)."""
    x = np.asarray(x, dtype=np.float64)
    return {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "p01": np.percentile(x, 1, axis=0).tolist(),
        "p99": np.percentile(x, 99, axis=0).tolist(),
    }


def _as_builder(builder_or_dir: tfds.core.DatasetBuilder | str | os.PathLike) -> tfds.core.DatasetBuilder:
    if isinstance(builder_or_dir, tfds.core.DatasetBuilder):
        return builder_or_dir
    return tfds.builder_from_directory(os.fspath(builder_or_dir))


def compute_statistics(
    builder_or_dir: tfds.core.DatasetBuilder | str | os.PathLike, split: str = "train", progress: bool = False
) -> dict[str, Any]:
    """Per-dimension mean, std, min, max, p01, p99 of ``action``, ``state``, ``qpos`` and ``qvel``
    over `split`, plus ``num_transitions`` (steps with an action: the last step of each episode
    has none and is left out of the action statistics), ``num_steps`` and ``num_trajectories``.

    Reads the built dataset with plain TFDS (a builder, or a ``.../clevrskills_rlds/<robot>/1.0.0``
    directory); images are never decoded.
    """
    builder = _as_builder(builder_or_dir)
    if split not in builder.info.splits:
        raise ValueError(f"{builder.data_dir} has no split {split!r} (splits: {sorted(builder.info.splits)})")
    skip = tfds.decode.SkipDecoding()
    episodes = builder.as_dataset(
        split=split, decoders={"steps": {"observation": {"image": skip, "wrist_image": skip}}}, shuffle_files=False
    )
    num_trajectories = int(builder.info.splits[split].num_examples)

    def fields(step):
        obs = step["observation"]
        return {"action": step["action"], "is_last": step["is_last"], **{k: obs[k] for k in ("state", "qpos", "qvel")}}

    steps = episodes.flat_map(lambda episode: episode["steps"]).map(fields).batch(4096)
    batches = tfds.as_numpy(steps)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="statistics", unit="batch")
    parts: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
    if not parts:
        raise ValueError(f"split {split!r} of {builder.data_dir} has no steps")
    data = {k: np.concatenate(v) for k, v in parts.items()}
    valid = ~data["is_last"]
    return {
        "action": _summary(data["action"][valid]),
        "state": _summary(data["state"]),
        "qpos": _summary(data["qpos"]),
        "qvel": _summary(data["qvel"]),
        "num_transitions": int(valid.sum()),
        "num_steps": int(len(valid)),
        "num_trajectories": num_trajectories,
    }


def write_statistics(
    builder_or_dir: tfds.core.DatasetBuilder | str | os.PathLike, split: str = "train", progress: bool = False
) -> str:
    """Compute the statistics of a built dataset and write them atomically as
    ``dataset_statistics.json`` in its directory; returns the path."""
    builder = _as_builder(builder_or_dir)
    stats = compute_statistics(builder, split=split, progress=progress)
    path = os.path.join(os.fspath(builder.data_dir), STATISTICS_FILE)
    atomic_write_text(path, json.dumps(stats, indent=2) + "\n")
    info = os.path.join(os.fspath(builder.data_dir), "dataset_info.json")
    if os.path.exists(info):  # readable like the data beside it (the atomic temp file is private)
        os.chmod(path, stat.S_IMODE(os.stat(info).st_mode))
    return path
