"""DDPM/DDIM: schedules, single steps and the full DDIM loop against diffusers' schedulers; the loss.

Every reference comes from diffusers' DDPMScheduler / DDIMScheduler (the classes diffusion_policy
uses) run here on the same inputs; the ELBO weights are recomputed from diffusers' alphas_cumprod
with the formula the module documents.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from c2a_jax.models import diffusion as D
from c2a_jax.models.diffusion import DiffusionConfig

SCHEDULES = [("squaredcos_cap_v2", 100), ("linear", 100), ("linear", 1000)]
SHAPE = (3, 8, 7)


def _ours(schedule, n, **kw) -> DiffusionConfig:
    return DiffusionConfig(beta_schedule=schedule, num_train_timesteps=n, **kw)


def _ddpm(cfg: DiffusionConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        variance_type="fixed_small",
        clip_sample=cfg.clip_sample,
        prediction_type=cfg.prediction_type,
    )


def _ddim(cfg: DiffusionConfig) -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        clip_sample=cfg.clip_sample,
        set_alpha_to_one=cfg.set_alpha_to_one,
        steps_offset=cfg.steps_offset,
        prediction_type=cfg.prediction_type,
        timestep_spacing=cfg.timestep_spacing,
    )


def _randn(seed, shape=SHAPE, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize(("schedule", "n"), SCHEDULES)
def test_schedule_matches_diffusers(schedule, n):
    cfg = _ours(schedule, n)
    ours = D.make_schedule(cfg)
    for ref in (_ddpm(cfg), _ddim(cfg)):
        np.testing.assert_allclose(ours.betas, ref.betas.numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours.alphas, ref.alphas.numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-6, atol=1e-7)
    x0, noise = _randn(0), _randn(1)
    t = np.array([0, n // 2, n - 1])
    ref = _ddpm(cfg).add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t))
    np.testing.assert_allclose(D.add_noise(cfg, x0, noise, jnp.asarray(t)), ref.numpy(), atol=1e-6)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_timesteps_match_diffusers(spacing):
    for n_train, steps_offset in [(100, 0), (100, 1), (1000, 0)]:
        cfg = DiffusionConfig(num_train_timesteps=n_train, timestep_spacing=spacing, steps_offset=steps_offset)
        for n in (1, 3, 7, 8, 10, 16, 100):
            ref = _ddim(cfg)
            ref.set_timesteps(n)
            np.testing.assert_array_equal(D.ddim_timesteps(cfg, n), ref.timesteps.numpy(), err_msg=f"{spacing} {n}")


@functools.partial(jax.jit, static_argnums=0)
def _ddpm_step(cfg, out, t, x, noise):
    return D.ddpm_step(cfg, out, t, x, noise)


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
@pytest.mark.parametrize("clip", [True, False])
def test_ddpm_step_matches_diffusers(prediction, clip):
    cfg = _ours("squaredcos_cap_v2", 100, prediction_type=prediction, clip_sample=clip)
    sched = _ddpm(cfg)
    for t in (0, 1, 37, 98, 99):
        x, out = _randn(10 + t, scale=2.0), _randn(20 + t)
        # DDPMScheduler draws its variance noise with torch.randn from the generator; same seed, same noise
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(t), dtype=torch.float32)
        ref = sched.step(torch.from_numpy(out), t, torch.from_numpy(x), generator=torch.Generator().manual_seed(t))
        prev, x0 = _ddpm_step(cfg, out, jnp.int32(t), x, noise.numpy())
        x0_ref = ref.pred_original_sample.numpy()
        # unclipped epsilon predictions divide by sqrt(abar_t) (~5e-4 at t = 99): compare relatively
        np.testing.assert_allclose(x0, x0_ref, rtol=2e-6, atol=1e-6, err_msg=f"x0 at t={t}")
        np.testing.assert_allclose(prev, ref.prev_sample.numpy(), rtol=2e-6, atol=1e-6, err_msg=f"prev at t={t}")
    # per-sample timesteps (training-time batches) agree with the scalar form row by row
    ts = jnp.array([0, 50, 99])
    x, out, noise = _randn(1), _randn(2), _randn(3)
    batched, _ = jax.jit(D.ddpm_step, static_argnums=0)(cfg, out, ts, x, noise)
    for i, t in enumerate((0, 50, 99)):
        row, _ = _ddpm_step(cfg, out[i : i + 1], jnp.int32(t), x[i : i + 1], noise[i : i + 1])
        np.testing.assert_allclose(batched[i : i + 1], row, rtol=1e-6, atol=1e-7)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _ddim_step(cfg, out, t, x, n):
    return D.ddim_step(cfg, out, t, x, n)


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(prediction_type="sample", loss_weighting="mse"),
        dict(clip_sample=False),
        dict(set_alpha_to_one=False),
        dict(timestep_spacing="trailing"),
        dict(beta_schedule="linear", num_train_timesteps=1000),
    ],
    ids=["default", "sample", "noclip", "alpha_final", "trailing", "linear1000"],
)
def test_ddim_step_matches_diffusers(options):
    cfg = DiffusionConfig(**options)
    for n in (10, 16) if not options else (10,):
        sched = _ddim(cfg)
        sched.set_timesteps(n)
        for i, t in enumerate(sched.timesteps.tolist()):
            x, out = _randn(100 + i, scale=1.5), _randn(200 + i)
            ref = sched.step(torch.from_numpy(out), t, torch.from_numpy(x), eta=0.0)
            prev, x0 = _ddim_step(cfg, out, jnp.int32(t), x, n)
            np.testing.assert_allclose(x0, ref.pred_original_sample.numpy(), rtol=2e-6, atol=1e-6, err_msg=f"x0 t={t}")
            np.testing.assert_allclose(prev, ref.prev_sample.numpy(), rtol=2e-6, atol=1e-6, err_msg=f"prev t={t}")


def _weights():
    w = np.random.default_rng(5).standard_normal((7, 7)).astype(np.float32) * 0.3
    return w, np.float32(0.05)


def _model_jax(x, t):
    w, c = _weights()
    return jnp.tanh(x @ w + jnp.sin(c * t.astype(jnp.float32))[:, None, None]) * 1.5


def _model_torch(x, t):
    w, c = _weights()
    return torch.tanh(x @ torch.from_numpy(w) + torch.sin(torch.tensor(c) * float(t))) * 1.5


@pytest.mark.parametrize("n", [8])
def test_ddim_loop_equals_diffusers_loop(n):
    cfg = DiffusionConfig()
    rng = jax.random.key(3)
    calls = []

    def model(x, t):
        calls.append(1)
        return _model_jax(x, t)

    sample = jax.jit(lambda key: D.ddim_sample(model, cfg, SHAPE, key, n))
    jaxpr = jax.make_jaxpr(lambda key: D.ddim_sample(model, cfg, SHAPE, key, n))(rng)
    # one fori_loop (a scan, its trip count being static) holding the model, traced once
    loops = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ("scan", "while")]
    assert len(loops) == 1 and len(calls) == 1, [e.primitive.name for e in jaxpr.jaxpr.eqns]
    assert "tanh" in str(loops[0])
    ours = sample(rng)
    # the documented start: x_T drawn from `rng` with the sample's shape
    x = torch.from_numpy(np.array(jax.random.normal(rng, SHAPE, jnp.float32)))
    sched = _ddim(cfg)
    sched.set_timesteps(n)
    for t in sched.timesteps.tolist():
        x = sched.step(_model_torch(x, t), t, x).prev_sample
    np.testing.assert_allclose(ours, x.numpy(), rtol=1e-5, atol=2e-6)
    np.testing.assert_array_equal(sample(rng), ours)  # deterministic given the key
    assert float(np.abs(np.asarray(sample(jax.random.key(4))) - np.asarray(ours)).max()) > 1e-3


def test_ddpm_sample_is_the_chain_of_steps():
    cfg = DiffusionConfig(num_train_timesteps=20)
    rng = jax.random.key(7)
    ours = jax.jit(lambda key: D.ddpm_sample(_model_jax, cfg, SHAPE, key))(rng)
    init_key, loop_key = jax.random.split(rng)
    x = torch.from_numpy(np.array(jax.random.normal(init_key, SHAPE)))
    sched = _ddpm(cfg)
    for t in range(19, -1, -1):
        noise = torch.from_numpy(np.array(jax.random.normal(jax.random.fold_in(loop_key, t), SHAPE)))
        out = _model_torch(x, t)
        # diffusers draws its own noise z; two seeds give two draws and the step's std from its
        # public output, (prev1 - prev2) / (z1 - z2); then swap z1 for our noise
        p1, p2 = (sched.step(out, t, x, generator=torch.Generator().manual_seed(s)).prev_sample for s in (0, 1))
        z1, z2 = (torch.randn(SHAPE, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
        std = float(((p1 - p2) / (z1 - z2)).median()) if t > 0 else 0.0
        x = p1 + std * (noise - z1)
    np.testing.assert_allclose(ours, x.numpy(), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize(("schedule", "n"), SCHEDULES)
def test_elbo_weights_have_the_documented_form(schedule, n):
    cfg = _ours(schedule, n, loss_weighting="elbo")
    abar = _ddpm(cfg).alphas_cumprod.double().numpy()
    lam = np.log(abar / (1 - abar))
    dec = np.concatenate([[lam[0] - lam[1]], lam[:-1] - lam[1:]])
    np.testing.assert_allclose(D.loss_weights(cfg), dec / dec.mean(), rtol=1e-5)
    assert np.all(dec > 0)  # log-SNR strictly decreases
    np.testing.assert_array_equal(D.loss_weights(_ours(schedule, n, loss_weighting="mse")), np.ones(n, np.float32))


@pytest.mark.parametrize(("schedule", "n"), SCHEDULES)
@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
@pytest.mark.parametrize("weighting", ["elbo", "mse"])
def test_every_accepted_loss_trains_the_noisy_half_that_sampling_starts_from(schedule, n, prediction, weighting):
    """DDIM starts from pure noise: a loss that leaves the noisier half of the steps without weight
    trains a denoiser that cannot begin a sample (sample prediction with the ELBO weighting put 0.04%
    there, and the demo's policies failed on their own training episodes). Such a pairing is refused."""
    if prediction == "sample" and weighting == "elbo":
        with pytest.raises(ValueError, match="loss_weighting 'mse'"):
            D.loss_weights(_ours(schedule, n, loss_weighting=weighting, prediction_type=prediction))
        return
    w = D.loss_weights(_ours(schedule, n, loss_weighting=weighting, prediction_type=prediction))
    assert w[n // 2 :].sum() / w.sum() > 0.1  # 0.16 at the least (linear, T = 100, epsilon, ELBO)


def test_loss_weighting_and_mask():
    x0 = _randn(30)
    noise = _randn(31)
    t = np.array([0, 40, 99], np.int32)
    mask = np.ones(SHAPE[:2], bool)
    mask[1, 5:] = False
    mask[2, 2:] = False

    def model(x, t):
        return 0.5 * x + 0.01 * t.astype(jnp.float32)[:, None, None]

    def loss(cfg, m, nz=noise):
        return jax.jit(
            lambda x0, nz, m: D.diffusion_loss(model, cfg, x0, jax.random.key(0), m, timesteps=jnp.asarray(t), noise=nz)
        )(x0, nz, m)

    mse_cfg = DiffusionConfig(loss_weighting="mse")
    abar = D.make_schedule(mse_cfg).alphas_cumprod[t][:, None, None]
    noisy = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise
    err = (0.5 * noisy + 0.01 * t[:, None, None] - noise) ** 2
    # MSE weighting without a mask is the plain mean squared error
    plain, metrics = loss(mse_cfg, None)
    np.testing.assert_allclose(plain, err.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["mse"], err.mean(), rtol=1e-5)
    # with a mask: the mean over real entries only; padded entries cannot move it
    masked, _ = loss(mse_cfg, mask)
    np.testing.assert_allclose(masked, err[mask].mean(), rtol=1e-5)
    moved_noise = noise.copy()
    moved_noise[~mask] += 5.0
    np.testing.assert_allclose(loss(mse_cfg, mask, moved_noise)[0], masked, rtol=1e-6)
    # ELBO weighting: each sample's squared error scaled by its step's weight
    elbo_cfg = DiffusionConfig(loss_weighting="elbo")
    w = D.loss_weights(elbo_cfg)[t]
    elbo, elbo_metrics = loss(elbo_cfg, mask)
    expected = (w[:, None, None] * err * mask[..., None]).sum() / (mask.sum() * SHAPE[-1])
    np.testing.assert_allclose(elbo, expected, rtol=1e-5)
    np.testing.assert_allclose(elbo_metrics["mse"], masked, rtol=1e-6)
    assert abs(float(elbo) - float(masked)) > 1e-3
    # sample prediction regresses x0
    sample_cfg = DiffusionConfig(loss_weighting="mse", prediction_type="sample")
    np.testing.assert_allclose(
        loss(sample_cfg, None)[0], ((0.5 * noisy + 0.01 * t[:, None, None] - x0) ** 2).mean(), rtol=1e-5
    )


def test_config_validation():
    with pytest.raises(ValueError, match="beta_schedule"):
        DiffusionConfig(beta_schedule="cosine")
    with pytest.raises(ValueError, match="num_inference_steps"):
        DiffusionConfig(num_inference_steps=101)
    with pytest.raises(ValueError, match="unknown diffusion config keys"):
        DiffusionConfig.from_config({"num_train_steps": 100})
    assert DiffusionConfig.from_config({"loss_weighting": "mse"}).loss_weighting == "mse"
