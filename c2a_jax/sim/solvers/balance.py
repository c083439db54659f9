"""`BalanceScaleSolver` (clevrskills_spec.md 5.0, 5.9): put objects on the scale's plates, one
`PickMove3dPlaceSolver` at a time, so that a balanced partition stays reachable.

As the source, but without its first 20 steps of waiting for the scale to settle (our reset
already settles the level scale for 25 steps; a waiting step would have no fine-grained call):
take a misplaced object if there is
one, else an unplaced one, the one nearest the tool (x-y); put it on the top of a plate's stack
where a balanced partition remains possible (the nearer one), or, where none does, on free table
space; with nothing left to move, back off to a neutral pose beside the scale and wait.
"""

from __future__ import annotations

import numpy as np
import sapien

from c2a_jax.sim import placement
from c2a_jax.sim import predicates as P
from c2a_jax.sim.solvers.base import GRIPPER_OFF, AbstractSolver, Move3dSolver, ref
from c2a_jax.sim.solvers.pick_place import PickMove3dPlaceSolver

FREE_WORKSPACE = ((-0.35, -0.30), (0.10, 0.30))  # the source's table area for set-aside objects


class BalanceScaleSolver(AbstractSolver):
    def __init__(self, env, predicate: P.BalanceScale):
        objects = predicate.objects
        super().__init__(env, scale=["scale", predicate.plate1.id], plate1=ref(predicate.plate1),
                         plate2=ref(predicate.plate2), objects=[ref(o) for o in objects])  # fmt: skip
        self.predicate = predicate

    def free_pose(self, actor) -> sapien.Pose:
        pos, _, _ = placement.place_actor_randomly_v2(
            self.env.rng, actor.local_vertices, FREE_WORKSPACE, self.env.task.obstacles(exclude=actor), grow_actor_bounds=0.01
        )  # fmt: skip
        rest = float(actor.pose().p[2] - actor.bottom_z())
        return sapien.Pose([pos[0], pos[1], rest + 0.01], actor.pose().q)

    def next_solver(self) -> AbstractSolver:
        st = self.predicate.state()
        candidates = st["incorrect"] or st["unplaced"]
        tcp = np.asarray(self.tcp().p)
        if not candidates:  # wait beside the scale
            plates = min(self.predicate.plate1.pose().p[0], self.predicate.plate2.pose().p[0])
            return Move3dSolver(self.env, sapien.Pose([plates - 0.15, 0.0, tcp[2]], self.tcp().q), match_ori=True,
                                role="retreat", extra={"target_pose_name": "neutral pose"})  # fmt: skip
        actor = min(candidates, key=lambda o: float(np.linalg.norm(o.pose().p[:2] - tcp[:2])))
        s1, s2 = self.predicate.stack(self.predicate.plate1), self.predicate.stack(self.predicate.plate2)
        targets = self.predicate.where_to_place(actor, s1, s2)
        if not targets:
            return PickMove3dPlaceSolver(self.env, actor, target_pose=self.free_pose(actor), target_pose_name="ground")
        p = np.asarray(actor.pose().p)
        target = min(targets, key=lambda t: float(np.linalg.norm(np.asarray(t.pose().p) - p)))
        return PickMove3dPlaceSolver(self.env, actor, target_actor=target)

    def step(self) -> np.ndarray:
        if self.predicate.success():
            self.sub = None
            return self.hold(GRIPPER_OFF)
        if self.sub is not None and self.sub.done:
            self.sub = None
        if self.sub is None:
            self.sub = self.next_solver()
        return self.sub.step()
