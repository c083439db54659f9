"""T5 encoder (transformers' ``T5EncoderModel``) in Flax NNX: the frozen text encoder of the policy.

Why (paper section 4.3): the diffusion policy reads the code line (task info) and the cache info
through "a frozen T5 language model, which processes each respectively and produces a sequence of
token embeddings". transformers 5 has no Flax T5, so this module reproduces the PyTorch encoder's
forward pass and ``c2a_jax.convert.t5`` loads Hugging Face checkpoints (t5-*, google/t5-v1_1-*,
google/flan-t5-*) into it.

What T5 does differently from a textbook transformer, all matched here:

* RMS-style "T5 LayerNorm": ``x * rsqrt(mean(x^2) + eps) * weight`` -- no mean subtraction, no
  bias; pre-norm residual blocks and a final norm;
* no biases anywhere, and no ``1/sqrt(d)`` scaling of the attention logits (folded into the
  initialisation of ``q``);
* relative position bias: ``relative_attention_bias`` (buckets x heads) lives in the first layer and
  the bias it gives is added to the logits of *every* layer; relative positions are bucketed
  bidirectionally (half the buckets per direction, exact below ``num_buckets / 4``, log-spaced up to
  ``max_distance``);
* feed-forward ``"relu"`` (original T5: ``wo(relu(wi x))``) or gated ``"gated-gelu"`` (T5 v1.1 and
  FLAN-T5: ``wo(gelu_tanh(wi_0 x) * wi_1 x)``); ``"gated-silu"`` and plain ``"gelu"`` also work.

Outputs follow transformers: ``last_hidden_state`` is after the final norm; ``hidden_states`` holds
``num_layers + 1`` entries -- the embeddings, the outputs of layers ``0 .. n-2``, and the final normed
output (the last layer's raw output is not among them, as in transformers).

Padding: ``attention_mask`` (B, L) 1/True for real tokens removes padded *keys* from every
softmax; outputs at padded positions are computed (as transformers does) but meaningless.

Frozen in use: the policy never holds T5 parameters. Text is encoded outside the policy's
parameters (``encode`` applies ``stop_gradient``), and the token embeddings enter the policy as
inputs (`c2a_jax.models.policy`), so the optimizer never sees T5 and nothing is differentiated
through it; code strings repeat across frames, so embeddings can also be computed once and cached.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from c2a_jax.models.layers import dense

_MASK_VALUE = float(np.finfo(np.float32).min)

# transformers' T5Config defaults (t5-small); a config.json omitting a key means this value.
HF_T5_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 512,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 6,
    "num_heads": 8,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "relu",
}

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
}
_OPTION_FIELDS = ("dtype", "param_dtype")


def activation_name(feed_forward_proj: str) -> str:
    """transformers' ``dense_act_fn`` for a ``feed_forward_proj`` of the form ``ACT`` or ``gated-ACT``
    (``"gated-gelu"`` means the tanh approximation, ``gelu_new``)."""
    parts = feed_forward_proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ValueError(f"T5Config.feed_forward_proj must be 'ACT' or 'gated-ACT', got {feed_forward_proj!r}")
    act = "gelu_new" if feed_forward_proj == "gated-gelu" else parts[-1]
    if act not in ACTIVATIONS:
        raise ValueError(f"T5Config: unsupported activation {act!r}; known: {sorted(ACTIVATIONS)}")
    return act


@dataclasses.dataclass(frozen=True)
class T5Config:
    """The encoder's architecture (transformers' ``T5Config`` names) plus compute options.
    Defaults are t5-small. ``dtype`` is the compute dtype; norms and softmax run in float32."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)!r}")
        if self.relative_attention_num_buckets < 4:
            raise ValueError(
                f"T5Config.relative_attention_num_buckets must be >= 4, got {self.relative_attention_num_buckets}"
            )
        activation_name(self.feed_forward_proj)  # raises on an unknown feed_forward_proj
        for name in ("dtype", "param_dtype"):
            try:
                object.__setattr__(self, name, jnp.dtype(getattr(self, name)).name)
            except TypeError as e:
                raise ValueError(f"T5Config.{name}: not a dtype: {getattr(self, name)!r}") from e

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        """transformers' ``dense_act_fn``: the activation name, with "gated-gelu" meaning gelu_new."""
        return activation_name(self.feed_forward_proj)

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @classmethod
    def from_hf(cls, hf_config: Any, **options: Any) -> T5Config:
        """From transformers' ``T5Config`` (object or config.json dict) of a T5EncoderModel or
        T5ForConditionalGeneration; missing keys take transformers' defaults."""
        d = hf_config.to_dict() if hasattr(hf_config, "to_dict") else hf_config
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a transformers config or a dict, got {type(hf_config).__name__}")
        model_type = d.get("model_type", "t5")
        if model_type not in ("t5", "mt5"):
            raise ValueError(f"not a T5 config: model_type {model_type!r}")
        unknown = set(options) - set(_OPTION_FIELDS)
        if unknown:
            raise TypeError(f"unknown T5Config options {sorted(unknown)}; options are {list(_OPTION_FIELDS)}")
        return cls(**{k: d.get(k, v) for k, v in HF_T5_DEFAULTS.items()}, **options)


