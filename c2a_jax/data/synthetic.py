"""Synthetic RLDS-shaped episodes (`c2a_jax.data.rlds` layout) for tests and benchmarks.

Why: the input pipelines' logic (masks, memory, chunks, crops) is checked and timed without a
simulator or TensorFlow; every image pixel holds its step index, so a test can tell which step an
image came from. The default episode is the PlaceNextTo worked example at the fine level: pick,
compute and move to a target pose (cache info appears), place, done().
"""

from __future__ import annotations

import numpy as np

from c2a_jax.data.labels import Segment, labels_from_segments

PICK = "pick(actor=get_actor('red cube'))"
MOVE = "move3d(target_actor=get_actor('blue cylinder'))"
TARGET = "pose_dict['red cube target'] = free_space_next_to(get_actor('blue cylinder'), 'left of')\nmove3d(actor=get_actor('red cube'), target_pose=pose_dict['red cube target'])"  # fmt: skip
PLACE = "place(actor=get_actor('red cube'), target_pose=pose_dict['red cube target'])"
DONE = "done()"


def make_episode(segments=((0, 3, PICK), (3, 7, TARGET), (7, 10, PLACE), (10, 12, DONE)), size=16, key="ds/7"):
    """A synthetic RLDS `Episode` (see c2a_jax.data.rlds) with labels from `segments`; every
    image pixel holds its step index, so a test can tell which step an image came from."""
    labels = labels_from_segments([Segment(*s) for s in segments])
    n = len(labels)
    rng = np.random.default_rng(0)
    image = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 3)).copy()
    episode = {
        "image": image,
        "wrist_image": image + 100,
        "state": rng.normal(size=(n, 9)).astype(np.float32),
        "action": np.r_[rng.uniform(-1, 1, size=(n - 1, 7)), np.zeros((1, 7))].astype(np.float32),
        "is_last": np.arange(n) == n - 1,
        "actor_grid_positions": np.tile(np.array([[[3, 4], [-1, -1]]], np.int32), (n, 1, 1)),
        "language_instruction": "Place the red cube left of the blue cylinder",
        "prompts": [
            "Place the red cube left of the blue cylinder",
            "Put the red cube to the left of the blue cylinder",
        ],
        "actor_names": ["red cube", "blue cylinder"],
        "task": "PlaceNextTo",
        "level": "L0",
        "key": key,
    }
    for level in ("fine", "level1"):
        episode[f"code_{level}"] = [lab.code for lab in labels]
        episode[f"is_keystep_{level}"] = np.array([lab.is_keystep for lab in labels])
        episode[f"past_actions_{level}"] = [lab.past_actions for lab in labels]
        episode[f"cache_info_{level}"] = [lab.cache_info for lab in labels]
    return episode
