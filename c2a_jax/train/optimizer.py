"""AdamW with linear warmup and cosine decay, gradient clipping, parameter groups and freezing.

Why these pieces: the paper fine-tunes LLaVA-Phi-3 and trains the diffusion policy with AdamW and
a cosine schedule (design.md section 1); big_vision and openpi freeze towers and give parameter
groups their own schedules by regex on the parameter path (anchors.md section 2). Everything is
read from the ``train`` section of a config:

==========================  ===================================================================
``learning_rate``           peak learning rate
``warmup_steps``            linear warmup from 0 to the peak over these steps
``steps``                   total optimizer steps; the cosine ends here
``end_lr_fraction``         final learning rate as a fraction of the peak (default 0)
``b1``, ``b2``, ``eps``     Adam's betas and epsilon (defaults 0.9, 0.999, 1e-8)
``weight_decay``            decoupled weight decay (AdamW: multiplied by the learning rate)
``weight_decay_exclude``    path regexes never decayed (default: norms, biases, scales), plus
                            every parameter with fewer than 2 dimensions
``grad_clip``               clip gradients to this global norm (0: no clipping)
``freeze``                  path regexes of frozen parameters, e.g. ``("vision_tower/.*",)``
``param_groups``            ``({"pattern": "multi_modal_projector/.*", "lr_scale": 10.0},)``:
                            the first matching group scales that parameter's learning rate
                            (and its weight decay, as AdamW does); ``lr_scale`` 0 freezes
==========================  ===================================================================

Paths are the parameter's state path joined by "/" (``language_model/layers/0/mlp/down_proj/kernel``)
and patterns must match the whole path (`re.fullmatch`).

Frozen parameters are taken out *before* differentiation (`Optimizer.split`): no gradient is
computed for them, they have no Adam moments (the optimizer state only covers trainable
parameters) and they do not count in the gradient norm or its clipping.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from c2a_jax.config import config_value

DEFAULT_WEIGHT_DECAY_EXCLUDE = (r".*norm.*", r".*bias", r".*/scale")


def param_path(path: Sequence[Any]) -> str:
    """A state path (nnx path of strings/ints, or a jax key path) joined with "/"; a trailing
    ``.value`` attribute (an `nnx.Variable`'s leaf) is dropped."""
    parts = []
    for key in path:
        if isinstance(key, (str, int)):
            parts.append(str(key))
        elif hasattr(key, "key"):
            parts.append(str(key.key))
        elif hasattr(key, "idx"):
            parts.append(str(key.idx))
        elif hasattr(key, "name"):
            parts.append(str(key.name))
        else:
            parts.append(str(key))
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name in ("value", "raw_value"):
        parts.pop()
    return "/".join(parts)


def warmup_cosine_schedule(
    learning_rate: float, warmup_steps: int, total_steps: int, end_fraction: float = 0.0
) -> optax.Schedule:
    """0 -> `learning_rate` linearly over `warmup_steps`, then a half cosine down to
    ``end_fraction * learning_rate`` at `total_steps` (constant afterwards)."""
    if total_steps < 1:
        raise ValueError(f"train.steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"train.warmup_steps must be in [0, steps={total_steps}], got {warmup_steps}")
    if warmup_steps == total_steps:
        return optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=learning_rate * end_fraction,
    )


@dataclasses.dataclass(frozen=True)
class ParamGroups:
    """Freezing, per-group learning-rate scales and the weight-decay mask, all by path regex."""

    freeze: tuple[str, ...] = ()
    groups: tuple[tuple[str, float], ...] = ()  # (pattern, lr_scale), first match wins
    decay_exclude: tuple[str, ...] = DEFAULT_WEIGHT_DECAY_EXCLUDE

    def __post_init__(self):
        for pattern in (*self.freeze, *(p for p, _ in self.groups), *self.decay_exclude):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"bad parameter-path regex {pattern!r}: {e}") from None

    @classmethod
    def from_config(cls, train: Any) -> ParamGroups:
        groups = []
        for group in config_value(train, "param_groups", ()):
            if not isinstance(group, Mapping) or "pattern" not in group:
                raise ValueError(
                    f"train.param_groups entries must be {{'pattern': ..., 'lr_scale': ...}}, got {group!r}"
                )
            groups.append((str(group["pattern"]), float(group.get("lr_scale", 1.0))))
        return cls(
            freeze=tuple(config_value(train, "freeze", ())),
            groups=tuple(groups),
            decay_exclude=tuple(config_value(train, "weight_decay_exclude", DEFAULT_WEIGHT_DECAY_EXCLUDE)),
        )

    def lr_scale(self, path: str) -> float:
        if any(re.fullmatch(p, path) for p in self.freeze):
            return 0.0
        for pattern, scale in self.groups:
            if re.fullmatch(pattern, path):
                return scale
        return 1.0

    def trainable(self, path: str) -> bool:
        return self.lr_scale(path) != 0.0

    def decays(self, path: str, ndim: int) -> bool:
        return ndim >= 2 and not any(re.fullmatch(p, path) for p in self.decay_exclude)


