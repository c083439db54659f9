"""What `train_dp.py` plugs into the shared loop: the code-conditioned diffusion policy from the
config, its frozen T5 text encoder with an embedding cache, the per-process batch stream from RLDS
episodes, the normalisers saved with every checkpoint, and the validation evaluation.

Why a module: the entry point stays a thin command line, tests and benchmarks train the same way
from in-memory episodes (`memory_source`), and the inference runner (`c2a_jax.infer.dp_runner`)
builds its text encoder, its batches and its normalisers with the same functions, so a policy sees
at test time exactly what it saw in training.

Text (paper 4.3): every text stream (code, cache info, prompt, oracle) goes through a frozen T5
encoder -- ``model.t5_checkpoint`` (a Hugging Face T5 directory, e.g. t5-small) or, when empty, a
randomly initialised T5 of width ``model.text_width`` (seeded by ``text.random_seed``, so the same
config always gives the same encoder). Code strings repeat across thousands of frames, so
`TextEmbeddingCache` encodes each distinct string once and keeps its token embeddings; T5 never
runs inside the train step. Every stream is padded (or cut) to ``text.max_length`` tokens, so the
step compiles once. Tokens: the T5 directory's tokenizer (or ``text.tokenizer``, a Hugging Face
directory), or our shipped ``c2a-tiny`` byte-level BPE for the random encoder; an end-of-sequence
token is appended as T5's tokenizer does, so even an empty string has one real token.

Streams per conditioning mode (``conditioning``, `c2a_jax.models.policy.CONDITIONING`):
``hierarchical`` reads ``code`` and ``cache_info`` (the frame's code label and cache info,
`c2a_jax.data.dp`); ``flat`` reads ``prompt`` (one of the episode's prompt variants, drawn per frame
in training; ``language_instruction`` in evaluation); ``oracle`` reads code, cache info and
``oracle``, the oracle-supplied text of an episode's ``oracle`` field (a list of one string per
step). Our datasets carry no such field yet; without it the stream is left out and the policy pools
over the others (the stream is optional in `CodePolicy`).

Observations: ``image`` / ``wrist_image`` (cropped to ``data.crop_size``: random offset in training,
the centre in evaluation and at inference) and the normalised ``state``; with
``model.observation = 'lowdim'`` a vector in place of the cameras: the normalised state and, per
task actor (up to ``data.lowdim_actors``), its base-camera grid cell scaled to [-1, 1] and a
visibility flag (our datasets store no object poses, only ``actor_grid_positions``), so
``model.lowdim_dim = 9 + 3 * data.lowdim_actors``.

Config sections read besides the loop's (`c2a_jax.train.loop`): ``conditioning``; ``data``
(dataset_dir, code_level, image_size, horizon, crop_size, instruction_source, shift_k,
vlm_labels_file, normalization, normalize_gripper, shuffle_size, lowdim_actors); ``model``
(`c2a_jax.models.policy.PolicyConfig.from_config`, plus t5_checkpoint); ``diffusion``; ``text``
(tokenizer, max_length, allow_random, random_layers, random_heads, random_seed, batch_size,
cache_size);
``eval`` (frames).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from c2a_jax.config import config_value
from c2a_jax.data import dp
from c2a_jax.data.iterators import batched, shuffle_buffer
from c2a_jax.data.normalization import Normalizer
from c2a_jax.models.policy import CodePolicy, PolicyConfig
from c2a_jax.models.t5 import T5Config, T5EncoderModel

log = logging.getLogger(__name__)

Episode = dict[str, Any]
# Where each text stream of a batch comes from in a frame.
STREAM_FIELDS = {"code": "code", "cache_info": "cache_info", "prompt": "prompt", "oracle": "oracle"}
STATE_DIM = 9
LOWDIM_PER_ACTOR = 3  # grid x, grid y (scaled to [-1, 1]), visible
GRID_CELLS = 10  # the VLM's grid (c2a_jax.data.grid)


# ------------------------------------------------------------------------------------------------
# config -> model pieces


def policy_config(config: Any) -> PolicyConfig:
    """The `PolicyConfig` a full DP config describes (``model``, ``diffusion``, ``data.horizon``)."""
    return PolicyConfig.from_config(config)


def frame_config(config: Any) -> dp.DpFrameConfig:
    data = config.data
    crop = int(config_value(data, "crop_size", 0))
    vlm_file = str(config_value(data, "vlm_labels_file", "")) or None
    return dp.DpFrameConfig(
        level=str(data.code_level), horizon=int(data.horizon), crop_size=crop or None,
        instruction_source=str(config_value(data, "instruction_source", "oracle")), shift_k=int(config_value(data, "shift_k", 0)),
        vlm_labels_file=vlm_file,
    )  # fmt: skip


def normalizers_from_statistics(config: Any, statistics: Mapping[str, Any]) -> dict[str, Normalizer]:
    """The action and state normalisers of ``data.normalization`` / ``data.normalize_gripper``."""
    data = config.data
    return dp.dp_normalizers(statistics, str(config_value(data, "normalization", "min_max")),
                             bool(config_value(data, "normalize_gripper", False)))  # fmt: skip


def lowdim_actors(config: Any, policy: PolicyConfig) -> int:
    """Actors in the lowdim vector (0 for image policies); checks ``model.lowdim_dim`` against it."""
    if policy.observation != "lowdim":
        return 0
    actors = int(config_value(config.data, "lowdim_actors", 4))
    want = STATE_DIM + LOWDIM_PER_ACTOR * actors
    if policy.lowdim_dim != want:
        raise ValueError(
            f"model.lowdim_dim is {policy.lowdim_dim}, but the lowdim vector of data.lowdim_actors={actors} has "
            f"{want} dims (9 state + 3 per actor)"
        )
    return actors


# ------------------------------------------------------------------------------------------------
# frozen T5 and its embedding cache


class T5Tokenizer:
    """Token ids for the T5 encoder: a Hugging Face tokenizer directory (T5's own SentencePiece
    tokenizer; its end-of-sequence token is appended as ``add_special_tokens`` does) or our shipped
    ``c2a-tiny`` tokenizer (its ``</s>`` appended the same way)."""

    def __init__(self, spec: str):
        from c2a_jax.data.tokenizer import TINY, load_tokenizer

        self.spec = spec
        if spec == TINY:
            tiny = load_tokenizer(TINY)
            self._encode = lambda texts: [ids + [tiny.eos_id] for ids in tiny.encode_batch(texts)]
            self.vocab_size = tiny.vocab_size
            self.pad_id = tiny.pad_id
            return
        if not os.path.isdir(spec):
            raise FileNotFoundError(
                f"T5 tokenizer {spec!r}: expected {TINY!r} or a local Hugging Face tokenizer directory "
                "(nothing is downloaded at run time)"
            )
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(spec, local_files_only=True)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"no tokenizer in {spec} ({e}); set text.tokenizer to one") from e
        self._encode = lambda texts: [list(ids) for ids in hf(list(texts), add_special_tokens=True)["input_ids"]]
        self.vocab_size = len(hf)
        self.pad_id = int(hf.pad_token_id if hf.pad_token_id is not None else 0)

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        return self._encode(list(texts)) if texts else []

    def reference(self) -> dict[str, Any]:
        """What a checkpoint records (the ``tokenizer`` item)."""
        return {"name": self.spec, "kind": "t5", "vocab_size": self.vocab_size, "pad_id": self.pad_id}


def text_encoder(config: Any) -> tuple[T5EncoderModel, T5Tokenizer]:
    """The frozen T5 and its tokenizer: ``model.t5_checkpoint`` (its width must be
    ``model.text_width``), or a random T5 of that width seeded by ``text.random_seed``."""
    from c2a_jax.data.tokenizer import TINY

    text = config_value(config, "text", None)
    width = int(config.model.text_width)
    checkpoint = str(config_value(config.model, "t5_checkpoint", ""))
    spec = str(config_value(text, "tokenizer", "")) or (checkpoint if checkpoint else TINY)
    tokenizer = T5Tokenizer(spec)
    if checkpoint:
        from c2a_jax.convert.t5 import load_t5_encoder

        if not os.path.exists(checkpoint):
            raise FileNotFoundError(f"model.t5_checkpoint {checkpoint} does not exist (a Hugging Face T5 directory)")
        t5_config, encoder = load_t5_encoder(checkpoint)
        if t5_config.d_model != width:
            raise ValueError(f"model.text_width is {width}, but the T5 in {checkpoint} has d_model {t5_config.d_model}")
        if tokenizer.vocab_size > t5_config.vocab_size:
            raise ValueError(
                f"tokenizer {spec} has {tokenizer.vocab_size} tokens, the T5 in {checkpoint} only {t5_config.vocab_size}"
            )
        return encoder, tokenizer
    if not bool(config_value(text, "allow_random", True)):
        raise FileNotFoundError(
            "model.t5_checkpoint is empty and this config allows no random T5 (text.allow_random): "
            "pass --config.model.t5_checkpoint=<a Hugging Face T5 directory, e.g. t5-small>"
        )
    heads = int(config_value(text, "random_heads", 4))
    if width % heads:
        raise ValueError(f"model.text_width {width} does not split into text.random_heads={heads} heads")
    t5_config = T5Config(
        vocab_size=-(-tokenizer.vocab_size // 64) * 64, d_model=width, d_kv=width // heads, d_ff=4 * width,
        num_layers=int(config_value(text, "random_layers", 2)), num_heads=heads, feed_forward_proj="gated-gelu",
    )  # fmt: skip
    return random_t5(t5_config, int(config_value(text, "random_seed", 0))), tokenizer


@functools.partial(jax.jit, static_argnums=(0, 1))
def _random_t5_state(config: T5Config, seed: int) -> nnx.State:
    return nnx.split(T5EncoderModel(config, rngs=nnx.Rngs(seed)))[1]


def random_t5(config: T5Config, seed: int) -> T5EncoderModel:
    """A randomly initialised T5 encoder, a function of (config, seed); initialised in one jitted
    call, compiled once per config (eagerly, XLA:CPU would compile every initializer on its own)."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: T5EncoderModel(config, rngs=nnx.Rngs(seed))))
    return nnx.merge(graphdef, _random_t5_state(config, seed))


