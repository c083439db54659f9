"""Input-pipeline throughput beside the training step that consumes it, in one run (prints JSON).

    .venv/bin/python bench/data.py [--dataset DIR] [--seconds 20] [--image-size 64] [--batch-size 32]

Without --dataset, a small dataset is made first: oracle Pick episodes from the simulator (in a
child process: TensorFlow and the renderer cannot share one) built into RLDS in a temp directory.

Figures:
* ``dp``: frames per second out of the DP pipeline (RLDS read + PNG decode + resize in tf.data,
  action chunks, normalisation, shared random crop, shuffle buffer, batching) against the frames
  per second a DP train step consumes on this machine.
* ``vlm``: tokens per second out of the VLM pipeline (examples with memory, key-step requests and
  grid questions, tokenised with the tiny tokenizer, padded) against the tokens per second the
  tiny VLM's train step (CLIP tower + projector + Phi-3 decoder, forward + backward + AdamW)
  consumes.

Until the diffusion policy lands (issue 7) its step is a *stand-in* that is lighter than the real
one (two small conv encoders and an MLP denoiser over the chunk): a pipeline that outruns the
stand-in outruns the real policy too. Ratios above 1 mean the pipeline is not the bottleneck.
Per-core rates divide by the machine's cores (tf.data and the prefetch thread use them all).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


def make_dataset(workdir: str, episodes: int, image_size: int) -> str:
    demos = os.path.join(workdir, "demos")
    cmd = [sys.executable, os.path.join(ROOT, "data_pipelines", "generate_demos.py"), "--task", "Pick",
           "--num-episodes", str(episodes), "--seed", "0", "--num-workers", "1", "--image-size", str(image_size),
           "--out", demos]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    from data_pipelines import build_rlds

    with contextlib.redirect_stdout(sys.stderr):  # TFDS prints progress; stdout is for the JSON
        return os.fspath(build_rlds.build(demos, os.path.join(workdir, "rlds"), progress=False).data_dir)


def timed(iterator, seconds: float, count) -> dict:
    """Consume `iterator` for `seconds` after one warm-up item; `count(item)` units per item."""
    next(iterator)
    units, n, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        units += count(next(iterator))
        n += 1
    elapsed = time.perf_counter() - start
    return {"per_s": units / elapsed, "items": n, "seconds": round(elapsed, 2)}


def dp_pipeline_rate(dataset: str, image_size: int, batch_size: int, seconds: float) -> dict:
    from c2a_jax.data import dp, iterators, normalization, rlds

    norms = dp.dp_normalizers(normalization.load_statistics(dataset))
    cfg = dp.DpFrameConfig(horizon=16, crop_size=int(image_size * 0.9))
    rng = np.random.default_rng(0)
    episodes = rlds.rlds_episodes(
        dataset, "train", image_size=image_size, repeat=True, process_index=0, process_count=1
    )
    frames = iterators.shuffle_buffer(dp.dp_frames(episodes, cfg, norms, rng), 2048, rng)
    batches = iterators.prefetch(iterators.batched(frames, batch_size, dp.collate), 4)
    return timed(batches, seconds, lambda b: len(b["action"]))


def vlm_pipeline_rate(dataset: str, image_size: int, batch_size: int, seconds: float, num_image_tokens: int,
                      max_length: int) -> dict:  # fmt: skip
    from c2a_jax.data import iterators, rlds, tokenizer, vlm

    tok = vlm.VlmTokenizer(tokenizer.load_tokenizer(tokenizer.TINY), num_image_tokens, max_length)
    episodes = rlds.rlds_episodes(
        dataset, "train", image_size=image_size, repeat=True, process_index=0, process_count=1
    )
    batches = vlm.vlm_batches(episodes, vlm.VlmExampleConfig(), tok, batch_size, np.random.default_rng(0))
    batches = iterators.prefetch(batches, 4)
    out = timed(batches, seconds, lambda b: int(b["input_mask"].sum()))
    out["batch"] = next(batches)
    out["tokenizer"] = tok.tok
    return out


def dp_standin_step_rate(image_size: int, batch_size: int, seconds: float) -> dict:
    """Frames per second through a light DP-shaped train step (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    crop = int(image_size * 0.9)

    class Encoder(nnx.Module):
        def __init__(self, rngs):
            self.c1 = nnx.Conv(3, 32, (3, 3), strides=2, rngs=rngs)
            self.c2 = nnx.Conv(32, 64, (3, 3), strides=2, rngs=rngs)
            self.c3 = nnx.Conv(64, 128, (3, 3), strides=2, rngs=rngs)

        def __call__(self, x):
            for conv in (self.c1, self.c2, self.c3):
                x = jax.nn.relu(conv(x))
            return x.mean(axis=(1, 2))

    class StandIn(nnx.Module):
        def __init__(self, rngs):
            self.base, self.wrist = Encoder(rngs), Encoder(rngs)
            self.l1 = nnx.Linear(256 + 9 + 16 * 7 + 1, 512, rngs=rngs)
            self.l2 = nnx.Linear(512, 16 * 7, rngs=rngs)

        def __call__(self, image, wrist, state, noisy, t):
            h = jnp.concatenate([self.base(image), self.wrist(wrist), state, noisy.reshape(len(noisy), -1), t], -1)
            return self.l2(jax.nn.silu(self.l1(h))).reshape(noisy.shape)

    model = StandIn(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def step(state, batch, key):
        model, optimizer = nnx.merge(graphdef, state)
        noise = jax.random.normal(key, batch["action"].shape)
        t = jax.random.uniform(key, (len(noise), 1))

        def loss_fn(m):
            image = batch["image"].astype(jnp.float32) / 255.0
            wrist = batch["wrist_image"].astype(jnp.float32) / 255.0
            pred = m(image, wrist, batch["state"], batch["action"] + noise, t)
            return jnp.mean((pred - noise) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 255, (batch_size, crop, crop, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 255, (batch_size, crop, crop, 3), dtype=np.uint8),
        "state": rng.normal(size=(batch_size, 9)).astype(np.float32),
        "action": rng.uniform(-1, 1, (batch_size, 16, 7)).astype(np.float32),
    }
    key = jax.random.key(0)

    def steps():
        nonlocal state
        while True:
            state, loss = step(state, batch, key)
            loss.block_until_ready()
            yield batch_size

    return timed(steps(), seconds, lambda n: n)


def tiny_llava(tokenizer, image_size: int, patch_size: int):
    """The tiny VLM of configs/vlm/tiny.py (its model section, as train_vlm.py builds it), random weights."""
    from flax import nnx

    from c2a_jax.config import load_config_file
    from c2a_jax.models.llava import LlavaForConditionalGeneration
    from c2a_jax.train.vlm_task import llava_config

    m = load_config_file(os.path.join(ROOT, "configs", "vlm", "tiny.py")).model
    m.patch_size = patch_size
    return LlavaForConditionalGeneration(llava_config(m, image_size, tokenizer), rngs=nnx.Rngs(0))


def vlm_step_rate(batch: dict, tokenizer, image_size: int, patch_size: int, seconds: float) -> dict:
    """Real (non-pad) tokens per second through the tiny VLM's train step on a pipeline batch."""
    import jax
    import optax
    from flax import nnx

    from c2a_jax.train.vlm_loss import vlm_loss

    model = tiny_llava(tokenizer, image_size, patch_size)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        (loss, _), grads = nnx.value_and_grad(vlm_loss, has_aux=True)(model, batch)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    device_batch = jax.device_put({k: v for k, v in batch.items() if k != "num_images"})
    real = int(batch["input_mask"].sum())

    def steps():
        nonlocal state
        while True:
            state, loss = step(state, device_batch)
            loss.block_until_ready()
            yield real

    return timed(steps(), seconds, lambda n: n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", help="a built RLDS version directory (default: make a small one)")
    ap.add_argument("--episodes", type=int, default=4, help="episodes of the generated dataset")
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring time per figure")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--patch-size", type=int, default=16)
    args = ap.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset or make_dataset(tmp, args.episodes, args.image_size)
        num_image_tokens = (args.image_size // args.patch_size) ** 2
        dp_pipe = dp_pipeline_rate(dataset, args.image_size, args.batch_size, args.seconds)
        vlm_pipe = vlm_pipeline_rate(dataset, args.image_size, args.batch_size, args.seconds, num_image_tokens,
                                     args.max_length)  # fmt: skip
    dp_step = dp_standin_step_rate(args.image_size, args.batch_size, args.seconds)
    vlm_step = vlm_step_rate(vlm_pipe["batch"], vlm_pipe["tokenizer"], args.image_size, args.patch_size, args.seconds)
    result = {
        "machine_cores": cores,
        "dp": {
            "pipeline_frames_per_s": round(dp_pipe["per_s"], 1),
            "pipeline_frames_per_s_per_core": round(dp_pipe["per_s"] / cores, 1),
            "train_step_frames_per_s": round(dp_step["per_s"], 1),
            "train_step": "stand-in (lighter than the issue-7 policy)",
            "ratio": round(dp_pipe["per_s"] / dp_step["per_s"], 2),
        },
        "vlm": {
            "pipeline_tokens_per_s": round(vlm_pipe["per_s"], 1),
            "pipeline_tokens_per_s_per_core": round(vlm_pipe["per_s"] / cores, 1),
            "train_step_tokens_per_s": round(vlm_step["per_s"], 1),
            "train_step": "tiny LLaVA of configs/vlm/tiny.py, forward + backward + AdamW",
            "ratio": round(vlm_pipe["per_s"] / vlm_step["per_s"], 2),
        },
        "config": vars(args),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
