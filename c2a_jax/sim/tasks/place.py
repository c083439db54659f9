"""PlaceOnTop and PlaceNextTo (clevrskills_spec.md 3.2, 3.3), in their L0 form (object spawned at the
gripper, prompt verb "Place") or L1 form (full pick-and-place, "Pick and place")."""

from __future__ import annotations

import numpy as np
import sapien

from c2a_jax.sim import predicates as P
from c2a_jax.sim.solvers.pick_place import PickMove3dPlaceSolver
from c2a_jax.sim.tasks.base import Task, obj, register_task, sample_int, tex

DIRECTIONS = (("left of", (0.0, 1.0, 0.0)), ("right of", (0.0, -1.0, 0.0)),
              ("in front of", (1.0, 0.0, 0.0)), ("behind", (-1.0, 0.0, 0.0)))  # fmt: skip


@register_task("PlaceOnTop")
class PlaceOnTop(Task):
    workspace = ((-0.40, -0.30), (0.05, 0.30))
    max_reward = 6.0

    def __init__(self, env, rng, split="train", num_actors: int = 3, num_areas: int = 3,
                 spawn_at_gripper: bool = False, sample_num_actors: bool = True, **kw):  # fmt: skip
        super().__init__(env, rng, split, **kw)
        self.spawn_at_gripper = bool(spawn_at_gripper)
        self.num_actors = sample_int(rng, 1, num_actors, sample_num_actors)
        self.num_areas = sample_int(rng, 1, num_areas, sample_num_actors)

    @property
    def verb(self) -> str:
        return "Place" if self.spawn_at_gripper else "Pick and place"

    def setup(self) -> None:
        area_colours = self.factory.get_random_base_textures(self.num_areas)
        self.areas = [self.add_object(c, self.factory.get_random_base_object(c)) for c in area_colours]
        for a in self.areas:
            self.place_randomly(a)
        colours = self.factory.get_random_top_textures(self.num_actors)
        self.actors = [self.add_object(c, self.factory.get_random_top_object(c)) for c in colours]
        for a in self.actors:
            self.place_randomly(a)
        self.actor = self.actors[int(self.rng.choice(self.num_actors, size=1)[0])]
        self.area = self.areas[int(self.rng.choice(self.num_areas, size=1)[0])]
        self.predicate = P.Inside2d(self.env, self.actor, self.area)

    def initialize(self) -> None:
        if self.spawn_at_gripper:
            self.spawn_under_gripper(self.actor)

    def prompts(self) -> list[str]:
        a, b = self.actor, self.area
        return [
            f"{self.verb} " + obj(a) + " on " + obj(b),
            f"{self.verb} {a.name} on {b.name}",
            f"{self.verb} object with " + tex(a) + " texture on object with " + tex(b) + " texture",
        ]


@register_task("PlaceNextTo")
class PlaceNextTo(Task):
    workspace = ((-0.40, -0.30), (0.05, 0.30))
    max_reward = 6.0

    def __init__(self, env, rng, split="train", num_actors: int = 3, spawn_at_gripper: bool = False,
                 sample_num_actors: bool = True, **kw):  # fmt: skip
        super().__init__(env, rng, split, **kw)
        self.spawn_at_gripper = bool(spawn_at_gripper)
        self.num_actors = sample_int(rng, 2, num_actors, sample_num_actors)

    @property
    def verb(self) -> str:
        return "Place" if self.spawn_at_gripper else "Pick and place"

    def setup(self) -> None:
        colours = self.factory.get_random_top_textures(self.num_actors)
        actors = [self.add_object(c, self.factory.get_random_top_object(c)) for c in colours]
        for a in actors:
            self.place_randomly(a)
        i, j = self.rng.choice(self.num_actors, size=2, replace=False)
        self.actor, self.other = actors[int(i)], actors[int(j)]
        options = []
        for description, direction in DIRECTIONS:
            pred = P.NextTo(self.env, self.actor, self.other, direction, description)
            if not pred.evaluate()["actor_at_pos"] and len(pred.feasible_positions(workspace=self.workspace)):
                options.append((description, direction, pred))
        if not options:
            options = [(d, v, P.NextTo(self.env, self.actor, self.other, v, d)) for d, v in DIRECTIONS]
        self.description, self.direction, self.predicate = options[int(self.rng.randint(0, len(options)))]
        self.feasible = self.predicate.feasible_positions(workspace=self.workspace)
        if not len(self.feasible):
            self.feasible = self.predicate.area()

    def initialize(self) -> None:
        if self.spawn_at_gripper:
            self.spawn_under_gripper(self.actor)

    def prompts(self) -> list[str]:
        return [f"{self.verb} " + obj(self.actor) + f" {self.description} " + obj(self.other)]

    def solver_for(self, leaf):
        point = self.feasible[int(self.env.rng.randint(len(self.feasible)))]
        pose = sapien.Pose(np.asarray(point), self.actor.pose().q)
        return PickMove3dPlaceSolver(
            self.env, self.actor, target_pose=pose,
            target_pose_name=f"area {self.description} {self.other.name}",
            extra={"target_pose_function": "in_area", "area_description": self.description,
                   "area_actor": [self.other.name, self.other.id], "area_direction": list(self.direction)},
        )  # fmt: skip
