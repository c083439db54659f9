"""Sort2d and Neighbour (clevrskills_spec.md 3.15): put objects into large flat areas.

Both lay out up to four 35 x 35 x 1 cm areas at fixed positions (the source's (+-0.2, +-0.2), 9 cm
nearer our robot: `AREA_POSITIONS`), kinematic (the source builds areas static). They cover most of the workspace, so objects often start on an area
(in the source, whose placement keeps the first candidate when none is free of the areas; here,
which keeps objects within the Panda's reach, always: `AreaTask.reach`, though never on an area's
edge nor on the object's own target area); objects are therefore spawned 1 cm up and settle on
the area or the table. The oracle places
each object at a free, reachable point of its area (`solvers.pick_place.area_placement`).

Sort2d: every object is coloured like a randomly chosen area and goes into that area. Neighbour:
two objects, the second placed beside the first towards a compass direction (north = +x, away
from the robot; west = +y); both go into one area.
"""

from __future__ import annotations

import numpy as np
import sapien

from c2a_jax.sim import placement
from c2a_jax.sim import predicates as P
from c2a_jax.sim import robot as robot_lib
from c2a_jax.sim.tasks.base import Task, obj, register_task, sample_int

AREA_SIZE = (0.35, 0.35, 0.01)
# The source's (+-0.2, +-0.2) relative to its xArm6, which stands 9 cm further forward than our
# Panda: moved 9 cm towards the Panda, so that the far areas (0.675 m from its base at their near
# edge otherwise, against a reach of about 0.72 m) lie where they lie for the source's robot.
AREA_POSITIONS = ((-0.29, -0.2), (-0.29, 0.2), (0.11, -0.2), (0.11, 0.2))
SPAWN_OFFSET = AREA_SIZE[2]  # spawn objects this high, so that one overlapping an area lands on it
# direction -> (axis, sign) of the neighbour's offset from the main actor (the source's table)
DIRECTIONS = {"north": (0, 1.0), "south": (0, -1.0), "west": (1, 1.0), "east": (1, -1.0)}


class AreaTask(Task):
    """Builds the fixed areas (the first `num_areas` of `AREA_POSITIONS`)."""

    workspace = ((-0.40, -0.30), (0.05, 0.30))
    # Our deviation: objects start where the Panda picks them up (its base is at x = -0.65; the
    # workspace's near edge is 0.25 m from it and its far corners 0.76 m, which the xArm6 reaches).
    # The source places objects clear of the areas where it can, which puts them in the gaps between
    # areas: the workspace's near and far edges, out of the Panda's reach. Here objects keep clear of
    # each other and of the robot base only, and may start on an area (spawned 1 cm up, they settle).
    reach = (0.30, 0.68)

    def placement_obstacles(self, o) -> list[np.ndarray]:
        areas = getattr(self, "areas", [])
        placed = [x for x in self.objects if x is not o and x not in areas and x.pose().p[2] > -1.0]
        return [x.world_vertices() for x in placed] + [self.base_vertices()]

    @staticmethod
    def inside(vertices: np.ndarray, area) -> np.ndarray:
        """Which of the footprint's vertices lie on the area."""
        return (np.abs(vertices[:, :2] - np.asarray(area.pose().p[:2])) <= AREA_SIZE[0] / 2).all(axis=1)

    def on_area_edge(self, vertices: np.ndarray) -> bool:
        """Whether a footprint lies partly on an area: such an object rests tilted on the area's edge,
        and the vacuum does not hold a tilted top face (our deviation: such starts are redrawn)."""
        return any(self.inside(vertices, a).any() and not self.inside(vertices, a).all() for a in self.areas)

    def place_randomly(self, o, workspace=None, offset: float = 0.0, grow: float = 0.0, target=None,
                       attempts: int = 200) -> None:  # fmt: skip
        for _ in range(attempts):
            super().place_randomly(o, workspace, offset, grow)
            v = o.world_vertices()  # not on an edge, nor done before it starts
            if not self.on_area_edge(v) and (target is None or not self.inside(v, target).all()):
                return

    def build_areas(self, num_areas: int) -> list:
        colours = self.factory.get_random_base_textures(num_areas)
        areas = [
            self.add_object(c, self.factory.get_random_area_object(c), size=AREA_SIZE, static=True) for c in colours
        ]
        for area, (x, y) in zip(areas, AREA_POSITIONS, strict=False):
            self.place(area, sapien.Pose([x, y, AREA_SIZE[2] / 2]))
        return areas

    def task_actors(self):
        return [*self.actors, *self.areas]


