"""SortStack ("Stack sorted_by_texture", clevrskills_spec.md 3.15 row `sort_stack`, 4.7): stack
the identically coloured objects, one stack per colour.

As the source (a `Sort2d` without its areas): the number of colours `num_areas` is drawn in
[1, num_areas], the number of objects in [num_areas + 1, num_actors] (the Sort2d constructor's draw
of the object count comes first and is discarded), each object takes a randomly chosen colour of
the base role and a shape of the area pool, and is placed in Sort2d's workspace with 2 cm
clearance, here also out of the Panda's dead zone around its base (`base_keepout`, a documented
deviation). The goal is a `Set` of one `StackPredicate` per colour present; the oracle stacks each
colour's objects in list order (`pick_move3d_place(actor=<next>, target_actor=<previous>)`).
"""

from __future__ import annotations

from c2a_jax.sim import predicates as P
from c2a_jax.sim.tasks.base import Task, register_task, sample_int


@register_task("SortStack")
class SortStack(Task):
    pools = "SortStack"
    workspace = ((-0.40, -0.30), (0.05, 0.30))
    base_keepout = 0.28  # our deviation: every object is picked or stacked on, so none within the Panda's
    # dead zone (~0.3 m of its base; the source's xArm6 stands 9 cm nearer the workspace)

    def __init__(self, env, rng, split="train", num_actors: int = 6, num_areas: int = 3,
                 sample_num_actors: bool = True, **kw):  # fmt: skip
        super().__init__(env, rng, split, **kw)
        if num_actors < num_areas:
            raise ValueError(f"SortStack needs num_actors >= num_areas, got {num_actors} < {num_areas}")
        sample_int(rng, 1, num_actors, sample_num_actors)  # the Sort2d constructor's draw, unused
        self.num_areas = sample_int(rng, 1, num_areas, sample_num_actors)
        self.num_actors = sample_int(rng, self.num_areas + 1, num_actors, sample_num_actors)

    def setup(self) -> None:
        colours = self.factory.get_random_base_textures(self.num_areas)
        match = [int(self.rng.choice(range(self.num_areas))) for _ in range(self.num_actors)]
        self.actors = []
        for k in match:
            o = self.add_object(colours[k], self.factory.get_random_area_object(colours[k]))
            self.place_randomly(o, grow=0.02)
            self.actors.append(o)
        groups: dict[int, list] = {}
        for k, o in zip(match, self.actors, strict=True):
            groups.setdefault(k, []).append(o)
        self.groups = list(groups.values())  # in order of first appearance, as the source's dict
        # one name per stack: `Set` keys its children's results by name (the source names all "stack")
        stacks = [P.StackPredicate(self.env, g, name=f"stack {g[0].spec.colour}") for g in self.groups]
        self.predicate = P.Set("sort_stack", stacks)
        self.max_reward = self.predicate.max_reward

    def task_actors(self):
        return list(self.actors)

    def prompts(self) -> list[str]:
        return ["Stack identically textured objects", "Place identically textured objects on top of each other"]
