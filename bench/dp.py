"""Diffusion-policy train-step throughput and DDIM-10 latency, ours against diffusers' PyTorch UNet (JSON).

    .venv/bin/python bench/dp.py [--sizes tiny,paper] [--full]

The default (tiny only) took 3m49s on a shared 2-core machine (load ~3 from other jobs), mostly
XLA compilation; ``--sizes tiny,paper`` took 7-9 minutes there (the paper size's CPU train step and
DDIM call take seconds each). On a loaded machine PyTorch's figures suffer far more than ours
(its worker threads spin), so compare ratios only from quiet runs.

For each size (configs/dp/tiny.py, configs/dp/paper.py):

* ``policy_train``: our whole train step as `train_dp.py` runs it (the loop's jitted functional
  step: both cameras' ResNet-18, attention pool, FiLM UNet, DDPM loss, AdamW, EMA update) on a
  batch made by our pipeline from synthetic episodes at the config's image size (T5 embeddings come
  from the cache, as in training; the random T5 stands in for t5-small at the paper size). No peer:
  nothing installed implements this policy in PyTorch.
* ``denoiser_train``: the action UNet alone, forward + backward + AdamW on (B, 16, 7) chunks --
  ours (ConditionalUnet1D with a random global condition of the policy's width, DDPM epsilon loss)
  against the peer, diffusers' ``UNet1DModel`` in its temporal-ResNet form (DownResnetBlock1D /
  UpResnetBlock1D / MidResTemporalBlock1D, mish, GroupNorm 8, two layers per block: Janner et al.'s
  UNet, which diffusion_policy's ConditionalUnet1D extends with FiLM global conditioning) at the
  same block widths, conditioned on the timestep only, eager PyTorch, ``torch.optim.AdamW``.
* ``ddim10_latency_ms`` at batch 1: our jitted DDIM-10 sampler of the whole policy (encoders once,
  then 10 UNet steps in one ``fori_loop``), of the UNet alone, and the peer's UNet driven by
  diffusers' ``DDIMScheduler`` (100 train steps, squaredcos_cap_v2, 10 inference steps) under
  ``torch.no_grad``.

Figures are medians over timed repetitions, ours and the peer's in alternating blocks of up to 5
(so that load from elsewhere on a shared machine falls on both alike), each block after one
untimed run (compilation, warm-up, the other side's threads winding down: bench/timing.py);
``ratio`` is the peer's time over ours (above 1: we are faster). Default: a quick run (5
repetitions for the tiny size; the paper size at batch 4 with one timed repetition, since each
of its CPU steps takes seconds); ``--full`` uses the configs' batch sizes and 10 repetitions.
Most of a quick run's wall time is XLA compilation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench.timing import block_medians  # noqa: E402
from c2a_jax.host_memory import reexec_with_huge_page_malloc  # noqa: E402


def _init_key(seed: int):
    """A key for initialisations that are not timed: XLA:CPU compiles rbg initializers in about half
    the time of threefry's (the values differ, the distributions do not)."""
    import jax

    return jax.random.key(seed, impl="unsafe_rbg")


def load(size: str, batch_size: int):
    """The size's config, with a random T5 allowed (embeddings only), and the batch size set."""
    from c2a_jax.config import load_config_file

    config = load_config_file(os.path.join(ROOT, "configs", "dp", f"{size}.py"))
    config.text.allow_random = True
    config.text.random_layers = 2
    config.train.batch_size = batch_size
    config.data.shuffle_size = 8
    return config


def pipeline_batch(config) -> dict:
    """One training batch from synthetic episodes through `c2a_jax.train.dp_task`."""
    from c2a_jax.data.synthetic import make_episode
    from c2a_jax.train import dp_task

    size = int(config.data.image_size)
    episodes = [make_episode(size=size, key=f"bench/{i}") for i in range(4)]
    policy = dp_task.policy_config(config)
    normalizers = dp_task.normalizers_from_statistics(config, dp_task.episode_statistics(episodes))
    cache, _ = dp_task.embedding_cache(config)
    source = dp_task.memory_source(episodes)
    rng = np.random.default_rng(0)
    batches = dp_task.dp_batches(source.train(0, 0, 1), config, policy, normalizers, cache,
                                 int(config.train.batch_size), rng)  # fmt: skip
    return next(batches)


