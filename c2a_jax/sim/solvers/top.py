"""The top-level oracle `Solver` (clevrskills_spec.md 5.2): pick the next unsatisfied leaf predicate
and run the level-1 solver that satisfies it."""

from __future__ import annotations

import numpy as np

from c2a_jax.sim import predicates as P
from c2a_jax.sim.solvers.base import GRIPPER_OFF, AbstractSolver
from c2a_jax.sim.solvers.pick_place import PickMove3dPlaceSolver
from c2a_jax.sim.solvers.touch import Move3dTouchSolver


class Solver(AbstractSolver):
    """Walks the task's predicate; a new level-1 solver starts whenever the leaf changes or the
    current leaf is satisfied."""

    def __init__(self, env, task):
        super().__init__(env, prompts=task.prompts())
        self.task = task
        self.leaf = None
        self.last_vacuum = GRIPPER_OFF

    def make_solver(self, leaf: P.Predicate) -> AbstractSolver:
        make = getattr(self.task, "solver_for", None)
        if make is not None:
            solver = make(leaf)
            if solver is not None:
                return solver
        if isinstance(leaf, P.OnTop):
            return PickMove3dPlaceSolver(self.env, leaf.top, target_actor=leaf.bottom)
        if isinstance(leaf, P.PickPredicate):
            return PickMove3dPlaceSolver(self.env, leaf.actor, target_pose_name="lifted pose", lift=0.1)
        if isinstance(leaf, P.AtPosition):
            return PickMove3dPlaceSolver(self.env, leaf.actor, target_pose=leaf.target(), match_ori=leaf.match_ori,
                                         target_pose_name="designated pose")  # fmt: skip
        if isinstance(leaf, P.TouchPredicate):
            return Move3dTouchSolver(self.env, leaf.actor, push=leaf.push, topple=leaf.topple)
        raise NotImplementedError(f"no solver for predicate {type(leaf).__name__}")

    def step(self) -> np.ndarray:
        leaf = P.next_leaf(self.task.predicate)
        if leaf is None:
            self.sub = None
            return self.hold(self.last_vacuum)
        if leaf is not self.leaf or self.sub is None:
            self.leaf = leaf
            self.sub = self.make_solver(leaf)
        action = self.sub.step()
        self.last_vacuum = float(action[6])
        return action