@register_task("Sort2d")
class Sort2d(AreaTask):
    def __init__(self, env, rng, split="train", num_actors: int = 4, num_areas: int = 3,
                 sample_num_actors: bool = True, **kw):  # fmt: skip
        super().__init__(env, rng, split, **kw)
        if not 1 <= num_areas <= len(AREA_POSITIONS):
            raise ValueError(f"Sort2d has 1 to {len(AREA_POSITIONS)} areas, got num_areas={num_areas}")
        self.num_actors = sample_int(rng, 1, num_actors, sample_num_actors)
        self.num_areas = sample_int(rng, 1, num_areas, sample_num_actors)

    def setup(self) -> None:
        self.areas = self.build_areas(self.num_areas)
        match = [int(self.rng.choice(range(self.num_areas))) for _ in range(self.num_actors)]
        self.actors = []
        for k in match:
            colour = self.areas[k].spec.colour
            o = self.add_object(colour, self.factory.get_random_top_object(colour))
            self.place_randomly(o, offset=SPAWN_OFFSET, target=self.areas[k])
            self.actors.append(o)
        self.targets = [self.areas[k] for k in match]
        self.predicate = P.Set(
            "sorting", [P.Inside2d(self.env, a, area) for a, area in zip(self.actors, self.targets, strict=True)]
        )
        self.max_reward = self.predicate.max_reward

    def prompts(self) -> list[str]:
        pairs = list(zip(self.actors, self.targets, strict=True))
        return [
            "Place the objects in the identically textured areas",
            "Put " + " put ".join(f"{a.name} in {area.spec.colour} area" for a, area in pairs),
            "Put " + " put ".join(obj(a) + " in " + obj(area) for a, area in pairs),
        ]


@register_task("Neighbour")
class Neighbour(AreaTask):
    def __init__(self, env, rng, split="train", num_areas: int = 3, sample_num_actors: bool = True, **kw):
        super().__init__(env, rng, split, **kw)
        if not 1 <= num_areas <= len(AREA_POSITIONS):
            raise ValueError(f"Neighbour has 1 to {len(AREA_POSITIONS)} areas, got num_areas={num_areas}")
        self.num_areas = sample_int(rng, 1, num_areas, sample_num_actors)

    def setup(self) -> None:
        self.areas = self.build_areas(self.num_areas)
        self.area = self.areas[int(self.rng.choice(self.num_areas))]
        colours = self.factory.get_random_top_textures(2)
        self.actors = [self.add_object(c, self.factory.get_random_top_object(c)) for c in colours]
        self.actor, self.neighbour = self.actors
        self.direction = str(self.rng.choice(list(DIRECTIONS)))
        self._place_with_neighbour()
        self.predicate = P.Set("neighbour", [P.Inside2d(self.env, o, self.area) for o in self.actors])
        self.max_reward = self.predicate.max_reward

    def _place_with_neighbour(self, attempts: int = 1000) -> None:
        """The source's `place_actor_and_neighbour_randomly_v2`: uniform positions (the source: 100; here 1000) for the
        actor (one yaw for all, drawn at the first; here one per 100), the neighbour `0.1 + its size` along the
        direction's axis; the first pair inside the workspace whose footprints are both free wins,
        else the last pair inside the workspace. Our deviation: both lie within `reach` of the base and off
        the areas' edges, not both already in the target area; only the robot base is an obstacle."""
        axis, sign = DIRECTIONS[self.direction]
        offset = 0.1 + float(np.ptp(self.neighbour.local_vertices[:, axis]))
        (x0, y0), (x1, y1) = self.workspace
        obstacles = [placement.footprint(v) for v in self.placement_obstacles(self.actor)]  # robot base
        base = np.asarray(robot_lib.BASE_POSE.p)[:2]
        yaw, chosen, rotated = None, None, []
        for k in range(attempts):
            xy = self.rng.uniform(self.workspace[0], self.workspace[1])
            if k % 100 == 0:  # the source draws one yaw; we redraw it every 100 positions
                yaw = float(self.rng.uniform(0.0, 2 * np.pi))
                rotated = [placement.rotate_z(o.local_vertices, yaw) for o in self.actors]
            other = xy.copy()
            other[axis] += sign * offset
            if not (x0 <= other[0] <= x1 and y0 <= other[1] <= y1):
                continue
            pair = (xy, other)
            if not all(placement.within_reach(p, self.reach, base) for p in pair):
                continue
            placed = [r + [p[0], p[1], 0.0] for r, p in zip(rotated, pair, strict=True)]
            if any(self.on_area_edge(v) for v in placed) or all(self.inside(v, self.area).all() for v in placed):
                continue
            chosen = pair
            free = all(placement.polygon_distance(placement.footprint(r) + p, ob) > 0.0
                       for r, p in zip(rotated, chosen, strict=True) for ob in obstacles)  # fmt: skip
            if free:
                break
        if chosen is None:  # no pair fits in the workspace: the neighbour beside the workspace centre
            centre = (np.asarray(self.workspace[0]) + np.asarray(self.workspace[1])) / 2
            other = centre.copy()
            other[axis] += sign * offset
            chosen, yaw = (centre, other), yaw or 0.0
        for o, xy in zip(self.actors, chosen, strict=True):
            z = o.spec.half_height + SPAWN_OFFSET
            self.place(o, sapien.Pose([xy[0], xy[1], z], placement.quat_from_yaw(yaw)))

    def prompts(self) -> list[str]:
        return [
            "First put " + obj(self.actor) + " in " + obj(self.area) + " and then put the object that was at its "
            + self.direction + " in the same " + obj(self.area)
        ]  # fmt: skip
