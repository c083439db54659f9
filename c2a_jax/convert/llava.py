"""LLaVA checkpoints: Hugging Face ``LlavaForConditionalGeneration`` safetensors <-> our NNX model.

Why: the code writer starts from a LLaVA-Phi-3 checkpoint (xtuner/llava-phi-3-mini-hf, saved by
transformers 4.x) or from one saved by transformers 5, and models trained here must go back to
transformers. The three parts reuse the Phi-3 and CLIP mapping tables (`c2a_jax.convert.phi3`,
`c2a_jax.convert.clip`); the projector's two Linear layers are transposed.

Key layouts met in practice (each part is located on its own, so any mix of them loads):

* transformers 4.x / the Hub (xtuner/llava-phi-3-mini-hf, llava-hf/*): ``language_model.model.*``,
  ``language_model.lm_head.weight``, ``vision_tower.vision_model.*``, ``multi_modal_projector.*``;
* ``save_pretrained`` of transformers 5.24: the same, except ``vision_tower.*`` (its conversion
  mapping for "llava" renames 4.x keys to module names on load and back on save, and its
  ``CLIPVisionModel`` has no ``vision_model`` level);
* transformers 5 module names (``model.state_dict()``): ``model.language_model.*``, ``lm_head.weight``,
  ``model.vision_tower.*``, ``model.multi_modal_projector.*`` (``model.vision_tower.vision_model.*``
  is accepted too).

transformers 5.24 loads each of them; `export_llava` writes the first by default (the one 4.x
tools read too) or, with ``layout="transformers5"``, exactly the keys 5.24 itself writes.

Every expected key must be present and nothing else (a tied LM head and the old
``embeddings.position_ids`` buffer are allowed); every shape is checked before the model is built;
float tensors of any width (bf16 included) become the configs' ``param_dtype`` (float32 by
default). The model is assembled from an abstract `nnx.eval_shape` tree: nothing is randomly
initialised.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from c2a_jax.convert.clip import clip_vision_from_state, clip_vision_hf_keys, clip_vision_to_state
from c2a_jax.convert.phi3 import hf_key_map, hf_state_dict
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
from c2a_jax.models.llava import LlavaConfig, LlavaForConditionalGeneration
from c2a_jax.models.lora import fresh_adapters, is_adapter


@dataclasses.dataclass(frozen=True)
class KeyLayout:
    """Where each part of a LLaVA checkpoint lives: prefixes of the decoder (its keys follow
    without Phi-3's ``model.``), the vision tower and the projector, and the LM head's key."""

    text: str
    lm_head: str
    vision: str
    projector: str

    def text_key(self, phi3_key: str) -> str:
        """The checkpoint key of a `Phi3ForCausalLM` key (``model.*`` or ``lm_head.weight``)."""
        if phi3_key == "lm_head.weight":
            return self.lm_head
        assert phi3_key.startswith("model."), phi3_key
        return self.text + phi3_key[len("model.") :]


# Named layouts (see the module docstring); `export_llava` writes one of the first two.
LAYOUTS = {
    "transformers4": KeyLayout(
        "language_model.model.", "language_model.lm_head.weight", "vision_tower.vision_model.", "multi_modal_projector."
    ),
    "transformers5": KeyLayout(
        "language_model.model.", "language_model.lm_head.weight", "vision_tower.", "multi_modal_projector."
    ),
    "modules": KeyLayout(
        "model.language_model.", "lm_head.weight", "model.vision_tower.", "model.multi_modal_projector."
    ),
}
_TEXT_PREFIXES = ("language_model.model.", "model.language_model.")
_LM_HEAD_KEYS = ("language_model.lm_head.weight", "lm_head.weight")
# Located by the exact key prefix + _VISION_ANCHOR ("vision_tower." also prefixes "vision_tower.vision_model.").
_VISION_PREFIXES = (
    "vision_tower.vision_model.",
    "model.vision_tower.vision_model.",
    "vision_tower.",
    "model.vision_tower.",
)
_PROJECTOR_PREFIXES = ("multi_modal_projector.", "model.multi_modal_projector.")
_VISION_ANCHOR = "embeddings.patch_embedding.weight"
_POSITION_IDS = "embeddings.position_ids"  # a buffer old CLIP checkpoints saved; no weights


def _pick(candidates: tuple[str, ...], keys: set[str], what: str, source: str, exact: bool = False) -> str | None:
    found = [c for c in candidates if (c in keys if exact else any(k.startswith(c) for k in keys))]
    if len(found) > 1:
        raise CheckpointError(f"{source}: the {what} appears under several layouts ({', '.join(found)})")
    return found[0] if found else None


def detect_layout(keys, source: str = "checkpoint") -> KeyLayout:
    """The `KeyLayout` of a LLaVA state dict's `keys`. A part found under two layouts raises
    `CheckpointError`; a part not found takes transformers 4.x's name (and is reported missing)."""
    keys = set(keys)
    vision = [p for p in _VISION_PREFIXES if p + _VISION_ANCHOR in keys]
    if len(vision) > 1:
        raise CheckpointError(f"{source}: the vision tower appears under several layouts ({', '.join(vision)})")
    default = LAYOUTS["transformers4"]
    return KeyLayout(
        text=_pick(_TEXT_PREFIXES, keys, "decoder", source) or default.text,
        lm_head=_pick(_LM_HEAD_KEYS, keys, "LM head", source, exact=True) or default.lm_head,
        vision=vision[0] if vision else default.vision,
        projector=_pick(_PROJECTOR_PREFIXES, keys, "projector", source) or default.projector,
    )


def _projector_table(config: LlavaConfig) -> list[tuple[str, StatePath, bool, tuple[int, ...]]]:
    """(HF key without prefix, state path, Linear weight (transposed), HF shape) of the projector."""
    din = config.vision.hidden_size * config.num_feature_layers
    d = config.text.hidden_size
    table = []
    for name, n_in in (("linear_1", din), ("linear_2", d)):
        table.append((f"{name}.weight", ("multi_modal_projector", name, "kernel"), True, (d, n_in)))
        if config.multimodal_projector_bias:
            table.append((f"{name}.bias", ("multi_modal_projector", name, "bias"), False, (d,)))
    return table


def _text_table(config: LlavaConfig, layout: KeyLayout) -> list[tuple[str, StatePath, bool]]:
    """(checkpoint key, state path, transposed) of the decoder and LM head."""
    return [
        (layout.text_key(key), ("language_model", *path), transpose)
        for key, (path, transpose) in hf_key_map(config.text).items()
    ]


def expected_keys(config: LlavaConfig, layout: KeyLayout) -> set[str]:
    """Every checkpoint key the model described by `config` needs under `layout`."""
    keys = {key for key, _, _ in _text_table(config, layout)}
    keys |= clip_vision_hf_keys(config.vision, layout.vision)
    keys |= {layout.projector + key for key, _, _, _ in _projector_table(config)}
    return keys


def _float32(key: str, array: np.ndarray, source: str) -> np.ndarray:
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise CheckpointError(f"{source}: tensor {key!r} has dtype {array.dtype}, expected a float type")
    return np.asarray(array, dtype=np.float32)


def llava_params_from_state_dict(
    config: LlavaConfig, tensors: Mapping[str, np.ndarray], source: str = "state dict"
) -> tuple[LlavaConfig, dict[StatePath, np.ndarray]]:
    """The model's parameters from HF tensors in any layout of the module docstring, as host arrays
    {state path: array} in the parameter dtype, without building the model (what a training run
    starting from pretrained weights feeds to its sharded init). LoRA adapters, which no checkpoint
    holds, are left out. Returns the config (unchanged unless the checkpoint unties a tied head,
    see below) and the arrays.

    Raises `CheckpointError` naming missing or unexpected keys and any tensor whose shape does not fit.
    A tied config whose checkpoint also holds an LM head different from the embedding loads untied,
    with a warning, as transformers does."""
    layout = detect_layout(tensors, source)
    found = set(tensors) - {layout.vision + _POSITION_IDS}
    if config.text.tie_word_embeddings and layout.lm_head in found:
        embedding = tensors.get(layout.text_key("model.embed_tokens.weight"))
        head = tensors[layout.lm_head]
        if embedding is not None and embedding.shape == head.shape and np.array_equal(embedding, head):
            found.discard(layout.lm_head)  # a tied head saved anyway (old .bin conversions do)
        else:
            warnings.warn(
                f"{source}: the config ties the LM head to the embedding but the checkpoint holds a different "
                f"{layout.lm_head!r}; loading it untied, as transformers does",
                stacklevel=2,
            )
            config = dataclasses.replace(config, text=dataclasses.replace(config.text, tie_word_embeddings=False))
    check_keys(expected_keys(config, layout), found, source)

    abstract = nnx.state(nnx.eval_shape(lambda: LlavaForConditionalGeneration(config, rngs=nnx.Rngs(0))))
    flat = [(path, var) for path, var in nnx.to_flat_state(abstract) if not is_adapter(path)]
    shapes = {path: tuple(var.get_value().shape) for path, var in flat}
    dtypes = {path: var.get_value().dtype for path, var in flat}
    # converted one tensor at a time into the parameter dtype (no second float32 copy of the whole model)
    values: dict[StatePath, np.ndarray] = {}
    for key, path, transpose in _text_table(config, layout):
        array = tensors[key]
        want = shapes[path][::-1] if transpose else shapes[path]
        if tuple(array.shape) != want:
            t = config.text
            raise CheckpointError(
                f"{source}: tensor {key!r} has shape {tuple(array.shape)}, the model expects {want} (decoder: hidden "
                f"{t.hidden_size}, heads {t.num_attention_heads}, kv heads {t.num_key_value_heads}, vocab {t.vocab_size})"
            )
        array = _float32(key, array, source)
        values[path] = np.asarray(array.T if transpose else array, dtype=dtypes[path])
    for key, path, transpose, hf_shape in _projector_table(config):
        array = tensors[layout.projector + key]
        if tuple(array.shape) != hf_shape:
            raise CheckpointError(
                f"{source}: tensor {layout.projector + key!r} has shape {tuple(array.shape)}, the model expects "
                f"{hf_shape} (projector: vision width {config.vision.hidden_size} x {config.num_feature_layers} "
                f"feature layers -> text width {config.text.hidden_size})"
            )
        array = _float32(layout.projector + key, array, source)
        values[path] = np.asarray(array.T if transpose else array, dtype=dtypes[path])
    try:
        vision = clip_vision_to_state(tensors, config.vision, layout.vision)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from e
    for path, array in vision.items():
        full = ("vision_tower", *path)
        values[full] = np.asarray(array, dtype=dtypes[full])

    if set(values) != set(shapes):  # the tables and the model disagree: a bug here, not in the checkpoint
        raise AssertionError(
            f"llava mapping tables do not cover the model: {sorted(set(values) ^ set(shapes), key=str)}"
        )
    for path, value in values.items():
        if tuple(value.shape) != shapes[path]:
            raise AssertionError(f"llava mapping gives {path} shape {value.shape}, the model has {shapes[path]}")
    return config, values


def llava_from_state_dict(
    config: LlavaConfig, tensors: Mapping[str, np.ndarray], source: str = "state dict"
) -> tuple[LlavaConfig, LlavaForConditionalGeneration]:
    """Build the model from HF tensors (`llava_params_from_state_dict`, whose errors it raises);
    LoRA adapters of a ``lora_rank`` config start fresh (`c2a_jax.models.lora.fresh_adapters`).
    Returns the config (untied where the checkpoint says so) and the model."""
    config, values = llava_params_from_state_dict(config, tensors, source)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: LlavaForConditionalGeneration(config, rngs=nnx.Rngs(0))))
    flat = list(nnx.to_flat_state(abstract))
    adapters = fresh_adapters(flat, config.text.lora_rank)
    filled = [(path, variable.replace(adapters[path] if path in adapters else jnp.asarray(values[path])))
              for path, variable in flat]  # fmt: skip
    return config, nnx.merge(graphdef, nnx.from_flat_state(filled))


