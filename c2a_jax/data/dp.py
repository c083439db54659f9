"""The diffusion policy's training frames: observation, action chunk, and the code it executes.

Why (paper section 4.3): the low-level policy predicts an action chunk of horizon H from one
observation (base and wrist images, proprioception) and the code instruction the VLM wrote for
this step, plus the cache info extracted from the VLM's memory (Appendix E.3); the flat baseline
gets the natural-language task prompt instead. Where the instruction comes from is the paper's
relabelling axis and is chosen here:

* ``oracle``: the dataset's labels;
* ``shifted``: the same, with subtask boundaries shifted by up to ``shift_k`` steps, redrawn every
  time an episode is read (paper 5.2);
* ``vlm_file``: a JSONL file of VLM-generated code per step (``data_pipelines`` relabelling), one
  object per line ``{"episode": "<dataset>/<file stem>", "step": t, "code": "..."}`` (`rlds.episode_key`); the cache info is
  recomputed from the generated code exactly as the controller does at inference.

A frame at step t holds ``action[t : t + H]``; steps past the episode's last action repeat that
action (diffusion_policy's edge padding) and are marked False in ``action_mask`` so a loss can
ignore them. Actions and states are normalised to [-1, 1] per dimension (`Normalizer`; the vacuum
dimension is left binary unless asked). Training crops both cameras at one random offset (the
views stay consistent); evaluation crops the centre.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from c2a_jax.codeapi import MemoryBuffer
from c2a_jax.data.labels import LEVELS, episode_labels, shift_labels
from c2a_jax.data.normalization import Normalizer

SOURCES = ("oracle", "shifted", "vlm_file")
ACTION_GRIPPER_DIM = 6  # the vacuum command of the 7-D action


@dataclasses.dataclass(frozen=True)
class DpFrameConfig:
    level: str = "fine"
    horizon: int = 16
    crop_size: int | None = None  # None: no crop; else square crop of this size out of the image
    instruction_source: str = "oracle"
    shift_k: int = 0
    vlm_labels_file: str | None = None

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"unknown code level {self.level!r}; expected one of {LEVELS}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if self.instruction_source not in SOURCES:
            raise ValueError(f"unknown instruction source {self.instruction_source!r}; expected one of {SOURCES}")
        if self.instruction_source == "vlm_file" and not self.vlm_labels_file:
            raise ValueError("instruction_source 'vlm_file' needs vlm_labels_file")
        if self.instruction_source == "shifted" and self.shift_k < 1:
            raise ValueError("instruction_source 'shifted' needs shift_k >= 1")


def load_vlm_labels(path: str | os.PathLike) -> dict[str, dict[int, str]]:
    """VLM-generated labels by episode key and step; a malformed line is an error naming the
    file and the line number."""
    path = os.fspath(path)
    out: dict[str, dict[int, str]] = {}
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"VLM labels file {path}: {e}") from e
    with f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key, step, code = str(record["episode"]), int(record["step"]), str(record["code"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a label record ({e}): {line[:120]!r}") from e
            out.setdefault(key, {})[step] = code
    return out


class InstructionSource:
    """Per-step (code, cache info) of an episode from the configured source."""

    def __init__(self, config: DpFrameConfig):
        self.config = config
        self.vlm = load_vlm_labels(config.vlm_labels_file) if config.instruction_source == "vlm_file" else None

    def __call__(self, episode: Mapping[str, Any], rng: np.random.Generator) -> tuple[list[str], list[str]]:
        n = len(episode["action"])
        if self.vlm is not None:
            key = episode["key"]
            steps = self.vlm.get(key)
            if steps is None:
                raise KeyError(f"VLM labels file {self.config.vlm_labels_file} has no episode {key!r}")
            missing = [t for t in range(n) if t not in steps]
            if missing:
                raise KeyError(
                    f"VLM labels file {self.config.vlm_labels_file}: episode {key!r} lacks steps {missing[:10]}"
                )
            buffer, codes, caches = MemoryBuffer(), [], []
            for t in range(n):
                buffer.update(steps[t])
                codes.append(steps[t])
                caches.append(buffer.cache_info())
            return codes, caches
        labels = episode_labels(episode, self.config.level)
        if self.config.instruction_source == "shifted":
            labels = shift_labels(labels, self.config.shift_k, rng)
        return [lab.code for lab in labels], [lab.cache_info for lab in labels]


def _crop(images: Sequence[np.ndarray], size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """The same square window of every image: random offset with `rng`, centred without."""
    h, w = images[0].shape[:2]
    if size > min(h, w):
        raise ValueError(f"crop size {size} larger than the images ({h}x{w})")
    if any(im.shape[:2] != (h, w) for im in images):
        raise ValueError("a shared crop needs cameras of one size; resize them first (image_size)")
    if rng is None:
        y, x = (h - size) // 2, (w - size) // 2
    else:
        y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return [im[y : y + size, x : x + size] for im in images]


def episode_frames(
    episode: Mapping[str, Any],
    config: DpFrameConfig,
    action_norm: Normalizer,
    state_norm: Normalizer,
    source: InstructionSource,
    rng: np.random.Generator,
    train: bool = True,
) -> list[dict[str, Any]]:
    """Every frame of an episode that has an action (all steps but the last)."""
    actions = np.asarray(episode["action"], np.float32)
    valid = ~np.asarray(episode["is_last"], bool)
    num = int(valid.sum())
    if num == 0:
        return []
    if not valid[:num].all():
        raise ValueError(f"episode {episode.get('key')}: only its last step may lack an action")
    codes, caches = source(episode, rng)
    norm_actions = action_norm.normalize(actions[:num])
    states = state_norm.normalize(episode["state"])
    h = config.horizon
    frames = []
    for t in range(num):
        idx = np.minimum(np.arange(t, t + h), num - 1)
        images = [episode["image"][t], episode["wrist_image"][t]]
        if config.crop_size is not None:
            images = _crop(images, config.crop_size, rng if train else None)
        frames.append(
            {
                "image": images[0],
                "wrist_image": images[1],
                "state": states[t],
                "action": norm_actions[idx],
                "action_mask": np.arange(t, t + h) < num,
                "code": codes[t],
                "cache_info": caches[t],
                "language_instruction": episode["language_instruction"],
            }
        )
    return frames


def collate(frames: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Stack frames; strings become numpy object arrays."""
    out = {}
    for key in frames[0]:
        values = [f[key] for f in frames]
        out[key] = np.asarray(values, dtype=object) if isinstance(values[0], str) else np.stack(values)
    return out


def dp_normalizers(stats: Mapping[str, Any], bounds: str = "min_max", normalize_gripper: bool = False) -> dict:
    """The action and state normalisers from dataset statistics (vacuum action left binary unless
    `normalize_gripper`)."""
    skip = () if normalize_gripper else (ACTION_GRIPPER_DIM,)
    return {
        "action": Normalizer.from_statistics(stats, "action", bounds, skip=skip),
        "state": Normalizer.from_statistics(stats, "state", bounds),
    }


def dp_frames(
    episodes: Iterable[Mapping[str, Any]],
    config: DpFrameConfig,
    normalizers: Mapping[str, Normalizer],
    rng: np.random.Generator,
    train: bool = True,
) -> Iterator[dict[str, Any]]:
    """Frames of a stream of episodes (wrap in `shuffle_buffer` and `batched` to train)."""
    source = InstructionSource(config)
    for episode in episodes:
        yield from episode_frames(episode, config, normalizers["action"], normalizers["state"], source, rng, train)