class TextEmbeddingCache:
    """Frozen-T5 token embeddings of strings, computed once per distinct string.

    ``cache(texts) -> (embeddings (N, max_length, width) float32, mask (N, max_length) bool)``:
    strings not seen before are tokenised, cut to `max_length` tokens (counted in ``truncated``)
    and encoded together in one jitted T5 call per `batch_size` of them (the batch is padded to a
    power of two, so few shapes compile); their embeddings (real tokens only) are kept, at most
    `capacity` strings, least recently used dropped first. Counters: ``misses`` (distinct strings
    not in the cache when asked for), ``hits`` (every other lookup), ``encoded`` (strings run
    through T5), ``calls`` (T5 calls)."""

    def __init__(
        self,
        encoder: T5EncoderModel,
        tokenizer: Callable[[Sequence[str]], list[list[int]]],
        max_length: int,
        *,
        pad_id: int = 0,
        batch_size: int = 64,
        capacity: int = 100_000,
    ):
        if max_length < 1 or batch_size < 1 or capacity < 1:
            raise ValueError("TextEmbeddingCache: max_length, batch_size and capacity must be >= 1")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.width = int(encoder.config.d_model)
        self.pad_id = int(pad_id)
        self.batch_size = int(batch_size)
        self.capacity = int(capacity)
        graphdef, state = nnx.split(encoder)
        self._encode = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state).encode(ids, mask))
        self._state = state
        self._store: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self.hits = self.misses = self.encoded = self.calls = self.truncated = 0

    def __len__(self) -> int:
        return len(self._store)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "encoded": self.encoded, "calls": self.calls,
                "truncated": self.truncated, "entries": len(self._store)}  # fmt: skip

    def _encode_new(self, texts: list[str]) -> None:
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            ids = self.tokenizer(chunk)
            rows = 1 << max(len(chunk) - 1, 0).bit_length()  # next power of two
            tokens = np.full((rows, self.max_length), self.pad_id, np.int32)
            mask = np.zeros((rows, self.max_length), bool)
            for i, row in enumerate(ids):
                if len(row) > self.max_length:
                    self.truncated += 1
                    if self.truncated == 1:
                        log.warning("text longer than text.max_length=%d tokens is cut: %r", self.max_length, chunk[i])
                    row = row[: self.max_length]
                tokens[i, : len(row)] = row
                mask[i, : len(row)] = True
            out = np.asarray(jax.device_get(self._encode(self._state, jnp.asarray(tokens), jnp.asarray(mask))))
            self.calls += 1
            self.encoded += len(chunk)
            for i, text in enumerate(chunk):
                self._store[text] = out[i, : int(mask[i].sum())].astype(np.float32)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        texts = [str(t) for t in texts]
        new = [t for t in dict.fromkeys(texts) if t not in self._store]
        self.misses += len(new)  # one miss per distinct new string; every other lookup is a hit
        self.hits += len(texts) - len(new)
        if new:
            self._encode_new(new)
        emb = np.zeros((len(texts), self.max_length, self.width), np.float32)
        mask = np.zeros((len(texts), self.max_length), bool)
        for i, text in enumerate(texts):
            value = self._store[text]
            self._store.move_to_end(text)
            emb[i, : len(value)] = value
            mask[i, : len(value)] = True
        while len(self._store) > self.capacity:  # after the lookups: this call's strings were all there
            self._store.popitem(last=False)
        return emb, mask


