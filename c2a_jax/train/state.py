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
  splits it and hands the loss function a fresh key;
* ``ema_params``: float32 moving average of the trainable parameters (`c2a_jax.train.ema`), or
  None when the config asks for no EMA.

`init_fn` builds the whole state from a seed inside one function, so
``jax.jit(init_fn, out_shardings=...)`` creates parameters and optimizer state directly in their
shardings (no full copy on one device), and ``jax.eval_shape(init_fn, ...)`` gives the abstract
state that sharding and checkpoint restore need.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from c2a_jax.train.ema import EmaConfig, init_ema
from c2a_jax.train.optimizer import Optimizer, param_path

ModelFn = Callable[[nnx.Rngs], nnx.Module]


@struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    model_state: nnx.State
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None

    def key(self) -> jax.Array:
        """The typed PRNG key of ``rng``."""
        return jax.random.wrap_key_data(self.rng)


def init_fn_for(
    model_fn: ModelFn, optimizer: Optimizer, ema: EmaConfig | None = None
) -> tuple[Callable[..., TrainState], nnx.GraphDef]:
    """``(init_fn, graphdef)``: ``init_fn(seed_key, overrides=None) -> TrainState`` (pure, jit-able)
    and the model's static graph. `model_fn(rngs)` builds the model; it is traced once here
    (abstractly) to get the graph, and again whenever `init_fn` is traced. ``overrides``
    ({"a/b/kernel": array}, paths as `param_path` writes them) replace the random values of those
    parameters (pretrained weights; inside one jit the replaced random values are never computed).
    With `ema` the state carries the average."""

    def split_model(model: nnx.Module):
        return nnx.split(model, nnx.Param, ...)

    def init_fn(seed_key: jax.Array, overrides: Mapping[str, jax.Array] | None = None) -> TrainState:
        model_key, train_key = jax.random.split(seed_key)
        _, params, model_state = split_model(model_fn(nnx.Rngs(model_key)))
        if overrides:
            params = nnx.from_flat_state([
                (path, var.replace(jnp.asarray(overrides[name], var.get_value().dtype)) if name in overrides else var)
                for path, var in nnx.to_flat_state(params)
                for name in (param_path(path),)
            ])  # fmt: skip
        trainable, _ = optimizer.split(params)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=model_state,
            opt_state=optimizer.tx.init(trainable),
            rng=jax.random.key_data(train_key),
            ema_params=init_ema(trainable) if ema is not None else None,
        )

    graphdef, _, _ = split_model(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))))
    return init_fn, graphdef


def check_overrides(abstract_params: nnx.State, overrides: Mapping[str, Any]) -> list[str]:
    """Checks pretrained `overrides` against the model's parameters (every name known, every shape
    equal; raises ValueError naming the first problems) and returns the parameters they leave at
    their random initialisation (e.g. LoRA adapters, a new projector)."""
    shapes = {param_path(path): tuple(var.get_value().shape) for path, var in nnx.to_flat_state(abstract_params)}
    unknown = sorted(set(overrides) - set(shapes))
    if unknown:
        raise ValueError(f"pretrained weights name {len(unknown)} parameters the model lacks, e.g. {unknown[:5]}")
    wrong = [f"{k}: {tuple(np.shape(v))} vs the model's {shapes[k]}" for k, v in overrides.items()
             if tuple(np.shape(v)) != shapes[k]]  # fmt: skip
    if wrong:
        raise ValueError(f"pretrained weights of the wrong shape: {wrong[:5]}")
    return sorted(set(shapes) - set(overrides))


def seed_key(seed: int) -> jax.Array:
    """The typed key a run's seed stands for (init_fn's argument)."""
    return jax.random.key(seed)


def model_from_state(graphdef: nnx.GraphDef, state: TrainState, *, ema: bool = False) -> nnx.Module:
    """The live model of a train state (for evaluation hooks and export). ``ema=True``: with the
    EMA weights in place of the trainable parameters (cast to their dtype); a state without an
    average gives the raw parameters."""
    return nnx.merge(graphdef, ema_params_or_params(state) if ema else state.params, state.model_state)


def ema_params_or_params(state: TrainState) -> nnx.State:
    """All parameters, the trainable ones replaced by their moving average where there is one."""
    if state.ema_params is None:
        return state.params
    merged = nnx.merge_state(state.params, state.ema_params)
    return jax.tree.map(lambda m, p: m.astype(p.dtype), merged, state.params)


def count_params(params: nnx.State) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