def ours_policy_step(config, batch):
    """The loop's train step (`c2a_jax.train.step`) as a no-argument callable, the live model, and
    the model size."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from c2a_jax.models.policy import CodePolicy, dp_loss
    from c2a_jax.train import dp_task
    from c2a_jax.train.ema import EmaConfig, init_ema
    from c2a_jax.train.optimizer import make_optimizer
    from c2a_jax.train.state import TrainState, count_params, init_fn_for, seed_key
    from c2a_jax.train.step import make_train_step

    policy = dp_task.policy_config(config)
    optimizer = make_optimizer(config.train)
    ema = EmaConfig.from_config(config.train)
    _, graphdef = init_fn_for(lambda rngs: CodePolicy(policy, rngs=rngs), optimizer, ema)

    # The state `init_fn` would build, with the parameters drawn by the cheaper-to-compile rbg
    # generator (initialisation is not what is timed here); the run's own key stays threefry.
    def init_params(key):
        return nnx.split(CodePolicy(policy, rngs=nnx.Rngs(key)), nnx.Param, ...)[1:]

    params, model_state = jax.jit(init_params)(_init_key(0))
    trainable, _ = optimizer.split(params)
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
        opt_state=jax.jit(optimizer.tx.init)(trainable), rng=jax.random.key_data(seed_key(1)),
        ema_params=jax.tree.map(jnp.copy, init_ema(trainable)) if ema is not None else None,  # own buffers
    )  # fmt: skip
    holder = {"state": state}
    step_fn = jax.jit(make_train_step(graphdef, dp_loss, optimizer, ema=ema), donate_argnums=0)
    device_batch = jax.device_put(batch)

    def step():
        holder["state"], metrics = step_fn(holder["state"], device_batch)
        jax.block_until_ready(metrics)

    def model() -> CodePolicy:
        return nnx.merge(graphdef, holder["state"].params, holder["state"].model_state)

    return step, model, count_params(holder["state"].params)


def ours_denoiser(config, batch_size: int):
    """(train step, DDIM-10 sampler at batch 1, parameter count) of our UNet alone."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from c2a_jax.models import diffusion
    from c2a_jax.models.unet1d import ConditionalUnet1D
    from c2a_jax.train import dp_task

    policy = dp_task.policy_config(config)
    cond_dim = policy.width * policy.pool_queries
    unet_config = policy.unet_config(cond_dim)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: ConditionalUnet1D(unet_config, rngs=nnx.Rngs(0))))
    params = jax.jit(lambda key: nnx.split(ConditionalUnet1D(unet_config, rngs=nnx.Rngs(key)))[1])(_init_key(1))
    tx = optax.adamw(1e-4, b1=0.95, b2=0.999, weight_decay=1e-6)
    holder = {"params": params, "opt": tx.init(params)}
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.uniform(-1, 1, (batch_size, policy.horizon, policy.action_dim)), jnp.float32)
    cond = jnp.asarray(rng.normal(size=(batch_size, cond_dim)), jnp.float32)

    @jax.jit
    def train_step(params, opt, key):
        def loss(p):
            model = nnx.merge(graphdef, p)
            return diffusion.diffusion_loss(lambda x, t: model(x, t, cond), policy.diffusion, x0, key)[0]

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, value

    def step():
        holder["params"], holder["opt"], value = train_step(holder["params"], holder["opt"], jax.random.key(0))
        value.block_until_ready()

    cond1 = cond[:1]

    @jax.jit
    def sample(params, key):
        model = nnx.merge(graphdef, params)
        return diffusion.ddim_sample(lambda x, t: model(x, t, cond1), policy.diffusion,
                                     (1, policy.horizon, policy.action_dim), key, 10)  # fmt: skip

    def ddim():
        sample(holder["params"], jax.random.key(1)).block_until_ready()

    n = sum(int(x.size) for x in jax.tree.leaves(params))
    return step, ddim, n


def ours_policy_ddim(model, batch):
    """Our whole policy's DDIM-10 at batch 1 (what `DiffusionPolicyRunner.sample` runs)."""
    import jax
    from flax import nnx

    from c2a_jax.infer.dp_runner import _sample

    graphdef, state = nnx.split(model)
    one = jax.device_put({k: v[:1] for k, v in batch.items() if k not in ("action", "action_mask")})

    def ddim():
        _sample(graphdef, state, one, jax.random.key(1), 10).block_until_ready()

    return ddim


