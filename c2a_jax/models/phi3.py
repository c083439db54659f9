"""Phi-3 decoder (``Phi3ForCausalLM``) in Flax NNX, numerically matching transformers' PyTorch model.

Why: the code-writing VLM's language model is Phi-3 (Phi-3-mini in LLaVA-Phi-3), and transformers 5 has no
Flax models. The parameter layout follows Hugging Face exactly (fused ``qkv_proj`` and ``gate_up_proj``,
unscanned layers) so that conversion (``c2a_jax.convert.phi3``) is a rename and a transpose. LLaVA reuses
this decoder through the public `Phi3ForCausalLM.embed` and ``inputs_embeds`` with a full (B, T, S) mask.

What transformers 5.24 does and we match: rotate-half RoPE on the first ``partial_rotary_factor`` of each head;
"longrope" scaling (legacy names "su"/"yarn") picks the long or short factors by ``max(positions) + 1`` over the
whole batch against ``original_max_position_embeddings`` and multiplies cos/sin by the attention factor;
``sliding_window`` (when set) lets a query see keys less than ``sliding_window`` tokens behind it; a 2-D
padding mask hides padded keys; a prepared full mask is used as given (no causal or window term added).
One deliberate difference: the window compares position ids where transformers compares array indices. The
two agree for every real token whenever each row's real tokens are contiguous with consecutive positions
(no padding, left or right padding); positions stay right when a right-padded batch decodes into its cache.

The KV cache is a fixed-size pytree (`KVCache`), so prefill and decode are jit-able and run inside a
``lax.while_loop``. Padding (left or right) is handled by per-slot validity and per-sequence positions.
With longrope each call picks its factors from its own positions, as transformers' cached forward does;
transformers' ``generate`` additionally re-runs the whole sequence when it first crosses
``original_max_position_embeddings``, which a fixed-shape decode loop does not do.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from c2a_jax.models.layers import dense, remat
from c2a_jax.models.lora import LORA_TARGETS

# transformers' Phi-3 maps the legacy names "su" and "yarn" onto longrope (configuration_phi3.py).
_ROPE_TYPES = {"default": "default", "longrope": "longrope", "su": "longrope", "yarn": "longrope"}
_MASK_VALUE = float(np.finfo(np.float32).min)


def _dtype_name(dtype: Any) -> str:
    return jnp.dtype(dtype).name


@dataclasses.dataclass(frozen=True)
class Phi3Config:
    """Phi-3 architecture (transformers' ``Phi3Config`` fields) plus our compute options.

    ``dtype`` is the compute dtype (activations, matmul inputs, KV cache); parameters are stored in
    ``param_dtype`` (float32 unless given). ``remat`` wraps every decoder block in `layers.remat` (``jax.checkpoint``)
    (``remat_policy`` names a ``jax.checkpoint_policies`` member; None saves nothing).

    ``lora_rank`` > 0 adds low-rank adapters (Hu et al. 2021) to the decoder projections named in
    ``lora_targets``: ``y = x W + (lora_alpha / lora_rank) * (x A) B`` with A (in, r) Gaussian of
    std 1/r and B (r, out) zero, so a fresh adapter leaves the model unchanged. The adapters are
    extra parameters (``.../lora_a``, ``.../lora_b``); freeze the rest with
    ``train.freeze = (LORA_FREEZE,)`` and fold them back with `merge_lora` before export.
    """

    vocab_size: int = 32064
    hidden_size: int = 3072
    intermediate_size: int = 8192
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int = 0  # 0: hidden_size // num_attention_heads
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 1.0
    rope_type: str = "default"  # "default" or "longrope"
    rope_short_factor: tuple[float, ...] | None = None
    rope_long_factor: tuple[float, ...] | None = None
    rope_factor: float | None = None
    rope_attention_factor: float | None = None
    max_position_embeddings: int = 4096
    original_max_position_embeddings: int = 4096
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 32000
    pad_token_id: int | None = 32000
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    remat_policy: str | None = None
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        put("dtype", _dtype_name(self.dtype))
        put("param_dtype", _dtype_name(self.param_dtype))
        if not self.head_dim:
            put("head_dim", self.hidden_size // self.num_attention_heads)
        if isinstance(self.eos_token_id, Sequence):
            put("eos_token_id", tuple(int(i) for i in self.eos_token_id))
        for name in ("rope_short_factor", "rope_long_factor"):
            value = getattr(self, name)
            if value is not None:
                put(name, tuple(float(f) for f in value))
        put("lora_targets", tuple(self.lora_targets))
        unknown_targets = set(self.lora_targets) - set(LORA_TARGETS)
        if self.lora_rank < 0 or unknown_targets:
            raise ValueError(
                f"Phi3Config: lora_rank must be >= 0 and lora_targets a subset of {LORA_TARGETS}; "
                f"got rank {self.lora_rank}, unknown targets {sorted(unknown_targets)}"
            )
        if self.hidden_act != "silu":
            raise ValueError(f"Phi3Config: hidden_act {self.hidden_act!r} is not supported (Phi-3 uses 'silu')")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"Phi3Config: num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.rope_type not in ("default", "longrope"):
            raise ValueError(f"Phi3Config: rope_type {self.rope_type!r} is not supported (default or longrope)")
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(
                f"Phi3Config: rotary dim {self.rotary_dim} (head_dim {self.head_dim} x partial_rotary_factor "
                f"{self.partial_rotary_factor}) must be even and in (0, head_dim]"
            )
        if self.rope_type == "longrope":
            for name in ("rope_short_factor", "rope_long_factor"):
                value = getattr(self, name)
                if value is None or len(value) != self.rotary_dim // 2:
                    raise ValueError(
                        f"Phi3Config: longrope needs {name} with {self.rotary_dim // 2} entries "
                        f"(rotary dim / 2), got {None if value is None else len(value)}"
                    )
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"Phi3Config: sliding_window must be None or >= 1, got {self.sliding_window}")
        if self.remat_policy is not None and not hasattr(jax.checkpoint_policies, self.remat_policy):
            raise ValueError(f"Phi3Config: remat_policy {self.remat_policy!r} is not in jax.checkpoint_policies")

    @property
    def rotary_dim(self) -> int:
        """How many leading channels of each head RoPE rotates (transformers: int(head_dim * factor))."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def qkv_size(self) -> int:
        """Output width of the fused qkv projection: (heads + 2 kv_heads) x head_dim."""
        return (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim

    @classmethod
    def from_hf(cls, hf_config: Any, **overrides: Any) -> Phi3Config:
        """Read a transformers ``Phi3Config`` (or its ``config.json`` dict, 4.x or 5.x format).

        Handles ``rope_parameters`` (5.x) and ``rope_scaling`` + ``rope_theta`` (4.x, legacy type names);
        `overrides` set our fields (``dtype``, ``param_dtype``, ``remat``, ...) or replace HF values.
        """
        d = dict(hf_config.to_dict() if hasattr(hf_config, "to_dict") else hf_config)
        model_type = d.get("model_type")
        if model_type not in (None, "phi3"):
            raise ValueError(f"Phi3Config.from_hf: model_type is {model_type!r}, expected 'phi3'")
        # transformers gives rope_scaling priority over rope_parameters (convert_rope_params_to_dict).
        rope = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
        rope_name = rope.get("rope_type", rope.get("type")) or "default"
        if rope_name not in _ROPE_TYPES:
            raise ValueError(
                f"Phi3Config.from_hf: RoPE type {rope_name!r} is not supported by Phi-3 (default, longrope)"
            )
        rope_type = _ROPE_TYPES[rope_name]
        heads = d.get("num_attention_heads", cls.num_attention_heads)
        fields = {
            "vocab_size": d.get("vocab_size", cls.vocab_size),
            "hidden_size": d.get("hidden_size", cls.hidden_size),
            "intermediate_size": d.get("intermediate_size", cls.intermediate_size),
            "num_hidden_layers": d.get("num_hidden_layers", cls.num_hidden_layers),
            "num_attention_heads": heads,
            "num_key_value_heads": d.get("num_key_value_heads") or heads,
            "head_dim": d.get("head_dim") or 0,
            "hidden_act": d.get("hidden_act", cls.hidden_act),
            "rms_norm_eps": d.get("rms_norm_eps", cls.rms_norm_eps),
            "rope_theta": float(rope.get("rope_theta", d.get("rope_theta", cls.rope_theta))),
            "partial_rotary_factor": float(rope.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))),
            "rope_type": rope_type,
            "max_position_embeddings": d.get("max_position_embeddings", cls.max_position_embeddings),
            # transformers prefers the config-level value over the one inside rope_parameters.
            "original_max_position_embeddings": d.get(
                "original_max_position_embeddings",
                rope.get("original_max_position_embeddings", cls.original_max_position_embeddings),
            ),
            "sliding_window": d.get("sliding_window"),
            "tie_word_embeddings": bool(d.get("tie_word_embeddings", False)),
            "initializer_range": d.get("initializer_range", cls.initializer_range),
            "bos_token_id": d.get("bos_token_id"),
            "eos_token_id": d.get("eos_token_id"),
            "pad_token_id": d.get("pad_token_id"),
        }
        if rope_type == "longrope":
            fields["rope_short_factor"] = rope.get("short_factor")
            fields["rope_long_factor"] = rope.get("long_factor")
            fields["rope_factor"] = rope.get("factor")
            fields["rope_attention_factor"] = rope.get("attention_factor")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"Phi3Config.from_hf: unknown options {sorted(unknown)}")
        fields.update(overrides)
        return cls(**fields)

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` dict transformers 5 reads into its ``Phi3Config`` (compute options left out)."""
        rope: dict[str, Any] = {
            "rope_type": self.rope_type,
            "rope_theta": self.rope_theta,
            "partial_rotary_factor": self.partial_rotary_factor,
        }
        if self.rope_type == "longrope":
            rope["short_factor"] = list(self.rope_short_factor)
            rope["long_factor"] = list(self.rope_long_factor)
            rope["original_max_position_embeddings"] = self.original_max_position_embeddings
            if self.rope_factor is not None:
                rope["factor"] = self.rope_factor
            if self.rope_attention_factor is not None:
                rope["attention_factor"] = self.rope_attention_factor
        out = {
            "architectures": ["Phi3ForCausalLM"],
            "model_type": "phi3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "hidden_act": self.hidden_act,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "original_max_position_embeddings": self.original_max_position_embeddings,
            "rope_parameters": rope,
            "sliding_window": self.sliding_window,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "attention_dropout": 0.0,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "use_cache": True,
        }
        if self.head_dim != self.hidden_size // self.num_attention_heads:
            out["head_dim"] = self.head_dim
        return out


# --------------------------------------------------------------------------------------------------------------
# RoPE


def rope_inv_freq(config: Phi3Config, long: bool = False) -> np.ndarray:
    """Inverse frequencies (rotary_dim // 2,) in float32, as transformers computes them; `long` picks
    longrope's long factors (ignored for default RoPE)."""
    dim = config.rotary_dim
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    base = np.float32(config.rope_theta) ** exponent
    if config.rope_type == "longrope":
        factors = np.asarray(config.rope_long_factor if long else config.rope_short_factor, dtype=np.float32)
        base = factors * base
    return (np.float32(1.0) / base).astype(np.float32)


def rope_attention_scaling(config: Phi3Config) -> float:
    """The factor transformers multiplies cos and sin by (1 for default RoPE; longrope's attention factor)."""
    if config.rope_type != "longrope":
        return 1.0
    if config.rope_attention_factor is not None:
        return float(config.rope_attention_factor)
    factor = config.rope_factor
    if factor is None:
        factor = config.max_position_embeddings / config.original_max_position_embeddings
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(config.original_max_position_embeddings))


def rope_cos_sin(config: Phi3Config, positions: jax.Array, dtype: Any = None) -> tuple[jax.Array, jax.Array]:
    """cos and sin, each (B, T, rotary_dim), for integer `positions` (B, T).

    longrope: the long factors apply to the whole call when ``max(positions) + 1`` exceeds
    ``original_max_position_embeddings`` (transformers' rule, decided per forward call over the batch)."""
    inv_freq = jnp.asarray(rope_inv_freq(config))
    if config.rope_type == "longrope":
        use_long = jnp.max(positions) + 1 > config.original_max_position_embeddings
        inv_freq = jnp.where(use_long, jnp.asarray(rope_inv_freq(config, long=True)), inv_freq)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    scale = rope_attention_scaling(config)
    cos, sin = jnp.cos(emb) * scale, jnp.sin(emb) * scale
    dtype = dtype or config.dtype
    return cos.astype(dtype), sin.astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on the first ``cos.shape[-1]`` channels of `x` (B, T, heads, head_dim)."""
    rd = cos.shape[-1]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    x1, x2 = x_rot[..., : rd // 2], x_rot[..., rd // 2 :]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return jnp.concatenate([x_rot * cos + rotated * sin, x_pass], axis=-1)


# --------------------------------------------------------------------------------------------------------------
# Attention


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    *,
    scale: float | None = None,
    causal_chunks: int = 1,
) -> jax.Array:
    """Grouped-query attention: q (B, T, H, D), k and v (B, S, K, D) with H a multiple of K; query head h uses
    key/value head h // (H // K) (transformers' repeat_kv order). `mask` is boolean (B, T, S), True = visible.

    Logits and softmax are float32; a query that sees no key gets the mean of the keys' v (no NaN).
    ``causal_chunks > 1`` (T == S, T divisible by it, and a mask that hides every later key) splits the
    queries into that many blocks, each attending only to the keys up to its end: the blocks above
    the diagonal are never computed (4 blocks: 37.5% fewer attention FLOPs). Visible keys give the
    same result; a query that sees no key averages over its block's keys instead."""
    t, s = q.shape[1], k.shape[1]
    if causal_chunks > 1 and t == s and t % causal_chunks == 0 and mask is not None:
        c = t // causal_chunks
        return jnp.concatenate(
            [_attention(q[:, i * c : (i + 1) * c], k[:, : (i + 1) * c], v[:, : (i + 1) * c],
                        mask[:, i * c : (i + 1) * c, : (i + 1) * c], scale)
             for i in range(causal_chunks)],
            axis=1,
        )  # fmt: skip
    return _attention(q, k, v, mask, scale)


def causal_chunks_for(length: int) -> int:
    """Query blocks for causal attention over `length` tokens: 4 when blocks of >= 32 tokens result
    (shorter blocks cost more in overhead than they save), else 2, else 1."""
    return next((n for n in (4, 2) if length % n == 0 and length // n >= 32), 1)


def _attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, scale: float | None) -> jax.Array:
    b, t, h, d = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    g = h // kv_heads
    scale = d**-0.5 if scale is None else scale
    # One batch dimension (batch x kv head) for both matmuls: XLA's CPU backend runs dot_generals
    # with several batch dimensions several times slower (bench/vlm_train.py); GPUs do not mind.
    qf = q.reshape(b, t, kv_heads, g, d).transpose(0, 2, 3, 1, 4).reshape(b * kv_heads, g * t, d)
    kf = k.transpose(0, 2, 1, 3).reshape(b * kv_heads, s, d)
    vf = v.transpose(0, 2, 1, 3).reshape(b * kv_heads, s, d)
    dims = (((2,), (2,)), ((0,), (0,)))
    logits = jax.lax.dot_general(qf, kf, dims, preferred_element_type=jnp.float32) * scale
    logits = logits.reshape(b, kv_heads, g, t, s)
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :, :], logits, _MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype).reshape(b * kv_heads, g * t, s)
    out = jax.lax.dot_general(probs, vf, (((2,), (1,)), ((0,), (0,))))
    return out.reshape(b, kv_heads, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


@struct.dataclass
class KVCache:
    """Fixed-size decoding cache: per layer ``k[i]``, ``v[i]`` of shape (B, max_len, kv_heads, head_dim).

    ``length`` (int32 scalar) is how many slots are written (the same for every sequence: slot = array index
    of the padded batch); ``valid`` (B, max_len) marks slots holding real tokens (padding is never visible);
    ``positions`` (B, max_len) are the slots' position ids (for the sliding window); ``next_position`` (B,)
    is the position id the next real token of each sequence gets."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    length: jax.Array
    valid: jax.Array
    positions: jax.Array
    next_position: jax.Array

    @property
    def max_len(self) -> int:
        """Number of slots."""
        return self.valid.shape[1]


def init_cache(config: Phi3Config, batch_size: int, max_len: int, dtype: Any = None) -> KVCache:
    """An empty cache for `batch_size` sequences of up to `max_len` tokens (prompt padding included)."""
    dtype = dtype or config.dtype
    shape = (batch_size, max_len, config.num_key_value_heads, config.head_dim)
    layers = range(config.num_hidden_layers)
    return KVCache(
        k=tuple(jnp.zeros(shape, dtype) for _ in layers),
        v=tuple(jnp.zeros(shape, dtype) for _ in layers),
        length=jnp.zeros((), jnp.int32),
        valid=jnp.zeros((batch_size, max_len), bool),
        positions=jnp.zeros((batch_size, max_len), jnp.int32),
        next_position=jnp.zeros((batch_size,), jnp.int32),
    )


class AttentionInputs(NamedTuple):
    """What every layer needs for T new tokens, plus the cache bookkeeping (None without a cache)."""

    mask: jax.Array  # (B, T, S) bool, True = visible; S = T without a cache, max_len with one
    positions: jax.Array  # (B, T) int32 position ids (RoPE)
    real: jax.Array  # (B, T) bool, the new tokens that are not padding
    kv_valid: jax.Array | None  # (B, max_len) updated cache validity
    kv_positions: jax.Array | None  # (B, max_len) updated cache key positions


def attention_inputs(
    config: Phi3Config,
    batch: int,
    length: int,
    attention_mask: jax.Array | None = None,
    positions: jax.Array | None = None,
    cache: KVCache | None = None,
) -> AttentionInputs:
    """Visibility mask, positions and cache bookkeeping for T new tokens.

    `attention_mask` is None (all real), a (B, T) padding mask over the new tokens (1 = real), or a full
    (B, T, S) boolean mask used as given (then a token counts as real when it sees itself). A padding mask is
    combined with causality by slot and, with ``sliding_window``, hides keys whose position is
    ``sliding_window`` or more behind the query's. (transformers compares array indices; for real tokens that
    is the same whenever each row's real tokens are contiguous with consecutive positions, as with left or
    right padding, and positions stay right when a right-padded batch decodes into its cache.)
    Default positions count real tokens: ``cumsum(real) - 1`` from the cache's ``next_position`` (pads get
    the row's start position; they are never visible)."""
    start, kv_len = (0, length) if cache is None else (cache.length, cache.max_len)
    q_slots = start + jnp.arange(length, dtype=jnp.int32)
    full_mask = attention_mask is not None and attention_mask.ndim == 3
    if full_mask:
        if attention_mask.shape != (batch, length, kv_len):
            raise ValueError(
                f"full attention_mask must have shape {(batch, length, kv_len)}, got {attention_mask.shape}"
            )
        index = jnp.broadcast_to(q_slots[None, :, None], (batch, length, 1))
        real = jnp.take_along_axis(attention_mask.astype(bool), index, axis=2)[..., 0]
    elif attention_mask is None:
        real = jnp.ones((batch, length), bool)
    elif attention_mask.shape != (batch, length):
        raise ValueError(
            f"attention_mask must be (B, T) = {(batch, length)} or (B, T, S) = {(batch, length, kv_len)}, "
            f"got {attention_mask.shape}"
        )
    else:
        real = attention_mask.astype(bool)
    if positions is None:
        base = 0 if cache is None else cache.next_position[:, None]
        rank = jnp.cumsum(real.astype(jnp.int32), axis=1) - 1
        positions = base + jnp.where(real, rank, 0)
    positions = jnp.broadcast_to(jnp.asarray(positions, jnp.int32), (batch, length))
    if cache is None:
        kv_valid = kv_positions = None
        keys_real, key_positions = real, positions
    else:
        kv_valid = jax.lax.dynamic_update_slice(cache.valid, real, (0, start))
        kv_positions = jax.lax.dynamic_update_slice(cache.positions, positions, (0, start))
        keys_real, key_positions = kv_valid, kv_positions
    if full_mask:
        mask = attention_mask.astype(bool)
    else:
        kv_slots = jnp.arange(kv_len, dtype=jnp.int32)
        mask = keys_real[:, None, :] & (kv_slots[None, None, :] <= q_slots[None, :, None])
        if config.sliding_window is not None:
            mask &= key_positions[:, None, :] > positions[:, :, None] - config.sliding_window
    return AttentionInputs(mask, positions, real, kv_valid, kv_positions)


# --------------------------------------------------------------------------------------------------------------
# Modules


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], dtype: str, std: float | None) -> nnx.Param:
    value = jnp.ones(shape, dtype) if std is None else std * jax.random.normal(rngs.params(), shape, dtype)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class Dense(nnx.Module):
    """Bias-free linear layer ``x @ kernel`` with kernel (in, out) annotated with logical `axes`;
    with a LoRA adapter when `name` is one of the config's ``lora_targets`` and ``lora_rank`` > 0."""

    def __init__(
        self, din: int, dout: int, axes: tuple[str, str], config: Phi3Config, *, rngs: nnx.Rngs, name: str = ""
    ):
        self.kernel = _param(rngs, (din, dout), axes, config.param_dtype, config.initializer_range)
        self.dtype = config.dtype
        self.lora_scale = 0.0
        if config.lora_rank and name in config.lora_targets:
            r = config.lora_rank
            self.lora_a = _param(rngs, (din, r), (axes[0], None), config.param_dtype, 1.0 / r)
            self.lora_b = nnx.Param(jnp.zeros((r, dout), config.param_dtype), out_sharding=(None, axes[1]),
                                    eager_sharding=False)  # fmt: skip
            self.lora_scale = config.lora_alpha / r

    def __call__(self, x: jax.Array) -> jax.Array:
        y = dense(x, self.kernel[...], self.dtype)
        if self.lora_scale:
            low = dense(x, self.lora_a[...], self.dtype)
            y = y + (self.lora_scale * dense(low, self.lora_b[...], self.dtype)).astype(y.dtype)
        return y


class RMSNorm(nnx.Module):
    """RMSNorm as transformers' Phi3RMSNorm: normalise in float32, cast to the compute dtype, then scale."""

    def __init__(self, dim: int, config: Phi3Config, *, rngs: nnx.Rngs):
        self.scale = _param(rngs, (dim,), ("norm",), config.param_dtype, None)
        self.eps = config.rms_norm_eps
        self.dtype = config.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * y.astype(self.dtype)


class Embed(nnx.Module):
    """Token embedding table (vocab, embed)."""

    def __init__(self, config: Phi3Config, *, rngs: nnx.Rngs):
        self.embedding = _param(
            rngs,
            (config.vocab_size, config.hidden_size),
            ("vocab", "embed"),
            config.param_dtype,
            config.initializer_range,
        )
        self.dtype = config.dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)


class Phi3Attention(nnx.Module):
    """Self-attention with the fused HF ``qkv_proj`` (q heads, then k heads, then v heads), RoPE and GQA."""

    def __init__(self, config: Phi3Config, *, rngs: nnx.Rngs):
        self.config = config
        heads_dim = config.num_attention_heads * config.head_dim
        self.qkv_proj = Dense(
            config.hidden_size, config.qkv_size, ("embed", "qkv_fused"), config, rngs=rngs, name="qkv_proj"
        )
        self.o_proj = Dense(heads_dim, config.hidden_size, ("heads", "embed"), config, rngs=rngs, name="o_proj")

    def __call__(self, x, cos, sin, mask, kv=None, write_index=None, causal_chunks=1):
        """x (B, T, E) -> (B, T, E); with `kv` (k, v cache arrays of one layer) the new keys/values are written at
        slot `write_index` and attention runs over all cache slots. Returns (output, updated kv or None).
        `causal_chunks`: see `dot_product_attention` (the mask must be causal)."""
        c = self.config
        b, t, _ = x.shape
        qs, ks = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        qkv = self.qkv_proj(x)
        q = qkv[..., :qs].reshape(b, t, c.num_attention_heads, c.head_dim)
        k = qkv[..., qs : qs + ks].reshape(b, t, c.num_key_value_heads, c.head_dim)
        v = qkv[..., qs + ks :].reshape(b, t, c.num_key_value_heads, c.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:
            k_cache, v_cache = kv
            k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, write_index, 0, 0))
            v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, write_index, 0, 0))
            kv = (k_cache, v_cache)
            k, v = k_cache.astype(c.dtype), v_cache.astype(c.dtype)
        out = dot_product_attention(q, k, v, mask, scale=c.head_dim**-0.5, causal_chunks=causal_chunks)
        return self.o_proj(out.reshape(b, t, qs)), kv


class Phi3MLP(nnx.Module):
    """Gated MLP with the fused HF ``gate_up_proj``: down(SiLU(gate) * up), gate first."""

    def __init__(self, config: Phi3Config, *, rngs: nnx.Rngs):
        self.gate_up_proj = Dense(
            config.hidden_size, 2 * config.intermediate_size, ("embed", "mlp_fused"), config, rngs=rngs,
            name="gate_up_proj",
        )  # fmt: skip
        self.down_proj = Dense(
            config.intermediate_size, config.hidden_size, ("mlp", "embed"), config, rngs=rngs, name="down_proj"
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up = jnp.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(up * jax.nn.silu(gate))


class Phi3DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, config: Phi3Config, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config.hidden_size, config, rngs=rngs)
        self.self_attn = Phi3Attention(config, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config, rngs=rngs)
        self.mlp = Phi3MLP(config, rngs=rngs)

    def __call__(self, x, cos, sin, mask, kv=None, write_index=None, causal_chunks=1):
        """One block; returns (hidden states, updated kv or None)."""
        h, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv, write_index, causal_chunks)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv


def _run_layer(layer, x, cos, sin, mask, kv, write_index, causal_chunks=1):
    return layer(x, cos, sin, mask, kv, write_index, causal_chunks)


class Phi3ForCausalLM(nnx.Module):
    """Phi-3 language model with LM head. State paths mirror Hugging Face's keys: ``embed_tokens``,
    ``layers[i]``, ``norm``, ``lm_head`` (absent when ``tie_word_embeddings``: logits use the embedding)."""

    def __init__(self, config: Phi3Config, *, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = Embed(config, rngs=rngs)
        self.layers = nnx.List([Phi3DecoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config, rngs=rngs)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Dense(config.hidden_size, config.vocab_size, ("embed", "vocab"), config, rngs=rngs)
        )

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings (B, T, hidden_size) in the compute dtype (LLaVA merges image features into these)."""
        return self.embed_tokens(input_ids)

    def init_cache(self, batch_size: int, max_len: int, dtype: Any = None) -> KVCache:
        """An empty `KVCache` for this model (see `init_cache`)."""
        return init_cache(self.config, batch_size, max_len, dtype)

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        positions: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        causal_mask: bool = False,
        logits_at: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Logits (B, T, vocab) in float32 and the updated cache (None without one).

        Give exactly one of `input_ids` (B, T) or `inputs_embeds` (B, T, E). `attention_mask` and `positions`:
        see `attention_inputs` (with a cache, a (B, T) mask covers the new tokens only and a full mask is
        (B, T, max_len) over cache slots). With `cache`, the T tokens are written at slots
        ``[cache.length, cache.length + T)``; the caller sizes the cache (an overflow raises when the length is
        concrete; under jit it cannot be checked). ``causal_mask=True`` promises that no token sees a later
        one (causal training, packed or not): attention then skips the blocks above the diagonal
        (`causal_chunks_for`); outputs at tokens that see nothing (padding) may differ, no other.
        ``logits_at`` (B, K) int: the logits at these positions of each row only, (B, K, vocab) (a
        training loss needs them at its answer tokens alone: `c2a_jax.train.vlm_loss`)."""
        c = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Phi3ForCausalLM: give exactly one of input_ids or inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(c.dtype)
        b, t = x.shape[:2]
        if cache is not None and not isinstance(cache.length, jax.core.Tracer):
            if int(cache.length) + t > cache.max_len:
                raise ValueError(f"KV cache overflow: {int(cache.length)} + {t} tokens > max_len {cache.max_len}")
        inputs = attention_inputs(c, b, t, attention_mask, positions, cache)
        cos, sin = rope_cos_sin(c, inputs.positions, c.dtype)
        chunks = causal_chunks_for(t) if causal_mask and cache is None else 1
        layer_fn = functools.partial(_run_layer, causal_chunks=chunks)
        run = remat(layer_fn, c.remat_policy) if c.remat else layer_fn
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x, kv = run(layer, x, cos, sin, inputs.mask, kv, None if cache is None else cache.length)
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        if logits_at is not None:
            x = jnp.take_along_axis(x, logits_at[..., None], axis=1)
        x = self.norm(x)
        if self.lm_head is None:
            logits = dense(x, self.embed_tokens.embedding[...].T, c.dtype)
        else:
            logits = self.lm_head(x)
        new_cache = None
        if cache is not None:
            seen = jnp.max(jnp.where(inputs.real, inputs.positions + 1, 0), axis=1)
            new_cache = KVCache(
                k=tuple(new_k),
                v=tuple(new_v),
                length=cache.length + t,
                valid=inputs.kv_valid,
                positions=inputs.kv_positions,
                next_position=jnp.maximum(cache.next_position, seen).astype(jnp.int32),
            )
        return logits.astype(jnp.float32), new_cache


def prefill(
    model: Phi3ForCausalLM,
    cache: KVCache,
    input_ids: jax.Array | None = None,
    *,
    inputs_embeds: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    positions: jax.Array | None = None,
) -> tuple[jax.Array, KVCache]:
    """Run T prompt tokens (left- or right-padded; `attention_mask` (B, T), 1 = real) through `model`,
    writing them into `cache`. Returns (logits (B, T, vocab), cache)."""
    return model(
        input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, positions=positions, cache=cache
    )


def decode_step(
    model: Phi3ForCausalLM, cache: KVCache, tokens: jax.Array, positions: jax.Array | None = None
) -> tuple[jax.Array, KVCache]:
    """Append one token per sequence (`tokens` (B,)) at the next slot; each gets its sequence's next position
    unless `positions` (B,) is given. Returns (logits (B, vocab), cache). Static shapes: fits a while_loop."""
    pos = None if positions is None else positions[:, None]
    logits, cache = model(tokens[:, None], positions=pos, cache=cache)
    return logits[:, 0], cache
