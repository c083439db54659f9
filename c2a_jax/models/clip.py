"""CLIP ViT vision tower (the image encoder of LLaVA) in Flax NNX.

Why: transformers 5 has no Flax models, and the code-writing VLM needs CLIP ViT-L/14-336 features
inside the same jitted, sharded program as the Phi-3 decoder. This module reproduces transformers'
``CLIPVisionModel`` forward pass exactly, so Hugging Face checkpoints load by renaming and
transposing (``c2a_jax.convert.clip``) and parity is tested against the PyTorch model.

Conventions, matching Hugging Face:

* submodule names follow HF (``embeddings``, ``pre_layrnorm`` -- HF's spelling --, ``layers[i]``
  for ``encoder.layers.i``, ``self_attn.{q,k,v,out}_proj``, ``mlp.fc1/fc2``, ``post_layernorm``);
* ``hidden_states[0]`` is the embedding output *after* ``pre_layrnorm``, ``hidden_states[i]`` the
  output of layer ``i``, so ``hidden_states[-1] == last_hidden_state`` (no ``post_layernorm``);
  ``pooler_output`` is ``post_layernorm`` applied to the class token only;
* images are ``pixel_values`` in NCHW by default; pass ``channels_last=True`` for NHWC.

Layouts: Linear kernels are ``(in, out)``. The patch embedding (HF: a stride-``patch`` Conv2d
without bias) is one 2-D kernel with logical axes ``("patch", "embed")``: the patch is flattened
in (row, column, channel) order, i.e. an HWIO conv kernel reshaped to ``(p*p*C, hidden)``, and
applied as a matmul on non-overlapping patches (the same arithmetic as the strided conv).

Numerics: parameters are stored in ``param_dtype`` (float32) and cast to the compute ``dtype``
(e.g. bfloat16) at use; layer norms and the attention softmax run in float32. On a GPU, float32
matmuls run at JAX's default (reduced) precision; wrap calls in
``jax.default_matmul_precision("highest")`` for float32 parity with PyTorch (measured on an H100,
ViT-L/14-336: max abs error 8e-6 at "highest", 2e-3 at the default, on outputs of scale ~6).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from c2a_jax.models.layers import dense, remat

# transformers' CLIPVisionConfig defaults (ViT-B/32); a config.json written as a diff against the
# defaults (old CLIP and LLaVA checkpoints) omits exactly these keys.
HF_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


def _quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


def _gelu_erf(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=True)


# Hugging Face activation names (transformers.activations.ACT2FN) that CLIP checkpoints use.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": _quick_gelu,
    "gelu": _gelu_erf,
    "gelu_python": _gelu_erf,
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_python_tanh": _gelu_tanh,
}

_ARCH_FIELDS = tuple(HF_VISION_DEFAULTS)  # the architecture: read from and written to config.json
_OPTION_FIELDS = ("dtype", "param_dtype", "remat", "remat_policy", "attention_impl")  # ours, run-time only


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig:
    """Architecture of a CLIP ViT vision tower plus our run-time options.

    Defaults are CLIP ViT-L/14-336 (the tower LLaVA uses). ``dtype`` is the compute dtype,
    ``param_dtype`` the storage dtype of parameters; ``remat`` recomputes each encoder layer in
    the backward pass (``remat_policy`` names a ``jax.checkpoint_policies`` entry, None saves
    nothing); ``attention_impl`` is passed to ``jax.nn.dot_product_attention`` (``"xla"``,
    ``"cudnn"`` -- GPU, bf16/fp16 only --, or None for JAX's choice).
    """

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    remat_policy: str | None = None
    attention_impl: str | None = "xla"

    def __post_init__(self):
        for name in _ARCH_FIELDS[:-2]:  # the integer sizes
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ClipVisionConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.patch_size > self.image_size:
            raise ValueError(f"ClipVisionConfig: patch_size {self.patch_size} exceeds image_size {self.image_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"ClipVisionConfig: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"ClipVisionConfig: unsupported hidden_act {self.hidden_act!r}; known: {sorted(ACTIVATIONS)}"
            )
        for name in ("dtype", "param_dtype"):
            try:
                canonical = jnp.dtype(getattr(self, name)).name
            except TypeError as e:
                raise ValueError(f"ClipVisionConfig.{name}: not a dtype: {getattr(self, name)!r}") from e
            object.__setattr__(self, name, canonical)
        if self.remat_policy is not None and not hasattr(jax.checkpoint_policies, self.remat_policy):
            raise ValueError(f"ClipVisionConfig.remat_policy {self.remat_policy!r} is not in jax.checkpoint_policies")
        if self.attention_impl not in (None, "xla", "cudnn"):
            raise ValueError(
                f"ClipVisionConfig.attention_impl must be 'xla', 'cudnn' or None, got {self.attention_impl!r}"
            )
        if self.attention_impl == "cudnn" and self.dtype not in ("bfloat16", "float16"):
            raise ValueError(
                f"ClipVisionConfig: attention_impl='cudnn' needs dtype bfloat16 or float16, not {self.dtype}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def grid_size(self) -> int:
        """Patches per image side (HF's strided conv drops any remainder)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per image (the class token not counted)."""
        return self.grid_size**2

    @property
    def num_positions(self) -> int:
        """Rows of the position embedding: the patches plus the class token."""
        return self.num_patches + 1

    @classmethod
    def from_hf(cls, hf_config: Any, **options: Any) -> ClipVisionConfig:
        """Build from transformers' ``CLIPVisionConfig`` (object or ``config.json`` dict), or from a
        full ``CLIPConfig`` / ``LlavaConfig`` by taking its ``vision_config``. Keys a config omits take
        transformers' CLIPVisionConfig defaults; `options` set our fields (dtype, remat, ...)."""
        d = hf_config.to_dict() if hasattr(hf_config, "to_dict") else hf_config
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a transformers config or a dict, got {type(hf_config).__name__}")
        if "vision_config" in d:
            vision = d["vision_config"]
            if vision is None:
                raise ValueError(f"config of model_type {d.get('model_type')!r} has no vision_config")
            d = vision.to_dict() if hasattr(vision, "to_dict") else vision
            if not isinstance(d, Mapping):
                raise ValueError(f"vision_config must be a dict, got {type(vision).__name__}")
        model_type = d.get("model_type", "clip_vision_model")
        if model_type != "clip_vision_model":
            raise ValueError(f"not a CLIP vision config: model_type {model_type!r} (expected 'clip_vision_model')")
        unknown = set(options) - set(_OPTION_FIELDS)
        if unknown:
            raise TypeError(f"unknown ClipVisionConfig options {sorted(unknown)}; options are {list(_OPTION_FIELDS)}")
        arch = {name: d.get(name, default) for name, default in HF_VISION_DEFAULTS.items()}
        return cls(**arch, **options)

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` dict of the matching transformers ``CLIPVisionModel``."""
        return {
            "architectures": ["CLIPVisionModel"],
            "model_type": "clip_vision_model",
            **{name: getattr(self, name) for name in _ARCH_FIELDS},
        }


class ClipVisionOutput(NamedTuple):
    """What the tower returns, with transformers' names and meanings."""

    last_hidden_state: jax.Array  # (batch, 1 + patches, hidden): the last layer's output, no final norm
    pooler_output: jax.Array  # (batch, hidden): post_layernorm(class token)
    hidden_states: tuple[jax.Array, ...] | None  # num_hidden_layers + 1 entries, or None


def _param(value: jax.Array, axes: tuple[str, ...]) -> nnx.Param:
    # eager_sharding=False: the model builds without a mesh; sharding happens when a step places it.
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class Dense(nnx.Module):
    """``y = x @ kernel + bias`` with kernel ``(in, out)`` and logical axes `axes` (bias takes the out axis)."""

    def __init__(self, features_in: int, features_out: int, axes: tuple[str, str], config: ClipVisionConfig, *, rngs):
        self.dtype = config.dtype
        init = nnx.initializers.lecun_normal()
        self.kernel = _param(init(rngs.params(), (features_in, features_out), config.param_dtype), axes)
        self.bias = _param(jnp.zeros((features_out,), config.param_dtype), (axes[1],))

    def __call__(self, x: jax.Array) -> jax.Array:
        return dense(x, self.kernel[...], self.dtype) + self.bias[...].astype(self.dtype)


class LayerNorm(nnx.Module):
    """PyTorch ``nn.LayerNorm`` over the last axis (biased variance), computed in float32."""

    def __init__(self, features: int, config: ClipVisionConfig):
        self.dtype = config.dtype
        self.eps = config.layer_norm_eps
        self.scale = _param(jnp.ones((features,), config.param_dtype), ("norm",))
        self.bias = _param(jnp.zeros((features,), config.param_dtype), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


def _to_patches(pixel_values: jax.Array, config: ClipVisionConfig, channels_last: bool) -> jax.Array:
    """(batch, grid*grid, p*p*C) patches in (row, column, channel) order, row-major over the grid."""
    x = jnp.asarray(pixel_values)
    layout = "NHWC" if channels_last else "NCHW"
    if x.ndim != 4:
        raise ValueError(f"pixel_values must be 4-D {layout}, got shape {x.shape}")
    if channels_last:
        batch, height, width, channels = x.shape
    else:
        batch, channels, height, width = x.shape
    if channels != config.num_channels or height != config.image_size or width != config.image_size:
        raise ValueError(
            f"pixel_values of shape {x.shape} ({layout}) do not fit the model: expected {config.num_channels} "
            f"channels and {config.image_size}x{config.image_size} pixels"
        )
    p, g = config.patch_size, config.grid_size
    if channels_last:
        x = x[:, : g * p, : g * p, :].reshape(batch, g, p, g, p, channels).transpose(0, 1, 3, 2, 4, 5)
    else:
        x = x[:, :, : g * p, : g * p].reshape(batch, channels, g, p, g, p).transpose(0, 2, 4, 3, 5, 1)
    return x.reshape(batch, g * g, p * p * channels)


class ClipVisionEmbeddings(nnx.Module):
    """Patch embedding (conv without bias as a matmul), a class token, learned position embeddings."""

    def __init__(self, config: ClipVisionConfig, *, rngs: nnx.Rngs):
        self.config = config
        d, pdt = config.hidden_size, config.param_dtype
        patch_dim = config.patch_size**2 * config.num_channels
        normal = nnx.initializers.normal(0.02)
        self.patch_embedding = _param(normal(rngs.params(), (patch_dim, d), pdt), ("patch", "embed"))
        self.class_embedding = _param(nnx.initializers.normal(d**-0.5)(rngs.params(), (d,), pdt), ("embed",))
        self.position_embedding = _param(normal(rngs.params(), (config.num_positions, d), pdt), ("position", "embed"))

    def __call__(self, pixel_values: jax.Array, channels_last: bool = False) -> jax.Array:
        dtype = self.config.dtype
        patches = _to_patches(pixel_values, self.config, channels_last).astype(dtype)
        tokens = dense(patches, self.patch_embedding[...], dtype)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(dtype), (tokens.shape[0], 1, tokens.shape[-1]))
        return jnp.concatenate([cls, tokens], axis=1) + self.position_embedding[...].astype(dtype)


class ClipAttention(nnx.Module):
    """Bidirectional multi-head self-attention with separate q/k/v/out projections (all with biases)."""

    def __init__(self, config: ClipVisionConfig, *, rngs: nnx.Rngs):
        self.config = config
        d = config.hidden_size
        self.q_proj = Dense(d, d, ("embed", "heads"), config, rngs=rngs)
        self.k_proj = Dense(d, d, ("embed", "heads"), config, rngs=rngs)
        self.v_proj = Dense(d, d, ("embed", "heads"), config, rngs=rngs)
        self.out_proj = Dense(d, d, ("heads", "embed"), config, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        shape = (*x.shape[:-1], c.num_attention_heads, c.head_dim)
        q, k, v = (proj(x).reshape(shape) for proj in (self.q_proj, self.k_proj, self.v_proj))
        # logits and softmax run in float32 (jax's xla path promotes them), like PyTorch's sdpa.
        out = jax.nn.dot_product_attention(q, k, v, scale=c.head_dim**-0.5, implementation=c.attention_impl)
        return self.out_proj(out.reshape(x.shape))


class ClipMLP(nnx.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, config: ClipVisionConfig, *, rngs: nnx.Rngs):
        self.act = config.hidden_act
        self.fc1 = Dense(config.hidden_size, config.intermediate_size, ("embed", "mlp"), config, rngs=rngs)
        self.fc2 = Dense(config.intermediate_size, config.hidden_size, ("mlp", "embed"), config, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(ACTIVATIONS[self.act](self.fc1(x)))


class ClipEncoderLayer(nnx.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, config: ClipVisionConfig, *, rngs: nnx.Rngs):
        self.layer_norm1 = LayerNorm(config.hidden_size, config)
        self.self_attn = ClipAttention(config, rngs=rngs)
        self.layer_norm2 = LayerNorm(config.hidden_size, config)
        self.mlp = ClipMLP(config, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


def _run_layer(layer: ClipEncoderLayer, x: jax.Array) -> jax.Array:
    return layer(x)


def _layer_indices(layer: int | Sequence[int]) -> tuple[bool, list[int]]:
    """(is a single int, the indices) for LLaVA's ``vision_feature_layer``."""
    try:
        return True, [operator.index(layer)]
    except TypeError:
        pass
    indices = [operator.index(i) for i in layer]
    if not indices:
        raise ValueError("vision feature layer list is empty")
    return False, indices


def select_features(
    hidden_states: Sequence[jax.Array], layer: int | Sequence[int] = -2, strategy: str = "default"
) -> jax.Array:
    """LLaVA's image features from the tower's hidden states, as transformers' ``get_image_features``
    does before the projector: ``layer`` (``vision_feature_layer``) is an index into `hidden_states`
    (0 = embeddings, -1 = last layer) or a list of indices whose states are concatenated on the
    channel axis; ``strategy`` (``vision_feature_select_strategy``) ``"default"`` drops the class
    token, ``"full"`` keeps it."""
    if strategy not in ("default", "full"):
        raise ValueError(f"vision feature select strategy must be 'default' or 'full', got {strategy!r}")
    _, indices = _layer_indices(layer)
    n = len(hidden_states)
    for i in indices:
        if not -n <= i < n:
            raise IndexError(f"vision feature layer {i} is out of range for {n} hidden states")
    chosen = [hidden_states[i] for i in indices]
    if strategy == "default":
        chosen = [h[:, 1:] for h in chosen]
    return chosen[0] if len(chosen) == 1 else jnp.concatenate(chosen, axis=-1)


class ClipVisionModel(nnx.Module):
    """transformers' ``CLIPVisionModel``: embeddings, pre_layrnorm, encoder layers, post_layernorm on
    the class token. See the module docstring for output and layout conventions."""

    def __init__(self, config: ClipVisionConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = ClipVisionEmbeddings(config, rngs=rngs)
        self.pre_layrnorm = LayerNorm(config.hidden_size, config)
        self.layers = nnx.List([ClipEncoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.post_layernorm = LayerNorm(config.hidden_size, config)

    def _hidden_states(self, pixel_values: jax.Array, channels_last: bool, depth: int) -> list[jax.Array]:
        """Embeddings after pre_layrnorm, then the outputs of the first `depth` layers."""
        c = self.config
        apply = _run_layer
        if c.remat:
            apply = remat(_run_layer, c.remat_policy)
        states = [self.pre_layrnorm(self.embeddings(pixel_values, channels_last))]
        for layer in list(self.layers)[:depth]:
            states.append(apply(layer, states[-1]))
        return states

    def __call__(
        self, pixel_values: jax.Array, *, output_hidden_states: bool = False, channels_last: bool = False
    ) -> ClipVisionOutput:
        """Run the tower on images (NCHW, or NHWC with ``channels_last=True``) of the configured size."""
        states = self._hidden_states(pixel_values, channels_last, self.config.num_hidden_layers)
        last = states[-1]
        pooled = self.post_layernorm(last[:, 0, :])
        return ClipVisionOutput(last, pooled, tuple(states) if output_hidden_states else None)

    def image_features(
        self,
        pixel_values: jax.Array,
        layer: int | Sequence[int] = -2,
        strategy: str = "default",
        *,
        channels_last: bool = False,
    ) -> jax.Array:
        """``select_features`` of this tower's hidden states, running only the layers it needs (the
        last layer is skipped for LLaVA's default ``layer=-2``)."""
        n = self.config.num_hidden_layers + 1
        single, indices = _layer_indices(layer)
        for i in indices:
            if not -n <= i < n:
                raise IndexError(f"vision feature layer {i} is out of range for {n} hidden states")
        absolute = [i % n for i in indices]
        states = self._hidden_states(pixel_values, channels_last, max(absolute))
        return select_features(states, absolute[0] if single else absolute, strategy)


def num_params(config: ClipVisionConfig) -> int:
    """Parameter count of the tower (303.5M for CLIP ViT-L/14-336), from the config alone."""
    d, m, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 4 * (d * d + d) + (d * m + m) + (m * d + d) + 4 * d
    embed = config.patch_size**2 * config.num_channels * d + d + config.num_positions * d
    return embed + 4 * d + n * per_layer
