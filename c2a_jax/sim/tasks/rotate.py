"""Rotate, Rotate-restore (clevrskills_spec.md 3.12) and RotateSymmetry (3.15): turn objects about
their vertical axes."""

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
        turn = self.rotation(self.actor)
        steps = [turn]
        if self.restore:
            steps.append(self.rotation(self.actor, after=turn))
        self.steps = steps
        self.predicate = P.Order("rotate", steps)
        self.max_reward = self.predicate.max_reward

    def rotation(self, actor, after: P.AtPosition | None = None) -> P.AtPosition:
        """`RotatePredicate` (spec 4.3): the actor's initial pose turned by the signed angle minus 1
        degree; with `after` (restore) that turn's target turned back by the opposite angle minus 1."""
        d = self.signed_degrees
        if after is None:
            target, name = rotated_about_own_z(self.placed[actor.id][1], d - 1), f"Rotate {actor.name} by {d}"
        else:
            target, name = rotated_about_own_z(after.target(), -d - 1), f"Rotate {actor.name} by {-d}"
        leaf = P.AtPosition(self.env, actor, target, match_ori=True, name=name)
        leaf.restore = after is not None
        return leaf

    def prompts(self) -> list[str]:
        direction = "clockwise" if self.clockwise else "anti-clockwise"
        suffix = " and then restore" if self.restore else ""
        return [
            "Rotate " + obj(self.actor) + f" {self.degrees} degrees {direction}{suffix}",
            "Rotate object with " + tex(self.actor) + f" {self.degrees} degrees {direction}{suffix}",
        ]

    def solver_for(self, leaf):
        return PickMove3dPlaceSolver(
            self.env, leaf.actor, target_pose=leaf.target(), match_ori=True, target_pose_name="designated pose",
            extra={"target_pose_function": "rotate", "angle": self.signed_degrees, "restore": leaf.restore},
        )  # fmt: skip


@register_task("RotateSymmetry")
class RotateSymmetry(Rotate):
    """Rotate both objects of the one colour that two objects share, by the same angle (the last two
    objects drawn share the colour; their shapes are drawn separately and may coincide)."""

    pools = "RotateSymmetry"

    def __init__(self, env, rng, split="train", num_actors: int = 4, sample_num_actors: bool = True, **kw):
        super().__init__(env, rng, split, num_actors=num_actors, sample_num_actors=sample_num_actors, **kw)
        if self.restore:
            raise NotImplementedError("RotateSymmetry has no restore form in the benchmark")
        self.num_actors = sample_int(rng, 2, num_actors, sample_num_actors)

    def setup(self) -> None:
        colours = self.factory.get_random_top_textures(self.num_actors - 1)
        for colour in [*colours, colours[-1]]:
            self.place_randomly(self.add_object(colour, self.factory.get_random_top_object(colour)))
        self.actor_a, self.actor_b = self.objects[-2:]
        self.actor = self.actor_a
        self.steps = [self.rotation(self.actor_a), self.rotation(self.actor_b)]
        self.predicate = P.Order("rotate", self.steps)
        self.max_reward = self.predicate.max_reward

    def prompts(self) -> list[str]:
        direction = "clockwise" if self.clockwise else "anti-clockwise"
        return [
            "Rotate objects with " + tex(self.actor_a) + f" texture {self.degrees} degrees {direction}",
            f"Rotate identically textured objects {self.degrees} degrees {direction}",
        ]
