"""Rotate, and Rotate-restore (clevrskills_spec.md 3.12): turn one object about its vertical axis."""

from __future__ import annotations

import numpy as np
import sapien

from c2a_jax.sim import predicates as P
from c2a_jax.sim.solvers.pick_place import PickMove3dPlaceSolver
from c2a_jax.sim.tasks.base import Task, obj, register_task, sample_int, tex


def rotated_about_own_z(pose: sapien.Pose, degrees: float) -> sapien.Pose:
    """`pose` turned about its own z axis by `degrees` (the source subtracts 1 degree; the caller does)."""
    half = np.radians(degrees) / 2
    return pose * sapien.Pose(q=[np.cos(half), 0.0, 0.0, np.sin(half)])


@register_task("Rotate")
class Rotate(Task):
    workspace = ((-0.35, -0.30), (0.10, 0.30))
    max_reward = 6.0

    def __init__(self, env, rng, split="train", num_actors: int = 1, restore: bool = False,
                 sample_num_actors: bool = True, **kw):  # fmt: skip
        super().__init__(env, rng, split, **kw)
        self.restore = bool(restore)
        self.clockwise = int(rng.choice([0, 1]))
        self.degrees = int(rng.choice([30, 60, 90, 120, 150]))
        self.num_actors = sample_int(rng, 1, num_actors, sample_num_actors)

    @property
    def signed_degrees(self) -> int:
        return -self.degrees if self.clockwise else self.degrees

    def setup(self) -> None:
        for colour in self.factory.get_random_top_textures(self.num_actors):
            self.place_randomly(self.add_object(colour, self.factory.get_random_top_object(colour)))
        self.actor = self.objects[int(self.rng.choice(self.num_actors))]
        start = self.placed[self.actor.id][1]
        d = self.signed_degrees
        turned = rotated_about_own_z(start, d - 1)  # spec 3.12: the requested angle minus 1 degree
        steps = [P.AtPosition(self.env, self.actor, turned, match_ori=True, name=f"Rotate {self.actor.name} by {d}")]
        if self.restore:
            back = rotated_about_own_z(turned, -d - 1)
            steps.append(
                P.AtPosition(self.env, self.actor, back, match_ori=True, name=f"Rotate {self.actor.name} by {-d}")
            )
        self.steps = steps
        self.predicate = P.Order("rotate", steps)
        self.max_reward = self.predicate.max_reward

    def prompts(self) -> list[str]:
        direction = "clockwise" if self.clockwise else "anti-clockwise"
        suffix = " and then restore" if self.restore else ""
        return [
            "Rotate " + obj(self.actor) + f" {self.degrees} degrees {direction}{suffix}",
            "Rotate object with " + tex(self.actor) + f" {self.degrees} degrees {direction}{suffix}",
        ]

    def solver_for(self, leaf):
        restore = leaf is not self.steps[0]
        return PickMove3dPlaceSolver(
            self.env, self.actor, target_pose=leaf.target(), match_ori=True, target_pose_name="designated pose",
            extra={"target_pose_function": "rotate", "angle": self.signed_degrees, "restore": restore},
        )  # fmt: skip
