"""diffusion_policy's ConditionalUnet1D (temporal 1-D UNet with FiLM conditioning) in Flax NNX.

Why (paper section 4.3): the action head is "a diffusion UNet head (chi2023diffusion) with FiLM
embeddings", conditioned on the attention-pooled observation vector. This module reproduces the
structure of diffusion_policy's ``model/diffusion/conditional_unet1d.py``, ``conv1d_components.py``
and ``positional_embedding.py`` (read for the structure; not a copy):

* diffusion-step encoder: sinusoidal embedding of width ``dsed`` (``half = dsed // 2`` frequencies
  ``exp(-i log(10000) / (half - 1))``, ``[sin, cos]``), ``Linear(dsed, 4 dsed)``, Mish,
  ``Linear(4 dsed, dsed)``; the global condition is ``concat(step embedding, global_cond)``;
* ``Conv1dBlock``: Conv1d(kernel k, padding k // 2) -> GroupNorm(n_groups) -> Mish;
* ``ConditionalResidualBlock1D``: Conv1dBlock, FiLM from the condition (Mish -> Linear to ``2 C``:
  the first C are the scale, the last C the bias, ``out = scale * out + bias``; with
  ``cond_predict_scale=False`` only an additive bias of C), a second Conv1dBlock, plus the input
  through a 1x1 conv when the channel count changes;
* down path: per level two residual blocks and ``Downsample1d`` (Conv1d k3 s2 p1) except at the
  last level; two mid blocks; up path over the reversed levels but the first, each taking
  ``concat(x, skip)`` (x first), two blocks and ``Upsample1d`` (ConvTranspose1d k4 s2 p1) -- at every
  up level, as in diffusion_policy; final Conv1dBlock (8 groups whatever ``n_groups`` is, as
  diffusion_policy builds it) and a 1x1 conv to the action width.

Differences, all deliberate: tensors are channels-last ``(B, T, C)`` (input and output
``(B, horizon, action_dim)`` as diffusion_policy's interface, without its internal transposes); no
local conditioning (diffusion_policy's local-cond path is unused by its image policies and carries a
known indexing bug); and, with ``film_identity_init`` (default), the FiLM layer's scale bias
starts at 1 so every block starts as the identity-scaled ``out + bias`` rather than a random
near-zero scale (anchors.md section 1; the forward formula and parameter layout are unchanged, so
weights move between the two freely).

Upsample1d as a JAX conv: PyTorch's ConvTranspose1d(k=4, s=2, p=1) is a correlation of the
input dilated by 2 (``lhs_dilation``), padded by ``k - 1 - p = 2`` on each side, with the kernel
flipped along time and its in/out axes read as ``(in, out)``. We store its kernel as ``(K, in, out)``
(PyTorch's ``(in, out, K)`` transposed by (2, 0, 1)) and flip at use. Conv1d kernels are
``(K, in, out)`` (PyTorch ``(out, in, K)`` transposed by (2, 1, 0)).

Horizon: must be divisible by ``2 ** (len(down_dims) - 1)`` (16 with three levels).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from c2a_jax.models.attention_pool import Linear
from c2a_jax.models.resnet import Conv, GroupNorm, torch_default_init


def mish(x: jax.Array) -> jax.Array:
    """``x * tanh(softplus(x))`` (PyTorch ``nn.Mish``)."""
    return x * jnp.tanh(jax.nn.softplus(x))


def sinusoidal_embedding(timesteps: jax.Array, dim: int) -> jax.Array:
    """(B,) -> (B, dim): ``[sin(t f_i), cos(t f_i)]`` with ``f_i = exp(-i log(10000) / (dim/2 - 1))``."""
    half = dim // 2
    if half < 2:
        raise ValueError(f"sinusoidal embedding needs dim >= 4, got {dim}")
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / (half - 1)))
    args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """ConditionalUnet1D's arguments (diffusion_policy names); defaults are the paper's size with
    diffusion_policy's shipped image-config choices (kernel 5, 8 groups, FiLM scale, dsed 128)."""

    input_dim: int = 7
    global_cond_dim: int = 256
    diffusion_step_embed_dim: int = 128
    down_dims: tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    cond_predict_scale: bool = True
    film_identity_init: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "down_dims", tuple(int(d) for d in self.down_dims))
        if not self.down_dims:
            raise ValueError("UNetConfig.down_dims is empty")
        if self.kernel_size % 2 == 0:
            raise ValueError(
                f"UNetConfig.kernel_size must be odd (padding k // 2 keeps the length), got {self.kernel_size}"
            )
        bad = [d for d in self.down_dims if d % self.n_groups]
        if bad:
            raise ValueError(f"UNetConfig: down_dims {bad} are not divisible by n_groups {self.n_groups}")
        if self.down_dims[0] % 8:
            raise ValueError(f"UNetConfig: down_dims[0] {self.down_dims[0]} must be divisible by 8 (the final block)")
        for name in ("dtype", "param_dtype"):
            object.__setattr__(self, name, jnp.dtype(getattr(self, name)).name)

    @property
    def horizon_multiple(self) -> int:
        return 2 ** (len(self.down_dims) - 1)