def embedding_cache(config: Any) -> tuple[TextEmbeddingCache, T5Tokenizer]:
    """The text encoder of `config` behind a `TextEmbeddingCache` (``text`` section sizes)."""
    text = config_value(config, "text", None)
    encoder, tokenizer = text_encoder(config)
    cache = TextEmbeddingCache(
        encoder, tokenizer, int(config_value(text, "max_length", 64)), pad_id=tokenizer.pad_id,
        batch_size=int(config_value(text, "batch_size", 64)), capacity=int(config_value(text, "cache_size", 100_000)),
    )  # fmt: skip
    return cache, tokenizer


# ------------------------------------------------------------------------------------------------
# frames and batches


def lowdim_vector(state: np.ndarray, grid: np.ndarray | None, actors: int) -> np.ndarray:
    """(9 + 3 * actors,) float32: the normalised state, then per actor its grid cell (x, y) scaled
    to [-1, 1] and a visibility flag; absent or invisible actors are (0, 0, 0)."""
    out = np.zeros((STATE_DIM + LOWDIM_PER_ACTOR * actors,), np.float32)
    out[:STATE_DIM] = state
    if grid is not None:
        grid = np.asarray(grid, np.float32).reshape(-1, 2)[:actors]
        visible = (grid >= 0).all(axis=1)
        cells = np.where(visible[:, None], 2.0 * grid / GRID_CELLS - 1.0, 0.0)
        block = np.concatenate([cells, visible[:, None].astype(np.float32)], axis=1)
        out[STATE_DIM : STATE_DIM + block.size] = block.reshape(-1)
    return out


