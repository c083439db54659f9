"""A stand-in model that writes token sequences chosen in advance (one-hot logits).

Why: the decoding loop's control flow (stop tokens, token limits, the paper's early stop) must be
tested and measured independently of what a model happens to write. `ScriptedModel` plugs into
`c2a_jax.infer.decode.generate` like a real model: row r's i-th generated token is
``script[r, i]`` (the last column repeats once a row runs past its script).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class ScriptedModel(nnx.Module):
    def __init__(self, script: np.ndarray, vocab_size: int):
        self.script = nnx.Variable(jnp.asarray(script, jnp.int32))
        self.vocab_size = vocab_size

    def init_cache(self, batch_size: int, max_len: int) -> jax.Array:
        """The 'cache' is each row's count of tokens written so far."""
        return jnp.zeros((batch_size,), jnp.int32)

    def logits(self, index: jax.Array) -> jax.Array:
        script = self.script[...]
        index = jnp.minimum(index, script.shape[1] - 1)
        return jax.nn.one_hot(jnp.take_along_axis(script, index[:, None], axis=1)[:, 0], self.vocab_size)


def scripted_forward(model: ScriptedModel, tokens, images, mask, cache):
    logits = model.logits(cache)
    return jnp.repeat(logits[:, None], tokens.shape[1], axis=1), cache + 1


def scripted_step(model: ScriptedModel, token, cache):
    return model.logits(cache), cache + 1


def script_rows(tokenizer, texts, eos: bool = True, extra: int = 4) -> np.ndarray:
    """A (len(texts), width) script: each text's tokens, then EOS (if `eos`), then padding."""
    rows = [tokenizer.encode(t) + ([tokenizer.eos_id] if eos else []) for t in texts]
    width = max(len(r) for r in rows) + extra
    script = np.full((len(rows), width), tokenizer.pad_id, np.int32)
    for i, r in enumerate(rows):
        script[i, : len(r)] = r
    return script
