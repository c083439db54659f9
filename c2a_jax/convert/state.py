"""Building an NNX module directly from converted arrays, without a random initialisation.

Why: a checkpoint's arrays replace every parameter anyway, so initialising randomly first would
only cost time and (for a 4B-parameter model) memory. The module is traced abstractly
(`nnx.eval_shape`), every path and shape is checked, and the arrays are put in place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from c2a_jax.convert.safetensors_io import CheckpointError, check_keys

StatePath = tuple[str | int, ...]


def show_path(path: StatePath) -> str:
    return ".".join(str(p) for p in path)


def module_from_state(build: Callable[[], nnx.Module], state: Mapping[StatePath, np.ndarray], source: str):
    """``build()`` (traced only) filled with `state` ({state path: array}); names any missing,
    unexpected or wrongly shaped entry."""
    graphdef, abstract = nnx.split(nnx.eval_shape(build))
    flat = list(nnx.to_flat_state(abstract))
    check_keys({show_path(p) for p, _ in flat}, {show_path(p) for p in state}, source)
    filled = []
    for path, variable in flat:
        value = state[path]
        if tuple(value.shape) != tuple(variable.shape):
            raise CheckpointError(
                f"{source} {show_path(path)}: shape {tuple(value.shape)}, model expects {variable.shape}"
            )
        filled.append((path, variable.replace(jnp.asarray(value, dtype=variable.dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))