def episode_frames(
    episode: Mapping[str, Any],
    fc: dp.DpFrameConfig,
    normalizers: Mapping[str, Normalizer],
    source: dp.InstructionSource,
    rng: np.random.Generator,
    *,
    train: bool = True,
    actors: int = 0,
) -> list[dict[str, Any]]:
    """`c2a_jax.data.dp.episode_frames` plus the fields the policy's other streams read:
    ``prompt`` (a random prompt variant in training, ``language_instruction`` otherwise), ``oracle``
    (when the episode has an ``oracle`` list) and ``lowdim`` (when `actors` > 0)."""
    frames = dp.episode_frames(episode, fc, normalizers["action"], normalizers["state"], source, rng, train)
    prompts = list(episode.get("prompts") or []) or [episode["language_instruction"]]
    oracle = episode.get("oracle")
    grid = episode.get("actor_grid_positions")
    for t, frame in enumerate(frames):
        frame["prompt"] = prompts[int(rng.integers(len(prompts)))] if train else episode["language_instruction"]
        if oracle is not None:
            frame["oracle"] = str(oracle[t])
        if actors:
            frame["lowdim"] = lowdim_vector(frame["state"], None if grid is None else grid[t], actors)
    return frames


def make_batch(
    frames: Sequence[Mapping[str, Any]], policy: PolicyConfig, cache: TextEmbeddingCache
) -> dict[str, np.ndarray]:
    """The flat numeric batch `c2a_jax.models.policy.dp_loss` reads, from frames: observations,
    ``action`` / ``action_mask`` (when the frames have them) and ``<stream>_tokens`` /
    ``<stream>_mask`` of the policy's streams (an optional stream only when every frame has it)."""
    obs_keys = (*policy.cameras, "state") if policy.observation == "image" else ("lowdim", "state")
    batch = {k: np.stack([f[k] for f in frames]) for k in (*obs_keys, "action", "action_mask") if k in frames[0]}
    for stream in policy.streams:
        field = STREAM_FIELDS[stream]
        if not all(field in f for f in frames):
            if stream == "oracle":
                continue
            raise KeyError(f"frames lack {field!r}, which the {policy.conditioning!r} policy reads")
        batch[f"{stream}_tokens"], batch[f"{stream}_mask"] = cache([f[field] for f in frames])
    return batch


