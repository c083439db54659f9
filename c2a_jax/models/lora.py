"""Low-rank adapters for the decoder: the names they attach to, the freeze pattern, and folding them back.

Why: fine-tuning all 3.8B decoder parameters needs Adam moments for each (about 45 GiB in
float32); LoRA (Hu et al. 2021) trains a few million instead. The adapters themselves live in
`c2a_jax.models.phi3.Dense` (``Phi3Config.lora_rank``); this module holds what the rest of the
system needs to know about them: which projections take one (`LORA_TARGETS`), the
``train.freeze`` pattern that leaves only adapters (and, if wanted, the projector) trainable
(`LORA_FREEZE`), and `merge_lora`, which folds ``W + (alpha / r) A B`` into plain kernels so a
fine-tuned model exports to Hugging Face and decodes without the extra matmuls.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

LORA_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
# every parameter whose path holds no adapter (re.fullmatch, c2a_jax.train.optimizer)
LORA_FREEZE = r"(?!.*lora_[ab]$).*"
# the same, but the LLaVA projector also trains (the paper fine-tunes it with the decoder)
LORA_AND_PROJECTOR_FREEZE = r"(?!.*lora_[ab]$)(?!multi_modal_projector/).*"


def merge_lora(build_plain: Callable[[], nnx.Module], model: nnx.Module) -> nnx.Module:
    """`model`'s weights in the adapter-free module ``build_plain()`` (traced only): every kernel
    with adapters becomes ``kernel + scale * lora_a @ lora_b`` (computed in float32, stored in the
    kernel's dtype); every other parameter is copied."""
    source = {path: var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    scales = {tuple(path): float(module.lora_scale) for path, module in nnx.iter_graph(model)
              if getattr(module, "lora_scale", 0.0)}  # fmt: skip
    graphdef, abstract = nnx.split(nnx.eval_shape(build_plain))
    filled = []
    for path, variable in nnx.to_flat_state(abstract):
        value = source[path][...]
        parent = path[:-1]
        if path[-1] == "kernel" and parent + ("lora_a",) in source:
            a = jnp.asarray(source[parent + ("lora_a",)][...], jnp.float32)
            b = jnp.asarray(source[parent + ("lora_b",)][...], jnp.float32)
            scale = scales.get(parent, 0.0)
            value = (jnp.asarray(value, jnp.float32) + scale * (a @ b)).astype(value.dtype)
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"merge_lora: {path} has shape {value.shape}, the plain model expects {variable.shape}")
        filled.append((path, variable.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def is_adapter(path: tuple) -> bool:
    return bool(path) and path[-1] in ("lora_a", "lora_b")


def fresh_adapters(abstract_flat, rank: int, seed: int = 0) -> dict[tuple, jnp.ndarray]:
    """Initial adapter values for every ``lora_a`` / ``lora_b`` path of an abstract flat state
    (``[(path, variable), ...]``): A Gaussian with std 1/rank (a key per path, from `seed`), B zero.
    What a converter fills in for adapters a pretrained checkpoint cannot hold."""
    import jax

    key = jax.random.key(seed)
    out = {}
    for i, (path, variable) in enumerate(abstract_flat):
        if not is_adapter(path):
            continue
        shape, dtype = variable.get_value().shape, variable.get_value().dtype
        if path[-1] == "lora_a":
            out[path] = (jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32) / rank).astype(dtype)
        else:
            out[path] = jnp.zeros(shape, dtype)
    return out
