"""Hugging Face T5 checkpoints -> our NNX ``T5EncoderModel`` (the encoder half only).

Why: the policy's frozen text encoder comes as a transformers checkpoint -- a ``T5EncoderModel`` or a
full ``T5ForConditionalGeneration`` (t5-*, google/t5-v1_1-*, google/flan-t5-*). One mapping table
(`t5_encoder_key_map`) names every encoder tensor with its layout change; loading checks every key
and shape before any array reaches the model and names missing and unexpected keys.

Keys: the token embedding is ``shared.weight`` (checkpoints saved by older transformers versions
may also carry the tied copy ``encoder.embed_tokens.weight``, which is used when ``shared.weight``
is absent and otherwise ignored); the encoder is ``encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}``
(+ ``relative_attention_bias`` in block 0 only), ``encoder.block.{i}.layer.0.layer_norm``,
``encoder.block.{i}.layer.1.DenseReluDense.{wi | wi_0, wi_1, wo}``, ``encoder.block.{i}.layer.1.layer_norm``
and ``encoder.final_layer_norm``. A T5ForConditionalGeneration's ``decoder.*`` and ``lm_head.weight``
are skipped; any other key is an error.

Layout changes: Linear ``weight (out, in)`` -> ``kernel (in, out)``; the embedding and the relative
attention bias table are copied; norm ``weight`` -> ``scale``. Tensors are cast to ``param_dtype``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from c2a_jax.convert.safetensors_io import CheckpointError, check_keys, load_state_dict
from c2a_jax.convert.state import StatePath, module_from_state
from c2a_jax.models.t5 import T5Config, T5EncoderModel

EMBED_ALIAS = "encoder.embed_tokens.weight"
_SKIPPED_PREFIXES = ("decoder.",)
_SKIPPED_KEYS = ("lm_head.weight",)


def t5_encoder_key_map(config: T5Config) -> list[tuple[str, StatePath, str, tuple[int, ...]]]:
    """``(hf_key, state_path, kind, hf_shape)`` for every encoder tensor; `kind` is ``"copy"`` or
    ``"linear"`` (transpose)."""
    d, inner, f = config.d_model, config.inner_dim, config.d_ff
    table: list[tuple[str, StatePath, str, tuple[int, ...]]] = [
        ("shared.weight", ("shared",), "copy", (config.vocab_size, d)),
        (
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            ("relative_attention_bias",),
            "copy",
            (config.relative_attention_num_buckets, config.num_heads),
        ),
    ]
    for i in range(config.num_layers):
        hf, ours = f"encoder.block.{i}.layer", ("blocks", i)
        for name in ("q", "k", "v"):
            table.append(
                (f"{hf}.0.SelfAttention.{name}.weight", (*ours, "attention", name, "kernel"), "linear", (inner, d))
            )
        table.append((f"{hf}.0.SelfAttention.o.weight", (*ours, "attention", "o", "kernel"), "linear", (d, inner)))
        table.append((f"{hf}.0.layer_norm.weight", (*ours, "attention_norm", "scale"), "copy", (d,)))
        ins = ("wi_0", "wi_1") if config.is_gated else ("wi",)
        for name in ins:
            table.append((f"{hf}.1.DenseReluDense.{name}.weight", (*ours, "mlp", name, "kernel"), "linear", (f, d)))
        table.append((f"{hf}.1.DenseReluDense.wo.weight", (*ours, "mlp", "wo", "kernel"), "linear", (d, f)))
        table.append((f"{hf}.1.layer_norm.weight", (*ours, "mlp_norm", "scale"), "copy", (d,)))
    table.append(("encoder.final_layer_norm.weight", ("final_layer_norm", "scale"), "copy", (d,)))
    return table


def t5_encoder_to_state(tensors: Mapping[str, np.ndarray], config: T5Config) -> dict[StatePath, np.ndarray]:
    """Our parameters (state path -> array in ``config.param_dtype``) from a T5 state dict. Raises
    `CheckpointError` naming missing, unexpected or mis-shaped keys."""
    found = {k for k in tensors if not k.startswith(_SKIPPED_PREFIXES) and k not in _SKIPPED_KEYS}
    if "shared.weight" not in found and EMBED_ALIAS in found:
        tensors = {**tensors, "shared.weight": tensors[EMBED_ALIAS]}
        found.add("shared.weight")
    found.discard(EMBED_ALIAS)
    table = t5_encoder_key_map(config)
    check_keys({key for key, _, _, _ in table}, found, "T5 encoder checkpoint")
    dtype = jnp.dtype(config.param_dtype)
    state: dict[StatePath, np.ndarray] = {}
    for key, path, kind, hf_shape in table:
        array = np.asarray(tensors[key])
        if tuple(array.shape) != hf_shape:
            raise CheckpointError(
                f"tensor {key!r} has shape {tuple(array.shape)} in the checkpoint but the model (d_model "
                f"{config.d_model}, heads {config.num_heads}x{config.d_kv}, d_ff {config.d_ff}, vocab "
                f"{config.vocab_size}) expects {hf_shape}"
            )
        if kind == "linear":
            array = array.T
        state[path] = np.ascontiguousarray(array.astype(dtype))
    return state


def _show(path: StatePath) -> str:
    return ".".join(str(p) for p in path)


def t5_encoder_from_state(config: T5Config, state: Mapping[StatePath, np.ndarray]) -> T5EncoderModel:
    """A `T5EncoderModel` holding `state`, built without random initialisation."""
    return module_from_state(lambda: T5EncoderModel(config, rngs=nnx.Rngs(0)), state, "T5 encoder state")


def load_t5_encoder(path_or_dir: str | os.PathLike, **options) -> tuple[T5Config, T5EncoderModel]:
    """``(T5Config, T5EncoderModel)`` from a transformers T5 checkpoint directory (``config.json`` +
    single or sharded safetensors). `options` go to `T5Config` (dtype, param_dtype)."""
    path = os.fspath(path_or_dir)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    config_path = os.path.join(directory, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError as e:
        raise CheckpointError(f"{config_path} not found: a T5 checkpoint directory needs its config.json") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {config_path}: {e}") from e
    try:
        config = T5Config.from_hf(raw, **options)
    except ValueError as e:
        raise CheckpointError(f"{path}: config.json does not describe a T5 encoder: {e}") from e
    state = t5_encoder_to_state(load_state_dict(path), config)
    return config, t5_encoder_from_state(config, state)
