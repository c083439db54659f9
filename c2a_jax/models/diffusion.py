"""DDPM training and DDIM sampling for the diffusion policy, with diffusers' scheduler semantics.

Why (paper section 4.3 and Appendix E.2/E.4): the action head is trained as a DDPM with 100 steps,
the squaredcos_cap_v2 (cosine) schedule, epsilon prediction, clipped samples and fixed_small
variance, with an ELBO loss weighting (Kingma & Gao 2023), and is sampled with DDIM at test time.
diffusion_policy delegates all of this to diffusers' ``DDPMScheduler`` / ``DDIMScheduler``; we
reproduce their arithmetic in JAX so that a policy trained here behaves like one trained there and
the whole sampling loop is one ``lax.fori_loop`` inside a jitted function (no Python per step).
Parity with diffusers is tested step by step (tests/test_diffusion.py).

Schedule (`make_schedule`): betas exactly (bit for bit with torch 2.13) as diffusers computes them -- ``linear`` is
``torch.linspace(beta_start, beta_end, T)`` in float32; ``squaredcos_cap_v2`` is the GLIDE cosine schedule
``beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999)`` with ``abar(u) = cos((u + 0.008)/1.008 * pi/2)^2``
(beta_start/beta_end are ignored) -- rounded to float32, ``alphas = 1 - betas`` and
``alphas_cumprod`` their running product, both in float32 as diffusers stores them.

Timestep convention: diffusers' integer index ``t in [0, T)``; ``t = 0`` is the least noisy step,
``alphas_cumprod[-1 (previous of 0)] = 1``.

Loss weighting (`loss_weights`). With ``lambda_t = log SNR_t = log(abar_t / (1 - abar_t))``, Kingma &
Gao write every diffusion objective as ``1/2 E_t[w(lambda_t) (-d lambda/dt) ||eps_hat - eps||^2]``;
``w = 1`` is the ELBO. The paper's Appendix gives no formula beyond "epsilon-prediction with an ELBO
weighting", so we take ``w = 1`` on our discrete grid: the epsilon-loss weight of step ``t`` is the
log-SNR decrement ``lambda_{t-1} - lambda_t`` (``t >= 1``; step 0 reuses ``lambda_0 - lambda_1``), i.e.
``-d lambda/dt`` by a backward difference. Weights are then divided by their mean over the T steps,
so a uniformly drawn t has expected weight 1 and the loss stays on the scale of plain MSE (``"mse"``:
all weights 1, which is exactly the unweighted loss).

``prediction_type="sample"`` trains with ``"mse"`` only. Its ELBO weight would be the epsilon one
times ``SNR_t`` (``||eps_hat - eps||^2 = SNR_t ||x_hat - x||^2``): on the cosine schedule with T = 100
that puts 96% of the loss on the five least noisy steps and 0.04% on the noisier half, so the
network never learns to predict a chunk from heavy noise -- the start of every DDIM sample. A tiny
policy trained so replayed 2 of its 7 training episodes in closed loop, and 7 of 7 with ``"mse"``
(docs/dp_investigation.md); training refuses the combination (`loss_weights`), and a
checkpoint trained with it still loads and samples. We use the
log-SNR decrement rather than the exact discrete-time ELBO factor ``SNR_{t-1}/SNR_t - 1`` (Ho et al.'s
``L_{t-1}``; the two agree to first order in the step size) because the latter is infinite at
``t = 0`` and, with the cosine schedule's beta cap of 0.999, ~1000 at the last step, where the
log-SNR form gives ~7: the cap is a numerical guard, not a signal worth a hundredfold weight.

Padded chunk steps (``action_mask`` False: the chunk ran past the episode's end) are excluded from
the loss: ``loss = sum_b w_{t_b} sum_{h,d} m_bh e_bhd^2 / (D sum_{b,h} m_bh)``, the mean squared error
over the real action entries, each sample weighted by its step's weight.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample")
LOSS_WEIGHTINGS = ("mse", "elbo")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

# model_fn(noisy (B, ...), timesteps (B,) int32) -> prediction (B, ...)
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion process, the loss and the sampler; defaults are the paper's (Appendix E.2, E.4)
    except ``num_inference_steps`` (the paper's DDIM step count is lost in our copy of the text;
    diffusion_policy's DDIM configs use 8 or 16, its paper 10)."""

    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 1e-4  # linear schedule only
    beta_end: float = 0.02  # linear schedule only
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    variance_type: str = "fixed_small"  # the only one DDPM sampling here implements
    loss_weighting: str = "elbo"
    num_inference_steps: int = 10  # DDIM
    timestep_spacing: str = "leading"  # diffusers' default
    steps_offset: int = 0
    set_alpha_to_one: bool = True  # DDIM: abar of the step before 0 is 1 (else abar_0)

    def __post_init__(self):
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        for name, allowed in (
            ("beta_schedule", BETA_SCHEDULES),
            ("prediction_type", PREDICTION_TYPES),
            ("loss_weighting", LOSS_WEIGHTINGS),
            ("timestep_spacing", TIMESTEP_SPACINGS),
            ("variance_type", ("fixed_small",)),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"DiffusionConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError(
                f"DiffusionConfig.num_inference_steps must be in [1, {self.num_train_timesteps}], "
                f"got {self.num_inference_steps}"
            )
        if self.clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be positive, got {self.clip_sample_range}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | Any) -> DiffusionConfig:
        """From a config section (ml_collections ``ConfigDict`` or dict) holding some of our fields."""
        d = section.to_dict() if hasattr(section, "to_dict") else dict(section)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown diffusion config keys {unknown}; known: {sorted(fields)}")
        return cls(**d)


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """Per-step constants (numpy, float32 as diffusers stores them), index t in [0, T)."""

    betas: np.ndarray
    alphas: np.ndarray
    alphas_cumprod: np.ndarray

    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.shape[0])


