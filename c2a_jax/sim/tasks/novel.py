"""NovelNoun (clevrskills_spec.md 3.10): PlaceOnTop where the prompt names the object and the area
by made-up nouns, introduced through untextured reference copies: " the cube is dax and the
hexagon is blicket. Put dax on blicket".

Every actor and area has an untextured copy (the bare shape name, grey) that exists only for the
prompt: it is parked far below the table (kinematic, out of every camera's view, and outside what
placement, planning and the executor consider, which all ignore objects below z = -1), where the
source parks it 1 km above. Shapes are drawn through the object factory per colour, so that the
split's held-out (colour, shape) pairs stay out; as in the source (whose pool lists repeat the
primitives), shapes may repeat, so a prompt's shape can fit more than one object.

Our defaults are the benchmark's (`num_actors=3, num_areas=3`; the source's constructor has
`num_areas=4`).
"""

from __future__ import annotations

import sapien

from c2a_jax.sim import predicates as P
from c2a_jax.sim.tasks.base import obj, register_task
from c2a_jax.sim.tasks.place import PlaceOnTop

NOUNS = ("dax", "blicket", "wug", "zup")
PARKED_Z = -1000.0


@register_task("NovelNoun")
class NovelNoun(PlaceOnTop):
    pools = "NovelNoun"

    def __init__(self, env, rng, split="train", num_actors: int = 3, num_areas: int = 3,
                 sample_num_actors: bool = True, **kw):  # fmt: skip
        super().__init__(env, rng, split, num_actors=num_actors, num_areas=num_areas, spawn_at_gripper=False,
                         sample_num_actors=sample_num_actors, **kw)  # fmt: skip

    def _with_copies(self, colours, draw):
        """(textured, untextured) objects, one pair per colour, sharing a drawn shape."""
        shapes = [draw(c) for c in colours]
        bare = [self.add_object(None, s, static=True) for s in shapes]
        textured = [self.add_object(c, s) for c, s in zip(colours, shapes, strict=True)]
        return textured, bare

    def setup(self) -> None:
        f = self.factory
        self.areas, self.areas_bare = self._with_copies(f.get_random_base_textures(self.num_areas),
                                                        f.get_random_base_object)  # fmt: skip
        for a in self.areas:
            self.place_randomly(a)
        self.actors, self.actors_bare = self._with_copies(f.get_random_top_textures(self.num_actors),
                                                          f.get_random_top_object)  # fmt: skip
        for a in self.actors:
            self.place_randomly(a)
        for k, o in enumerate(self.areas_bare + self.actors_bare):  # out of the scene
            self.place(o, sapien.Pose([0.5 * k, 0.0, PARKED_Z]))
        i = int(self.rng.choice(self.num_actors, size=1)[0])
        j = int(self.rng.choice(self.num_areas, size=1)[0])
        self.actor, self.actor_bare = self.actors[i], self.actors_bare[i]
        self.area, self.area_bare = self.areas[j], self.areas_bare[j]
        self.actor_noun, self.area_noun = (str(n) for n in self.rng.choice(NOUNS, replace=False, size=2))
        self.predicate = P.Inside2d(self.env, self.actor, self.area)

    def task_actors(self):
        """Spec 3.10's order: textured actors, textured areas, untextured actors, untextured areas."""
        return self.actors + self.areas + self.actors_bare + self.areas_bare

    def prompts(self) -> list[str]:
        return [
            obj(self.actor_bare) + f" is {self.actor_noun} and " + obj(self.area_bare)
            + f" is {self.area_noun}. Put {self.actor_noun} on {self.area_noun}"
        ]  # fmt: skip
