"""An episode driven by executed code (VLM+Oracle), recorded as an oracle demonstration file.

Why: the paper's fourth dataset-generation strategy (section 5.2, Figure 6) records a new dataset
with the VLM+Oracle policy, whose code labels are the VLM's own lines. `CodeEpisodeRecorder` hooks
into an `Executor` (``on_step``) and keeps, besides the arrays of `c2a_jax.sim.rollout.StepRecorder`
(the same layout as `record_oracle_episode`, so ``build_rlds.py`` reads it unchanged), the code unit
running at every control step. Labels (``meta["labels"]``, one entry per step, as the oracle's):

* the first step of a unit is its key-step, the steps after it continue it (commented form);
* a unit that ran no step but was accepted (assignments only, e.g. a ``pose_dict`` write) is
  prepended to the next unit that moves the robot, lines joined with a newline: the oracle's fine
  labels write such assignments into the same unit as the call after them;
* ``done()`` from the first step whose action led to success on (spec 6.2), as the oracle labeller;
* both granularities (``fine`` and ``level1``) hold the same text, the code at whatever level the
  writer wrote (the metadata's ``code_level``, set by the caller): there is no oracle trace to
  derive the other level from, so a DP must train on the writer's level.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from c2a_jax.codeapi.render import render
from c2a_jax.codeapi.trace import DONE
from c2a_jax.sim.rollout import StepRecorder, episode_meta

DONE_CODE = render(DONE)


class CodeEpisodeRecorder:
    """Records the episode an `Executor` runs from the scene `env` was just reset to (`seed`)."""

    def __init__(self, env, executor, seed: int, images: bool = True):
        self.env, self.executor, self.seed = env, executor, int(seed)
        self.start = time.time()
        self.steps = StepRecorder(env, images)
        self.codes: list[tuple[str, bool]] = []  # per step: (running unit's code, first step of it)
        self.units: list[dict[str, Any]] = []  # every unit offered: code, first step, steps, kind
        self._pending: list[str] = []  # accepted units that ran no step, waiting for the next that does
        self._unit: str | None = None
        self._first = False
        executor.on_step = self._on_step

    def close(self) -> None:
        if self.executor.on_step == self._on_step:
            self.executor.on_step = None

    def execute(self, code: str, **kwargs):
        """`executor.execute(code, **kwargs)`, recording the steps it takes."""
        self._unit, self._first = str(code).strip(), True
        before = self.steps.num_steps
        result = self.executor.execute(code, **kwargs)
        self.units.append({"code": self._unit, "first_step": before, "steps": self.steps.num_steps - before,
                           "kind": result.kind, "ok": result.ok})  # fmt: skip
        if result.ok and result.kind == "memory":
            self._pending.append(self._unit)
        self._unit = None
        return result

    def _on_step(self, action: np.ndarray, reward: float, info: dict) -> None:
        if self._unit is None:
            raise RuntimeError("a control step outside a recorded code unit")
        if self._first:
            self._unit = "\n".join([*self._pending, self._unit])
            self._pending = []
        self.codes.append((self._unit, self._first))
        self._first = False
        success = bool(np.asarray(info["success"]).reshape(-1)[0])
        self.steps.step(action, reward, success)

    def labels(self) -> list[dict[str, Any] | None]:
        """One label per recorded row (steps + the final observation), in the oracle's format."""
        out: list[dict[str, Any] | None] = []
        done = False
        for (code, first), success in zip(self.codes, self.steps.successes, strict=True):
            if success or done:
                code, first, done = DONE_CODE, not done, True
            out.append({"level1": code, "level1_keystep": first, "fine": code, "fine_keystep": first})
        if done:
            out.append({"level1": DONE_CODE, "level1_keystep": False, "fine": DONE_CODE, "fine_keystep": False})
        else:
            out.append(dict(out[-1], level1_keystep=False, fine_keystep=False) if out else None)
        return out

    def episode(self) -> dict[str, Any]:
        """``{"arrays", "meta"}`` as `record_oracle_episode` returns them (``units`` instead of traces)."""
        success = any(self.steps.successes)
        meta = episode_meta(self.env, self.seed, self.labels(), success, self.steps.num_steps,
                            time.time() - self.start)  # fmt: skip
        meta["units"] = list(self.units)
        return {"arrays": self.steps.arrays(), "meta": meta}
