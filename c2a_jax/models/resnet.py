"""ResNet-18 camera encoder with GroupNorm, trained from scratch (one per camera), in Flax NNX.

Why (paper section 4.3): the diffusion policy encodes the base and wrist cameras with "a lightweight
vision encoder based on a standard ResNet-18". We follow diffusion_policy's image encoder
(``MultiImageObsEncoder`` with ``use_group_norm``): torchvision's ResNet-18 without its ``fc``
layer, every BatchNorm replaced by ``GroupNorm(num_groups = channels // 16)`` (batch statistics
are a poor fit for small per-device batches and EMA weights), no pretraining, a separate backbone
per camera. Two heads:

* ``"avgpool"`` (default): global average pool of the last stage, a 512-d feature (torchvision's
  ``fc = Identity``; diffusion_policy's image policy);
* ``"spatial_softmax"``: robomimic's keypoint head (diffusion_policy's hybrid policy): a 1x1 conv to
  ``num_kp`` maps, a softmax over positions per map (temperature 1, not learned), the expected
  (x, y) on a [-1, 1] grid per map, then ``Linear(2 num_kp, keypoint_features)``.

Layout: images are NHWC ``uint8`` (our RLDS frames), converted inside to float in [0, 1] and, by
default, normalised with the ImageNet mean/std (diffusion_policy's ``imagenet_norm``). Conv kernels
are HWIO (``(kh, kw, in, out)``; PyTorch's ``(out, in, kh, kw)`` transposed by (2, 3, 1, 0)); convs
have no bias (torchvision); initialisation follows torchvision (Kaiming normal, fan_out, for convs;
GroupNorm scale 1 and bias 0).

`Conv` and `GroupNorm` here are channels-last N-d layers with PyTorch semantics (GroupNorm eps 1e-5,
biased variance, computed in float32); the 1-D UNet (`c2a_jax.models.unet1d`) reuses them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from c2a_jax.models.layers import dense

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEADS = ("avgpool", "spatial_softmax")


def _param(value: jax.Array, axes: tuple[str, ...]) -> nnx.Param:
    # eager_sharding=False: the model builds without a mesh; sharding happens when a step places it.
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def torch_default_init(fan_in: int):
    """PyTorch's default Linear/Conv initialiser (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv(nnx.Module):
    """Channels-last N-d convolution ``(B, *spatial, in) -> (B, *spatial', out)``, PyTorch padding.

    `kernel` is ``(*window, in, out)`` with logical axes ``("window",) * n + ("conv_in", "conv_out")``.
    ``init="torch"`` is PyTorch's default (weights and bias U(+-1/sqrt(fan_in))); ``"kaiming_fan_out"``
    is torchvision's ResNet init (normal, std sqrt(2 / fan_out), zero bias). A 1x1 conv with stride 1
    and no padding runs as a matmul (`dense`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        stride: int = 1,
        padding: int = 0,
        use_bias: bool = True,
        init: str = "torch",
        spatial_dims: int | None = None,
        dtype: Any = "float32",
        param_dtype: Any = "float32",
        rngs: nnx.Rngs,
    ):
        if isinstance(kernel_size, int):
            if spatial_dims is None:
                raise ValueError("Conv: give spatial_dims with an integer kernel_size")
            kernel_size = (kernel_size,) * spatial_dims
        window = tuple(int(k) for k in kernel_size)
        self.window, self.stride, self.padding, self.dtype = window, int(stride), int(padding), dtype
        shape = (*window, in_features, out_features)
        fan_in = int(np.prod(window)) * in_features
        if init == "torch":
            kernel_init = torch_default_init(fan_in)
        elif init == "kaiming_fan_out":
            kernel_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
        else:
            raise ValueError(f"Conv: unknown init {init!r}")
        axes = ("window",) * len(window) + ("conv_in", "conv_out")
        self.kernel = _param(kernel_init(rngs.params(), shape, jnp.dtype(param_dtype)), axes)
        bias = None
        if use_bias:
            bias_init = torch_default_init(fan_in) if init == "torch" else nnx.initializers.zeros
            bias = _param(bias_init(rngs.params(), (out_features,), jnp.dtype(param_dtype)), ("conv_out",))
        self.bias = bias

    def __call__(self, x: jax.Array) -> jax.Array:
        n = len(self.window)
        kernel = self.kernel[...]
        if all(k == 1 for k in self.window) and self.stride == 1 and self.padding == 0:
            y = dense(x, kernel.reshape(kernel.shape[-2:]), self.dtype)
        else:
            y = jax.lax.conv_general_dilated(
                x.astype(self.dtype),
                kernel.astype(self.dtype),
                window_strides=(self.stride,) * n,
                padding=[(self.padding, self.padding)] * n,
                dimension_numbers=_dimension_numbers(n),
            )
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def _dimension_numbers(n: int) -> tuple[str, str, str]:
    if not 1 <= n <= 3:
        raise ValueError(f"Conv supports 1 to 3 spatial dims, got {n}")
    spatial = "DHW"[-n:]
    return (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")


class GroupNorm(nnx.Module):
    """PyTorch ``nn.GroupNorm`` on channels-last input ``(B, ..., C)``: channels split into
    `num_groups` contiguous groups, statistics over each group and all positions (biased
    variance, ``eps`` 1e-5), per-channel affine; computed in float32, returned in `dtype`."""

    def __init__(self, num_groups: int, channels: int, *, eps: float = 1e-5, dtype="float32", param_dtype="float32"):
        if num_groups < 1 or channels % num_groups:
            raise ValueError(f"GroupNorm: {channels} channels do not split into {num_groups} groups")
        self.num_groups, self.eps, self.dtype = num_groups, eps, dtype
        self.scale = _param(jnp.ones((channels,), param_dtype), ("norm",))
        self.bias = _param(jnp.zeros((channels,), param_dtype), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        # Statistics go through per-channel means over positions, then over each group's channels,
        # and are broadcast back per channel: the same two-pass arithmetic as reshaping x to
        # (B, N, groups, C/groups), but on XLA:CPU about 10x faster (no 4-D reduction layout).
        shape = x.shape
        batch, channels, g = shape[0], shape[-1], self.num_groups
        k = channels // g
        flat = x.astype(jnp.float32).reshape(batch, -1, channels)
        mean = jnp.repeat(flat.mean(axis=1).reshape(batch, g, k).mean(axis=-1), k, axis=-1)
        centred = flat - mean[:, None, :]
        var = jnp.square(centred).mean(axis=1).reshape(batch, g, k).mean(axis=-1)
        scale = jnp.repeat(jax.lax.rsqrt(var + self.eps), k, axis=-1) * self.scale[...].astype(jnp.float32)
        y = centred * scale[:, None, :] + self.bias[...].astype(jnp.float32)
        return y.reshape(shape).astype(self.dtype)


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """ResNet-18 with GroupNorm. ``widths`` are the four stages' channels (torchvision: 64..512; a
    smaller tuple gives a CPU-sized network with the same topology); every width must be a
    multiple of 16 (GroupNorm groups = width // 16). ``dtype`` is the compute dtype of the convs."""

    widths: tuple[int, ...] = (64, 128, 256, 512)
    blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2)  # ResNet-18
    head: str = "avgpool"
    num_kp: int = 32
    keypoint_features: int = 64
    imagenet_norm: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "blocks_per_stage", tuple(int(b) for b in self.blocks_per_stage))
        if len(self.widths) != len(self.blocks_per_stage) or not self.widths:
            raise ValueError(f"ResNetConfig: widths {self.widths} and blocks {self.blocks_per_stage} differ in length")
        bad = [w for w in self.widths if w < 16 or w % 16]
        if bad:
            raise ValueError(f"ResNetConfig: widths must be multiples of 16 (GroupNorm of width // 16), got {bad}")
        if self.head not in HEADS:
            raise ValueError(f"ResNetConfig.head must be one of {HEADS}, got {self.head!r}")
        for name in ("dtype", "param_dtype"):
            object.__setattr__(self, name, jnp.dtype(getattr(self, name)).name)

    @property
    def features(self) -> int:
        """Width of the encoder's output vector."""
        return self.widths[-1] if self.head == "avgpool" else self.keypoint_features


