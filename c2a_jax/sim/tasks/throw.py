"""Throw (clevrskills_spec.md 3.14) and ThrowAndSort (3.15): throw objects at targets out of reach.

Targets stand 0.75-0.85 m from the robot base, at 45-135 deg in front of it, beyond what the arm
reaches, so the only way to hit them is a throw (`solvers.throw`). A 2-D target is a flat static
area (hit = the thrown object's footprint overlaps it while free); a 3-D one a light (density 100)
upright prism (hit = contact), which `topple_target` asks to knock over.
"""

from __future__ import annotations

import numpy as np
import sapien

from c2a_jax.sim import predicates as P
from c2a_jax.sim import robot as robot_lib
from c2a_jax.sim.tasks.base import Task, obj, register_task, sample_int

THROW_SIZE = (0.125, 0.125, 0.025)
AREA_2D_SIZE = (0.2, 0.2, 0.01)
SORT_AREA_SIZE = (0.35, 0.35, 0.01)
# Where the object to throw lies when not spawned at the gripper: the source's x range is [-0.3, 0.0],
# but the Panda (base at x = -0.65) cannot lower its tool onto a 2.5 cm object within ~0.42 m of
# its base, so the near part is cut off.
THROW_X = (-0.2, 0.0)
TARGET_DISTANCE = (0.75, 0.85)  # from the robot base
TARGET_ANGLE = (np.pi / 4, 3 * np.pi / 4)


def far_position(rng: np.random.RandomState, height: float) -> np.ndarray:
    """A point out of reach in front of the robot (spec 3.14): base + (sin a, cos a) * d."""
    d = rng.uniform(*TARGET_DISTANCE)
    a = rng.uniform(*TARGET_ANGLE)
    base = np.asarray(robot_lib.BASE_POSE.p)
    return base + np.array([np.sin(a) * d, np.cos(a) * d, height / 2 + 0.001])


@register_task("Throw")
class Throw(Task):
    workspace = ((-0.40, -0.30), (0.05, 0.30))
    max_reward = 12.0

    def __init__(self, env, rng, split="train", spawn_at_gripper: bool = False, target_2d: bool = True,
                 topple_target: bool = False, num_distractors: int = 0, sample_num_actors: bool = True, **kw):  # fmt: skip
        super().__init__(env, rng, split, **kw)
        self.spawn_at_gripper = bool(spawn_at_gripper)
        self.topple_target = bool(topple_target)
        self.want_2d = bool(target_2d)
        self.num_distractors = sample_int(rng, 1, num_distractors, sample_num_actors) if num_distractors else 0

    def setup(self) -> None:
        colours = self.factory.get_random_top_textures(2 + self.num_distractors)
        self.actor = self.add_object(colours[0], self.factory.get_random_top_object(colours[0]), size=THROW_SIZE)
        if not self.spawn_at_gripper:
            self.place_throw_actor()
        # As the source: a 2-D target when asked, or by a coin flip when not toppling.
        self.target_2d = self.want_2d or (not self.topple_target and self.rng.random_sample() < 0.5)
        if self.target_2d:
            size, shape = AREA_2D_SIZE, self.factory.get_random_area_object(colours[1])
            self.target = self.add_object(colours[1], shape, size=size, static=True)
        else:
            size = (0.05, 0.05, 0.25 if self.topple_target else 0.15)
            shape = self.factory.get_random_top_object(colours[1])
            self.target = self.add_object(colours[1], shape, size=size, density=100.0)
        self.place(self.target, sapien.Pose(far_position(self.rng, size[2])))
        for _ in range(100):  # a throw actor lying on (or against) the target would count as a hit at once
            if self.spawn_at_gripper or P.flat_distance(self.actor, self.target) > 0.05:
                break
            self.place_throw_actor()
        for c in colours[2:]:
            o = self.add_object(c, self.factory.get_random_object(c))
            self.place_randomly(o, grow=0.01)
        self.predicate = P.HitPredicate(self.env, self.actor, self.target, self.target_2d, self.topple_target)

    def place_throw_actor(self) -> None:
        x, y = self.rng.uniform([THROW_X[0], -0.2], [THROW_X[1], 0.2])
        self.place(self.actor, sapien.Pose([x, y, self.rng.uniform(0.03, 0.031)]))

    def initialize(self) -> None:
        if self.spawn_at_gripper:
            self.spawn_under_gripper(self.actor)

    def after_settle(self) -> None:
        self.predicate.reset()
        self.predicate.evaluate()  # the target's initial pose, after settling

    def prompts(self) -> list[str]:
        t, g = obj(self.actor), obj(self.target)
        if self.target_2d:
            return ["Throw the " + t + " to the " + g]
        if self.topple_target:
            return [
                "Throw the " + t + " to the " + g + " such that the " + g + " falls over",
                "Hit the " + g + " with the " + t + " such that the " + g + " falls over",
            ]
        return ["Throw the " + t + " to the " + g, "Hit the " + g + " with the " + t]


