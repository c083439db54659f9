"""The functional train step: ``(state, batch) -> (state, metrics)``, jitted once with explicit shardings.

Inside: split the parameters into trainable and frozen, ``nnx.merge`` the model, differentiate
the loss with respect to the trainable part only, clip/Adam/decay/schedule, apply, and report
``loss``, ``grad_norm`` (before clipping), ``learning_rate`` (of the step being taken) and every
metric the loss function returns. No ``nnx.jit`` and no Python graph traversal in the hot loop.

The loss function is the only model-specific piece: ``loss_fn(model, batch, rng) -> (loss,
metrics)`` with a scalar loss and a dict of scalar metrics; it may update non-parameter variables
of the model (they come back as the new ``model_state``).

Gradient accumulation is an explicit microbatch loop (`jax.lax.scan`) inside the one jitted
step, not ``optax.MultiSteps``: the host feeds one global batch per optimizer step, the
schedule, the step counter, logging and checkpoints all count optimizer steps, there is one
dispatch per step instead of one per microbatch, and the gradient accumulator is a temporary of
the step rather than a params-sized buffer kept (and checkpointed) in the optimizer state.
Microbatch ``i`` takes rows ``i, i + k, i + 2k, ...`` of the global batch, so with each device's
rows divisible by ``k`` every device keeps its own rows (no resharding). Microbatch results are
averaged with weights: equal weights by default, or ``metrics[weight_key]`` (e.g. the number of
loss tokens, ``loss_tokens`` of `c2a_jax.train.vlm_loss.vlm_loss`), which makes ``k``
microbatches exactly the one-big-batch gradient of a token-mean loss. Metrics are averaged with
the same weights, except ``weight_key`` itself, which is summed. Each microbatch gets its own
key, ``fold_in(step key, i)``.

With an `EmaConfig` the step also moves the parameters' average (`c2a_jax.train.ema`) toward the
updated parameters and reports the decay it used as ``ema_decay``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from c2a_jax.train.ema import EmaConfig, update_ema
from c2a_jax.train.optimizer import Optimizer
from c2a_jax.train.state import TrainState

LossFn = Callable[[nnx.Module, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, dict]]


def _microbatches(batch: Any, k: int, sharding: NamedSharding | None) -> Any:
    """Leaves (B, ...) -> (k, B // k, ...) with microbatch i = rows i, i + k, ...; 0-d leaves kept."""

    def one(x):
        if jnp.ndim(x) == 0:
            return x
        if x.shape[0] % k:
            raise ValueError(f"batch rows {x.shape[0]} do not divide into {k} microbatches (train.accum_steps)")
        y = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
        if sharding is not None:
            y = jax.lax.with_sharding_constraint(y, NamedSharding(sharding.mesh, P(None, *sharding.spec)))
        return y

    return jax.tree.map(one, batch)


def _microbatch(micro: Any, batch: Any, i: jax.Array) -> Any:
    return jax.tree.map(lambda m, x: x if jnp.ndim(x) == 0 else m[i], micro, batch)


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    optimizer: Optimizer,
    *,
    accum_steps: int = 1,
    weight_key: str | None = None,
    batch_sharding: NamedSharding | None = None,
    ema: EmaConfig | None = None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """The pure step function (jit it with `jit_train_step`). `batch_sharding` (the batch axes'
    sharding) keeps microbatches split over the devices when ``accum_steps > 1``."""
    if accum_steps < 1:
        raise ValueError(f"train.accum_steps must be >= 1, got {accum_steps}")

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        key, step_key = jax.random.split(state.key())
        trainable, frozen = optimizer.split(state.params)

        def loss_of(trainable, model_state, micro, rng):
            model = nnx.merge(graphdef, trainable, frozen, model_state)
            loss, metrics = loss_fn(model, micro, rng)
            new_model_state = nnx.state(model, nnx.Not(nnx.Param))
            return loss, (dict(metrics), new_model_state)

        grad_fn = jax.value_and_grad(loss_of, has_aux=True)
        if accum_steps == 1:
            (loss, (metrics, model_state)), grads = grad_fn(trainable, state.model_state, batch, step_key)
        else:
            micro = _microbatches(batch, accum_steps, batch_sharding)
            shapes = jax.eval_shape(grad_fn, trainable, state.model_state, _microbatch(micro, batch, 0), step_key)
            (_, (metric_shapes, _)), _ = shapes
            zeros_like = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), t)  # noqa: E731

            def body(carry, i):
                grads_sum, loss_sum, metrics_sum, weight_sum, model_state = carry
                rng = jax.random.fold_in(step_key, i)
                (loss, (metrics, model_state)), grads = grad_fn(
                    trainable, model_state, _microbatch(micro, batch, i), rng
                )
                w = jnp.asarray(metrics[weight_key], jnp.float32) if weight_key else jnp.float32(1.0)
                grads_sum = jax.tree.map(lambda a, g: a + w * g.astype(jnp.float32), grads_sum, grads)
                metrics_sum = {
                    k: metrics_sum[k] + jnp.asarray(metrics[k], jnp.float32) * (1.0 if k == weight_key else w)
                    for k in metrics_sum
                }
                return (grads_sum, loss_sum + w * loss, metrics_sum, weight_sum + w, model_state), None

            init = (zeros_like(trainable), jnp.float32(0), zeros_like(metric_shapes), jnp.float32(0), state.model_state)
            (grads_sum, loss_sum, metrics_sum, weight_sum, model_state), _ = jax.lax.scan(
                body, init, jnp.arange(accum_steps)
            )
            denom = jnp.maximum(weight_sum, 1e-12)
            grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads_sum, trainable)
            loss = loss_sum / denom
            metrics = {k: v if k == weight_key else v / denom for k, v in metrics_sum.items()}

        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.tx.update(grads, state.opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        extra = {}
        ema_params = state.ema_params
        if ema is not None:
            if ema_params is None:
                raise ValueError("train.ema_power is set but the train state holds no EMA (init without it?)")
            decay = ema.decay(state.step)
            ema_params = update_ema(ema_params, trainable, decay)
            extra["ema_decay"] = decay
        new_state = TrainState(
            step=state.step + 1,
            params=optimizer.merge(trainable, frozen),
            model_state=model_state,
            opt_state=opt_state,
            rng=jax.random.key_data(key),
            ema_params=ema_params,
        )
        out = {
            **metrics,
            **extra,
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": optimizer.schedule(state.step),
        }
        return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}

    return step


def batch_shardings(batch: Any, sharding: NamedSharding) -> Any:
    """Per-leaf shardings of a batch: `sharding` on leaves with a batch axis, replicated on 0-d ones."""
    replicated = NamedSharding(sharding.mesh, P())
    return jax.tree.map(lambda x: replicated if jnp.ndim(x) == 0 else sharding, batch)


def jit_train_step(step: Callable, state_sharding: Any, batch_sharding: Any) -> Callable:
    """``jax.jit`` of a step with explicit in/out shardings, the state donated (updated in place),
    metrics replicated. `batch_sharding` is a tree for the batch (`batch_shardings`) or one
    sharding for every leaf."""
    mesh = jax.tree.leaves(state_sharding)[0].mesh
    return jax.jit(
        step,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, NamedSharding(mesh, P())),
        donate_argnums=(0,),
    )
