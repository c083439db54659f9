"""Read and write Hugging Face state dicts as numpy arrays: one file, or a sharded index.

Why: checkpoints users already hold (Phi-3-mini, CLIP ViT-L/14-336, LLaVA-Phi-3) come as
``model.safetensors`` or as shards listed in ``model.safetensors.index.json``, mostly in bfloat16,
which numpy alone cannot name. Tensors are read through safetensors' Flax backend (which knows
bf16) and handed out as numpy arrays (``ml_dtypes.bfloat16`` for bf16); writing goes the other
way, sharded by size with the index file transformers expects. Every write is atomic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as _save_bytes

from c2a_jax.fileio import atomic_write_bytes, atomic_write_text

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# transformers' default shard size for save_pretrained.
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model; the message names it."""


def checkpoint_files(path: str | os.PathLike) -> list[str]:
    """The safetensors files of a checkpoint: `path` may be a ``.safetensors`` file, an index
    ``.json``, or a directory holding ``model.safetensors`` or ``model.safetensors.index.json``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in (INDEX_FILE, SINGLE_FILE):
            if os.path.exists(os.path.join(path, name)):
                return checkpoint_files(os.path.join(path, name))
        found = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
        if len(found) == 1:
            return [os.path.join(path, found[0])]
        raise CheckpointError(
            f"{path}: no {SINGLE_FILE} or {INDEX_FILE} (found {found or 'no .safetensors files'}); "
            "point at a Hugging Face model directory saved with safe_serialization"
        )
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"cannot read the shard index {path}: {e}") from e
        directory = os.path.dirname(path)
        files = [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise CheckpointError(f"shard index {path} lists files that do not exist: {missing}")
        return files
    return [path]


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint (see `checkpoint_files`) as a numpy array, keyed by name."""
    tensors: dict[str, np.ndarray] = {}
    for file in checkpoint_files(path):
        try:
            with safe_open(file, framework="flax") as f:
                for key in f.keys():
                    if key in tensors:
                        raise CheckpointError(f"tensor {key!r} appears in more than one shard (again in {file})")
                    tensors[key] = np.asarray(f.get_tensor(key))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read safetensors file {file}: {e}") from e
    return tensors


def save_state_dict(
    tensors: Mapping[str, np.ndarray],
    directory: str | os.PathLike,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    metadata: Mapping[str, str] | None = None,
) -> list[str]:
    """Write `tensors` into `directory` as transformers does: ``model.safetensors`` when it fits in
    one shard, else ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``.
    Returns the written file paths."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    meta = {"format": "pt", **(metadata or {})}
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key in sorted(tensors):
        array = np.ascontiguousarray(tensors[key])
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = array
        size += array.nbytes
    if len(shards) == 1:
        path = os.path.join(directory, SINGLE_FILE)
        atomic_write_bytes(path, _save_bytes(shards[0], metadata=meta))
        return [path]
    written, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        path = os.path.join(directory, name)
        atomic_write_bytes(path, _save_bytes(shard, metadata=meta))
        written.append(path)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(a.nbytes for shard in shards for a in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    index_path = os.path.join(directory, INDEX_FILE)
    atomic_write_text(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [*written, index_path]


def check_keys(expected: set[str] | Mapping[str, object], found: set[str] | Mapping[str, object], source: str) -> None:
    """Raise `CheckpointError` listing missing and unexpected keys when the two sets differ."""
    expected_keys, found_keys = set(expected), set(found)
    missing, unexpected = sorted(expected_keys - found_keys), sorted(found_keys - expected_keys)
    if missing or unexpected:

        def show(keys):
            return ", ".join(keys[:20]) + (f" ... ({len(keys)} in all)" if len(keys) > 20 else "") if keys else "none"

        raise CheckpointError(
            f"{source} does not fit the model: missing keys: {show(missing)}; unexpected keys: {show(unexpected)}"
        )