def dp_batches(
    episodes: Iterable[Mapping[str, Any]],
    config: Any,
    policy: PolicyConfig,
    normalizers: Mapping[str, Normalizer],
    cache: TextEmbeddingCache,
    batch_size: int,
    rng: np.random.Generator,
) -> Iterator[dict[str, np.ndarray]]:
    """Training batches: frames of `episodes` through a shuffle buffer of ``data.shuffle_size``,
    `batch_size` per batch (deterministic given `rng` and the episode order)."""
    fc = frame_config(config)
    source = dp.InstructionSource(fc)
    actors = lowdim_actors(config, policy)

    def frames() -> Iterator[dict[str, Any]]:
        for episode in episodes:
            yield from episode_frames(episode, fc, normalizers, source, rng, train=True, actors=actors)

    shuffled = shuffle_buffer(frames(), int(config_value(config.data, "shuffle_size", 1024)), rng)
    yield from batched(shuffled, batch_size, lambda group: make_batch(group, policy, cache))


# ------------------------------------------------------------------------------------------------
# where episodes come from


@dataclasses.dataclass
class EpisodeSource:
    """Training and validation episodes and the dataset statistics.

    ``train(seed, process_index, process_count)``: this process's share, repeating forever in a
    seeded order; ``val()``: validation episodes in a fixed order."""

    train: Callable[[int, int, int], Iterator[Episode]]
    val: Callable[[], Iterable[Episode]]
    statistics: Mapping[str, Any]


def rlds_source(config: Any) -> EpisodeSource:
    """The RLDS dataset of ``data.dataset_dir`` (`c2a_jax.data.rlds`); validation reads the ``val``
    split (``train`` when there is none); statistics from its ``dataset_statistics.json``."""
    from c2a_jax.data import rlds
    from c2a_jax.data.normalization import load_statistics

    data = config.data
    if not os.path.isdir(str(data.dataset_dir)):  # said before TensorFlow is imported (seconds)
        raise FileNotFoundError(
            f"dataset directory {data.dataset_dir} does not exist (build it with data_pipelines/build_rlds.py)"
        )
    builder = rlds.open_dataset(data.dataset_dir)
    statistics = load_statistics(builder.data_dir)
    val_split = "val" if "val" in builder.info.splits else "train"
    size = int(data.image_size)

    def train(seed: int, process_index: int, process_count: int) -> Iterator[Episode]:
        return rlds.rlds_episodes(data.dataset_dir, "train", image_size=size, repeat=True, seed=seed,
                                  process_index=process_index, process_count=process_count)  # fmt: skip

    def val() -> Iterable[Episode]:
        return rlds.rlds_episodes(data.dataset_dir, val_split, image_size=size, shuffle=False, process_index=0,
                                  process_count=1)  # fmt: skip

    return EpisodeSource(train, val, statistics)


