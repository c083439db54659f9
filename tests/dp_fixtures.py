"""A synthetic demonstration for the diffusion-policy tests, and a tiny RLDS dataset built from it.

`demonstration()` is the synthetic PlaceNextTo episode of `c2a_jax.data.synthetic` made policy-like:
smooth actions in robot units (small TCP deltas around an offset, so normalised and raw values
differ visibly; the vacuum command binary), binary vacuum state dims as the recorder writes them,
and images whose grey level tells the step apart. `write_demos` stores episodes in the recorder's
layout (``<out>/<dataset>/episodes/seed_*.json + .npz``, see `c2a_jax.sim.rollout`) without the
simulator, so `data_pipelines/build_rlds.py` builds them like generated demos.

Run as a script (TensorFlow: a process of its own, never the test process; tests/conftest.py)::

    python tests/dp_fixtures.py <out> [copies] [--distinct]

writes `copies` (default 3) copies of the demonstration under ``<out>/demos`` and builds
``<out>/rlds``; prints the dataset's version directory. The copies are identical, or with
``--distinct`` variants that differ in length, actions, images and prompt (`demonstration`'s
`variant`), so that the order in which a reader hands out episodes shows in what trains on them.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from c2a_jax.data.synthetic import DONE, PICK, PLACE, TARGET, make_episode  # noqa: E402

SEGMENTS = ((0, 3, PICK), (3, 7, TARGET), (7, 10, PLACE), (10, 12, DONE))
SIZE = 32


def segments(variant: int = 0) -> tuple:
    """`SEGMENTS` with the target segment `variant % 3` steps longer (variant 0: `SEGMENTS`)."""
    extra = variant % 3
    return tuple((s + extra * (s > 3), e + extra * (e > 3), code) for s, e, code in SEGMENTS)


def demonstration(size: int = SIZE, key: str = "Synthetic/seed_000000", variant: int = 0) -> dict:
    """One 12-step episode (11 actions); see the module docstring. A nonzero `variant` gives another
    episode of the same task: a longer target segment (`segments`), shifted actions, brighter
    images and its own prompt, so that episodes of different variants train differently."""
    episode = make_episode(segments(variant), size=size, key=key)
    episode["segments"] = segments(variant)
    if variant:
        episode["prompts"] = [f"{p} (variant {variant})" for p in episode["prompts"]]
    n = len(episode["action"])
    t = np.arange(n, dtype=np.float32)[:, None]
    actions = 0.05 + 0.2 * np.sin(0.45 * t + 0.7 * variant + np.arange(7, dtype=np.float32)[None])
    actions[:, 6] = np.where(np.arange(n) >= 3, 1.0, -1.0)  # vacuum on from the pick on
    actions[-1] = 0.0  # no action after the last observation
    episode["action"] = actions.astype(np.float32)
    state = episode["state"]
    state[:, 7] = (np.arange(n) >= 4).astype(np.float32)  # vacuum_on
    state[:, 8] = (np.arange(n) >= 5).astype(np.float32)  # vacuum_grasping
    y, x = np.mgrid[0:size, 0:size]
    frames = [np.stack([(x * 6 + 20 * s + 40 * variant) % 256, (y * 6) % 256, np.full_like(x, 21 * s)], -1)
              for s in range(n)]  # fmt: skip
    episode["image"] = np.asarray(frames, np.uint8)
    episode["wrist_image"] = (255 - episode["image"]).astype(np.uint8)
    return episode


def _labels(segments) -> list[dict]:
    out = []
    for start, end, code in segments:
        for t in range(start, end):
            out.append({"fine": code, "fine_keystep": t == start, "level1": code, "level1_keystep": t == start})
    return out


def write_demos(out: str, episodes, dataset: str = "Synthetic") -> str:
    """`episodes` (`demonstration()`-like dicts, labels from their ``segments``) in the recorder's layout."""
    directory = os.path.join(out, dataset, "episodes")
    os.makedirs(directory, exist_ok=True)
    for i, episode in enumerate(episodes):
        n = len(episode["action"])
        labelled = episode.get("segments", SEGMENTS)
        state = np.asarray(episode["state"], np.float32)
        arrays = {
            "base_image": episode["image"],
            "hand_image": episode["wrist_image"],
            "qpos": np.zeros((n, 12), np.float32),
            "qvel": np.zeros((n, 12), np.float32),
            "ee_pose": state[:, :7],
            "vacuum_on": state[:, 7] > 0.5,
            "vacuum_grasping": state[:, 8] > 0.5,
            "bboxes": np.tile(np.array([[[4, 6, 0], [10, 12, 1]], [[20, 22, 0], [26, 28, 1]]], np.int32), (n, 1, 1, 1)),
            "actions": episode["action"],
            "rewards": np.linspace(0.1, 1.0, n).astype(np.float32),
            "success": np.arange(n) >= labelled[-1][0],
        }
        meta = {
            "task": "PlaceNextTo", "task_args": {}, "seed": i, "split": "train", "image_size": int(SIZE),
            "prompts": list(episode["prompts"]), "natural_prompts": list(episode["prompts"]),
            "actors": [{"name": name, "id": k} for k, name in enumerate(episode["actor_names"])],
            "labels": _labels(labelled), "success": True, "num_steps": n - 1,
        }  # fmt: skip
        stem = os.path.join(directory, f"seed_{i:06d}")
        np.savez(stem + ".npz", **arrays)
        with open(stem + ".json", "w", encoding="utf-8") as f:
            json.dump(meta, f)
    return os.path.join(out, dataset)


def build_dataset(out: str, copies: int = 3, distinct: bool = False) -> str:
    """`copies` demonstrations (identical, or `distinct` variants) built into RLDS under `out`;
    returns the version directory."""
    from data_pipelines import build_rlds

    demos = os.path.join(out, "demos")
    episodes = [demonstration(key=f"Synthetic/seed_{i:06d}", variant=i if distinct else 0) for i in range(copies)]
    write_demos(demos, episodes)
    return os.fspath(build_rlds.build(demos, os.path.join(out, "rlds"), progress=False).data_dir)


if __name__ == "__main__":
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if not args or len(args) > 2 or set(flags) - {"--distinct"}:
        sys.exit("usage: python tests/dp_fixtures.py <out> [copies] [--distinct]")
    print(build_dataset(args[0], int(args[1]) if len(args) > 1 else 3, distinct="--distinct" in flags))
