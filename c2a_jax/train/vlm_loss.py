"""The VLM's loss on a batch of `c2a_jax.data.vlm`: next-token cross-entropy on answer tokens.

Why one function: training, evaluation of the loss and the benchmarks must agree on the masks.
The batch already holds shifted targets and their mask, per-segment positions and segment ids
(packed rows), so this module only builds the attention mask (prefix-LM: full attention inside
the question, causal in the answer; or causal everywhere, the transformers convention, for models
meant to run in transformers' LLaVA) and averages the loss over answer tokens.

``loss_tokens_per_row = K > 0`` computes the LM head and the cross-entropy at each row's first K
answer tokens only (`loss_positions`) instead of at every position: the same loss and gradients
when no row has more (the training loop checks every batch: `check_loss_tokens`), a quarter of
the vocabulary projection's work for K = T/4.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from c2a_jax.data.vlm import attention_mask


def batch_attention_mask(batch: Mapping[str, jax.Array], prefix_attention: str = "full") -> jax.Array:
    """(B, L, L) visibility for a pipeline batch."""
    if prefix_attention == "full":
        mask_ar = batch["mask_ar"]
    elif prefix_attention == "causal":
        mask_ar = jnp.ones_like(batch["mask_ar"])
    else:
        raise ValueError(f"prefix_attention must be 'full' or 'causal', got {prefix_attention!r}")
    return attention_mask(batch["input_mask"], mask_ar, batch.get("segment_ids"), xp=jnp)


def loss_positions(target_mask: jax.Array, k: int) -> jax.Array:
    """(B, k) positions of each row's first k answer tokens, in order; slots beyond a row's answer
    tokens point at other positions (their target mask is False, so they weigh nothing)."""
    return jnp.argsort(~target_mask.astype(bool), axis=1, stable=True)[:, :k]


def check_loss_tokens(batch: Mapping, loss_tokens_per_row: int) -> None:
    """Raise if a row of this (host) batch has more answer tokens than ``loss_tokens_per_row``:
    `vlm_loss` would leave the extra ones out of the loss."""
    if loss_tokens_per_row <= 0:
        return
    most = int(np.asarray(batch["target_mask"]).sum(axis=1).max(initial=0))
    if most > loss_tokens_per_row:
        raise ValueError(f"a batch row has {most} answer tokens, more than train.loss_tokens_per_row = "
                         f"{loss_tokens_per_row}; raise it (or 0: logits at every position)")  # fmt: skip


def vlm_loss(
    model, batch: Mapping[str, jax.Array], prefix_attention: str = "full", loss_tokens_per_row: int = 0
) -> tuple[jax.Array, dict]:
    """Mean cross-entropy over answer tokens, and metrics (token accuracy, loss tokens)."""
    mask = batch_attention_mask(batch, prefix_attention)
    targets, target_mask = batch["targets"], batch["target_mask"]
    at = None
    if 0 < loss_tokens_per_row < targets.shape[1]:
        at = loss_positions(target_mask, loss_tokens_per_row)
        targets = jnp.take_along_axis(targets, at, axis=1)
        target_mask = jnp.take_along_axis(target_mask, at, axis=1)
    logits, _ = model(batch["tokens"], batch["images"], attention_mask=mask, positions=batch["positions"],
                      causal_mask=prefix_attention == "causal", logits_at=at)  # fmt: skip
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    weight = target_mask.astype(jnp.float32)
    count = jnp.maximum(weight.sum(), 1.0)
    loss = (nll * weight).sum() / count
    accuracy = ((jnp.argmax(logits, -1) == targets) * weight).sum() / count
    return loss, {"loss": loss, "token_accuracy": accuracy, "loss_tokens": weight.sum()}


def make_loss_fn(prefix_attention: str = "full", loss_tokens_per_row: int = 0):
    """`vlm_loss` in the shared loop's ``loss_fn(model, batch, rng)`` form (the VLM uses no
    randomness in its loss). For gradient accumulation set ``train.accum_weight_key =
    "loss_tokens"``: microbatches are then weighted by their answer tokens, which makes them
    exactly one big batch's token-mean loss."""
    if prefix_attention not in ("full", "causal"):
        raise ValueError(f"prefix_attention must be 'full' or 'causal', got {prefix_attention!r}")

    def loss_fn(model, batch: Mapping[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        del rng
        return vlm_loss(model, batch, prefix_attention, loss_tokens_per_row)

    return loss_fn


def batch_counts(batch: Mapping) -> dict[str, float]:
    """The loop's ``count_fn`` for VLM batches: rows and token positions processed (padding
    included: the device computes it, and MFU counts what was computed)."""
    tokens = batch["tokens"]
    return {"examples": float(tokens.shape[0]), "tokens": float(tokens.shape[0] * tokens.shape[1])}
