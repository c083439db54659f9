"""LLaVA in Flax NNX: CLIP vision tower -> two-layer projector -> Phi-3 decoder.

Why: the paper's code writer is LLaVA-Phi-3 (xtuner/llava-phi-3-mini: Phi-3-mini-4k +
CLIP ViT-L/14-336). Following transformers 5, the prompt already holds one image token per image
feature (the pipeline expands ``<image>``, `c2a_jax.data.vlm`); the model replaces those tokens'
embeddings with the projected features of the layer(s) LLaVA selects (``vision_feature_layer``, an
index into the tower's hidden states or a list of them concatenated on the channel axis; the
"default" strategy drops the class token, "full" keeps it), in order.

Two ways in for pixels, both channels-last (NHWC):

* ``images``: uint8 (B, S, S, 3) or (B, P, S, S, 3), the way the input pipeline ships them (4x
  fewer bytes to the device than float); rescaled by 1/255 and normalised with CLIP's mean and std
  on the device (`preprocess_images`, what ``CLIPImageProcessor`` does after resizing);
* ``pixel_values``: float, already normalised (e.g. ``CLIPImageProcessor(...)["pixel_values"]``
  transposed NCHW -> NHWC), same shapes.

Rows may hold several images (packed batches): with (B, P, S, S, 3) the k-th group of image tokens
in row b takes the features of image slot (b, k); slots beyond a row's image tokens are encoded and
ignored. With one image per row this is exactly transformers' order (``masked_scatter`` over the
flattened batch). Numerics match transformers' ``LlavaForConditionalGeneration`` in float32
(``tests/test_models_llava.py``).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from c2a_jax.models.clip import ACTIVATIONS as _CLIP_ACTIVATIONS
from c2a_jax.models.clip import ClipVisionConfig, ClipVisionModel
from c2a_jax.models.layers import dense
from c2a_jax.models.phi3 import KVCache, Phi3Config, Phi3ForCausalLM

# CLIP's image normalisation (CLIPImageProcessor / OpenAI CLIP; transformers' OPENAI_CLIP_MEAN/STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# transformers' ACT2FN names a projector may use (``projector_hidden_act``), as JAX functions.
PROJECTOR_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    **_CLIP_ACTIVATIONS,  # gelu (erf), gelu_python, gelu_new / gelu_fast / gelu_pytorch_tanh (tanh), quick_gelu
    "gelu_accurate": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}

# Options that apply to both towers; `LlavaConfig.from_hf` passes them to each.
_SHARED_OPTIONS = ("dtype", "param_dtype", "remat", "remat_policy")


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    """transformers' ``LlavaConfig`` fields we use, with our vision and text configs.

    ``text.tie_word_embeddings`` is LLaVA's tie flag (transformers ties ``lm_head`` to the embedding
    when the top-level *or* the text config asks for it; `from_hf` folds the two)."""

    vision: ClipVisionConfig
    text: Phi3Config
    image_token_id: int
    vision_feature_layer: int | tuple[int, ...] = -2
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True

    def __post_init__(self):
        layer = self.vision_feature_layer
        try:
            layer = operator.index(layer)
        except TypeError:
            layer = tuple(operator.index(i) for i in layer)
            if not layer:
                raise ValueError("LlavaConfig: vision_feature_layer is an empty list") from None
        object.__setattr__(self, "vision_feature_layer", layer)
        n = self.vision.num_hidden_layers + 1  # hidden states: embeddings + one per layer
        for i in self.feature_layers:
            if not -n <= i < n:
                raise ValueError(f"LlavaConfig: vision_feature_layer {i} is out of range for {n} hidden states")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                "LlavaConfig: vision_feature_select_strategy must be 'default' or 'full', "
                f"got {self.vision_feature_select_strategy!r}"
            )
        if self.projector_hidden_act not in PROJECTOR_ACTIVATIONS:
            raise ValueError(
                f"LlavaConfig: projector_hidden_act {self.projector_hidden_act!r} not in {sorted(PROJECTOR_ACTIVATIONS)}"
            )
        if not 0 <= self.image_token_id < self.text.vocab_size:
            raise ValueError(
                f"LlavaConfig: image_token_id {self.image_token_id} outside the vocabulary ({self.text.vocab_size})"
            )

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """``vision_feature_layer`` as a tuple."""
        layer = self.vision_feature_layer
        return (layer,) if isinstance(layer, int) else layer

    @property
    def num_feature_layers(self) -> int:
        return len(self.feature_layers)

    @property
    def image_tokens(self) -> int:
        """Image tokens per image in the prompt (transformers' ``image_seq_length``)."""
        return self.vision.num_patches + (self.vision_feature_select_strategy == "full")

    @classmethod
    def from_hf(
        cls,
        hf_config: Any,
        *,
        vision_options: Mapping[str, Any] | None = None,
        text_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> LlavaConfig:
        """From a transformers ``LlavaConfig`` or its ``config.json`` dict (4.x or 5.x).

        `options` (``dtype``, ``param_dtype``, ``remat``, ``remat_policy``) go to both towers;
        `vision_options` / `text_options` to one (e.g. ``vision_options={"attention_impl": "cudnn"}``).
        Only a Phi-3 decoder is supported: a text config without ``model_type`` would be a Llama in
        transformers and is refused. A missing ``vision_config`` is CLIP ViT-L/14-336, as in transformers."""
        d = hf_config.to_dict() if hasattr(hf_config, "to_dict") else hf_config
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a transformers LlavaConfig or a dict, got {type(hf_config).__name__}")
        if d.get("model_type", "llava") != "llava":
            raise ValueError(f"LlavaConfig.from_hf: model_type is {d.get('model_type')!r}, expected 'llava'")
        unknown = set(options) - set(_SHARED_OPTIONS)
        if unknown:
            raise TypeError(
                f"LlavaConfig.from_hf: unknown options {sorted(unknown)}; shared options are {list(_SHARED_OPTIONS)}, "
                "others go in vision_options= or text_options="
            )
        text = d.get("text_config")
        if hasattr(text, "to_dict"):
            text = text.to_dict()
        if not isinstance(text, Mapping) or text.get("model_type") != "phi3":
            found = text.get("model_type") if isinstance(text, Mapping) else None
            raise ValueError(
                f"LlavaConfig.from_hf: text_config must be a Phi-3 config (model_type 'phi3'), got model_type {found!r}"
            )
        tie = bool(d.get("tie_word_embeddings", False)) or bool(text.get("tie_word_embeddings", False))
        vision = d.get("vision_config")
        vision_kwargs = {**options, **(vision_options or {})}
        if vision is None:
            vision_config = ClipVisionConfig(**vision_kwargs)  # transformers' LLaVA default: ViT-L/14-336
        else:
            vision_config = ClipVisionConfig.from_hf(vision, **vision_kwargs)
        text_config = Phi3Config.from_hf(text, **{"tie_word_embeddings": tie, **options, **(text_options or {})})
        layer = d.get("vision_feature_layer", -2)
        return cls(
            vision=vision_config,
            text=text_config,
            image_token_id=int(d.get("image_token_index", d.get("image_token_id", 32000))),
            vision_feature_layer=layer if isinstance(layer, int) else tuple(layer),
            vision_feature_select_strategy=d.get("vision_feature_select_strategy", "default"),
            projector_hidden_act=d.get("projector_hidden_act", "gelu"),
            multimodal_projector_bias=bool(d.get("multimodal_projector_bias", True)),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` dict of the matching transformers ``LlavaForConditionalGeneration``."""
        vision = {k: v for k, v in self.vision.to_hf_dict().items() if k != "architectures"}
        text = {k: v for k, v in self.text.to_hf_dict().items() if k != "architectures"}
        layer = self.vision_feature_layer
        return {
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "vision_config": vision,
            "text_config": text,
            "image_token_index": self.image_token_id,
            "image_seq_length": self.image_tokens,
            "vision_feature_layer": layer if isinstance(layer, int) else list(layer),
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "projector_hidden_act": self.projector_hidden_act,
            "multimodal_projector_bias": self.multimodal_projector_bias,
            "tie_word_embeddings": self.text.tie_word_embeddings,
        }


class Linear(nnx.Module):
    """``y = x @ kernel (+ bias)`` with kernel (in, out) annotated with logical `axes` (the bias
    takes the output axis); parameters in `param_dtype`, computed in `dtype`."""

    def __init__(
        self, din: int, dout: int, axes: tuple[str, str], bias: bool, dtype: Any, param_dtype: Any, *, rngs: nnx.Rngs
    ):
        kernel = nnx.initializers.lecun_normal()(rngs.params(), (din, dout), param_dtype)
        self.kernel = nnx.Param(kernel, out_sharding=axes, eager_sharding=False)
        self.bias = (
            nnx.Param(jnp.zeros((dout,), param_dtype), out_sharding=(axes[1],), eager_sharding=False) if bias else None
        )
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = dense(x, self.kernel[...], self.dtype)
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class LlavaProjector(nnx.Module):
    """transformers' ``LlavaMultiModalProjector``: ``linear_2(act(linear_1(features)))``, vision width
    (x feature layers) -> text width -> text width. Axes as an MLP: ("embed", "mlp") then ("mlp", "embed")."""

    def __init__(self, config: LlavaConfig, *, rngs: nnx.Rngs):
        din = config.vision.hidden_size * config.num_feature_layers
        dout = config.text.hidden_size
        kw = dict(bias=config.multimodal_projector_bias, dtype=config.text.dtype, param_dtype=config.text.param_dtype)
        self.linear_1 = Linear(din, dout, ("embed", "mlp"), **kw, rngs=rngs)
        self.linear_2 = Linear(dout, dout, ("mlp", "embed"), **kw, rngs=rngs)
        self.act = config.projector_hidden_act

    def __call__(self, features: jax.Array) -> jax.Array:
        return self.linear_2(PROJECTOR_ACTIVATIONS[self.act](self.linear_1(features)))


def preprocess_images(images: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """uint8 (..., S, S, 3) -> CLIP-normalised float (..., S, S, 3): rescale by 1/255, subtract
    CLIP's mean, divide by its std (computed in float32, returned in `dtype`)."""
    if images.dtype != jnp.uint8:
        raise TypeError(f"images must be uint8 (0..255), got {images.dtype}; pass normalised floats as pixel_values")
    x = images.astype(jnp.float32) * (1.0 / 255.0)
    x = (x - jnp.asarray(CLIP_MEAN, jnp.float32)) / jnp.asarray(CLIP_STD, jnp.float32)
    return x.astype(dtype)


def merge_image_features(
    input_ids: jax.Array, embeds: jax.Array, features: jax.Array, image_token_id: int
) -> jax.Array:
    """Embeddings with every image token replaced by the next image feature of its row.

    `features` (B, P * N, E): the row's images' features in slot order. Surplus image tokens (more
    than P * N in a row) would read past the row; the pipeline never makes them, and under jit they
    are clamped to the last feature rather than raising."""
    is_image = input_ids == image_token_id
    rank = jnp.cumsum(is_image.astype(jnp.int32), axis=1) - 1
    rank = jnp.clip(rank, 0, features.shape[1] - 1)
    gathered = jnp.take_along_axis(features, rank[..., None], axis=1)
    return jnp.where(is_image[..., None], gathered.astype(embeds.dtype), embeds)


class LlavaForConditionalGeneration(nnx.Module):
    """Vision tower, projector and language model; state paths mirror transformers 5's module names
    (``vision_tower``, ``multi_modal_projector``, ``language_model``; the LM head lives in the
    language model). Checkpoints: ``c2a_jax.convert.llava``."""

    def __init__(self, config: LlavaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.vision_tower = ClipVisionModel(config.vision, rngs=rngs)
        self.multi_modal_projector = LlavaProjector(config, rngs=rngs)
        self.language_model = Phi3ForCausalLM(config.text, rngs=rngs)

    def image_features(self, pixel_values: jax.Array) -> jax.Array:
        """Projected features (N, `LlavaConfig.image_tokens`, text width) of normalised float NHWC
        images (N, S, S, 3) (see `preprocess_images`)."""
        c = self.config
        features = self.vision_tower.image_features(
            pixel_values, c.vision_feature_layer, c.vision_feature_select_strategy, channels_last=True
        )
        return self.multi_modal_projector(features)

    def embed(
        self, input_ids: jax.Array, images: jax.Array | None = None, pixel_values: jax.Array | None = None
    ) -> jax.Array:
        """Token embeddings with image features merged in: `images` uint8 or `pixel_values` normalised
        float, (B, P, S, S, 3) or (B, S, S, 3); neither for text only."""
        embeds = self.language_model.embed(input_ids)
        if images is not None and pixel_values is not None:
            raise ValueError("give images (uint8) or pixel_values (normalised float), not both")
        if images is not None:
            pixel_values = preprocess_images(jnp.asarray(images), self.config.vision.dtype)
        if pixel_values is None:
            return embeds
        if pixel_values.ndim == 4:
            pixel_values = pixel_values[:, None]
        if pixel_values.ndim != 5 or pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"images must be (B, S, S, 3) or (B, P, S, S, 3) with B = {input_ids.shape[0]}, "
                f"got {pixel_values.shape}"
            )
        b, p = pixel_values.shape[:2]
        features = self.image_features(pixel_values.reshape(b * p, *pixel_values.shape[2:]))
        features = features.reshape(b, p * features.shape[1], features.shape[2])
        return merge_image_features(input_ids, embeds, features, self.config.image_token_id)

    def __call__(
        self,
        input_ids: jax.Array,
        images: jax.Array | None = None,
        *,
        pixel_values: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        causal_mask: bool = False,
        logits_at: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Logits (B, T, vocab) float32 and the updated cache. Pixels: `images` (uint8) or
        `pixel_values` (normalised float), see the module docstring. Masks and positions as in
        `Phi3ForCausalLM.__call__`: a (B, T) padding mask, or a full (B, T, S) mask such as the
        prefix-LM / packed-segments mask of `c2a_jax.data.vlm.attention_mask` (then give each
        segment's `positions`); `causal_mask` and `logits_at` as there."""
        embeds = self.embed(input_ids, images, pixel_values)
        return self.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, positions=positions, cache=cache,
            causal_mask=causal_mask, logits_at=logits_at,
        )  # fmt: skip
