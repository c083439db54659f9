"""Operations the model families share.

`dense` is ``x @ kernel`` over the last axis with the leading axes flattened first: XLA's CPU
backend runs the gradient of a dot with several free lhs axes about 2.5x slower than the same
product on a 2-D matrix (measured: bench/vlm_train.py), and on accelerators the reshape is free.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def dense(x: jax.Array, kernel: jax.Array, dtype: Any) -> jax.Array:
    """``x (..., in) @ kernel (in, out) -> (..., out)`` in `dtype`."""
    lead = x.shape[:-1]
    y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(dtype), kernel.astype(dtype))
    return y.reshape(*lead, kernel.shape[-1])
