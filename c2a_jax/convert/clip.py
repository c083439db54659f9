"""Hugging Face CLIP vision tower checkpoints <-> our NNX ``ClipVisionModel``.

Why: LLaVA's image encoder comes as a transformers checkpoint (a ``CLIPVisionModel``, a full
``CLIPModel`` such as openai/clip-vit-large-patch14-336, or the ``vision_tower`` inside a LLaVA
checkpoint). One mapping table (`clip_vision_key_map`) names every tensor on both sides with its
layout change; loading checks every key and every shape before any array reaches the model, and
export writes a directory ``transformers.CLIPVisionModel.from_pretrained`` loads with no missing or
unexpected keys.

Key prefixes met in practice (the tower's keys follow the prefix):

* ``""``: ``CLIPVisionModel.save_pretrained`` of transformers 5.x;
* ``"vision_model."``: ``CLIPVisionModel`` saved by transformers 4.x, and every ``CLIPModel``;
* ``"vision_tower.vision_model."``: LLaVA checkpoints saved by transformers 4.x (llava-hf/*,
  xtuner/llava-phi-3-mini-hf);
* ``"vision_tower."``: ``LlavaForConditionalGeneration`` / ``LlavaModel`` saved by transformers 5.x
  (its conversion mapping renames ``model.vision_tower`` back to ``vision_tower`` on save);
* ``"model.vision_tower."``: the live module path in transformers 5.x (``model.state_dict()``).

`find_clip_vision_prefix` picks the one a checkpoint uses.

Layout changes: Linear ``weight (out, in)`` -> ``kernel (in, out)``; Conv2d ``weight (O, I, kh, kw)``
-> ``(kh*kw*I, O)`` (HWIO flattened, see ``c2a_jax.models.clip``); LayerNorm ``weight`` ->
``scale``; everything else is copied. Tensors are cast to the model's ``param_dtype`` (bf16
checkpoints become float32 by default).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from c2a_jax.convert.safetensors_io import (
    DEFAULT_MAX_SHARD_BYTES,
    CheckpointError,
    check_keys,
    load_state_dict,
    save_state_dict,
)
from c2a_jax.convert.state import StatePath, module_from_state
from c2a_jax.fileio import atomic_write_text
from c2a_jax.models.clip import ClipVisionConfig, ClipVisionModel

# The tensor every CLIP vision tower has and no text tower has: it locates the tower's prefix.
_ANCHOR = "embeddings.patch_embedding.weight"
# A non-persistent buffer (arange) that transformers < 4.31 saved; it carries no weights.
_POSITION_IDS = "embeddings.position_ids"
# Tensors of a full CLIPModel that are not the vision tower (the text tower and both projections).
_CLIP_MODEL_OTHER_PREFIXES = ("text_model.",)
_CLIP_MODEL_OTHER_KEYS = ("text_projection.weight", "visual_projection.weight", "logit_scale")
# Prefixes of the vision tower inside LLaVA checkpoints, see the module docstring.
LLAVA_VISION_PREFIXES = ("vision_tower.vision_model.", "vision_tower.", "model.vision_tower.")


def clip_vision_key_map(config: ClipVisionConfig) -> list[tuple[str, StatePath, str, tuple[int, ...]]]:
    """The mapping table: ``(hf_key, state_path, kind, hf_shape)`` for every tensor of the tower,
    HF keys without prefix. `kind` is ``"copy"``, ``"linear"`` (transpose) or ``"conv"`` (OIHW ->
    flattened HWIO)."""
    d, m, p, c = config.hidden_size, config.intermediate_size, config.patch_size, config.num_channels
    table: list[tuple[str, StatePath, str, tuple[int, ...]]] = [
        ("embeddings.class_embedding", ("embeddings", "class_embedding"), "copy", (d,)),
        ("embeddings.patch_embedding.weight", ("embeddings", "patch_embedding"), "conv", (d, c, p, p)),
        (
            "embeddings.position_embedding.weight",
            ("embeddings", "position_embedding"),
            "copy",
            (config.num_positions, d),
        ),
    ]

    def norm(hf: str, ours: StatePath) -> None:
        table.append((f"{hf}.weight", (*ours, "scale"), "copy", (d,)))
        table.append((f"{hf}.bias", (*ours, "bias"), "copy", (d,)))

    def linear(hf: str, ours: StatePath, n_in: int, n_out: int) -> None:
        table.append((f"{hf}.weight", (*ours, "kernel"), "linear", (n_out, n_in)))
        table.append((f"{hf}.bias", (*ours, "bias"), "copy", (n_out,)))

    norm("pre_layrnorm", ("pre_layrnorm",))
    for i in range(config.num_hidden_layers):
        hf, ours = f"encoder.layers.{i}", ("layers", i)
        norm(f"{hf}.layer_norm1", (*ours, "layer_norm1"))
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(f"{hf}.self_attn.{proj}", (*ours, "self_attn", proj), d, d)
        norm(f"{hf}.layer_norm2", (*ours, "layer_norm2"))
        linear(f"{hf}.mlp.fc1", (*ours, "mlp", "fc1"), d, m)
        linear(f"{hf}.mlp.fc2", (*ours, "mlp", "fc2"), m, d)
    norm("post_layernorm", ("post_layernorm",))
    return table


def clip_vision_hf_keys(config: ClipVisionConfig, prefix: str = "") -> set[str]:
    """The Hugging Face keys of the tower under `prefix` (what a caller's own key check expects)."""
    return {prefix + key for key, _, _, _ in clip_vision_key_map(config)}


def find_clip_vision_prefix(keys) -> str:
    """The prefix under which `keys` hold a CLIP vision tower ("" when they are the tower itself)."""
    found = sorted({k[: -len(_ANCHOR)] for k in keys if k.endswith(_ANCHOR)})
    found = [p for p in found if p == "" or p.endswith(".")]
    if len(found) == 1:
        return found[0]
    if not found:
        raise CheckpointError(f"no CLIP vision tower in the checkpoint: no key ends with {_ANCHOR!r}")
    raise CheckpointError(f"several CLIP vision towers in the checkpoint (prefixes {found}); pass prefix=")


def _to_ours(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "linear":
        return array.T
    if kind == "conv":  # (O, I, kh, kw) -> (kh, kw, I, O) -> (kh*kw*I, O)
        return array.transpose(2, 3, 1, 0).reshape(-1, array.shape[0])
    return array


def _to_hf(array: np.ndarray, kind: str, hf_shape: tuple[int, ...]) -> np.ndarray:
    if kind == "linear":
        return array.T
    if kind == "conv":
        out, channels, kh, kw = hf_shape
        return array.reshape(kh, kw, channels, out).transpose(3, 2, 0, 1)
    return array


def clip_vision_to_state(
    tensors: Mapping[str, np.ndarray], config: ClipVisionConfig, prefix: str = ""
) -> dict[StatePath, np.ndarray]:
    """Our parameters (flat: state path -> array in ``config.param_dtype``) from the HF tensors under
    `prefix`. Every key under `prefix` must be a tower tensor (an old ``embeddings.position_ids``
    buffer is ignored) and every tower tensor must be there with its shape; keys outside `prefix`
    are left to the caller. Raises `CheckpointError` naming the offending key."""
    found = {k for k in tensors if k.startswith(prefix) and k != prefix + _POSITION_IDS}
    table = clip_vision_key_map(config)
    check_keys(clip_vision_hf_keys(config, prefix), found, f"CLIP vision tower (prefix {prefix!r})")
    dtype = jnp.dtype(config.param_dtype)
    state: dict[StatePath, np.ndarray] = {}
    for key, path, kind, hf_shape in table:
        array = tensors[prefix + key]
        if tuple(array.shape) != hf_shape:
            raise CheckpointError(
                f"tensor {prefix + key!r} has shape {tuple(array.shape)} in the checkpoint but the model "
                f"(hidden {config.hidden_size}, mlp {config.intermediate_size}, patch {config.patch_size}, "
                f"image {config.image_size}) expects {hf_shape}"
            )
        state[path] = np.ascontiguousarray(_to_ours(np.asarray(array), kind).astype(dtype))
    return state


def clip_vision_model_from_state(config: ClipVisionConfig, state: Mapping[StatePath, np.ndarray]) -> ClipVisionModel:
    """A `ClipVisionModel` holding `state` (from `clip_vision_to_state`), built without random init."""
    return module_from_state(lambda: ClipVisionModel(config, rngs=nnx.Rngs(0)), state, "CLIP vision state")


def clip_vision_from_state(model: ClipVisionModel, prefix: str = "", dtype=None) -> dict[str, np.ndarray]:
    """The HF tensors (``prefix + key`` -> numpy array, PyTorch layouts) of `model`'s parameters,
    cast to `dtype` (default: as stored; ``"bfloat16"`` gives ml_dtypes bf16 arrays)."""
    params = {path: variable for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    table = clip_vision_key_map(model.config)
    check_keys({_show(p) for _, p, _, _ in table}, {_show(p) for p in params}, "CLIP vision model parameters")
    tensors = {}
    for key, path, kind, hf_shape in table:
        array = np.asarray(jax.device_get(params[path][...]))
        if dtype is not None:
            array = array.astype(jnp.dtype(dtype))
        tensors[prefix + key] = np.ascontiguousarray(_to_hf(array, kind, hf_shape))
    return tensors


def _show(path: StatePath) -> str:
    return ".".join(str(p) for p in path)


def _read_config(path: str) -> dict:
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    config_path = os.path.join(directory, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise CheckpointError(f"{config_path} not found: a CLIP checkpoint directory needs its config.json") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {config_path}: {e}") from e


def load_clip_vision(path_or_dir: str | os.PathLike, prefix: str | None = None, **options):
    """``(ClipVisionConfig, ClipVisionModel)`` from a transformers ``CLIPVisionModel`` or ``CLIPModel``
    checkpoint directory (``config.json`` + single or sharded safetensors). `prefix` defaults to the
    one the checkpoint uses; a CLIPModel's text tower and projections are skipped, any other key
    outside the tower raises `CheckpointError`. `options` go to `ClipVisionConfig` (dtype, remat,
    param_dtype, ...)."""
    path = os.fspath(path_or_dir)
    raw = _read_config(path)
    try:
        config = ClipVisionConfig.from_hf(raw, **options)
    except ValueError as e:
        raise CheckpointError(f"{path}: config.json does not describe a CLIP vision tower: {e}") from e
    tensors = load_state_dict(path)
    if prefix is None:
        prefix = find_clip_vision_prefix(tensors)
    outside = {
        k
        for k in tensors
        if not k.startswith(prefix) and not k.startswith(_CLIP_MODEL_OTHER_PREFIXES) and k not in _CLIP_MODEL_OTHER_KEYS
    }
    if outside:
        check_keys(set(), outside, f"{path} (CLIP vision tower under prefix {prefix!r})")
    state = clip_vision_to_state(tensors, config, prefix)
    return config, clip_vision_model_from_state(config, state)


def export_clip_vision(
    config: ClipVisionConfig,
    model: ClipVisionModel,
    out_dir: str | os.PathLike,
    *,
    dtype=None,
    prefix: str = "vision_model.",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> list[str]:
    """Write ``config.json`` and safetensors for ``transformers.CLIPVisionModel.from_pretrained``.

    Keys carry ``prefix`` (default ``"vision_model."``, the layout both transformers 4.x and 5.x
    load; ``""`` is what 5.x itself writes). `dtype` casts the tensors (default: as stored).
    Returns the written paths."""
    if model.config.to_hf_dict() != config.to_hf_dict():
        raise ValueError("export_clip_vision: the model was built from a different architecture than `config`")
    tensors = clip_vision_from_state(model, prefix, dtype)
    hf = config.to_hf_dict()
    hf["dtype"] = jnp.dtype(dtype or config.param_dtype).name
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    written = save_state_dict(tensors, out_dir, max_shard_bytes=max_shard_bytes)
    config_path = os.path.join(out_dir, "config.json")
    atomic_write_text(config_path, json.dumps(hf, indent=2, sort_keys=True) + "\n")
    return [*written, config_path]
