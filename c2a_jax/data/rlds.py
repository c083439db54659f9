"""Reading our RLDS dataset into plain numpy episodes, one shard per JAX process.

Why: both input pipelines (`c2a_jax.data.vlm`, `c2a_jax.data.dp`) work on whole episodes: the
VLM's memory and the DP's action chunks look across steps. tf.data does what it is good at
(parallel file reads, PNG decoding and resizing in C++ threads, file shuffling, per-host
splitting with `tfds.split_for_jax_process`, so every host of a pod reads a disjoint part); the
pipelines then see an `Episode`: a dict of numpy arrays and Python strings with one row per step.
TensorFlow is imported only here and is kept off the GPUs (design.md section 5).

Episode keys: ``image``, ``wrist_image`` (T, S, S, 3) uint8; ``state`` (T, 9), ``action``
(T, 7) float32 (last row invalid: ``is_last``); ``is_last`` (T,) bool; ``actor_grid_positions``
(T, K, 2) int32; per level in ``LEVELS``: ``code_<level>``, ``past_actions_<level>``,
``cache_info_<level>`` (lists of T str) and ``is_keystep_<level>`` (T,) bool;
``language_instruction`` (str); ``prompts``, ``actor_names`` (lists of str); ``task``, ``level``
and ``key`` (`episode_key`, unique).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from c2a_jax.data.labels import LEVELS

Episode = dict[str, Any]
_TEXT_STEP_FIELDS = tuple(f"{kind}_{level}" for level in LEVELS for kind in ("code", "past_actions", "cache_info"))


def _tensorflow():
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialised: nothing more to do
        pass
    import tensorflow_datasets as tfds

    return tf, tfds


def open_dataset(data_dir: str | os.PathLike):
    """A TFDS builder for a built dataset version directory (``.../clevrskills_rlds/panda_vacuum/1.0.0``) or a
    directory above it; errors name the path."""
    _, tfds = _tensorflow()
    path = os.fspath(data_dir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"dataset directory {path} does not exist (build it with data_pipelines/build_rlds.py)")
    if os.path.exists(os.path.join(path, "dataset_info.json")):
        candidate = path
    else:  # a directory above the version directory: the first one below it, in walk order
        candidate = next((root for root, _, files in os.walk(path) if "dataset_info.json" in files), None)
    if candidate is not None:
        try:
            return tfds.builder_from_directory(candidate)
        except Exception as e:  # noqa: BLE001  (TFDS raises many kinds; name the path instead)
            raise ValueError(f"cannot open the RLDS dataset in {candidate}: {e}") from e
    raise FileNotFoundError(f"no dataset_info.json under {path}: not a built TFDS dataset")


def _decode(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_decode(v) for v in value.tolist()]
    return value


def episode_key(metadata: dict[str, Any]) -> str:
    """``<dataset>/<episode file stem>`` (e.g. ``Pick/seed_000042``, ``.../seed_000042_variant_1``):
    unique across a dataset, and the key VLM-label files use (`c2a_jax.data.dp`)."""
    path = str(metadata.get("file_path") or "")
    stem = os.path.splitext(os.path.basename(path))[0] if path else f"seed_{metadata.get('seed', '')}"
    return f"{metadata.get('dataset', '')}/{stem}"


def to_episode(steps: dict[str, Any], metadata: dict[str, Any]) -> Episode:
    """An `Episode` from a batched-steps numpy dict and the episode metadata."""
    obs = steps["observation"]
    episode: Episode = {
        "image": obs["image"],
        "wrist_image": obs["wrist_image"],
        "state": obs["state"].astype(np.float32),
        "action": steps["action"].astype(np.float32),
        "is_last": steps["is_last"].astype(bool),
        "actor_grid_positions": steps["actor_grid_positions"].astype(np.int32),
        "language_instruction": _decode(steps["language_instruction"][0]),
    }
    for field in _TEXT_STEP_FIELDS:
        episode[field] = [_decode(v) for v in steps[field]]
    for level in LEVELS:
        episode[f"is_keystep_{level}"] = steps[f"is_keystep_{level}"].astype(bool)
    meta = {k: _decode(v) for k, v in metadata.items()}
    episode["prompts"] = list(meta.get("prompts") or [episode["language_instruction"]])
    episode["actor_names"] = list(meta.get("actor_names") or [])
    episode["task"] = str(meta.get("task", ""))
    episode["level"] = str(meta.get("level", ""))
    episode["key"] = episode_key(meta)
    return episode


def deterministic_read_config(seed: int, num_parallel_reads: int):
    """TFDS read options whose file order depends on `seed` alone: the file shuffle is seeded and
    the files are interleaved in a fixed order (parallel reads, order kept). ``deterministic`` is
    set explicitly because TFDS would turn it off for a shuffled read without a seed, and because
    the option is the default of every stage after it: a parallel stage added later keeps order."""
    tf, tfds = _tensorflow()
    options = tf.data.Options()
    options.deterministic = True
    return tfds.ReadConfig(shuffle_seed=int(seed), interleave_cycle_length=num_parallel_reads, options=options)


def rlds_episodes(
    data_dir: str | os.PathLike,
    split: str = "train",
    *,
    image_size: int | None = None,
    shuffle: bool = True,
    repeat: bool = False,
    seed: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_parallel_reads: int = 4,
) -> Iterator[Episode]:
    """Episodes of `split` as `Episode` dicts, images resized to `image_size` (bilinear, in
    tf.data) when given. This process reads only its `tfds.split_for_jax_process` share (by
    default from ``jax.process_index()`` / ``jax.process_count()``; pass them for tests).
    With `repeat`, loops forever, reshuffling the file order every epoch.

    The order is a function of (dataset, split, `seed`, `shuffle`, process share) alone, in any
    process and at any thread timing: every shuffle is seeded and every parallel stage keeps its
    input order (`deterministic_read_config`, ``map(deterministic=True)``). Resuming a run relies
    on it (`c2a_jax.train.resumable.CountingIterator` replays the stream)."""
    tf, tfds = _tensorflow()
    builder = open_dataset(data_dir)
    if split not in builder.info.splits:
        raise ValueError(f"{builder.data_dir} has no split {split!r} (splits: {sorted(builder.info.splits)})")
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    n = builder.info.splits[split].num_examples
    if n < process_count:
        raise ValueError(f"split {split!r} of {builder.data_dir} has {n} episodes for {process_count} processes")
    host_split = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
    ds = builder.as_dataset(split=host_split, shuffle_files=shuffle,
                            read_config=deterministic_read_config(seed, num_parallel_reads))  # fmt: skip
    if shuffle:
        ds = ds.shuffle(64, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def batch_steps(episode):
        steps = episode["steps"].batch(1_000_000).get_single_element()  # every step of the episode
        if image_size is not None:
            obs = dict(steps["observation"])
            for key in ("image", "wrist_image"):
                resized = tf.image.resize(obs[key], (image_size, image_size), method="bilinear", antialias=True)
                obs[key] = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
            steps = {**steps, "observation": obs}
        return steps, episode["episode_metadata"]

    # In parallel, in input order: with deterministic=False a shuffled read came out in
    # thread-finishing order, a different stream in every process.
    ds = ds.map(batch_steps, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(2)
    for steps, metadata in tfds.as_numpy(ds):
        yield to_episode(steps, metadata)
