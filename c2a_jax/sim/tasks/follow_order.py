"""FollowOrder and FollowOrder-restore (clevrskills_spec.md 3.15): carry one object from area to
area in the prompt's order, and with `restore` back to the area it started on.

The object starts on area 0; the prompt names areas 1..k ("Put the red cube on the blue cube then
on the green hexagon"). Areas are flat 18 x 18 x 1 cm tiles, kinematic (the source builds areas
static). Prompt 0 shows the areas as key-step images ("Follow the motion for the red cube:
{ks:keystep_1} ..."); image prompts are not supported here, so evaluation uses prompt 1, as the
LLaVA converter does (it drops every prompt with a key-step).

Our defaults are the benchmark's `follow_order` (`num_areas=4, num_predicates=4`; the source's
constructor has 2 and 2); `follow_order_restore` is `num_areas=2, num_predicates=2, restore=True`.
"""

from __future__ import annotations

import sapien

from c2a_jax.sim import predicates as P
from c2a_jax.sim.solvers.base import ref
from c2a_jax.sim.tasks.base import Task, obj, register_task, sample_int

AREA_SIZE = (0.18, 0.18, 0.01)
RESTORE_SUFFIX = " and then restore"


@register_task("FollowOrder")
class FollowOrder(Task):
    workspace = ((-0.40, -0.30), (0.05, 0.30))

    def __init__(self, env, rng, split="train", num_areas: int = 4, num_predicates: int = 4, restore: bool = False,
                 sample_num_actors: bool = True, **kw):  # fmt: skip
        super().__init__(env, rng, split, **kw)
        if num_areas < 2 or num_predicates > num_areas:
            raise ValueError(f"FollowOrder needs 2 <= num_areas and num_predicates <= num_areas, got "
                             f"{num_areas} and {num_predicates}")  # fmt: skip
        self.restore = bool(restore)
        self.num_areas = sample_int(rng, 2, num_areas, sample_num_actors)
        self.num_predicates = min(sample_int(rng, 1, num_predicates, sample_num_actors), self.num_areas - 1)

    def setup(self) -> None:
        colours = self.factory.get_random_base_textures(self.num_areas)
        areas = [
            self.add_object(c, self.factory.get_random_area_object(c), size=AREA_SIZE, static=True) for c in colours
        ]
        for a in areas:
            self.place_randomly(a, grow=0.01)
        self.rng.shuffle(areas)
        self.areas = areas
        colour = self.factory.get_random_top_textures(1)[0]
        self.actor = self.add_object(colour, self.factory.get_random_top_object(colour))
        start = self.placed[areas[0].id][1]
        z = float(start.p[2]) + AREA_SIZE[2] + self.actor.spec.half_height  # place_actor_on_area: 5 mm above
        self.place(self.actor, sapien.Pose([start.p[0], start.p[1], z], start.q))
        steps = []
        for k in range(1, 1 + self.num_predicates):
            steps.append(self._visit(areas[k], image=k))
        if self.restore:
            steps.append(self._visit(areas[0]))
        self.steps = steps
        self.predicate = P.Order("follow", steps)
        self.max_reward = self.predicate.max_reward

    def _visit(self, area, image: int | None = None) -> P.Inside2d:
        """The actor on `area`; the trace names the area as the target (the "on_top" function)."""
        leaf = P.Inside2d(self.env, self.actor, area)
        leaf.action_state_extra = {"target_pose_function": "on_top", "target_actor": ref(area)}
        if image is not None:
            leaf.action_state_extra["target_image"] = "{ks:keystep_" + str(image) + "}"
        return leaf

    def task_actors(self):
        return [self.actor, *self.areas]

    def prompts(self) -> list[str]:
        suffix = RESTORE_SUFFIX if self.restore else ""
        visited = self.areas[1 : 1 + self.num_predicates]
        images = " ".join("{ks:keystep_" + str(k) + "}" for k in range(1, 1 + self.num_predicates))
        return [
            "Follow the motion for " + obj(self.actor) + ": " + images + suffix,
            "Put " + obj(self.actor) + " on " + " then on ".join(obj(a) for a in visited) + suffix,
        ]
