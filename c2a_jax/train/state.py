"""The train state: one pytree with everything a step changes; the model's graph stays static.

Why a plain pytree (and not ``nnx.Optimizer``): the hot loop is a pure function under `jax.jit`
with explicit in/out shardings and donation (anchors.md section 7, MaxText / openpi); the model's
structure (`nnx.GraphDef`) is split off once and closed over, so nothing in the loop walks the
object graph in Python.

``TrainState`` fields:

* ``step``: int32 scalar, optimizer steps taken;
* ``params``: `nnx.State` of every `nnx.Param` (trainable and frozen), with the logical-axis
  metadata the sharding rules read;
* ``model_state``: `nnx.State` of the model's other variables (batch statistics, RNG counters...);
  empty for our models, carried so a policy with such variables trains through the same loop;
* ``opt_state``: optax state over the trainable parameters only (`c2a_jax.train.optimizer`);
* ``rng``: the run's PRNG key as raw uint32 key data (orbax stores it like any array); each step
  splits it and hands the loss function a fresh key.

`init_fn` builds the whole state from a seed inside one function, so
``jax.jit(init_fn, out_shardings=...)`` creates parameters and optimizer state directly in their
shardings (no full copy on one device), and ``jax.eval_shape(init_fn, ...)`` gives the abstract
state that sharding and checkpoint restore need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from c2a_jax.train.optimizer import Optimizer

ModelFn = Callable[[nnx.Rngs], nnx.Module]


@struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    model_state: nnx.State
    opt_state: Any
    rng: jax.Array

    def key(self) -> jax.Array:
        """The typed PRNG key of ``rng``."""
        return jax.random.wrap_key_data(self.rng)


def init_fn_for(model_fn: ModelFn, optimizer: Optimizer) -> tuple[Callable[[jax.Array], TrainState], nnx.GraphDef]:
    """``(init_fn, graphdef)``: ``init_fn(seed_key) -> TrainState`` (pure, jit-able) and the model's
    static graph. `model_fn(rngs)` builds the model; it is traced once here (abstractly) to get
    the graph, and again whenever `init_fn` is traced."""

    def split_model(model: nnx.Module):
        return nnx.split(model, nnx.Param, ...)

    def init_fn(seed_key: jax.Array) -> TrainState:
        model_key, train_key = jax.random.split(seed_key)
        _, params, model_state = split_model(model_fn(nnx.Rngs(model_key)))
        trainable, _ = optimizer.split(params)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=model_state,
            opt_state=optimizer.tx.init(trainable),
            rng=jax.random.key_data(train_key),
        )

    graphdef, _, _ = split_model(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))))
    return init_fn, graphdef


def seed_key(seed: int) -> jax.Array:
    """The typed key a run's seed stands for (init_fn's argument)."""
    return jax.random.key(seed)


def model_from_state(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
    """The live model of a train state (for evaluation hooks and export)."""
    return nnx.merge(graphdef, state.params, state.model_state)


def count_params(params: nnx.State) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
