"""Logical-axis rules (MaxText style): which mesh axes each logical axis name is split over.

Models annotate every parameter with logical names (``out_sharding`` metadata, see
``c2a_jax.models``); a run's config maps those names onto the mesh axes ``data``, ``fsdp``,
``tensor``. Rules are plain data, an ordered list of ``(logical name, mesh axes)`` pairs where
mesh axes is None (replicate), one axis name or a tuple of names. A name may appear several times:
the candidates are tried in order and the first one that fits wins (MaxText's fallback scheme).
A candidate fits a dimension when none of its mesh axes is already used by another dimension of
the same array and the dimension is divisible by the product of the axes' sizes. Mesh axes of
size 1 are dropped first (they split nothing), so one rule set serves every mesh shape: with
``tensor=1`` a ``("mlp", "tensor")`` rule falls through to a later ``("mlp", "fsdp")`` if given.

A dimension that no candidate fits is replicated, and the decision is logged once per
(logical name, size, candidates) so a run says what it could not shard and why.

FSDP by size (openpi's and big_vision's ``min_size_to_shard``): parameters smaller than
``min_fsdp_bytes`` are not split over the ``fsdp``/``data`` axes (all-gathering a bias costs more in
latency than its replicated bytes); their ``tensor`` split, if any, is kept so tensor-parallel
layers stay consistent with their neighbours.

Config section (``config.sharding``)::

    sharding.rules = DEFAULT_RULES      # tuple of (logical, mesh axes) pairs
    sharding.min_fsdp_bytes = 1 << 16   # smaller parameters are not FSDP-sharded
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("mlp_fused", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("qkv_fused", "tensor"),
    ("norm", None),
    ("position", None),
    ("patch", None),
    ("layers", None),
)

FSDP_AXES = ("data", "fsdp")  # the mesh axes that `min_fsdp_bytes` keeps small parameters off

_logged: set[tuple] = set()


def _log_once(key: tuple, message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        log.info(message)


def normalize_rules(rules: Iterable[Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Rules as ``((name, (mesh axes...)), ...)``; accepts lists from JSON/ConfigDicts.
    Errors name the malformed rule."""
    out = []
    for rule in rules:
        if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"a sharding rule must be (logical name, mesh axes), got {rule!r}")
        name, axes = rule
        if axes is None:
            axes = ()
        elif isinstance(axes, str):
            axes = (axes,)
        else:
            axes = tuple(axes)
        if not all(isinstance(a, str) for a in axes):
            raise ValueError(f"sharding rule {rule!r}: mesh axes must be names")
        out.append((name, axes))
    return tuple(out)


def logical_to_spec(
    logical: Sequence[str | None] | None,
    shape: Sequence[int],
    mesh_sizes: Mapping[str, int],
    rules: Rules = DEFAULT_RULES,
    *,
    nbytes: int | None = None,
    min_fsdp_bytes: int = 0,
    name: str = "",
) -> P:
    """The `PartitionSpec` of an array of `shape` whose dimensions carry `logical` names.

    `mesh_sizes`: axis name -> size (``mesh.shape``). See the module docstring for the rules. A
    rank mismatch between `logical` and `shape` (e.g. a factored optimizer moment) replicates."""
    if not logical:
        return P()
    if len(logical) != len(shape):
        _log_once(("rank", name, tuple(logical), tuple(shape)),
                  f"{name}: logical axes {tuple(logical)} do not match shape {tuple(shape)}; replicated")  # fmt: skip
        return P()
    rules = normalize_rules(rules)
    small = nbytes is not None and nbytes < min_fsdp_bytes
    used: set[str] = set()
    spec: list[Any] = []
    for dim, (axis_name, size) in enumerate(zip(logical, shape, strict=True)):
        if axis_name is None:
            spec.append(None)
            continue
        candidates = [axes for rule_name, axes in rules if rule_name == axis_name]
        if not candidates:
            _log_once(("norule", axis_name), f"no sharding rule for logical axis {axis_name!r}; replicated")
            spec.append(None)
            continue
        chosen = None
        for axes in candidates:
            missing = [a for a in axes if a not in mesh_sizes]
            if missing:
                raise ValueError(f"sharding rule ({axis_name!r}, {axes}) names mesh axes {missing} not in the mesh")
            axes = tuple(a for a in axes if mesh_sizes[a] > 1 and not (small and a in FSDP_AXES))
            if not axes or used.intersection(axes):
                continue
            if size % math.prod(mesh_sizes[a] for a in axes):
                _log_once(
                    ("indivisible", axis_name, size, axes),
                    f"{name or 'an array'}: dimension {dim} ({axis_name!r}, size {size}) is not divisible by mesh "
                    f"axes {axes} = {math.prod(mesh_sizes[a] for a in axes)}; trying the next rule or replicating",
                )
                continue
            chosen = axes
            break
        if chosen is None:
            spec.append(None)
        else:
            used.update(chosen)
            spec.append(chosen[0] if len(chosen) == 1 else chosen)
    return P(*spec)


def _path_name(path: tuple) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _shape_and_bytes(value: Any) -> tuple[tuple[int, ...], int]:
    shape = tuple(getattr(value, "shape", ()))
    dtype = getattr(value, "dtype", None)
    itemsize = jax.numpy.dtype(dtype).itemsize if dtype is not None else 4
    return shape, math.prod(shape) * itemsize


def state_shardings(
    abstract_state: Any,
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
    min_fsdp_bytes: int = 0,
) -> Any:
    """A tree of `NamedSharding` with the structure of `abstract_state` (e.g. `jax.eval_shape` of
    a train-state init): every `nnx.Variable` with ``out_sharding`` metadata gets the spec of its
    logical axes (optimizer moments inherit their parameter's metadata, since optax maps over the
    Variables); everything else (step counters, RNG keys, metadata-free variables) is replicated.

    Usable directly as ``jax.jit(..., out_shardings=...)`` and to attach shardings to an abstract
    state for orbax restore (`with_shardings`)."""
    sizes = dict(mesh.shape)
    replicated = NamedSharding(mesh, P())

    def one(path, leaf):
        if _is_variable(leaf):
            logical = leaf.get_metadata().get("out_sharding")
            shape, nbytes = _shape_and_bytes(leaf.get_value())
            spec = logical_to_spec(
                logical, shape, sizes, rules, nbytes=nbytes, min_fsdp_bytes=min_fsdp_bytes, name=_path_name(path)
            )
            return leaf.replace(NamedSharding(mesh, spec))
        return replicated

    return jax.tree_util.tree_map_with_path(one, abstract_state, is_leaf=_is_variable)


def with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """`abstract_state` (ShapeDtypeStructs) with each leaf's sharding set from `shardings`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)
