"""Phi-3 checkpoints: Hugging Face ``Phi3ForCausalLM`` safetensors <-> our NNX `Phi3ForCausalLM`.

Why: users hold Phi-3 weights as Hugging Face directories (config.json + safetensors, often sharded, bf16);
training and inference here need them as NNX state, and models trained here must go back to transformers.
Our state paths mirror HF's module names, so the mapping table is a rename plus a transpose of every
``nn.Linear`` weight ((out, in) in PyTorch, (in, out) here). Every tensor's shape is checked against the
model the config describes; missing and unexpected keys are named (a tied ``lm_head.weight`` is optional).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from c2a_jax.convert.safetensors_io import (
    DEFAULT_MAX_SHARD_BYTES,
    INDEX_FILE,
    SINGLE_FILE,
    CheckpointError,
    check_keys,
    load_state_dict,
    save_state_dict,
)
from c2a_jax.convert.state import StatePath
from c2a_jax.fileio import atomic_write_text
from c2a_jax.models.lora import fresh_adapters
from c2a_jax.models.phi3 import Phi3Config, Phi3ForCausalLM


def hf_key_map(config: Phi3Config) -> dict[str, tuple[StatePath, bool]]:
    """HF key -> (our state path, whether the tensor is a Linear weight stored transposed in HF)."""
    table: dict[str, tuple[StatePath, bool]] = {"model.embed_tokens.weight": (("embed_tokens", "embedding"), False)}
    for i in range(config.num_hidden_layers):
        hf, ours = f"model.layers.{i}.", ("layers", i)
        table[hf + "input_layernorm.weight"] = ((*ours, "input_layernorm", "scale"), False)
        table[hf + "self_attn.qkv_proj.weight"] = ((*ours, "self_attn", "qkv_proj", "kernel"), True)
        table[hf + "self_attn.o_proj.weight"] = ((*ours, "self_attn", "o_proj", "kernel"), True)
        table[hf + "post_attention_layernorm.weight"] = ((*ours, "post_attention_layernorm", "scale"), False)
        table[hf + "mlp.gate_up_proj.weight"] = ((*ours, "mlp", "gate_up_proj", "kernel"), True)
        table[hf + "mlp.down_proj.weight"] = ((*ours, "mlp", "down_proj", "kernel"), True)
    table["model.norm.weight"] = (("norm", "scale"), False)
    if not config.tie_word_embeddings:
        table["lm_head.weight"] = (("lm_head", "kernel"), True)
    return table


def phi3_from_state_dict(
    config: Phi3Config, tensors: dict[str, np.ndarray], source: str = "state dict", prefix: str = ""
) -> Phi3ForCausalLM:
    """Build the model from HF tensors (keys ``prefix + hf_key``; e.g. ``language_model.`` inside LLaVA).

    Raises `CheckpointError` naming missing/unexpected keys and any tensor whose shape does not fit.
    Floating tensors of any width (bf16 included) are cast to ``config.param_dtype``."""
    table = hf_key_map(config)
    expected = {prefix + key for key in table}
    optional = {prefix + "lm_head.weight"} if config.tie_word_embeddings else set()
    check_keys(expected, set(tensors) - optional, source)
    abstract = nnx.eval_shape(lambda: Phi3ForCausalLM(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    shapes = {path: var.get_value().shape for path, var in nnx.to_flat_state(state)}
    paths = {path for path, _ in table.values()}
    flat = list(nnx.to_flat_state(state))
    adapters = fresh_adapters(flat, config.lora_rank)  # LoRA parameters no checkpoint holds
    paths |= set(adapters)
    if set(shapes) != paths:  # the table and the model disagree: a bug here, not in the checkpoint
        raise AssertionError(f"phi3 mapping table does not cover the model: {sorted(set(shapes) ^ paths, key=str)}")
    values: dict[StatePath, jax.Array] = dict(adapters)
    for key, (path, transpose) in table.items():
        array = tensors[prefix + key]
        want = shapes[path][::-1] if transpose else shapes[path]
        if tuple(array.shape) != tuple(want):
            raise CheckpointError(
                f"{source}: tensor {prefix + key!r} has shape {tuple(array.shape)}, the model expects {tuple(want)} "
                f"(from its config: hidden {config.hidden_size}, heads {config.num_attention_heads}, "
                f"kv heads {config.num_key_value_heads}, vocab {config.vocab_size})"
            )
        if not jnp.issubdtype(array.dtype, jnp.floating):
            raise CheckpointError(f"{source}: tensor {prefix + key!r} has dtype {array.dtype}, expected a float type")
        array = np.asarray(array, dtype=np.float32)
        values[path] = jnp.asarray(array.T if transpose else array, dtype=config.param_dtype)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(values))
    return nnx.merge(graphdef, state)


def _config_path(path: str) -> str:
    return os.path.join(path if os.path.isdir(path) else os.path.dirname(path) or ".", "config.json")


def load_phi3(path_or_dir: str | os.PathLike, **options: Any) -> tuple[Phi3Config, Phi3ForCausalLM]:
    """Load a Hugging Face Phi-3 checkpoint: a directory with config.json and model.safetensors (or a sharded
    index), or a .safetensors / index file with config.json beside it. `options` are `Phi3Config` fields
    (``dtype``, ``param_dtype``, ``remat``, ...). Returns (config, model)."""
    path = os.fspath(path_or_dir)
    config_file = _config_path(path)
    try:
        with open(config_file, encoding="utf-8") as f:
            hf_config = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the Phi-3 config {config_file}: {e}") from e
    try:
        config = Phi3Config.from_hf(hf_config, **options)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{config_file} is not a usable Phi-3 config: {e}") from e
    tensors = load_state_dict(path)
    return config, phi3_from_state_dict(config, tensors, source=path)


def hf_state_dict(
    config: Phi3Config, model: Phi3ForCausalLM, prefix: str = "", dtype: Any = None
) -> dict[str, np.ndarray]:
    """The model's parameters as HF tensors (PyTorch layout), cast to `dtype` (default: as stored)."""
    if config.lora_rank:
        raise ValueError(
            "this Phi-3 has LoRA adapters, which Hugging Face's Phi-3 cannot hold: fold them in first with "
            "c2a_jax.models.lora.merge_lora"
        )
    flat = {path: var.get_value() for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    out = {}
    for key, (path, transpose) in hf_key_map(config).items():
        if path not in flat:
            raise ValueError(f"model has no parameter {'/'.join(map(str, path))} for HF key {key!r}")
        array = np.asarray(jax.device_get(flat[path]))
        if dtype is not None:
            array = array.astype(jnp.dtype(dtype))
        out[prefix + key] = np.ascontiguousarray(array.T if transpose else array)
    return out


def export_phi3(
    config: Phi3Config,
    model: Phi3ForCausalLM,
    out_dir: str | os.PathLike,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    dtype: Any = None,
    overwrite: bool = False,
) -> list[str]:
    """Write config.json and safetensors (sharded above `max_shard_bytes`) that
    ``transformers.Phi3ForCausalLM.from_pretrained(out_dir)`` loads with no missing or unexpected keys.
    `dtype` casts the weights (e.g. "bfloat16"); an existing checkpoint in `out_dir` is replaced only with
    `overwrite`. Returns the written paths."""
    out_dir = os.fspath(out_dir)
    old = [os.path.join(out_dir, n) for n in ("config.json", SINGLE_FILE, INDEX_FILE)]
    old = [p for p in old if os.path.exists(p)] + sorted(glob.glob(os.path.join(out_dir, "model-*-of-*.safetensors")))
    if old and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a checkpoint ({old[0]}); pass overwrite=True to replace it")
    tensors = hf_state_dict(config, model, dtype=dtype)
    for p in old:
        os.remove(p)
    written = save_state_dict(tensors, out_dir, max_shard_bytes=max_shard_bytes)
    hf_config = config.to_hf_dict()
    hf_config["dtype"] = jnp.dtype(dtype or config.param_dtype).name
    config_file = os.path.join(out_dir, "config.json")
    atomic_write_text(config_file, json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    return [*written, config_file]
