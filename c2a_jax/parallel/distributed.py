"""Several processes (hosts) as one JAX program, and their per-host batches as global arrays.

Why: on a GPU cluster or a TPU pod every host runs the same script, reads its own share of the
data (``c2a_jax.data.rlds`` shards by ``jax.process_index()``) and the jitted step sees one global
batch. `initialize` starts `jax.distributed` once, before any JAX computation; `global_batch`
assembles the hosts' numpy batches into global `jax.Array`s split over the batch mesh axes
(``("data", "fsdp")``), without any host ever holding the whole batch.

Config section (``config.distributed``); each value falls back to an environment variable::

    distributed.coordinator_address = ""   # "host:port" of process 0 (env JAX_COORDINATOR_ADDRESS)
    distributed.num_processes = 0          # (env JAX_NUM_PROCESSES)
    distributed.process_id = -1            # (env JAX_PROCESS_ID)
    distributed.auto = False               # jax.distributed.initialize() with cluster auto-detection
                                           # (SLURM, Open MPI, TPU pods, ...) when no address is given
    distributed.initialization_timeout = 300

Training configs carry this section (``c.distributed = distributed.config_section()``) so that the
command line can set it (``--config.distributed.auto=true`` on a TPU pod). ``JAX_LOCAL_DEVICE_IDS``
("0,1,...,7") is read by `jax.distributed.initialize` itself: set it when one process drives every
GPU of a SLURM node, since JAX's SLURM detection otherwise gives each process only the GPU numbered
by its ``SLURM_LOCALID`` (docs/launch.md).

On CPU the cross-process collectives go through gloo (``jax_cpu_collectives_implementation``);
the setting only concerns the CPU client, so it is set whenever several processes start.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from c2a_jax.config import config_value
from c2a_jax.parallel.rules import DEFAULT_RULES, Rules, normalize_rules

log = logging.getLogger(__name__)

# The ``distributed`` config section and its defaults (also what `c2a_jax.train.loop` fills in).
CONFIG_DEFAULTS: dict[str, Any] = {
    "coordinator_address": "",
    "num_processes": 0,
    "process_id": -1,
    "auto": False,
    "initialization_timeout": 300,
}


def config_section():
    """A fresh ``distributed`` config section with the defaults, for a config file's ``get_config``."""
    import ml_collections

    return ml_collections.ConfigDict(dict(CONFIG_DEFAULTS))


def initialize(config: Any = None) -> dict[str, int]:
    """Start `jax.distributed` from the ``distributed`` section of `config` (or the section itself,
    or None: environment only). Idempotent: a second call, or a call after someone else started
    it, does nothing. With no coordinator address and ``auto`` off this is a single-process run and
    nothing is started. Returns ``{"process_index", "process_count"}``."""
    section = config_value(config, "distributed", config) if config is not None else None
    if jax.distributed.is_initialized():
        return {"process_index": jax.process_index(), "process_count": jax.process_count()}
    address = config_value(section, "coordinator_address", "") or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num = int(config_value(section, "num_processes", 0) or os.environ.get("JAX_NUM_PROCESSES", 0) or 0)
    pid = config_value(section, "process_id", -1)
    pid = int(pid if pid is not None and int(pid) >= 0 else os.environ.get("JAX_PROCESS_ID", -1))
    auto = bool(config_value(section, "auto", False))
    timeout = int(config_value(section, "initialization_timeout", 300))
    if not address and not auto:
        return {"process_index": 0, "process_count": 1}
    kwargs: dict[str, Any] = {"initialization_timeout": timeout}
    if address:
        if num < 1 or pid < 0 or pid >= num:
            raise ValueError(
                f"distributed: coordinator_address={address!r} needs num_processes >= 1 and 0 <= process_id < "
                f"num_processes, got num_processes={num}, process_id={pid}"
            )
        kwargs.update(coordinator_address=address, num_processes=num, process_id=pid)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    return {"process_index": jax.process_index(), "process_count": jax.process_count()}


def batch_axes(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> tuple[str, ...]:
    """The mesh axes the batch dimension is split over: the first ``batch`` rule, minus size-1 axes."""
    for name, axes in normalize_rules(rules):
        if name == "batch":
            return tuple(a for a in axes if mesh.shape[a] > 1)
    raise ValueError("the sharding rules have no 'batch' rule (e.g. ('batch', ('data', 'fsdp')))")


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Sharding of a batch's leading dimension over the batch axes (other dimensions replicated)."""
    axes = batch_axes(mesh, rules)
    return NamedSharding(mesh, P(axes if axes else None))


def global_batch(local_batch: Mapping[str, Any] | Any, mesh: Mesh, spec: P | NamedSharding | None = None) -> Any:
    """This process's numpy batch (a pytree of arrays with the local rows on axis 0) -> global
    `jax.Array`s of ``process_count x`` the rows, split by `spec` (default: `batch_sharding`).

    Every process must call this with the same tree structure and local shapes. 0-d leaves are
    replicated (every process must hold the same value). Errors name the leaf whose rows do not
    divide over the batch axes."""
    sharding = spec if isinstance(spec, NamedSharding) else NamedSharding(mesh, spec or batch_sharding(mesh).spec)
    first = sharding.spec[0] if len(sharding.spec) else None
    split = math.prod(mesh.shape[a] for a in ((first,) if isinstance(first, str) else first or ()))
    replicated = NamedSharding(mesh, P())
    nproc = jax.process_count()

    def one(path, x):
        x = np.asarray(x)
        if x.ndim == 0:
            return jax.make_array_from_process_local_data(replicated, x)
        rows = x.shape[0] * nproc
        if rows % split:
            name = jax.tree_util.keystr(path)
            raise ValueError(
                f"batch leaf {name}: {x.shape[0]} rows per process x {nproc} processes = {rows} rows do not split "
                f"over the batch mesh axes {sharding.spec[0]} ({split} devices)"
            )
        return jax.make_array_from_process_local_data(sharding, x, (rows, *x.shape[1:]))

    return jax.tree_util.tree_map_with_path(one, local_batch)