def peer_denoiser(config, batch_size: int):
    """(train step, DDIM-10 sampler at batch 1, parameter count) of diffusers' UNet1DModel."""
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler, UNet1DModel

    from c2a_jax.train import dp_task

    policy = dp_task.policy_config(config)
    dims = tuple(policy.down_dims)
    model = UNet1DModel(
        sample_size=policy.horizon, in_channels=policy.action_dim, out_channels=policy.action_dim,
        extra_in_channels=0, time_embedding_type="positional", flip_sin_to_cos=False, use_timestep_embedding=True,
        freq_shift=1, down_block_types=("DownResnetBlock1D",) * len(dims),
        up_block_types=("UpResnetBlock1D",) * (len(dims) - 1), mid_block_type="MidResTemporalBlock1D",
        out_block_type="OutConv1DBlock", block_out_channels=dims, act_fn="mish", norm_num_groups=policy.n_groups,
        layers_per_block=2, downsample_each_block=False,
    )  # fmt: skip
    d = policy.diffusion
    train_sched = DDPMScheduler(num_train_timesteps=d.num_train_timesteps, beta_schedule=d.beta_schedule,
                                clip_sample=d.clip_sample, prediction_type=d.prediction_type)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand((batch_size, policy.action_dim, policy.horizon), generator=gen) * 2 - 1

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, d.num_train_timesteps, (batch_size,), generator=gen)
        pred = model(train_sched.add_noise(x0, noise, t), t).sample
        torch.nn.functional.mse_loss(pred, noise).backward()
        optimizer.step()

    sampler = DDIMScheduler(num_train_timesteps=d.num_train_timesteps, beta_schedule=d.beta_schedule,
                            clip_sample=d.clip_sample, prediction_type=d.prediction_type, set_alpha_to_one=True,
                            steps_offset=0)  # fmt: skip

    def ddim():
        model.eval()
        with torch.no_grad():
            sampler.set_timesteps(10)
            x = torch.randn((1, policy.action_dim, policy.horizon), generator=gen)
            for t in sampler.timesteps:
                x = sampler.step(model(x, t.reshape(1)).sample, t, x).prev_sample

    return step, ddim, sum(p.numel() for p in model.parameters())


def _median(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_size(size: str, batch_size: int, reps: int) -> dict:
    """One size's figures; every function runs once untimed first (compilation, warm-up)."""
    config = load(size, batch_size)
    batch = pipeline_batch(config)
    t0 = time.perf_counter()
    policy_step, live_model, n_policy = ours_policy_step(config, batch)
    policy_step()
    compile_s = time.perf_counter() - t0
    t_policy = _median(policy_step, reps, warmup=0)
    our_step, our_ddim, n_ours = ours_denoiser(config, batch_size)
    peer_step, peer_ddim, n_peer = peer_denoiser(config, batch_size)
    t_ours, t_peer = block_medians(our_step, peer_step, reps)
    t_policy_ddim = _median(ours_policy_ddim(live_model(), batch), reps)
    l_ours, l_peer = block_medians(our_ddim, peer_ddim, reps)
    return {
        "batch_size": batch_size,
        "image_size": int(config.data.crop_size or config.data.image_size),
        "policy_train": {
            "params": n_policy,
            "step_ms": round(t_policy * 1e3, 1),
            "samples_per_s": round(batch_size / t_policy, 1),
            "setup_and_first_step_s": round(compile_s, 1),  # compilation, mostly
            "peer": None,
        },
        "denoiser_train": {
            "ours_params": n_ours,
            "peer_params": int(n_peer),
            "ours_samples_per_s": round(batch_size / t_ours, 1),
            "peer_samples_per_s": round(batch_size / t_peer, 1),
            "ratio": round(t_peer / t_ours, 2),
        },
        "ddim10_latency_ms": {
            "ours_policy": round(t_policy_ddim * 1e3, 2),
            "ours_unet": round(l_ours * 1e3, 2),
            "peer_unet": round(l_peer * 1e3, 2),
            "ratio_unet": round(l_peer / l_ours, 2),
        },
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="tiny", help="comma-separated: tiny, paper (paper: minutes more on a CPU)")
    ap.add_argument("--full", action="store_true", help="the configs' batch sizes and more repetitions")
    args = ap.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import torch

    result = {}
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        if size not in ("tiny", "paper"):
            ap.error(f"unknown size {size!r}")
        config_batch = int(load(size, 1).train.batch_size) if args.full else {"tiny": 32, "paper": 4}[size]
        result[size] = bench_size(size, config_batch, 10 if args.full else 1 if size == "paper" else 5)
    result["peer"] = (
        "diffusers UNet1DModel (DownResnetBlock1D/UpResnetBlock1D/MidResTemporalBlock1D, layers_per_block=2, mish, "
        "GroupNorm) at the policy's down_dims, timestep-conditioned only, eager PyTorch; DDIMScheduler for sampling. "
        "policy_train has no peer (no PyTorch implementation of this policy is installed)."
    )
    result["torch_threads"] = torch.get_num_threads()
    result["jax_devices"] = [str(d) for d in jax.devices()]
    result["mode"] = "full" if args.full else "quick"
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    reexec_with_huge_page_malloc()  # XLA's large CPU buffers on huge pages (c2a_jax/host_memory.py)
    sys.exit(main())
