"""Toppling a structure: `ToppleStructure` over one `Move3dTouchSolver(topple=True)` at a time
(clevrskills_spec.md 5.7, StackTopple)."""

from __future__ import annotations

import numpy as np

from c2a_jax.sim.predicates import on_ground
from c2a_jax.sim.solvers.base import GRIPPER_OFF, AbstractSolver, ref
from c2a_jax.sim.solvers.touch import Move3dTouchSolver


class ToppleStructure(AbstractSolver):
    """Topple the actors still off the ground, one at a time, until every one touches the ground.

    The next actor is drawn with probability proportional to exp(-5 z) of its centre height (lower
    ones first; the source draws from the global `np.random`, we from the episode generator so that a
    seed fixes the episode). The current actor's solver is dropped once it is done or the actor is
    on the ground.
    """

    def __init__(self, env, actors):
        super().__init__(env, actors=[ref(a) for a in actors])
        self.actors = list(actors)

    def step(self) -> np.ndarray:
        if self.sub is not None and (self.sub.done or on_ground(self.env, self.sub.actor)):
            self.sub = None
        if self.sub is None:
            ratings = np.array(
                [0.0 if on_ground(self.env, a) else float(np.exp(-5.0 * a.pose().p[2])) for a in self.actors]
            )
            if ratings.sum() > 0:
                k = int(self.env.rng.choice(len(self.actors), p=ratings / ratings.sum()))
                self.sub = Move3dTouchSolver(self.env, self.actors[k], topple=True)
        if self.sub is not None:
            return self.sub.step()
        return self.hold(GRIPPER_OFF)
