"""Operations the model families share.

`dense` is ``x @ kernel`` over the last axis with the leading axes flattened first: XLA's CPU
backend runs the gradient of a dot with several free lhs axes about 2.5x slower than the same
product on a 2-D matrix (measured: bench/vlm_train.py), and on accelerators the reshape is free.

`remat` is rematerialisation of one layer call that also works when the layer's parameters come
from different traces (a frozen tower's parameters closed over by the gradient of the trainable
ones): ``nnx.remat`` raises a TraceContextError there, so the layer's state goes through
``jax.checkpoint`` as an explicit argument instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def dense(x: jax.Array, kernel: jax.Array, dtype: Any) -> jax.Array:
    """``x (..., in) @ kernel (in, out) -> (..., out)`` in `dtype`."""
    lead = x.shape[:-1]
    y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(dtype), kernel.astype(dtype))
    return y.reshape(*lead, kernel.shape[-1])


def remat(fn: Callable[..., Any], policy_name: str | None = None) -> Callable[..., Any]:
    """``fn(module, *args)`` recomputed in the backward pass (``jax.checkpoint`` with the named
    ``jax.checkpoint_policies`` member; None saves nothing). `fn` must not mutate `module`."""
    policy = getattr(jax.checkpoint_policies, policy_name) if policy_name else None

    def run(module: nnx.Module, *args: Any) -> Any:
        graphdef, state = nnx.split(module)

        def pure(state: nnx.State, *args: Any) -> Any:
            return fn(nnx.merge(graphdef, state), *args)

        return jax.checkpoint(pure, policy=policy)(state, *args)

    return run