def scale_by_param_groups(weight_decay: float, groups: ParamGroups) -> optax.GradientTransformation:
    """``u -> (u + weight_decay * p [where decayed]) * lr_scale(path)``, paths resolved at trace time
    (no mask trees in the optimizer state). Placed between Adam and the learning rate, this is
    optax's AdamW with a decay mask, plus per-group scales."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if weight_decay and params is None:
            raise ValueError("scale_by_param_groups needs params for weight decay")

        def one(path, u, p=None):
            name = param_path(path)
            if weight_decay and groups.decays(name, jnp.ndim(u)):
                u = u + weight_decay * p
            scale = groups.lr_scale(name)
            return u if scale == 1.0 else u * scale

        if weight_decay:
            return jax.tree_util.tree_map_with_path(one, updates, params), state
        return jax.tree_util.tree_map_with_path(one, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The optax transformation over the *trainable* parameters, its schedule, and the groups that
    say which parameters are trainable."""

    tx: optax.GradientTransformation
    schedule: optax.Schedule
    groups: ParamGroups

    def _is_trainable(self, path: tuple, value: Any) -> bool:
        del value
        return self.groups.trainable(param_path(path))

    def split(self, params: nnx.State) -> tuple[nnx.State, nnx.State]:
        """(trainable, frozen) parts of an `nnx.State` of parameters."""
        return params.split(self._is_trainable, ...)

    @staticmethod
    def merge(trainable: nnx.State, frozen: nnx.State) -> nnx.State:
        return nnx.merge_state(trainable, frozen)


def make_optimizer(train: Any) -> Optimizer:
    """The optimizer of a config's ``train`` section (keys in the module docstring)."""
    schedule = warmup_cosine_schedule(
        float(config_value(train, "learning_rate", 1e-3)),
        int(config_value(train, "warmup_steps", 0)),
        int(config_value(train, "steps", 1)),
        float(config_value(train, "end_lr_fraction", 0.0)),
    )
    groups = ParamGroups.from_config(train)
    return build_optimizer(
        schedule,
        groups,
        b1=float(config_value(train, "b1", 0.9)),
        b2=float(config_value(train, "b2", 0.999)),
        eps=float(config_value(train, "eps", 1e-8)),
        weight_decay=float(config_value(train, "weight_decay", 0.0)),
        grad_clip=float(config_value(train, "grad_clip", 0.0)),
    )


def build_optimizer(
    schedule: optax.Schedule | float,
    groups: ParamGroups | None = None,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    grad_clip: float = 0.0,
) -> Optimizer:
    """clip by global norm -> Adam -> weight decay and group scales -> learning rate."""
    groups = groups or ParamGroups()
    if not callable(schedule):
        constant = float(schedule)
        schedule = optax.constant_schedule(constant)
    parts: list[optax.GradientTransformation] = []
    if grad_clip > 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    parts.append(scale_by_param_groups(weight_decay, groups))
    parts.append(optax.scale_by_learning_rate(schedule))
    return Optimizer(optax.chain(*parts), schedule, groups)