def episode_statistics(episodes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``dataset_statistics.json``-style ``action`` / ``state`` statistics of in-memory episodes
    (actions of the last step, which has none, left out), as the RLDS builder computes them."""

    def summary(x: np.ndarray) -> dict[str, list[float]]:
        x = np.asarray(x, np.float64)
        return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).tolist(),
                "max": x.max(0).tolist(), "p01": np.percentile(x, 1, axis=0).tolist(),
                "p99": np.percentile(x, 99, axis=0).tolist()}  # fmt: skip

    actions = np.concatenate([np.asarray(e["action"])[~np.asarray(e["is_last"], bool)] for e in episodes])
    states = np.concatenate([np.asarray(e["state"]) for e in episodes])
    return {"action": summary(actions), "state": summary(states), "num_trajectories": len(episodes)}


def memory_source(
    episodes: Sequence[Episode],
    statistics: Mapping[str, Any] | None = None,
    val_episodes: Sequence[Episode] | None = None,
) -> EpisodeSource:
    """In-memory episodes (tests, benchmarks): each process takes every ``process_count``-th one,
    in a new seeded order every pass; validation defaults to the training episodes."""
    episodes = list(episodes)
    if not episodes:
        raise ValueError("memory_source needs at least one episode")

    def train(seed: int, process_index: int, process_count: int) -> Iterator[Episode]:
        mine = episodes[process_index::process_count]
        if not mine:
            raise ValueError(f"{len(episodes)} episodes for {process_count} processes")
        rng = np.random.default_rng([seed, process_index, 7])
        while True:
            for i in rng.permutation(len(mine)):
                yield mine[int(i)]

    val = list(val_episodes) if val_episodes is not None else episodes
    return EpisodeSource(train, lambda: iter(val), dict(statistics or episode_statistics(episodes)))


# ------------------------------------------------------------------------------------------------
# evaluation


def validation_frames(config: Any, source: EpisodeSource, normalizers, policy: PolicyConfig, n: int) -> list[dict]:
    """`n` evaluation frames (centre crop, the oracle's labels): evenly spaced over the frames of the
    first validation episodes (up to ``4 n`` frames are looked at)."""
    fc = dataclasses.replace(frame_config(config), instruction_source="oracle", shift_k=0, vlm_labels_file=None)
    instructions = dp.InstructionSource(fc)
    actors = lowdim_actors(config, policy)
    rng = np.random.default_rng(int(config.seed) + 1)
    frames: list[dict] = []
    for episode in source.val():
        frames += episode_frames(episode, fc, normalizers, instructions, rng, train=False, actors=actors)
        if len(frames) >= 4 * n:
            break
    if not frames:
        return []
    index = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int))
    return [frames[i] for i in index]


def _replicated_like(model: nnx.Module, tree: Any) -> Any:
    """`tree` on the mesh of the model's parameters, replicated (a single-device model: as is)."""
    from jax.sharding import NamedSharding, PartitionSpec

    leaf = jax.tree.leaves(nnx.state(model, nnx.Param))[0]
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding):
        return jax.device_put(tree, NamedSharding(sharding.mesh, PartitionSpec()))
    return tree


def chunk_errors(sampled: np.ndarray, batch: Mapping[str, np.ndarray], executed: int) -> dict[str, float]:
    """Errors of sampled action chunks against the batch's, in normalised units, over the real
    (unpadded) steps: ``action_mse``, ``action_mae``, and ``action_mse_executed`` over the first
    `executed` steps (``data.n_action_steps``, what a controller runs before replanning)."""
    sampled = np.asarray(sampled, np.float32)
    target = np.asarray(batch["action"], np.float32)
    mask = np.asarray(batch.get("action_mask", np.ones(target.shape[:2], bool)), bool)[..., None]
    err = (sampled - target) * mask
    n = max(mask.sum() * target.shape[-1], 1)
    head = mask[:, :executed]
    return {
        "action_mse": float((err**2).sum() / n),
        "action_mae": float(np.abs(err).sum() / n),
        "action_mse_executed": float((err[:, :executed] ** 2).sum() / max(head.sum() * target.shape[-1], 1)),
    }


def make_sampler(num_inference_steps: int | None = None) -> Callable:
    """``sample(model, batch, key) -> (B, H, A)`` normalised DDIM samples, jitted (nnx)."""
    from c2a_jax.models.policy import split_batch

    @nnx.jit
    def sample(model: CodePolicy, batch: dict, key: jax.Array) -> jax.Array:
        obs, text = split_batch(batch, model.config)
        return model.sample(obs, text, key, num_inference_steps)

    return sample


def make_eval_fn(config: Any, batch: Mapping[str, np.ndarray]) -> Callable[[CodePolicy, int], dict[str, float]]:
    """``eval_fn(model, step)``: DDIM samples of the fixed validation `batch` (same key every time)
    compared with its action chunks (`chunk_errors`)."""
    sampler = make_sampler(int(config.diffusion.num_inference_steps))
    inputs = {k: v for k, v in batch.items() if k not in ("action", "action_mask")}
    executed = int(config_value(config.data, "n_action_steps", config.data.horizon))
    seed = int(config.seed)

    def eval_fn(model: CodePolicy, step: int) -> dict[str, float]:
        sampled = sampler(model, _replicated_like(model, inputs), jax.random.key(seed))
        return chunk_errors(np.asarray(jax.device_get(sampled)), batch, executed)

    return eval_fn


# ------------------------------------------------------------------------------------------------
# training


def checkpoint_statistics(statistics: Mapping[str, Any], normalizers: Mapping[str, Normalizer]) -> dict[str, Any]:
    """The ``dataset_statistics`` checkpoint item: the dataset's statistics as read, plus the exact
    normalisers trained with under ``"normalization"`` (`normalizers_from_checkpoint` reads them)."""
    return {**dict(statistics), "normalization": {k: v.to_dict() for k, v in normalizers.items()}}


def normalizers_from_checkpoint(items: Mapping[str, Any]) -> dict[str, Normalizer]:
    stats = items.get("dataset_statistics") or {}
    saved = stats.get("normalization")
    if not saved:
        raise ValueError("the checkpoint holds no normalisation statistics (dataset_statistics.normalization)")
    return {k: Normalizer.from_dict(v) for k, v in saved.items()}


def train_dp(config: Any, source: EpisodeSource | None = None) -> dict[str, Any]:
    """Train the policy described by `config` (see ``configs/dp/``) on `source` (default: the RLDS
    dataset of ``data.dataset_dir``); returns the loop's result, plus the text cache's counters
    (``text_cache/*``)."""
    from c2a_jax.config import write_resolved_config
    from c2a_jax.models.diffusion import loss_weights
    from c2a_jax.models.policy import dp_loss
    from c2a_jax.parallel import initialize
    from c2a_jax.train.loop import train

    initialize(config)  # before any other JAX work
    if jax.process_index() == 0:  # first thing: a failed start still leaves its resolved config
        write_resolved_config(config, str(config.workdir))
    policy = policy_config(config)
    lowdim_actors(config, policy)  # checks model.lowdim_dim
    loss_weights(policy.diffusion)  # refuses a loss that cannot train (before minutes of set-up)
    source = source if source is not None else rlds_source(config)
    normalizers = normalizers_from_statistics(config, source.statistics)
    cache, tokenizer = embedding_cache(config)
    process_index, process_count = jax.process_index(), jax.process_count()
    global_batch = int(config.train.batch_size)
    if global_batch % process_count:
        raise ValueError(f"train.batch_size {global_batch} does not split over {process_count} processes")

    def make_batches() -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng([int(config.seed), process_index])
        episodes = source.train(int(config.seed), process_index, process_count)
        return dp_batches(episodes, config, policy, normalizers, cache, global_batch // process_count, rng)

    n_eval = int(config_value(config_value(config, "eval", None), "frames", 0))
    frames = validation_frames(config, source, normalizers, policy, n_eval) if n_eval else []
    eval_fn = make_eval_fn(config, make_batch(frames, policy, cache)) if frames else None

    def model_fn(rngs: nnx.Rngs) -> CodePolicy:
        return CodePolicy(policy, rngs=rngs)

    result = train(
        config,
        workdir=str(config.workdir),
        model_fn=model_fn,
        loss_fn=dp_loss,
        make_batches=make_batches,
        eval_fn=eval_fn,
        checkpoint_items={
            "tokenizer": tokenizer.reference(),
            "dataset_statistics": checkpoint_statistics(source.statistics, normalizers),
        },
    )
    return {**result, **{f"text_cache/{k}": v for k, v in cache.stats().items()}}
