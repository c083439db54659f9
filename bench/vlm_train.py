"""VLM training throughput against transformers' PyTorch training step, same config and batch (JSON).

    .venv/bin/python bench/vlm_train.py [--batch-size 16] [--max-length 256] [--steps 10]

Both sides train the tiny LLaVA of configs/vlm/tiny.py (CLIP tower + projector + Phi-3 decoder,
the tiny tokenizer's vocabulary) on one batch made by our VLM pipeline from synthetic episodes:
forward, cross-entropy on the answer tokens, backward, AdamW (lr 1e-3, weight decay 0.01, no
clipping). Ours: one jitted functional step with donated buffers, causal attention (the same
computation as transformers' LLaVA; prefix-LM costs the same). Peer: LlavaForConditionalGeneration
with labels = -100 outside the answer, torch.optim.AdamW, eager PyTorch on the same CPU threads.
Figure: real (non-pad) tokens per second, median step time over `--steps` after warm-up.

Second figure (``packed_*``): the same examples packed ``--pack`` per row (our pipeline's
``images_per_row``; segment ids keep them apart), so that our step skips most of the padding,
against transformers on the padded batch again (its LLaVA has no packed-sequence attention).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


def pipeline_batch(
    batch_size: int, max_length: int, image_size: int, patch_size: int, images_per_row: int = 1
) -> tuple[dict, object]:
    """`batch_size` code examples and grid questions from synthetic episodes, padded one per row
    (``images_per_row=1``) or packed several per row (the same examples in fewer rows)."""
    from c2a_jax.data import tokenizer as tokenizer_lib
    from c2a_jax.data import vlm
    from c2a_jax.data.synthetic import make_episode

    tok = tokenizer_lib.load_tokenizer(tokenizer_lib.TINY)
    vt = vlm.VlmTokenizer(tok, (image_size // patch_size) ** 2, max_length)
    episodes = [make_episode(size=image_size, key=f"bench/{i}") for i in range(8)]
    rng = np.random.default_rng(0)
    examples = [e for episode in episodes for e in vlm.episode_examples(episode, vlm.VlmExampleConfig(), rng,
                                                                          ["green star", "red cube"])]  # fmt: skip
    chosen = [vt(examples[i]) for i in rng.permutation(len(examples))[:batch_size]]
    rows = list(vlm.pack_rows(chosen, max_length, images_per_row, tok.pad_id))
    return vlm.stack_rows(rows), tok


def _interleaved_medians(steps_a, steps_b, steps: int) -> tuple[float, float]:
    """Median step times of two step functions, timed alternately (A, B, A, B, ...) so that load
    from elsewhere on a shared machine falls on both alike."""
    for _ in range(2):
        steps_a()
        steps_b()
    times_a, times_b = [], []
    for _ in range(steps):
        for fn, times in ((steps_a, times_a), (steps_b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


def ours(batch: dict, tok, image_size: int, patch_size: int):
    """Our train step as a no-argument callable."""
    import jax
    import optax
    from flax import nnx

    from bench.data import tiny_llava
    from c2a_jax.train.vlm_loss import vlm_loss

    model = tiny_llava(tok, image_size, patch_size)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3, weight_decay=0.01), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def train_step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        (loss, _), grads = nnx.value_and_grad(vlm_loss, has_aux=True)(model, batch, "causal")
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    step_fn = jax.jit(train_step, donate_argnums=0)
    device_batch = jax.device_put({k: v for k, v in batch.items() if k != "num_images"})
    holder = {"state": state}

    def step():
        holder["state"], loss = step_fn(holder["state"], device_batch)
        loss.block_until_ready()

    return step


def transformers_step(batch: dict, tok, image_size: int, patch_size: int):
    """transformers' train step as a no-argument callable."""
    import tempfile

    import torch

    from bench.vlm_infer import hf_tiny_llava
    from c2a_jax.models.llava import CLIP_MEAN, CLIP_STD

    with tempfile.TemporaryDirectory() as tmp:
        model = hf_tiny_llava(tok, tmp, image_size, patch_size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    ids = torch.tensor(batch["tokens"], dtype=torch.long)
    mask = torch.tensor(batch["input_mask"], dtype=torch.long)
    labels = torch.where(torch.tensor(batch["mask_loss"]), ids, torch.full_like(ids, -100))
    images = batch["images"][:, 0].astype(np.float32) / 255.0
    pixels = torch.tensor(
        ((images - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(0, 3, 1, 2), dtype=torch.float32
    )

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, labels=labels)
        out.loss.backward()
        optimizer.step()

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--patch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--pack", type=int, default=4, help="images per row of the packed variant (ours only)")
    args = ap.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    batch, tok = pipeline_batch(args.batch_size, args.max_length, args.image_size, args.patch_size)
    real = int(batch["input_mask"].sum())
    t_ours, t_hf = _interleaved_medians(ours(batch, tok, args.image_size, args.patch_size),
                                        transformers_step(batch, tok, args.image_size, args.patch_size), args.steps)  # fmt: skip
    packed, _ = pipeline_batch(args.batch_size, args.max_length, args.image_size, args.patch_size, args.pack)
    assert int(packed["input_mask"].sum()) == real  # the same examples, fewer rows
    t_packed, t_hf_again = _interleaved_medians(ours(packed, tok, args.image_size, args.patch_size),
                                                transformers_step(batch, tok, args.image_size, args.patch_size),
                                                args.steps)  # fmt: skip
    import torch

    result = {
        "real_tokens_per_batch": real,
        "packed_rows": int(packed["tokens"].shape[0]),
        "ours_step_ms": round(t_ours * 1e3, 1),
        "transformers_step_ms": round(t_hf * 1e3, 1),
        "ours_tokens_per_s": round(real / t_ours, 1),
        "transformers_tokens_per_s": round(real / t_hf, 1),
        "speedup": round(t_hf / t_ours, 2),
        "ours_packed_step_ms": round(t_packed * 1e3, 1),
        "ours_packed_tokens_per_s": round(real / t_packed, 1),
        "transformers_step_ms_second_run": round(t_hf_again * 1e3, 1),
        "packed_speedup": round(t_hf_again / t_packed, 2),
        "torch_threads": torch.get_num_threads(),
        "config": vars(args),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
