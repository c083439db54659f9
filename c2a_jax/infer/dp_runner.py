"""A trained diffusion policy, ready to act: observation + code -> an action chunk in robot units.

Why: a checkpoint alone is not a policy -- it needs the normalisers it was trained with, the same
frozen text encoder, the same crop of the cameras and the EMA weights (diffusion_policy evaluates
with them; anchors.md section 3). `DiffusionPolicyRunner.from_checkpoint(workdir)` gathers all of
it from the checkpoint (config, statistics, EMA parameters), and `sample` does the rest::

    runner = DiffusionPolicyRunner.from_checkpoint("runs/dp_tiny_hierarchical")
    chunk = runner.sample(obs, code="pick(actor=get_actor('red cube'))", cache_info="pose_dict = {}", rng=0)
    # chunk: (horizon, 7) float32, [0:6] the raw pd_ee_delta_pose action, [6] the vacuum command

``obs``: ``image`` and ``wrist_image`` uint8 (H, W, 3), resized to the dataset's resolution
(``data.image_size``) as training resized them when rendered at another size (an evaluation shared
with a VLM of a larger input renders at the larger) and centre-cropped as evaluation did in
training; ``state`` (9,)
in raw units (TCP position, quaternion, vacuum_on, vacuum_grasping), and for a ``lowdim`` policy
``actor_grid_positions`` (K, 2). A leading batch axis on every entry (and lists of strings) gives
a batch of chunks (B, horizon, 7). Text streams by conditioning mode: ``hierarchical`` needs
`code` and `cache_info`; ``flat`` needs `prompt` (the natural-language task prompt) and nothing
else; ``oracle`` needs `code`, `cache_info` and takes `oracle` (optional). Passing a stream the
policy does not read is an error (it would be silently ignored otherwise).

Sampling is DDIM with ``diffusion.num_inference_steps`` (or the runner's own count) in one jitted
function per batch size; the text goes through the embedding cache, so repeated code lines cost a
lookup.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from c2a_jax.data import dp
from c2a_jax.data.normalization import Normalizer
from c2a_jax.infer.resize import resize_images
from c2a_jax.models.policy import OPTIONAL_STREAMS, CodePolicy, PolicyConfig, split_batch
from c2a_jax.train import dp_task


@functools.partial(jax.jit, static_argnums=(0, 4))
def _sample(graphdef: nnx.GraphDef, state: nnx.State, batch: dict, key: jax.Array, steps: int) -> jax.Array:
    """DDIM samples (B, H, A) in normalised units; one compilation per (graph, batch shape, steps),
    shared by every runner of the same architecture."""
    model = nnx.merge(graphdef, state)
    obs, text = split_batch(batch, model.config)
    return model.sample(obs, text, key, steps)


class DiffusionPolicyRunner:
    """See the module docstring. Build with `from_checkpoint` (or directly from a model, its config,
    normalisers and a `dp_task.TextEmbeddingCache`)."""

    def __init__(
        self,
        model: CodePolicy,
        config: ml_collections.ConfigDict,
        normalizers: Mapping[str, Normalizer],
        cache: dp_task.TextEmbeddingCache,
        num_inference_steps: int | None = None,
    ):
        self.config = config
        self.policy: PolicyConfig = model.config
        self.normalizers = dict(normalizers)
        self.cache = cache
        self.image_size = int(config.data.image_size)
        self.crop_size = int(config.data.get("crop_size", 0) or 0) or None
        self.actors = dp_task.lowdim_actors(config, self.policy)
        self.num_inference_steps = int(num_inference_steps or config.diffusion.num_inference_steps)
        self._graphdef, state = nnx.split(model)
        devices = {d for x in jax.tree.leaves(state) for d in x.devices()}
        if len(devices) == 1:  # one device: plain placement, so every runner shares one compilation
            state = jax.device_put(state, devices.pop())
        self._state = state

    @classmethod
    def from_checkpoint(
        cls, workdir: str, *, step: int | None = None, num_inference_steps: int | None = None
    ) -> DiffusionPolicyRunner:
        """The policy of `workdir`'s checkpoint `step` (default: the latest) with its EMA weights
        (the raw ones if it was trained without EMA), normalisers and config."""
        from c2a_jax.train.checkpoint import Checkpointer
        from c2a_jax.train.loop import restore_checkpoint
        from c2a_jax.train.state import model_from_state

        directory = os.path.join(workdir, "checkpoints")
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"no checkpoints in {workdir} (expected {directory})")
        reader = Checkpointer(directory, read_only=True)
        try:
            items = reader.read_items(step)
        finally:
            reader.close()
        config = ml_collections.ConfigDict(items["config"])
        policy = dp_task.policy_config(config)

        def model_fn(rngs: nnx.Rngs) -> CodePolicy:
            return CodePolicy(policy, rngs=rngs)

        state, graphdef, items = restore_checkpoint(workdir, model_fn, step=step)
        model = model_from_state(graphdef, state, ema=True)
        cache, _ = dp_task.embedding_cache(config)
        return cls(model, config, dp_task.normalizers_from_checkpoint(items), cache, num_inference_steps)

    # ----------------------------------------------------------------------------------------------

    def _frames(self, obs: Mapping[str, Any], texts: Mapping[str, list[str]], batch: int) -> list[dict]:
        state = np.asarray(obs["state"], np.float32).reshape(batch, -1)
        state = self.normalizers["state"].normalize(state)
        frames = [{"state": state[i]} for i in range(batch)]
        if self.policy.observation == "image":
            cameras = {}
            for name in self.policy.cameras:
                images = np.asarray(obs[name])
                if images.dtype != np.uint8 or images.ndim < 3 or images.shape[-1] != 3:
                    raise ValueError(f"obs[{name!r}] must be uint8 (H, W, 3) images, got {images.dtype} {images.shape}")
                images = images.reshape(batch, *images.shape[-3:])
                cameras[name] = resize_images(images, self.image_size)  # as training resized the dataset
            for i, frame in enumerate(frames):
                views = [cameras[name][i] for name in self.policy.cameras]
                if self.crop_size is not None:
                    views = dp._crop(views, self.crop_size, None)  # the centre, as evaluation in training
                frame.update(zip(self.policy.cameras, views, strict=True))
        else:
            if "actor_grid_positions" not in obs:
                raise KeyError("a lowdim policy needs obs['actor_grid_positions'] (K, 2)")
            grid = np.asarray(obs["actor_grid_positions"]).reshape(batch, -1, 2)
            for i, frame in enumerate(frames):
                frame["lowdim"] = dp_task.lowdim_vector(frame["state"], grid[i], self.actors)
        for stream, values in texts.items():
            for frame, value in zip(frames, values, strict=True):
                frame[dp_task.STREAM_FIELDS[stream]] = value
        return frames

    def sample(
        self,
        obs: Mapping[str, Any],
        code: str | Sequence[str] | None = None,
        cache_info: str | Sequence[str] | None = None,
        rng: jax.Array | int = 0,
        *,
        prompt: str | Sequence[str] | None = None,
        oracle: str | Sequence[str] | None = None,
    ) -> np.ndarray:
        """An action chunk (horizon, 7) in robot units -- or (B, horizon, 7) for batched inputs --
        drawn with DDIM from key `rng` (a JAX key or an int seed)."""
        state = np.asarray(obs["state"])
        single = state.ndim == 1
        batch = 1 if single else int(state.shape[0])
        given = {"code": code, "cache_info": cache_info, "prompt": prompt, "oracle": oracle}
        streams = self.policy.streams
        extra = [k for k, v in given.items() if v is not None and k not in streams]
        if extra:
            raise ValueError(f"this {self.policy.conditioning!r} policy reads {list(streams)}, not {extra}")
        texts: dict[str, list[str]] = {}
        for stream in streams:
            value = given[stream]
            if value is None:
                if stream in OPTIONAL_STREAMS:
                    continue
                raise ValueError(f"this {self.policy.conditioning!r} policy needs {stream}=")
            values = [value] if isinstance(value, str) else [str(v) for v in value]
            if len(values) != batch:
                raise ValueError(f"{len(values)} {stream} strings for a batch of {batch} observations")
            texts[stream] = values
        frames = self._frames(obs, texts, batch)
        inputs = dp_task.make_batch(frames, self.policy, self.cache)
        key = jax.random.key(rng) if isinstance(rng, int | np.integer) else rng
        sampled = _sample(self._graphdef, self._state, inputs, key, self.num_inference_steps)
        normalised = np.asarray(jax.device_get(sampled))
        actions = CodePolicy.unnormalize(normalised, self.normalizers["action"])
        return actions[0] if single else actions
