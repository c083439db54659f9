"""Attention pooling: learned queries cross-attend to a variable, padded token set; one vector out.

Why (paper section 4.3, Figure 3): the policy's observation is a *set* of tokens of different kinds
-- the frozen T5's token embeddings of the code line and of the cache info (variable length, padded),
one token per camera (its ResNet feature), one proprioception token -- and the diffusion UNet wants
one fixed-size conditioning vector. "An attention pooling layer, consisting of several
cross-attention blocks" fuses them: ``num_queries`` learned query vectors go through
``num_layers`` pre-LN blocks

    q <- q + MHA(LN_q(q), LN_kv(tokens), mask)      (queries attend to the tokens, not to each other)
    q <- q + MLP(LN(q))                             (GELU, ``mlp_ratio`` x width)

and the final ``LN(q)`` is flattened to ``(B, num_queries * width)`` (big_vision's / Octo's MAP head
with several blocks). Padded tokens (``mask`` False) get no attention weight at all: they are
removed from the softmax, so their values cannot leak into the output. Every row of `mask` needs
at least one real token (the camera and proprioception tokens always are).

`Linear` and `LayerNorm` here are the plain layers the diffusion-policy modules share (PyTorch
default initialisation, as diffusion_policy trains with).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from c2a_jax.models.layers import dense
from c2a_jax.models.resnet import torch_default_init

_MASK_VALUE = float(np.finfo(np.float32).min)


def _param(value: jax.Array, axes: tuple[str, ...]) -> nnx.Param:
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class Linear(nnx.Module):
    """``y = x @ kernel + bias``, kernel ``(in, out)`` with logical `axes`; PyTorch's default init."""

    def __init__(
        self,
        features_in: int,
        features_out: int,
        axes: tuple[str, str],
        *,
        use_bias: bool = True,
        dtype: Any = "float32",
        param_dtype: Any = "float32",
        rngs: nnx.Rngs,
    ):
        init = torch_default_init(features_in)
        self.dtype = dtype
        self.kernel = _param(init(rngs.params(), (features_in, features_out), jnp.dtype(param_dtype)), axes)
        bias = _param(init(rngs.params(), (features_out,), jnp.dtype(param_dtype)), (axes[1],)) if use_bias else None
        self.bias = bias

    def __call__(self, x: jax.Array) -> jax.Array:
        y = dense(x, self.kernel[...], self.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    """PyTorch ``nn.LayerNorm`` over the last axis (eps 1e-5), in float32."""

    def __init__(self, features: int, *, eps: float = 1e-5, dtype: Any = "float32", param_dtype: Any = "float32"):
        self.eps, self.dtype = eps, dtype
        self.scale = _param(jnp.ones((features,), param_dtype), ("norm",))
        self.bias = _param(jnp.zeros((features,), param_dtype), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(self.dtype)


class CrossAttentionBlock(nnx.Module):
    """One pre-LN block: queries attend to the tokens, then an MLP; both residual."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int, *, dtype="float32", param_dtype="float32", rngs):
        if width % num_heads:
            raise ValueError(f"attention pool width {width} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm_q = LayerNorm(width, dtype=dtype, param_dtype=param_dtype)
        self.norm_kv = LayerNorm(width, dtype=dtype, param_dtype=param_dtype)
        self.q_proj = Linear(width, width, ("embed", "heads"), **kw)
        self.k_proj = Linear(width, width, ("embed", "heads"), **kw)
        self.v_proj = Linear(width, width, ("embed", "heads"), **kw)
        self.out_proj = Linear(width, width, ("heads", "embed"), **kw)
        self.norm_mlp = LayerNorm(width, dtype=dtype, param_dtype=param_dtype)
        self.fc1 = Linear(width, mlp_ratio * width, ("embed", "mlp"), **kw)
        self.fc2 = Linear(mlp_ratio * width, width, ("mlp", "embed"), **kw)

    def __call__(self, queries: jax.Array, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        b, nq, width = queries.shape
        nt = tokens.shape[1]
        h = self.num_heads
        d = width // h
        kv = self.norm_kv(tokens)
        q = self.q_proj(self.norm_q(queries)).reshape(b, nq, h, d)
        k = self.k_proj(kv).reshape(b, nt, h, d)
        v = self.v_proj(kv).reshape(b, nt, h, d)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) * d**-0.5
        logits = jnp.where(mask[:, None, None, :], logits, _MASK_VALUE)
        weights = jax.nn.softmax(logits, axis=-1)
        weights = jnp.where(mask[:, None, None, :], weights, 0.0)  # a padded token gets exactly zero
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v.astype(jnp.float32)).reshape(b, nq, width)
        queries = queries + self.out_proj(out.astype(queries.dtype))
        return queries + self.fc2(jax.nn.gelu(self.fc1(self.norm_mlp(queries)), approximate=False))


class AttentionPool(nnx.Module):
    """``(tokens (B, N, width), mask (B, N) bool) -> (B, num_queries * width)``."""

    def __init__(
        self,
        width: int,
        *,
        num_layers: int = 2,
        num_heads: int = 4,
        num_queries: int = 1,
        mlp_ratio: int = 4,
        dtype: Any = "float32",
        param_dtype: Any = "float32",
        rngs: nnx.Rngs,
    ):
        if num_layers < 1 or num_queries < 1:
            raise ValueError(f"attention pool needs >= 1 layer and query, got {num_layers} and {num_queries}")
        self.width, self.num_queries = width, num_queries
        init = nnx.initializers.normal(0.02)
        self.queries = _param(init(rngs.params(), (num_queries, width), jnp.dtype(param_dtype)), ("position", "embed"))
        self.blocks = nnx.List(
            [
                CrossAttentionBlock(width, num_heads, mlp_ratio, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                for _ in range(num_layers)
            ]
        )
        self.norm_out = LayerNorm(width, dtype=dtype, param_dtype=param_dtype)

    @property
    def features(self) -> int:
        return self.num_queries * self.width

    def __call__(self, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        b, n, width = tokens.shape
        if width != self.width:
            raise ValueError(f"attention pool expects tokens of width {self.width}, got {width}")
        mask = jnp.ones((b, n), bool) if mask is None else jnp.asarray(mask, bool)
        q = jnp.broadcast_to(self.queries[...].astype(tokens.dtype), (b, self.num_queries, width))
        for block in self.blocks:
            q = block(q, tokens, mask)
        return self.norm_out(q).reshape(b, self.num_queries * width)
