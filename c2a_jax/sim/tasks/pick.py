"""Pick (clevrskills_spec.md 3.1): lift one of one or two objects."""

from __future__ import annotations

from c2a_jax.sim import predicates as P
from c2a_jax.sim.tasks.base import Task, obj, register_task, sample_int, tex


@register_task("Pick")
class Pick(Task):
    workspace = ((-0.35, -0.30), (0.10, 0.30))
    max_reward = 4.0

    def __init__(self, env, rng, split="train", num_actors: int = 2, sample_num_actors: bool = True, **kw):
        super().__init__(env, rng, split, **kw)
        self.num_actors = sample_int(rng, 1, num_actors, sample_num_actors)

    def setup(self) -> None:
        colours = self.factory.get_random_top_textures(self.num_actors)
        shapes = [self.factory.get_random_top_object(c) for c in colours]
        for colour, shape in zip(colours, shapes, strict=True):
            self.add_object(colour, shape)
        for o in self.objects:
            self.place_randomly(o, offset=0.01)
        self.actor = self.objects[0]
        self.predicate = P.PickPredicate(self.env, self.actor, clear_distance=0.02)

    def prompts(self) -> list[str]:
        p = self.actor
        return (
            [f"{verb} the {p.name}" for verb in ("Pick up", "Grab", "Lift")]
            + [f"{verb} the " + obj(p) for verb in ("Pick up", "Grab", "Lift")]
            + [f"{verb} the object with " + tex(p) + " texture" for verb in ("Pick up", "Grab", "Lift")]
        )