def _config_file(path: str) -> str:
    return os.path.join(path if os.path.isdir(path) else os.path.dirname(path) or ".", "config.json")


def load_llava(path_or_dir: str | os.PathLike, **options: Any) -> tuple[LlavaConfig, LlavaForConditionalGeneration]:
    """Load a Hugging Face LLaVA (Phi-3 decoder, CLIP tower) checkpoint: a directory with config.json
    and model.safetensors or a sharded index, or a .safetensors / index file with config.json beside
    it, in any key layout of the module docstring. `options` go to `LlavaConfig.from_hf` (``dtype``,
    ``param_dtype``, ``remat``, ``remat_policy``, ``vision_options``, ``text_options``); parameters
    are float32 unless ``param_dtype`` says otherwise. Returns (config, model)."""
    path = os.fspath(path_or_dir)
    config_file = _config_file(path)
    try:
        with open(config_file, encoding="utf-8") as f:
            hf_config = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the LLaVA config {config_file}: {e}") from e
    try:
        config = LlavaConfig.from_hf(hf_config, **options)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{config_file} is not a usable LLaVA-Phi-3 config: {e}") from e
    return llava_from_state_dict(config, load_state_dict(path), source=path)


def hf_llava_state_dict(
    config: LlavaConfig, model: LlavaForConditionalGeneration, layout: str | KeyLayout = "transformers4", dtype=None
) -> dict[str, np.ndarray]:
    """The model's parameters as HF tensors (PyTorch layouts) under `layout` (a name in `LAYOUTS` or a
    `KeyLayout`), cast to `dtype` (default: as stored)."""
    layout = LAYOUTS[layout] if isinstance(layout, str) else layout
    text = hf_state_dict(config.text, model.language_model, dtype=dtype)
    tensors = {layout.text_key(key): array for key, array in text.items()}
    tensors.update(clip_vision_from_state(model.vision_tower, layout.vision, dtype))
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for key, path, transpose, _ in _projector_table(config):
        array = np.asarray(jax.device_get(params[path].get_value()))
        if dtype is not None:
            array = array.astype(jnp.dtype(dtype))
        tensors[layout.projector + key] = np.ascontiguousarray(array.T if transpose else array)
    return tensors


