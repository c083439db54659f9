"""PushToTarget, ClevrSkills' `Push` task (clevrskills_spec.md 3.8): push A towards B."""

from __future__ import annotations

import numpy as np
import sapien

from c2a_jax.sim import placement
from c2a_jax.sim import predicates as P
from c2a_jax.sim.solvers.push import PushSolver
from c2a_jax.sim.tasks.base import Task, obj, register_task, sample_int, tex


@register_task("Push")
class Push(Task):
    workspace = ((-0.35, -0.30), (0.00, 0.30))
    max_reward = 5.0

    def __init__(self, env, rng, split="train", num_actors: int = 2, push: bool = False,
                 sample_num_actors: bool = True, **kw):  # fmt: skip
        super().__init__(env, rng, split, **kw)
        self.num_actors = sample_int(rng, 2, num_actors, sample_num_actors)

    def setup(self) -> None:
        colours = self.factory.get_random_top_textures(self.num_actors)
        actors = [self.add_object(c, self.factory.get_random_top_object(c)) for c in colours]
        sizes = [2 * np.ptp(o.local_vertices, axis=0) for o in actors]
        poses = placement.random_non_overlapping_poses_2d_with_sizes(self.rng, len(actors), self.workspace, sizes)
        for o, (x, y, z, yaw) in zip(actors, poses, strict=True):
            self.place(o, sapien.Pose([x, y, z], placement.quat_from_yaw(yaw)))
        self.actor, self.other = actors[0], actors[1]
        a, b = np.array(poses[0][:2]), np.array(poses[1][:2])
        self.target = sapien.Pose([*((a + b) / 2), float(self.actor.pose().p[2])], self.actor.pose().q)
        self.leaf = P.DirectionPushed(self.env, self.actor, self.target)
        self.predicate = P.Order("push", [self.leaf])

    def after_settle(self) -> None:
        self.leaf.reset()
        self.predicate.evaluate()

    def prompts(self) -> list[str]:
        return [
            "Push " + obj(self.actor) + " towards " + obj(self.other),
            "Push object with " + tex(self.actor) + " texture towards the object with " + tex(self.other) + " texture",
        ]

    def solver_for(self, leaf):
        return PushSolver(self.env, self.actor, self.target, target_actor=self.other,
                          extra={"target_pose_function": "towards"})  # fmt: skip