@register_task("ThrowAndSort")
class ThrowAndSort(Task):
    """Throw every object into the area of its texture (spec 3.15 `throw_sort`). The areas lie out
    of reach, 0.75-0.85 m from the base over the half circle the source samples (90-270 deg, i.e.
    from straight ahead over the robot's right to behind it); a hit is contact with the area."""

    workspace = (
        (-0.33, -0.30),
        (0.05, 0.30),
    )  # the source: x from -0.40; the Panda cannot pick within ~0.3 m of its base

    def __init__(self, env, rng, split="train", num_actors: int = 4, num_areas: int = 2,
                 sample_num_actors: bool = True, **kw):  # fmt: skip
        super().__init__(env, rng, split, **kw)
        self.num_actors = sample_int(rng, 1, num_actors, sample_num_actors)
        self.num_areas = sample_int(rng, 1, num_areas, sample_num_actors)

    def setup(self) -> None:
        colours = self.factory.get_random_base_textures(self.num_areas)
        self.areas = [self.add_object(c, self.factory.get_random_area_object(c), size=SORT_AREA_SIZE, static=True)
                      for c in colours]  # fmt: skip
        for area in self.areas:
            self.place_out_of_reach(area)
        match = [int(self.rng.choice(range(self.num_areas))) for _ in range(self.num_actors)]
        self.actors = []
        for k in match:
            colour = self.areas[k].spec.colour
            o = self.add_object(colour, self.factory.get_random_top_object(colour))
            self.place_randomly(o)
            self.actors.append(o)
        self.targets = [self.areas[k] for k in match]
        self.predicate = P.Set(
            "throw_and_sort",
            [P.HitPredicate(self.env, a, area) for a, area in zip(self.actors, self.targets, strict=True)],
        )
        self.max_reward = self.predicate.max_reward

    def place_out_of_reach(self, area, attempts: int = 100) -> None:
        """Up to 100 draws of distance U(0.75, 0.85) and angle U(90, 270 deg); the first one clear of
        the areas placed so far, else the last."""
        from c2a_jax.sim import placement

        others = [placement.footprint(a.world_vertices()) for a in self.areas if a.id in self.placed]
        base = np.asarray(robot_lib.BASE_POSE.p)
        for _ in range(attempts):
            d = self.rng.uniform(TARGET_DISTANCE[0], TARGET_DISTANCE[1])
            a = self.rng.uniform(np.pi / 2, 3 * np.pi / 2)
            p = base + np.array([np.sin(a) * d, np.cos(a) * d, SORT_AREA_SIZE[2] / 2 + 0.001])
            mine = placement.footprint(area.local_vertices + p)
            if all(placement.polygon_distance(mine, o) > 0.0 for o in others):
                break
        self.place(area, sapien.Pose(p))

    def after_settle(self) -> None:
        for leaf in self.predicate.children:
            leaf.reset()
        self.predicate.evaluate()

    def task_actors(self):
        return [*self.actors, *self.areas]

    def prompts(self) -> list[str]:
        pairs = list(zip(self.actors, self.targets, strict=True))
        return [
            "Place the objects in the identically textured areas by throwing",
            "Throw " + " throw ".join(f"{a.name} in {area.spec.colour} area" for a, area in pairs),
            "Throw " + " throw ".join(obj(a) + " in " + obj(area) for a, area in pairs),
        ]