def export_llava(
    config: LlavaConfig,
    model: LlavaForConditionalGeneration,
    out_dir: str | os.PathLike,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    dtype: Any = None,
    *,
    layout: str = "transformers4",
    overwrite: bool = False,
) -> list[str]:
    """Write config.json and safetensors (sharded above `max_shard_bytes`) that
    ``transformers.LlavaForConditionalGeneration.from_pretrained(out_dir)`` loads with no missing or
    unexpected keys. `layout` "transformers4" (default) is the Hub layout that transformers 4.x and
    5.x both load; "transformers5" is what 5.x's ``save_pretrained`` writes. `dtype` casts the
    weights (e.g. "bfloat16"); an existing checkpoint in `out_dir` is replaced only with `overwrite`.
    Returns the written paths."""
    if layout not in ("transformers4", "transformers5"):
        raise ValueError(f"export_llava: layout must be 'transformers4' or 'transformers5', got {layout!r}")
    if model.config.to_hf_dict() != config.to_hf_dict():
        raise ValueError("export_llava: the model was built from a different architecture than `config`")
    out_dir = os.fspath(out_dir)
    old = [os.path.join(out_dir, n) for n in ("config.json", SINGLE_FILE, INDEX_FILE)]
    old = [p for p in old if os.path.exists(p)] + sorted(glob.glob(os.path.join(out_dir, "model-*-of-*.safetensors")))
    if old and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a checkpoint ({old[0]}); pass overwrite=True to replace it")
    tensors = hf_llava_state_dict(config, model, layout, dtype)
    for p in old:
        os.remove(p)
    written = save_state_dict(tensors, out_dir, max_shard_bytes=max_shard_bytes)
    hf_config = config.to_hf_dict()
    hf_config["dtype"] = jnp.dtype(dtype or config.text.param_dtype).name
    config_file = os.path.join(out_dir, "config.json")
    atomic_write_text(config_file, json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    return [*written, config_file]