def _kw(config: UNetConfig, rngs: nnx.Rngs) -> dict[str, Any]:
    return dict(dtype=config.dtype, param_dtype=config.param_dtype, rngs=rngs)


class Conv1dBlock(nnx.Module):
    """Conv1d (padding k // 2) -> GroupNorm -> Mish, channels-last."""

    def __init__(self, cin: int, cout: int, kernel_size: int, n_groups: int, config: UNetConfig, *, rngs: nnx.Rngs):
        self.conv = Conv(cin, cout, (kernel_size,), padding=kernel_size // 2, **_kw(config, rngs))
        self.norm = GroupNorm(n_groups, cout, dtype=config.dtype, param_dtype=config.param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return mish(self.norm(self.conv(x)))


class Downsample1d(nnx.Module):
    """Conv1d(dim, dim, 3, stride 2, padding 1): T -> T / 2."""

    def __init__(self, dim: int, config: UNetConfig, *, rngs: nnx.Rngs):
        self.conv = Conv(dim, dim, (3,), stride=2, padding=1, **_kw(config, rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class Upsample1d(nnx.Module):
    """ConvTranspose1d(dim, dim, 4, stride 2, padding 1): T -> 2 T (see the module docstring)."""

    KERNEL, STRIDE, PADDING = 4, 2, 1

    def __init__(self, dim: int, config: UNetConfig, *, rngs: nnx.Rngs):
        self.dtype = config.dtype
        # PyTorch computes a transposed conv's fan_in from its (in, out, K) weight as out * K.
        init = torch_default_init(dim * self.KERNEL)
        pdt = jnp.dtype(config.param_dtype)
        self.kernel = nnx.Param(
            init(rngs.params(), (self.KERNEL, dim, dim), pdt),
            out_sharding=("window", "conv_in", "conv_out"),
            eager_sharding=False,
        )
        self.bias = nnx.Param(init(rngs.params(), (dim,), pdt), out_sharding=("conv_out",), eager_sharding=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        pad = self.KERNEL - 1 - self.PADDING
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            jnp.flip(self.kernel[...], axis=0).astype(self.dtype),
            window_strides=(1,),
            padding=[(pad, pad)],
            lhs_dilation=(self.STRIDE,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y + self.bias[...].astype(self.dtype)


class ConditionalResidualBlock1D(nnx.Module):
    """Two Conv1dBlocks with FiLM from the condition between them, plus a (1x1 conv) residual."""

    def __init__(self, cin: int, cout: int, cond_dim: int, config: UNetConfig, *, rngs: nnx.Rngs):
        k, g = config.kernel_size, config.n_groups
        self.out_channels = cout
        self.cond_predict_scale = config.cond_predict_scale
        self.block0 = Conv1dBlock(cin, cout, k, g, config, rngs=rngs)
        self.block1 = Conv1dBlock(cout, cout, k, g, config, rngs=rngs)
        film_out = 2 * cout if config.cond_predict_scale else cout
        self.cond_encoder = Linear(cond_dim, film_out, ("cond", "conv_out"), **_kw(config, rngs))
        if config.cond_predict_scale and config.film_identity_init:
            bias = self.cond_encoder.bias
            bias[...] = bias[...].at[:cout].add(1.0)
        self.residual_conv = Conv(cin, cout, (1,), **_kw(config, rngs)) if cin != cout else None

    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        out = self.block0(x)
        embed = self.cond_encoder(mish(cond))[:, None, :]  # (B, 1, film_out): broadcast over time
        if self.cond_predict_scale:
            scale, bias = embed[..., : self.out_channels], embed[..., self.out_channels :]
            out = scale * out + bias
        else:
            out = out + embed
        out = self.block1(out)
        return out + (x if self.residual_conv is None else self.residual_conv(x))


class DiffusionStepEncoder(nnx.Module):
    """Sinusoidal(dsed) -> Linear(dsed, 4 dsed) -> Mish -> Linear(4 dsed, dsed)."""

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
        d = config.diffusion_step_embed_dim
        self.dim = d
        self.linear1 = Linear(d, 4 * d, ("time", "mlp"), **_kw(config, rngs))
        self.linear2 = Linear(4 * d, d, ("mlp", "time"), **_kw(config, rngs))

    def __call__(self, timesteps: jax.Array) -> jax.Array:
        return self.linear2(mish(self.linear1(sinusoidal_embedding(timesteps, self.dim))))


class UNetLevel(nnx.Module):
    """One level: two residual blocks (called) and its resampling conv (``resample``, applied by the
    UNet after the down path's skip is taken; None at the last down level)."""

    def __init__(self, res1, res2, resample):
        self.res1, self.res2, self.resample = res1, res2, resample

    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        return self.res2(self.res1(x, cond), cond)


class ConditionalUnet1D(nnx.Module):
    """``(sample (B, T, input_dim), timesteps (B,) int, global_cond (B, G)) -> (B, T, input_dim)``."""

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
        self.config = config
        dims = (config.input_dim, *config.down_dims)
        in_out = list(zip(dims[:-1], dims[1:], strict=True))
        cond_dim = config.diffusion_step_embed_dim + config.global_cond_dim
        self.diffusion_step_encoder = DiffusionStepEncoder(config, rngs=rngs)

        def res(cin, cout):
            return ConditionalResidualBlock1D(cin, cout, cond_dim, config, rngs=rngs)

        down = []
        for i, (cin, cout) in enumerate(in_out):
            last = i == len(in_out) - 1
            down.append(
                UNetLevel(res(cin, cout), res(cout, cout), None if last else Downsample1d(cout, config, rngs=rngs))
            )
        self.down_modules = nnx.List(down)
        mid = config.down_dims[-1]
        self.mid_modules = nnx.List([res(mid, mid), res(mid, mid)])
        up = []
        for cin, cout in reversed(in_out[1:]):
            up.append(UNetLevel(res(2 * cout, cin), res(cin, cin), Upsample1d(cin, config, rngs=rngs)))
        self.up_modules = nnx.List(up)
        start = config.down_dims[0]
        self.final_block = Conv1dBlock(start, start, config.kernel_size, 8, config, rngs=rngs)
        self.final_conv = Conv(start, config.input_dim, (1,), **_kw(config, rngs))

    def __call__(self, sample: jax.Array, timesteps: jax.Array, global_cond: jax.Array | None = None) -> jax.Array:
        c = self.config
        b, horizon, d = sample.shape
        if d != c.input_dim:
            raise ValueError(f"UNet expects samples of width {c.input_dim}, got shape {sample.shape}")
        if horizon % c.horizon_multiple:
            raise ValueError(f"UNet horizon {horizon} is not divisible by {c.horizon_multiple} (2 ** (levels - 1))")
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
        cond = self.diffusion_step_encoder(timesteps)
        if c.global_cond_dim:
            if global_cond is None or global_cond.shape != (b, c.global_cond_dim):
                got = None if global_cond is None else global_cond.shape
                raise ValueError(f"UNet expects global_cond of shape {(b, c.global_cond_dim)}, got {got}")
            cond = jnp.concatenate([cond, global_cond.astype(cond.dtype)], axis=-1)
        x = sample.astype(c.dtype)
        skips = []
        for level in self.down_modules:
            x = level(x, cond)
            skips.append(x)
            if level.resample is not None:
                x = level.resample(x)
        for block in self.mid_modules:
            x = block(x, cond)
        for level in self.up_modules:
            x = level(jnp.concatenate([x, skips.pop()], axis=-1), cond)
            x = level.resample(x)
        x = self.final_conv(self.final_block(x))
        return x.astype(jnp.float32)


def num_params(config: UNetConfig) -> int:
    """Parameter count from the architecture arithmetic (cross-checked against the built module)."""
    k = config.kernel_size
    cond = config.diffusion_step_embed_dim + config.global_cond_dim
    d = config.diffusion_step_embed_dim
    film = 2 if config.cond_predict_scale else 1

    def block(cin, cout):
        return cin * cout * k + cout + 2 * cout

    def res(cin, cout):
        n = block(cin, cout) + block(cout, cout) + cond * film * cout + film * cout
        return n + (cin * cout + cout if cin != cout else 0)

    dims = (config.input_dim, *config.down_dims)
    in_out = list(zip(dims[:-1], dims[1:], strict=True))
    total = d * 4 * d + 4 * d + 4 * d * d + d
    for i, (cin, cout) in enumerate(in_out):
        total += res(cin, cout) + res(cout, cout) + (3 * cout * cout + cout if i < len(in_out) - 1 else 0)
    total += 2 * res(dims[-1], dims[-1])
    for cin, cout in reversed(in_out[1:]):
        total += res(2 * cout, cin) + res(cin, cin) + 4 * cin * cin + cin
    start = config.down_dims[0]
    return total + block(start, start) + start * config.input_dim + config.input_dim
