"""The top-level oracle `Solver` (clevrskills_spec.md 5.2): pick the next unsatisfied leaf predicate
and run the level-1 solver that satisfies it."""

from __future__ import annotations

import numpy as np

from c2a_jax.sim import predicates as P
from c2a_jax.sim.solvers.base import GRIPPER_OFF, AbstractSolver
from c2a_jax.sim.solvers.pick_place import PickMove3dPlaceSolver
from c2a_jax.sim.solvers.push import PushSolver
from c2a_jax.sim.solvers.throw import PickMove3dThrowSolver
from c2a_jax.sim.solvers.topple import ToppleStructure
from c2a_jax.sim.solvers.touch import Move3dTouchSolver

PUSH_RETRIES = 4  # pushes after the first, to bring an actor within AtPositionPushed's 3 cm


class Solver(AbstractSolver):
    """Walks the task's predicate; a new level-1 solver starts when the current leaf is satisfied
    (spec 5.2)."""

    def __init__(self, env, task):
        super().__init__(env, prompts=task.prompts())
        self.task = task
        self.leaf = None
        self.last_vacuum = GRIPPER_OFF

    def make_solver(self, leaf: P.Predicate) -> AbstractSolver:
        """The leaf's level-1 solver; the task's `action_state_extra` for the leaf (if any) is merged
        into the solver's action state, as the trace converter reads it (spec 5.2)."""
        solver = self._solver_for(leaf)
        extra = getattr(leaf, "action_state_extra", None)
        if extra:
            solver.action_state.update(extra)
        return solver

    def _solver_for(self, leaf: P.Predicate) -> AbstractSolver:
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
        if isinstance(leaf, P.AtPositionPushed):
            return PushSolver(self.env, leaf.actor, leaf.target(), retries=PUSH_RETRIES, plan_path=True)
        if isinstance(leaf, P.TouchPredicate):
            return Move3dTouchSolver(self.env, leaf.actor, push=leaf.push, topple=leaf.topple)
        if isinstance(leaf, P.HitPredicate):
            return PickMove3dThrowSolver(self.env, leaf.actor, leaf.target, leaf.target_2d, leaf.topple_target)
        if isinstance(leaf, P.ToppleStructurePredicate):
            return ToppleStructure(self.env, leaf.actors)
        raise NotImplementedError(f"no solver for predicate {type(leaf).__name__}")

    def step(self) -> np.ndarray:
        # As the source's Solver: the current leaf is kept until it evaluates successful, and only then
        # is the next one chosen. (Re-choosing every step would start a new call, and write a new
        # key-step, whenever an earlier relation of a stack wobbles for a step while the next is placed.)
        if self.leaf is None or self.leaf.success():
            if self.sub is not None:
                self.sub.stop()  # a throw's target is hit while the arm still follows through
            self.leaf = P.next_leaf(self.task.predicate)
            self.sub = self.make_solver(self.leaf) if self.leaf is not None else None
        if self.sub is None:
            return self.hold(self.last_vacuum)
        action = self.sub.step()
        self.last_vacuum = float(action[6])
        return action
