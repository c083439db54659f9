"""The code-conditioned diffusion policy: encoders + attention pool + 1-D UNet + DDPM/DDIM.

Why (paper section 4.3, Figure 3, Appendix E): the low-level policy turns one observation and a
line of robot-API code into an action chunk. `CodePolicy` assembles the pieces:

* text: token embeddings of a frozen T5 (`c2a_jax.models.t5`), given as inputs -- T5's parameters
  are not part of this module, so the optimizer never sees them (see ``t5.T5EncoderModel.encode``);
  one shared ``Linear(text_width, width)`` maps every stream into the token width;
* cameras: one ResNet-18 with GroupNorm per camera (`c2a_jax.models.resnet`), its feature vector
  projected to one token per camera; the *low-dimensional* variant (``observation="lowdim"``) puts
  one token from an object/robot state vector (``obs["lowdim"]``) in place of the cameras, for fast
  CPU experiments with the same conditioning;
* proprioception: one token, ``Linear(pose dims) + Linear(gripper dims)`` of the normalised state
  (the paper's "linear embedding layers for proprioception and extra information corresponding to
  the gripper state"; our state is TCP position + quaternion, then vacuum_on, vacuum_grasping);
* a learned type embedding per token kind (each text stream, each camera / the lowdim token,
  proprioception) is added so the pool can tell the streams apart;
* `AttentionPool` fuses the tokens (T5 padding masked out) into one vector, the UNet's global
  condition; `ConditionalUnet1D` predicts noise (or the clean chunk) for the diffusion step.

Conditioning modes (``conditioning``), i.e. which text streams are read:

* ``"code"``: hierarchical -- the current code line (``code``) and the cache info (``cache_info``);
* ``"prompt"``: the flat baseline -- the natural-language task prompt only (``prompt``);
* ``"code_oracle"``: ``code`` + ``cache_info`` + ``oracle`` (DP+Oracle: oracle-supplied
  information such as target positions rendered as text). ``oracle`` is optional: a batch without
  it is pooled over the other tokens, so the same weights run with or without the hook.

Batches (`dp_loss`, the train loop's ``loss_fn(model, batch, rng)``) are flat dicts: observation keys
``image``, ``wrist_image`` (B, S, S, 3) uint8 (or ``lowdim`` (B, D)), ``state`` (B, 9); per text stream
``<stream>_tokens`` (B, L, text_width) float and ``<stream>_mask`` (B, L) bool; ``action`` (B, H, 7) in
normalised units and ``action_mask`` (B, H) bool (c2a_jax.data.dp). `CodePolicy.sample` returns
normalised actions; `unnormalize` maps them back with the dataset's `Normalizer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from c2a_jax.data.normalization import Normalizer
from c2a_jax.models import diffusion
from c2a_jax.models.attention_pool import AttentionPool, Linear
from c2a_jax.models.diffusion import DiffusionConfig
from c2a_jax.models.resnet import ResNet18, ResNetConfig
from c2a_jax.models.unet1d import ConditionalUnet1D, UNetConfig

CONDITIONING: dict[str, tuple[str, ...]] = {
    "code": ("code", "cache_info"),
    "prompt": ("prompt",),
    "code_oracle": ("code", "cache_info", "oracle"),
}
OPTIONAL_STREAMS = frozenset({"oracle"})
# configs/dp/*.py name the modes by the paper's words.
_CONFIG_CONDITIONING = {"hierarchical": "code", "flat": "prompt", "oracle": "code_oracle"}
OBSERVATIONS = ("image", "lowdim")


class TextTokens(NamedTuple):
    """One text stream: frozen T5 token embeddings and their padding mask."""

    embeddings: jax.Array  # (B, L, text_width)
    mask: jax.Array  # (B, L) bool, True = real token


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Everything that shapes `CodePolicy`. Defaults: the paper's architecture at diffusion_policy's
    sizes (ResNet-18 per camera, UNet down dims (256, 512, 1024), kernel 5, FiLM scale), t5-small text
    width, horizon 16."""

    conditioning: str = "code"
    observation: str = "image"
    cameras: tuple[str, ...] = ("image", "wrist_image")
    resnet: ResNetConfig = ResNetConfig()
    lowdim_dim: int = 0  # width of obs["lowdim"] (observation="lowdim")
    state_dim: int = 9
    gripper_dims: tuple[int, ...] = (7, 8)  # state dims embedded by the gripper layer; the rest is the pose
    text_width: int = 512
    width: int = 256
    pool_layers: int = 2
    pool_heads: int = 4
    pool_queries: int = 1
    pool_mlp_ratio: int = 4
    action_dim: int = 7
    horizon: int = 16
    down_dims: tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 128
    cond_predict_scale: bool = True
    film_identity_init: bool = True
    diffusion: DiffusionConfig = DiffusionConfig()
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.conditioning not in CONDITIONING:
            raise ValueError(
                f"PolicyConfig.conditioning must be one of {sorted(CONDITIONING)}, got {self.conditioning!r}"
            )
        if self.observation not in OBSERVATIONS:
            raise ValueError(f"PolicyConfig.observation must be one of {OBSERVATIONS}, got {self.observation!r}")
        if self.observation == "image" and not self.cameras:
            raise ValueError("PolicyConfig: observation='image' needs at least one camera")
        if self.observation == "lowdim" and self.lowdim_dim < 1:
            raise ValueError("PolicyConfig: observation='lowdim' needs lowdim_dim >= 1")
        object.__setattr__(self, "cameras", tuple(self.cameras))
        object.__setattr__(self, "gripper_dims", tuple(int(i) for i in self.gripper_dims))
        object.__setattr__(self, "down_dims", tuple(int(d) for d in self.down_dims))
        bad = [i for i in self.gripper_dims if not 0 <= i < self.state_dim]
        if bad or len(self.gripper_dims) >= self.state_dim:
            raise ValueError(
                f"PolicyConfig.gripper_dims {self.gripper_dims} must be a proper subset of 0..{self.state_dim - 1}"
            )
        multiple = 2 ** (len(self.down_dims) - 1)
        if self.horizon % multiple:
            raise ValueError(f"PolicyConfig.horizon {self.horizon} must be divisible by {multiple} (UNet levels)")

    @property
    def streams(self) -> tuple[str, ...]:
        return CONDITIONING[self.conditioning]

    @property
    def pose_dims(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.state_dim) if i not in self.gripper_dims)

    @property
    def token_kinds(self) -> tuple[str, ...]:
        """The type-embedding rows, in order: text streams, cameras (or lowdim), proprioception."""
        obs = self.cameras if self.observation == "image" else ("lowdim",)
        return (*self.streams, *obs, "proprio")

    def unet_config(self, global_cond_dim: int) -> UNetConfig:
        return UNetConfig(
            input_dim=self.action_dim,
            global_cond_dim=global_cond_dim,
            diffusion_step_embed_dim=self.diffusion_step_embed_dim,
            down_dims=self.down_dims,
            kernel_size=self.kernel_size,
            n_groups=self.n_groups,
            cond_predict_scale=self.cond_predict_scale,
            film_identity_init=self.film_identity_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    @classmethod
    def from_config(cls, config: Any) -> PolicyConfig:
        """From a full DP config (``configs/dp/*.py``): ``conditioning``, ``data.horizon``, the
        ``model`` section (our field names; ``pool_width`` is ``width``, ``resnet_widths`` /
        ``image_head`` / ``num_kp`` the ResNet's) and the ``diffusion`` section."""
        model = dict(config.model.to_dict() if hasattr(config.model, "to_dict") else config.model)
        resnet = {}
        for ours, theirs in (("widths", "resnet_widths"), ("head", "image_head"), ("num_kp", "num_kp")):
            if theirs in model:
                resnet[ours] = model.pop(theirs)
        if "pool_width" in model:
            model["width"] = model.pop("pool_width")
        model.pop("t5_checkpoint", None)  # used by whoever builds the frozen T5, not by the policy
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(model) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        conditioning = _CONFIG_CONDITIONING.get(config.conditioning, config.conditioning)
        return cls(
            conditioning=conditioning,
            horizon=int(config.data.horizon),
            resnet=ResNetConfig(
                **resnet, dtype=model.get("dtype", "float32"), param_dtype=model.get("param_dtype", "float32")
            ),
            diffusion=DiffusionConfig.from_config(config.diffusion),
            **model,
        )


def _param(value: jax.Array, axes: tuple[str, ...]) -> nnx.Param:
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class CodePolicy(nnx.Module):
    """See the module docstring. ``__call__(noisy, t, obs, text)`` is the denoiser; `loss` trains it;
    `sample` draws an action chunk (call it under ``nnx.jit``)."""

    def __init__(self, config: PolicyConfig, *, rngs: nnx.Rngs):
        self.config = config
        c = config
        kw = dict(dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs)
        self.text_proj = Linear(c.text_width, c.width, ("features", "embed"), **kw)
        images = c.observation == "image"
        self.camera_encoders = nnx.List([ResNet18(c.resnet, rngs=rngs) for _ in c.cameras]) if images else None
        self.camera_proj = (
            nnx.List([Linear(c.resnet.features, c.width, ("features", "embed"), **kw) for _ in c.cameras])
            if images
            else None
        )
        self.lowdim_proj = None if images else Linear(c.lowdim_dim, c.width, ("features", "embed"), **kw)
        self.pose_proj = Linear(len(c.pose_dims), c.width, ("features", "embed"), **kw)
        self.gripper_proj = Linear(len(c.gripper_dims), c.width, ("features", "embed"), **kw)
        self.type_embedding = _param(
            nnx.initializers.normal(0.02)(rngs.params(), (len(c.token_kinds), c.width), jnp.dtype(c.param_dtype)),
            ("position", "embed"),
        )
        self.pool = AttentionPool(
            c.width,
            num_layers=c.pool_layers,
            num_heads=c.pool_heads,
            num_queries=c.pool_queries,
            mlp_ratio=c.pool_mlp_ratio,
            **kw,
        )
        self.unet = ConditionalUnet1D(c.unet_config(self.pool.features), rngs=rngs)

    # -- conditioning ------------------------------------------------------------------------------

    def tokens(self, obs: Mapping[str, jax.Array], text: Mapping[str, TextTokens]) -> tuple[jax.Array, jax.Array]:
        """The token set ``(B, N, width)`` and its mask ``(B, N)``, in `PolicyConfig.token_kinds` order
        (an absent optional stream is left out)."""
        c = self.config
        missing = [s for s in c.streams if s not in text and s not in OPTIONAL_STREAMS]
        if missing:
            raise KeyError(f"conditioning {c.conditioning!r} needs text streams {missing}; got {sorted(text)}")
        obs_keys = (*c.cameras, "state") if c.observation == "image" else ("lowdim", "state")
        absent = [k for k in obs_keys if k not in obs]
        if absent:
            raise KeyError(f"observation {absent} missing; got {sorted(obs)}")
        type_emb = self.type_embedding[...].astype(c.dtype)
        kinds = {k: i for i, k in enumerate(c.token_kinds)}
        tokens, masks = [], []
        for stream in c.streams:
            if stream not in text:  # an optional stream left out
                continue
            emb, mask = text[stream]
            if emb.ndim != 3 or emb.shape[-1] != c.text_width or mask.shape != emb.shape[:2]:
                raise ValueError(
                    f"text stream {stream!r}: expected embeddings (B, L, {c.text_width}) and mask (B, L), "
                    f"got {emb.shape} and {mask.shape}"
                )
            tokens.append(self.text_proj(emb) + type_emb[kinds[stream]])
            masks.append(jnp.asarray(mask, bool))
        if c.observation == "image":
            for name, encoder, proj in zip(c.cameras, self.camera_encoders, self.camera_proj, strict=True):
                feature = proj(encoder(obs[name]).astype(c.dtype))
                tokens.append((feature + type_emb[kinds[name]])[:, None])
        else:
            lowdim = jnp.asarray(obs["lowdim"], c.dtype)
            tokens.append((self.lowdim_proj(lowdim) + type_emb[kinds["lowdim"]])[:, None])
        state = jnp.asarray(obs["state"], c.dtype)
        if state.shape[-1] != c.state_dim:
            raise ValueError(f"state must have {c.state_dim} dims, got shape {state.shape}")
        proprio = self.pose_proj(state[:, list(c.pose_dims)]) + self.gripper_proj(state[:, list(c.gripper_dims)])
        tokens.append((proprio + type_emb[kinds["proprio"]])[:, None])
        batch = state.shape[0]
        n_single = len(tokens) - len(masks)
        masks.append(jnp.ones((batch, n_single), bool))
        return jnp.concatenate(tokens, axis=1), jnp.concatenate(masks, axis=1)

    def encode(self, obs: Mapping[str, jax.Array], text: Mapping[str, TextTokens]) -> jax.Array:
        """The UNet's global condition ``(B, pool features)``."""
        tokens, mask = self.tokens(obs, text)
        return self.pool(tokens, mask)

    def denoise(self, noisy: jax.Array, timesteps: jax.Array, cond: jax.Array) -> jax.Array:
        return self.unet(noisy, timesteps, cond)

    def __call__(self, noisy, timesteps, obs, text) -> jax.Array:
        return self.denoise(noisy, timesteps, self.encode(obs, text))

    # -- training and sampling ---------------------------------------------------------------------

    def loss(
        self,
        obs: Mapping[str, jax.Array],
        text: Mapping[str, TextTokens],
        actions: jax.Array,
        action_mask: jax.Array | None,
        rng: jax.Array,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The (ELBO- or MSE-weighted, masked) DDPM loss on normalised action chunks (B, H, A)."""
        cond = self.encode(obs, text)
        return diffusion.diffusion_loss(
            lambda x, t: self.denoise(x, t, cond), self.config.diffusion, actions, rng, action_mask
        )

    def sample(
        self,
        obs: Mapping[str, jax.Array],
        text: Mapping[str, TextTokens],
        rng: jax.Array,
        num_inference_steps: int | None = None,
    ) -> jax.Array:
        """A DDIM-sampled action chunk (B, horizon, action_dim) in normalised units; the observation is
        encoded once and the whole denoising loop is one ``lax.fori_loop``."""
        c = self.config
        cond = self.encode(obs, text)
        shape = (cond.shape[0], c.horizon, c.action_dim)
        return diffusion.ddim_sample(
            lambda x, t: self.denoise(x, t, cond), c.diffusion, shape, rng, num_inference_steps
        )

    @staticmethod
    def unnormalize(actions: Any, normalizer: Normalizer) -> np.ndarray:
        """Normalised actions (..., A) -> robot units with the dataset's action `Normalizer`."""
        return normalizer.unnormalize(np.asarray(jax.device_get(actions)))


def split_batch(batch: Mapping[str, Any], config: PolicyConfig) -> tuple[dict[str, Any], dict[str, TextTokens]]:
    """A flat batch (module docstring) -> (obs, text streams)."""
    obs_keys = (*config.cameras, "state") if config.observation == "image" else ("lowdim", "state")
    obs = {k: batch[k] for k in obs_keys if k in batch}
    text = {s: TextTokens(batch[f"{s}_tokens"], batch[f"{s}_mask"]) for s in config.streams if f"{s}_tokens" in batch}
    return obs, text


def dp_loss(model: CodePolicy, batch: Mapping[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
    """``loss_fn(model, batch, rng)`` for ``c2a_jax.train.step``: the policy's diffusion loss on a flat batch."""
    obs, text = split_batch(batch, model.config)
    return model.loss(obs, text, batch["action"], batch.get("action_mask"), rng)