def _cosine_alpha_bar(u: float) -> float:
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2


def _linspace_float32(start: float, end: float, n: int) -> np.ndarray:
    """``torch.linspace(start, end, n, dtype=torch.float32)`` bit for bit (what diffusers calls): a
    float32 step, the first half counted up from `start` and the second down from `end`, each
    point one fused multiply-add (exact product and sum, one rounding)."""
    f32 = np.float32
    lo, hi = f32(start), f32(end)
    if n == 1:
        return np.array([lo], f32)
    step = np.float64((hi - lo) / f32(n - 1))
    i = np.arange(n)
    up = np.float64(lo) + step * i
    down = np.float64(hi) - step * (n - 1 - i)
    return np.where(i < n // 2, up, down).astype(f32)


def betas_for(config: DiffusionConfig) -> np.ndarray:
    """The betas of `config`'s schedule (float32), see the module docstring."""
    n = config.num_train_timesteps
    if config.beta_schedule == "linear":
        return _linspace_float32(config.beta_start, config.beta_end, n)
    betas = [min(1.0 - _cosine_alpha_bar((i + 1) / n) / _cosine_alpha_bar(i / n), 0.999) for i in range(n)]
    return np.asarray(betas, dtype=np.float64).astype(np.float32)


@functools.lru_cache(maxsize=32)
def make_schedule(config: DiffusionConfig) -> Schedule:
    betas = betas_for(config)
    alphas = (np.float32(1.0) - betas).astype(np.float32)
    # torch.cumprod (diffusers) on float32 equals the float64 running product rounded to float32
    alphas_cumprod = np.cumprod(alphas.astype(np.float64)).astype(np.float32)
    for a in (betas, alphas, alphas_cumprod):
        a.setflags(write=False)
    return Schedule(betas, alphas, alphas_cumprod)


def log_snr(config: DiffusionConfig) -> np.ndarray:
    """``lambda_t = log(abar_t / (1 - abar_t))`` in float64, t in [0, T)."""
    abar = make_schedule(config).alphas_cumprod.astype(np.float64)
    return np.log(abar) - np.log1p(-abar)


def loss_weights(config: DiffusionConfig) -> np.ndarray:
    """Per-step loss weights (float32, mean 1), see the module docstring."""
    n = config.num_train_timesteps
    if config.loss_weighting == "mse":
        return np.ones(n, np.float32)
    if config.prediction_type == "sample":
        raise ValueError(
            "prediction_type 'sample' trains with loss_weighting 'mse': the ELBO weighting in sample space "
            "(x SNR_t) puts nearly all the loss on the least noisy steps, and DDIM starts from pure noise "
            "(see c2a_jax.models.diffusion; a checkpoint trained so still samples)"
        )
    lam = log_snr(config)
    decrement = np.empty(n)
    decrement[1:] = lam[:-1] - lam[1:]
    decrement[0] = decrement[1]
    return (decrement / decrement.mean()).astype(np.float32)


def _per_sample(values: np.ndarray | jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """values[t] shaped (B, 1, ..., 1) to broadcast against a (B, ...) sample of rank `ndim`."""
    v = jnp.asarray(values)[t]
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def add_noise(config: DiffusionConfig, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (diffusers' ``add_noise``), t of shape (B,)."""
    abar = _per_sample(make_schedule(config).alphas_cumprod, t, x0.ndim).astype(x0.dtype)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1 - abar) * noise


def diffusion_loss(
    model_fn: ModelFn,
    config: DiffusionConfig,
    x0: jax.Array,
    rng: jax.Array,
    mask: jax.Array | None = None,
    *,
    timesteps: jax.Array | None = None,
    noise: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted DDPM loss of `model_fn` on clean chunks ``x0`` (B, H, D).

    A step ``t ~ U{0..T-1}`` and Gaussian noise are drawn per sample from `rng` (or taken from
    `timesteps` (B,) / `noise`, e.g. for antithetic or stratified draws); the target is the noise
    (``epsilon``) or ``x0`` (``sample``). `mask` (B, H) bool marks the real chunk steps (None: all).
    Returns the scalar loss and metrics ``mse`` (the unweighted masked MSE, comparable across
    weightings) and ``valid_fraction``.
    """
    t_key, noise_key = jax.random.split(rng)
    batch = x0.shape[0]
    t = timesteps
    if t is None:
        t = jax.random.randint(t_key, (batch,), 0, config.num_train_timesteps, dtype=jnp.int32)
    if noise is None:
        noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    noisy = add_noise(config, x0, noise, t)
    pred = model_fn(noisy, t)
    target = noise if config.prediction_type == "epsilon" else x0
    err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    if mask is None:
        m = jnp.ones(x0.shape[:2], jnp.float32)
    else:
        m = mask.astype(jnp.float32)
    m = m.reshape(m.shape + (1,) * (err.ndim - m.ndim))
    per_sample = jnp.sum(err * m, axis=tuple(range(1, err.ndim)))
    denom = jnp.maximum(jnp.sum(jnp.broadcast_to(m, err.shape)), 1.0)
    w = jnp.asarray(loss_weights(config))[t]
    loss = jnp.sum(w * per_sample) / denom
    metrics = {"mse": jnp.sum(per_sample) / denom, "valid_fraction": jnp.mean(m)}
    return loss, metrics


def _clip(config: DiffusionConfig, x: jax.Array) -> jax.Array:
    if config.clip_sample:
        return jnp.clip(x, -config.clip_sample_range, config.clip_sample_range)
    return x


def _predictions(config: DiffusionConfig, model_output, sample, abar_t):
    """(predicted x0 before clipping, predicted epsilon) from the model output."""
    if config.prediction_type == "epsilon":
        x0 = (sample - jnp.sqrt(1 - abar_t) * model_output) / jnp.sqrt(abar_t)
        return x0, model_output
    eps = (sample - jnp.sqrt(abar_t) * model_output) / jnp.sqrt(1 - abar_t)
    return model_output, eps


def ddpm_step(
    config: DiffusionConfig,
    model_output: jax.Array,
    t: jax.Array,
    sample: jax.Array,
    noise: jax.Array,
    prev_t: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One ancestral DDPM step from ``t`` to ``prev_t`` (default ``t - 1``) with fixed_small variance:
    diffusers' ``DDPMScheduler.step`` given its variance noise. `t`/`prev_t` are scalars or (B,).
    Returns ``(prev_sample, pred_original_sample)``."""
    ac = jnp.asarray(make_schedule(config).alphas_cumprod)
    t = jnp.asarray(t, jnp.int32)
    prev_t = t - 1 if prev_t is None else jnp.asarray(prev_t, jnp.int32)
    nd = sample.ndim
    abar_t = _per_sample(ac, t, nd) if t.ndim else ac[t]
    abar_prev = jnp.where(prev_t >= 0, ac[jnp.maximum(prev_t, 0)], jnp.float32(1.0))
    if prev_t.ndim:
        abar_prev = abar_prev.reshape(abar_prev.shape + (1,) * (nd - 1))
    beta_prod_t = 1 - abar_t
    beta_prod_prev = 1 - abar_prev
    current_alpha = abar_t / abar_prev
    current_beta = 1 - current_alpha
    x0, _ = _predictions(config, model_output, sample, abar_t)
    x0 = _clip(config, x0)
    x0_coeff = jnp.sqrt(abar_prev) * current_beta / beta_prod_t
    sample_coeff = jnp.sqrt(current_alpha) * beta_prod_prev / beta_prod_t
    mean = x0_coeff * x0 + sample_coeff * sample
    variance = jnp.maximum(beta_prod_prev / beta_prod_t * current_beta, 1e-20)
    positive = (t > 0).reshape(t.shape + (1,) * (nd - 1)) if t.ndim else t > 0
    prev = mean + jnp.where(positive, jnp.sqrt(variance) * noise, jnp.zeros_like(noise))
    return prev.astype(sample.dtype), x0


def ddim_timesteps(config: DiffusionConfig, num_inference_steps: int | None = None) -> np.ndarray:
    """diffusers' ``DDIMScheduler.set_timesteps``: the descending int32 timesteps of the chain."""
    n = config.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
    T = config.num_train_timesteps
    if not 1 <= n <= T:
        raise ValueError(f"num_inference_steps must be in [1, {T}], got {n}")
    if config.timestep_spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + config.steps_offset
    elif config.timestep_spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    else:
        ts = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    return ts.astype(np.int32)


def ddim_step(
    config: DiffusionConfig,
    model_output: jax.Array,
    t: jax.Array,
    sample: jax.Array,
    num_inference_steps: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One deterministic DDIM step (eta = 0) from scalar ``t``: diffusers' ``DDIMScheduler.step``
    after ``set_timesteps(num_inference_steps)``. Like diffusers, the previous step is
    ``t - T // num_inference_steps`` whatever the spacing, and the direction term uses the
    model's (unclipped) epsilon. Returns ``(prev_sample, pred_original_sample)``."""
    n = config.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
    ac = jnp.asarray(make_schedule(config).alphas_cumprod)
    final = jnp.float32(1.0) if config.set_alpha_to_one else ac[0]
    t = jnp.asarray(t, jnp.int32)
    prev_t = t - config.num_train_timesteps // n
    abar_t = ac[t]
    abar_prev = jnp.where(prev_t >= 0, ac[jnp.maximum(prev_t, 0)], final)
    x0, eps = _predictions(config, model_output, sample, abar_t)
    x0 = _clip(config, x0)
    prev = jnp.sqrt(abar_prev) * x0 + jnp.sqrt(1 - abar_prev) * eps
    return prev.astype(sample.dtype), x0


def ddim_sample(
    model_fn: ModelFn,
    config: DiffusionConfig,
    shape: tuple[int, ...],
    rng: jax.Array,
    num_inference_steps: int | None = None,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """Draw ``x_T ~ N(0, I)`` of `shape` from `rng` and run the DDIM chain to ``x_0`` in one
    ``lax.fori_loop`` (call it under ``jax.jit``/``nnx.jit``; `num_inference_steps` is static).
    `model_fn(x, t)` gets the whole batch and ``t`` broadcast to (B,)."""
    n = config.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
    timesteps = jnp.asarray(ddim_timesteps(config, n))
    x = jax.random.normal(rng, shape, dtype)

    def body(i, x):
        t = timesteps[i]
        out = model_fn(x, jnp.full((shape[0],), t, jnp.int32))
        return ddim_step(config, out, t, x, n)[0]

    return jax.lax.fori_loop(0, n, body, x)


def ddpm_sample(
    model_fn: ModelFn, config: DiffusionConfig, shape: tuple[int, ...], rng: jax.Array, dtype: Any = jnp.float32
) -> jax.Array:
    """Ancestral DDPM sampling over all T steps (diffusion_policy's default inference) in one
    ``lax.fori_loop``; the step at t draws its noise from ``fold_in(rng, t)``."""
    T = config.num_train_timesteps
    init_key, loop_key = jax.random.split(rng)
    x = jax.random.normal(init_key, shape, dtype)

    def body(i, x):
        t = T - 1 - i
        out = model_fn(x, jnp.full((shape[0],), t, jnp.int32))
        noise = jax.random.normal(jax.random.fold_in(loop_key, t), shape, dtype)
        return ddpm_step(config, out, t, x, noise)[0]

    return jax.lax.fori_loop(0, T, body, x)
