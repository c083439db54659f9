"""The device mesh: three named axes ``data``, ``fsdp``, ``tensor`` sized from the config.

Why three axes (anchors.md section 4, MaxText / EasyLM): ``data`` replicates the parameters and
splits the batch (pure data parallelism, cheap across slow links), ``fsdp`` splits both the batch
and the parameters / optimizer state (ZeRO-3; "pure FSDP is the go-to strategy for small-scale
training"), ``tensor`` splits matmuls inside a layer (Megatron-style; for wide models on fast
links). Any axis may be 1; one may be -1, meaning "every device left over".

Config section (``config.mesh``)::

    mesh.data = 1     # data-parallel replicas
    mesh.fsdp = -1    # parameter-sharded data parallelism; -1: the remaining devices
    mesh.tensor = 1   # tensor parallelism

The axes are ``AxisType.Auto`` (GSPMD propagation from the jit's in/out shardings); jax 0.10's
`jax.make_mesh` would otherwise make them Explicit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def _sizes(config: Any) -> dict[str, int]:
    get = config.get if hasattr(config, "get") else lambda k, d: getattr(config, k, d)
    sizes = {}
    for axis in MESH_AXES:
        value = get(axis, 1)
        try:
            sizes[axis] = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"mesh.{axis} must be an integer, got {value!r}") from None
    return sizes


def mesh_shape(config: Any, num_devices: int) -> dict[str, int]:
    """Axis sizes for `num_devices` devices: config sizes with at most one -1 filled in.

    Errors name the offending sizes: zeros or negatives other than -1, two -1s, a product that
    does not divide (with a -1) or equal (without) the device count."""
    sizes = _sizes(config)
    shown = ", ".join(f"{k}={v}" for k, v in sizes.items())
    bad = [f"{k}={v}" for k, v in sizes.items() if v == 0 or v < -1]
    if bad:
        raise ValueError(f"mesh sizes must be positive or -1 (fill): {', '.join(bad)} (mesh {shown})")
    fill = [k for k, v in sizes.items() if v == -1]
    if len(fill) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {', '.join(f'{k}=-1' for k in fill)} (mesh {shown})")
    known = math.prod(v for v in sizes.values() if v != -1)
    if fill:
        if num_devices % known:
            raise ValueError(
                f"mesh {shown}: the fixed axes ({known} devices) do not divide the {num_devices} devices, so "
                f"{fill[0]}=-1 cannot be filled"
            )
        sizes[fill[0]] = num_devices // known
    elif known != num_devices:
        raise ValueError(f"mesh {shown} needs {known} devices, but there are {num_devices}")
    return sizes


def make_mesh(config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` over `devices` (default: every device of every process) with axes
    ``("data", "fsdp", "tensor")`` sized by `config` (the ``mesh`` section: a ConfigDict, a
    mapping or any object with those attributes; a missing axis is 1).

    Device order comes from `jax.make_mesh` (topology-aware on TPU/GPU); on several processes the
    devices of one process stay contiguous along the leading axes, so a host's batch rows live on
    its own devices (`c2a_jax.parallel.distributed.global_batch`)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(config, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        # make_mesh refuses some shapes it cannot map onto the physical topology (e.g. a subset of
        # devices); a plain reshape is always correct, only possibly slower.
        import numpy as np

        array = np.asarray(devices, dtype=object).reshape(shape)
        return Mesh(array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
