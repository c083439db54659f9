"""Batched greedy decoding in one jitted `lax.while_loop` over a fixed-size KV cache.

Why: the VLM runs at every control step (paper 4.2), so decoding speed is the control rate. The
whole generation (prefill + every token) is one XLA program: no Python between tokens. A row
stops at a stop token (EOS, and optionally any token holding a newline), at `max_new_tokens`, or
by the paper's early stop: once the row's generated text covers the first `k` characters of the
commented last key-step (``# <line>``) and matched it token for token, the answer is that line
and decoding ends (`c2a_jax.codeapi.keysteps.early_stop` is the same rule on text). The loop
exits when every row is done.

Greedy is the paper's decoding. A row may instead *sample* at its own temperature with its own seed
(`temperature`, `seeds`): VLM+Oracle resamples after the executor refused a line, because greedy
decoding from an unchanged memory writes the refused line again (`c2a_jax.eval.vlm_oracle`).

`generate` takes the model as NNX (graphdef, state) and a `forward`: ``forward(model, tokens,
images, mask, cache) -> (logits, cache)`` for the prompt and ``step(model, tokens, cache)`` for
one token, so the same loop serves LLaVA and a bare Phi-3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class DecodeResult:
    tokens: np.ndarray  # (B, max_new_tokens) int32, generated tokens (pad after the stop)
    lengths: np.ndarray  # (B,) generated tokens kept (the stop token excluded)
    early: np.ndarray  # (B,) bool: ended by the early stop
    steps: int  # loop iterations run (the longest row)


# Stop-table values: a stop token that ends the answer and is dropped (EOS), or kept (it holds the
# newline that ends the line; the caller cuts the text there).
STOP_DROP, STOP_KEEP = 1, 2


def token_tables(tokenizer, stop_at_newline: bool) -> tuple[np.ndarray, np.ndarray]:
    """(stop (V,) int8 with `STOP_DROP` / `STOP_KEEP` / 0, characters (V,) int32) over the
    vocabulary of a `TextTokenizer`."""
    vocab = tokenizer.vocab_size
    texts = [tokenizer.decode([i]) for i in range(vocab)]
    stop = np.zeros(vocab, np.int8)
    if stop_at_newline:
        stop[np.array(["\n" in t for t in texts])] = STOP_KEEP
    stop[tokenizer.eos_id] = STOP_DROP
    chars = np.array([len(t) for t in texts], np.int32)
    return stop, chars


def _loop(
    step: Callable,
    model,
    cache,
    logits: jax.Array,
    stop_table: jax.Array,
    char_table: jax.Array,
    target: jax.Array,
    target_chars: jax.Array,
    early_k: jax.Array,
    max_new_tokens: int,
    pad_id: int,
    temperature: jax.Array,
    keys: jax.Array,
):
    b = logits.shape[0]
    lt = target.shape[1]

    def sample(i, logits):
        def row(key, row_logits, t):
            return jax.random.categorical(jax.random.fold_in(key, i), row_logits / jnp.maximum(t, 1e-6))

        drawn = jax.vmap(row)(keys, logits.astype(jnp.float32), temperature)
        return jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1))

    def cond(carry):
        i, done = carry[0], carry[3]
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, tokens, lengths, done, early, match, chars, logits, cache = carry
        tok = jax.lax.cond(jnp.any(temperature > 0), sample, lambda _, lg: jnp.argmax(lg, axis=-1), i, logits)
        tok = tok.astype(jnp.int32)
        active = ~done
        tokens = tokens.at[:, i].set(jnp.where(active, tok, pad_id))
        expected = jnp.take_along_axis(target, jnp.minimum(i, lt - 1)[None, None].repeat(b, 0), axis=1)[:, 0]
        match = match & (i < lt) & (tok == expected)
        chars = chars + jnp.where(active, char_table[tok], 0)
        hit = active & match & (chars >= jnp.minimum(early_k, target_chars)) & (target_chars > 0)
        kind = stop_table[tok]
        stopped = active & (kind > 0)
        lengths = jnp.where(active & (kind != STOP_DROP), i + 1, lengths)
        early = early | hit
        done = done | stopped | hit | (i + 1 >= max_new_tokens)
        logits, cache = step(model, tok, cache)
        return i + 1, tokens, lengths, done, early, match, chars, logits, cache

    init = (
        jnp.zeros((), jnp.int32),
        jnp.full((b, max_new_tokens), pad_id, jnp.int32),
        jnp.zeros((b,), jnp.int32),
        jnp.zeros((b,), bool),
        jnp.zeros((b,), bool),
        jnp.ones((b,), bool),
        jnp.zeros((b,), jnp.int32),
        logits,
        cache,
    )
    out = jax.lax.while_loop(cond, body, init)
    return out[0], out[1], out[2], out[4]


@partial(jax.jit, static_argnames=("graphdef", "forward", "step", "max_new_tokens", "pad_id", "cache_len"))
def _generate(
    graphdef,
    state,
    tokens,
    images,
    mask,
    stop_table,
    char_table,
    target,
    target_chars,
    early_k,
    temperature,
    seeds,
    *,
    forward,
    step,
    max_new_tokens,
    pad_id,
    cache_len,
):
    model = nnx.merge(graphdef, state)
    cache = model_cache(model, tokens.shape[0], cache_len)
    logits, cache = forward(model, tokens, images, mask, cache)
    keys = jax.vmap(jax.random.PRNGKey)(seeds)
    return _loop(step, model, cache, logits[:, -1], stop_table, char_table, target, target_chars, early_k,
                 max_new_tokens, pad_id, temperature, keys)  # fmt: skip


def model_cache(model, batch: int, max_len: int):
    """An empty KV cache for `model` (a LLaVA or a bare Phi-3)."""
    lm = getattr(model, "language_model", model)
    return lm.init_cache(batch, max_len)


def generate(
    graphdef,
    state,
    tokens: np.ndarray,
    *,
    forward: Callable,
    step: Callable,
    images: Any = None,
    mask: Any = None,
    stop_table: np.ndarray,
    char_table: np.ndarray,
    max_new_tokens: int,
    pad_id: int,
    target: np.ndarray | None = None,
    target_chars: np.ndarray | None = None,
    early_k: int = 0,
    temperature: Any = 0.0,
    seeds: Any = None,
) -> DecodeResult:
    """Greedy-decode (or sample, per row) up to `max_new_tokens` after the left-padded prompts `tokens` (B, T).

    `stop_table` and `char_table` come from `token_tables`. `mask` is what `forward` needs for the prompt (a (B, T) padding mask or a (B, T, T + max_new)
    mask over cache slots). `target` (B, Lt) holds each row's tokenised commented last key-step
    and `target_chars` its length in characters (0: no early stop for that row); `early_k` is the
    paper's k (0 disables it). `temperature` (scalar or (B,)): 0 for greedy, else that row samples
    with its `seeds` entry (uint32, (B,); default 0), the same tokens for the same seed."""
    b, t = tokens.shape
    temperature = np.broadcast_to(np.asarray(temperature, np.float32), (b,))
    if not np.all(np.isfinite(temperature)) or np.any(temperature < 0):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    seeds = np.zeros((b,), np.uint32) if seeds is None else np.broadcast_to(np.asarray(seeds, np.uint32), (b,))
    if target is None:
        target = np.zeros((b, 1), np.int32)
        target_chars = np.zeros((b,), np.int32)
    if not early_k:
        target_chars = np.zeros((b,), np.int32)
    steps, out, lengths, early = _generate(
        graphdef, state, jnp.asarray(tokens, jnp.int32), images, mask, jnp.asarray(stop_table),
        jnp.asarray(char_table), jnp.asarray(target, jnp.int32), jnp.asarray(target_chars, jnp.int32),
        jnp.asarray(early_k, jnp.int32), jnp.asarray(temperature), jnp.asarray(seeds), forward=forward, step=step,
        max_new_tokens=max_new_tokens, pad_id=pad_id, cache_len=t + max_new_tokens,
    )  # fmt: skip
    return DecodeResult(np.asarray(out), np.asarray(lengths), np.asarray(early), int(steps))