class T5Output(NamedTuple):
    last_hidden_state: jax.Array  # (B, L, d_model), after the final norm
    hidden_states: tuple[jax.Array, ...] | None


def relative_position_buckets(
    query_length: int, key_length: int, num_buckets: int, max_distance: int, bidirectional: bool = True
) -> np.ndarray:
    """(query_length, key_length) int32 buckets of ``key_pos - query_pos``, as Mesh TensorFlow and
    transformers compute them (log arithmetic in float32, truncation toward zero)."""
    rel = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).astype(rel.dtype) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    with np.errstate(divide="ignore"):
        scaled = np.log(rel.astype(np.float32) / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
        large = max_exact + np.trunc(scaled * np.float32(num_buckets - max_exact))
    large = np.minimum(np.where(is_small, 0, large), num_buckets - 1).astype(rel.dtype)
    return (buckets + np.where(is_small, rel, large)).astype(np.int32)


def _param(value: jax.Array, axes: tuple[str, ...]) -> nnx.Param:
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class T5Linear(nnx.Module):
    """Bias-free ``x @ kernel``, kernel ``(in, out)``, normal(std) init (transformers' T5 init)."""

    def __init__(self, din: int, dout: int, axes: tuple[str, str], std: float, config: T5Config, *, rngs: nnx.Rngs):
        self.dtype = config.dtype
        self.kernel = _param(nnx.initializers.normal(std)(rngs.params(), (din, dout), config.param_dtype), axes)

    def __call__(self, x: jax.Array) -> jax.Array:
        return dense(x, self.kernel[...], self.dtype)


class T5LayerNorm(nnx.Module):
    """``x * rsqrt(mean(x^2) + eps) * scale`` in float32 (no mean, no bias)."""

    def __init__(self, config: T5Config):
        self.eps, self.dtype = config.layer_norm_epsilon, config.dtype
        self.scale = _param(jnp.ones((config.d_model,), config.param_dtype), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class T5Attention(nnx.Module):
    """Bidirectional multi-head self-attention without biases and without logit scaling."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        d, inner = config.d_model, config.inner_dim
        self.q = T5Linear(d, inner, ("embed", "heads"), (d * config.d_kv) ** -0.5, config, rngs=rngs)
        self.k = T5Linear(d, inner, ("embed", "heads"), d**-0.5, config, rngs=rngs)
        self.v = T5Linear(d, inner, ("embed", "heads"), d**-0.5, config, rngs=rngs)
        self.o = T5Linear(inner, d, ("heads", "embed"), inner**-0.5, config, rngs=rngs)

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """`bias` (B or 1, heads, L, L) float32: position bias with the padding mask folded in."""
        c = self.config
        b, length, _ = x.shape
        shape = (b, length, c.num_heads, c.d_kv)
        q, k, v = (proj(x).reshape(shape) for proj in (self.q, self.k, self.v))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) + bias
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v.astype(jnp.float32)).astype(c.dtype)
        return self.o(out.reshape(b, length, c.inner_dim))


class T5FeedForward(nnx.Module):
    """``wo(act(wi x))`` or, gated, ``wo(act(wi_0 x) * wi_1 x)``."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.act = config.activation
        d, f = config.d_model, config.d_ff
        gated = config.is_gated
        self.wi = None if gated else T5Linear(d, f, ("embed", "mlp"), d**-0.5, config, rngs=rngs)
        self.wi_0 = T5Linear(d, f, ("embed", "mlp"), d**-0.5, config, rngs=rngs) if gated else None
        self.wi_1 = T5Linear(d, f, ("embed", "mlp"), d**-0.5, config, rngs=rngs) if gated else None
        self.wo = T5Linear(f, d, ("mlp", "embed"), f**-0.5, config, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.act]
        h = act(self.wi(x)) if self.wi is not None else act(self.wi_0(x)) * self.wi_1(x)
        return self.wo(h)


class T5Block(nnx.Module):
    """``x + attention(norm(x))``, then ``x + ff(norm(x))``."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.attention_norm = T5LayerNorm(config)
        self.attention = T5Attention(config, rngs=rngs)
        self.mlp_norm = T5LayerNorm(config)
        self.mlp = T5FeedForward(config, rngs=rngs)

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        x = x + self.attention(self.attention_norm(x), bias)
        return x + self.mlp(self.mlp_norm(x))


class T5EncoderModel(nnx.Module):
    """``(input_ids (B, L) int, attention_mask (B, L) or None) -> T5Output``."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        self.shared = _param(
            nnx.initializers.normal(1.0)(rngs.params(), (config.vocab_size, config.d_model), config.param_dtype),
            ("vocab", "embed"),
        )
        self.relative_attention_bias = _param(
            nnx.initializers.normal(config.d_model**-0.5)(
                rngs.params(), (config.relative_attention_num_buckets, config.num_heads), config.param_dtype
            ),
            ("position", "num_heads"),
        )
        self.blocks = nnx.List([T5Block(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_layer_norm = T5LayerNorm(config)

    def position_bias(self, length: int) -> jax.Array:
        """(1, heads, L, L) float32 relative position bias shared by every layer."""
        c = self.config
        buckets = relative_position_buckets(
            length, length, c.relative_attention_num_buckets, c.relative_attention_max_distance
        )
        values = self.relative_attention_bias[...].astype(jnp.float32)[jnp.asarray(buckets)]  # (L, L, H)
        return values.transpose(2, 0, 1)[None]

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *, output_hidden_states: bool = False
    ) -> T5Output:
        ids = jnp.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {ids.shape}")
        b, length = ids.shape
        bias = self.position_bias(length)
        if attention_mask is not None:
            mask = jnp.asarray(attention_mask).astype(bool)
            if mask.shape != (b, length):
                raise ValueError(f"attention_mask shape {mask.shape} does not match input_ids {ids.shape}")
            bias = jnp.where(mask[:, None, None, :], bias, _MASK_VALUE)
        x = self.shared[...][ids].astype(self.config.dtype)
        states = [x]
        for block in self.blocks:
            x = block(x, bias)
            states.append(x)
        x = self.final_layer_norm(x)
        hidden = (*states[:-1], x) if output_hidden_states else None
        return T5Output(x, hidden)

    def encode(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """The frozen use: last hidden states with ``stop_gradient`` (nothing flows back into T5)."""
        return jax.lax.stop_gradient(self(input_ids, attention_mask).last_hidden_state)


def num_params(config: T5Config) -> int:
    d, f, inner = config.d_model, config.d_ff, config.inner_dim
    ff = (3 if config.is_gated else 2) * d * f
    per_layer = 4 * d * inner + ff + 2 * d
    return (
        config.vocab_size * d
        + config.relative_attention_num_buckets * config.num_heads
        + config.num_layers * per_layer
        + d
    )
