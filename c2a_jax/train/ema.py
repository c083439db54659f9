"""An exponential moving average of the trainable parameters, updated inside the train step.

Why: diffusion_policy evaluates with EMA weights (anchors.md section 3) and so does the paper's
policy (Appendix E); a policy without them samples visibly noisier chunks. The decay follows
diffusion_policy's / diffusers' `EMAModel` warmup schedule (power 0.75 reaches 0.999 at about 10k
steps, 0.9999 at about 215k)::

    k = max(0, optimization_step - update_after_step - 1)
    decay = 0                                            if k == 0
          = clip(1 - (1 + k / inv_gamma) ** -power, min_decay, max_decay)   otherwise

with ``optimization_step`` the number of optimizer steps taken *before* the one just applied (so the
first two updates copy the parameters, as in diffusion_policy). Config keys (``train`` section):
``ema_power`` (0: no EMA, the default), ``ema_max_decay`` (0.9999), ``ema_min_decay`` (0),
``ema_update_after_step`` (0), ``ema_inv_gamma`` (1).

The average covers the trainable parameters only (frozen ones are their own average), is kept in
float32 whatever the parameters' dtype, shares the parameters' shardings and is checkpointed with
the train state.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from c2a_jax.config import config_value


@dataclasses.dataclass(frozen=True)
class EmaConfig:
    power: float = 0.75
    max_decay: float = 0.9999
    min_decay: float = 0.0
    update_after_step: int = 0
    inv_gamma: float = 1.0

    def __post_init__(self):
        if self.power <= 0:
            raise ValueError(f"train.ema_power must be > 0 when EMA is on, got {self.power}")
        if not 0.0 <= self.min_decay <= self.max_decay < 1.0:
            raise ValueError(
                f"need 0 <= train.ema_min_decay ({self.min_decay}) <= train.ema_max_decay ({self.max_decay}) < 1"
            )
        if self.inv_gamma <= 0 or self.update_after_step < 0:
            raise ValueError("train.ema_inv_gamma must be > 0 and train.ema_update_after_step >= 0")

    @classmethod
    def from_config(cls, train: Any) -> EmaConfig | None:
        """The EMA a ``train`` section asks for, or None (``ema_power`` 0 or absent)."""
        power = float(config_value(train, "ema_power", 0.0))
        if power == 0.0:
            return None
        return cls(
            power=power,
            max_decay=float(config_value(train, "ema_max_decay", 0.9999)),
            min_decay=float(config_value(train, "ema_min_decay", 0.0)),
            update_after_step=int(config_value(train, "ema_update_after_step", 0)),
            inv_gamma=float(config_value(train, "ema_inv_gamma", 1.0)),
        )

    def decay(self, optimization_step: jax.Array | int) -> jax.Array:
        """The decay applied by the update that follows `optimization_step` earlier steps."""
        k = jnp.maximum(jnp.asarray(optimization_step, jnp.float32) - self.update_after_step - 1.0, 0.0)
        value = 1.0 - (1.0 + k / self.inv_gamma) ** -self.power
        value = jnp.clip(value, self.min_decay, self.max_decay)
        return jnp.where(k > 0, value, 0.0)


def init_ema(trainable: Any) -> Any:
    """The average's starting value: a float32 copy of the trainable parameters."""
    return jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), trainable)


def update_ema(ema: Any, trainable: Any, decay: jax.Array) -> Any:
    """``decay * ema + (1 - decay) * params``, leaf by leaf, in float32."""
    return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p.astype(jnp.float32) - e), ema, trainable)