def _norm(channels: int, config: ResNetConfig) -> GroupNorm:
    return GroupNorm(channels // 16, channels, dtype=config.dtype, param_dtype=config.param_dtype)


def _conv(cin: int, cout: int, k: int, stride: int, padding: int, config: ResNetConfig, rngs: nnx.Rngs) -> Conv:
    return Conv(
        cin,
        cout,
        (k, k),
        stride=stride,
        padding=padding,
        use_bias=False,
        init="kaiming_fan_out",
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        rngs=rngs,
    )


class BasicBlock(nnx.Module):
    """torchvision's BasicBlock: conv3x3(stride)-norm-relu-conv3x3-norm, plus the input (through a
    strided 1x1 conv and norm when the shape changes), then relu."""

    def __init__(self, cin: int, cout: int, stride: int, config: ResNetConfig, *, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, cout, 3, stride, 1, config, rngs)
        self.norm1 = _norm(cout, config)
        self.conv2 = _conv(cout, cout, 3, 1, 1, config, rngs)
        self.norm2 = _norm(cout, config)
        project = stride != 1 or cin != cout
        self.downsample_conv = _conv(cin, cout, 1, stride, 0, config, rngs) if project else None
        self.downsample_norm = _norm(cout, config) if project else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        shortcut = x if self.downsample_conv is None else self.downsample_norm(self.downsample_conv(x))
        return jax.nn.relu(y + shortcut)


class SpatialSoftmax(nnx.Module):
    """robomimic's SpatialSoftmax + VisualCore projection: (B, H, W, C) -> (B, keypoint_features)."""

    def __init__(self, channels: int, config: ResNetConfig, *, rngs: nnx.Rngs):
        self.keypoints = Conv(
            channels, config.num_kp, (1, 1), dtype=config.dtype, param_dtype=config.param_dtype, rngs=rngs
        )
        fan_in = 2 * config.num_kp
        init = torch_default_init(fan_in)
        self.kernel = _param(
            init(rngs.params(), (fan_in, config.keypoint_features), config.param_dtype), ("features", "embed")
        )
        self.bias = _param(init(rngs.params(), (config.keypoint_features,), config.param_dtype), ("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        maps = self.keypoints(x).astype(jnp.float32)  # (B, H, W, K)
        k = maps.shape[-1]
        attention = jax.nn.softmax(maps.reshape(b, h * w, k), axis=1)  # temperature 1
        pos_x, pos_y = np.meshgrid(np.linspace(-1.0, 1.0, w), np.linspace(-1.0, 1.0, h))
        grid = jnp.asarray(np.stack([pos_x.reshape(-1), pos_y.reshape(-1)], axis=-1), jnp.float32)  # (HW, 2)
        expected = jnp.einsum("bpk,pc->bkc", attention, grid).reshape(b, 2 * k)  # (x, y) per keypoint
        return dense(expected, self.kernel[...], jnp.float32) + self.bias[...].astype(jnp.float32)


class ResNet18(nnx.Module):
    """(B, H, W, 3) uint8 (or float in [0, 1]) -> (B, config.features) float32."""

    def __init__(self, config: ResNetConfig, *, rngs: nnx.Rngs):
        self.config = config
        w0 = config.widths[0]
        self.conv1 = _conv(3, w0, 7, 2, 3, config, rngs)
        self.norm1 = _norm(w0, config)
        stages = []
        cin = w0
        for i, (width, blocks) in enumerate(zip(config.widths, config.blocks_per_stage, strict=True)):
            stage = []
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                stage.append(BasicBlock(cin, width, stride, config, rngs=rngs))
                cin = width
            stages.append(nnx.List(stage))
        self.stages = nnx.List(stages)
        self.spatial_softmax = SpatialSoftmax(cin, config, rngs=rngs) if config.head == "spatial_softmax" else None

    def preprocess(self, images: jax.Array) -> jax.Array:
        """uint8 images -> float32 in [0, 1] (floats are taken as already in [0, 1]), then ImageNet
        normalisation when configured."""
        x = jnp.asarray(images)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"images must be NHWC with 3 channels, got shape {x.shape}")
        x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
        if self.config.imagenet_norm:
            x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
        return x

    def feature_map(self, images: jax.Array) -> jax.Array:
        """The last stage's (B, H/32, W/32, widths[-1]) map."""
        x = jax.nn.relu(self.norm1(self.conv1(self.preprocess(images))))
        x = jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), [(0, 0), (1, 1), (1, 1), (0, 0)]
        )
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return x

    def __call__(self, images: jax.Array) -> jax.Array:
        x = self.feature_map(images)
        if self.spatial_softmax is not None:
            return self.spatial_softmax(x)
        return x.astype(jnp.float32).mean(axis=(1, 2))


def num_params(config: ResNetConfig) -> int:
    """Parameter count from the architecture arithmetic (11,176,512 for torchvision's ResNet-18
    without ``fc``: GroupNorm has the same two vectors per layer as BatchNorm's weight and bias)."""
    norm = 2
    w = config.widths
    total = 3 * 49 * w[0] + norm * w[0]
    cin = w[0]
    for i, (width, blocks) in enumerate(zip(w, config.blocks_per_stage, strict=True)):
        for j in range(blocks):
            stride = 2 if (i > 0 and j == 0) else 1
            total += 9 * cin * width + norm * width + 9 * width * width + norm * width
            if stride != 1 or cin != width:
                total += cin * width + norm * width
            cin = width
    if config.head == "spatial_softmax":
        total += cin * config.num_kp + config.num_kp + 2 * config.num_kp * config.keypoint_features
        total += config.keypoint_features
    return total
