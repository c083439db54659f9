"""Sharded training plumbing shared by the VLM and the diffusion policy (design.md section 5).

One idea per module:

* `mesh`: the device mesh with axes ``("data", "fsdp", "tensor")`` from config sizes;
* `rules`: MaxText-style logical-axis rules (config data) and the state's `NamedSharding` tree,
  with FSDP by parameter size and a divisibility check per dimension;
* `distributed`: multi-process start-up (`jax.distributed`) and per-host numpy batches -> global arrays.

Models only name logical axes (``c2a_jax.models``); everything here maps them onto devices.
"""

from c2a_jax.parallel.distributed import batch_sharding, global_batch, initialize
from c2a_jax.parallel.mesh import MESH_AXES, make_mesh, mesh_shape
from c2a_jax.parallel.rules import DEFAULT_RULES, logical_to_spec, state_shardings

__all__ = [
    "DEFAULT_RULES",
    "MESH_AXES",
    "batch_sharding",
    "global_batch",
    "initialize",
    "logical_to_spec",
    "make_mesh",
    "mesh_shape",
    "state_shardings",
]
