"""NovelNoun (clevrskills_spec.md 3.10): PlaceOnTop where the prompt names the object and the area
by made-up nouns, introduced through untextured reference copies: " the cube is dax and the
hexagon is blicket. Put dax on blicket". NovelAdjective and NovelNounAdjective (spec 3.15) teach a
made-up comparative by size examples: " the red cube is daxer than the red cube. Put the daxer the
cube on the green hexagon".

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

from c2a_jax.sim import objects
from c2a_jax.sim import predicates as P
from c2a_jax.sim.tasks.base import obj, register_task
from c2a_jax.sim.tasks.place import PlaceOnTop

NOUNS = ("dax", "blicket", "wug", "zup")
ADJECTIVES = ("daxer", "blicker", "modier", "kobar")
SCALES = (0.3, 0.5, 0.75, 1.5)  # the scaled example's size relative to its twin
ACTOR_CLEARANCE = 0.04  # m between the footprints of the main object, its twin and the area
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


@register_task("NovelAdjective")
class NovelAdjective(PlaceOnTop):
    """Put "the daxer <shape>" on the one area, where "daxer" means "scaled by s" (one s per episode,
    from SCALES) and is shown by 1-3 example pairs (a scaled object "is daxer than" its normal-size
    twin, parked out of the scene). The scene holds the area, the scaled main object and its
    normal-size twin: same colour and shape, hence the same name, which only the size tells apart.

    As in the source: 1-3 example objects are drawn and one more (the main); one area; `sample_num_actors`
    and `variant` are ignored. The untextured copies (main object, area) exist for the prompt only.
    """

    pools = "NovelAdjective"
    nouns = False
    # Ours (Task.reach): start the object, its twin and the area where the Panda reaches down to an
    # x0.3 object's top (1.5 cm); the source's placement put a third of them out of its reach.
    reach = (0.36, 0.68)

    def __init__(self, env, rng, split="train", sample_num_actors: bool = True, variant: int = 0, **kw):
        super().__init__(env, rng, split, num_actors=3, num_areas=1, spawn_at_gripper=False, **kw)
        self.num_actors += 1  # 1-3 examples and then the main object

    def setup(self) -> None:
        f = self.factory
        colour = f.get_random_base_textures(1)[0]
        area_shape = f.get_random_base_object(colour)
        self.area_bare = self.add_object(None, area_shape, static=True)
        self.area = self.add_object(colour, area_shape)
        self.place_randomly(self.area)
        colours = f.get_random_top_textures(self.num_actors)
        shapes = [f.get_random_top_object(c) for c in colours]
        self.scale = float(self.rng.choice(SCALES))
        small = tuple(self.scale * v for v in objects.DEFAULT_SIZE)
        pairs = [(c, s) for c, s in zip(colours, shapes, strict=True)]
        # the examples exist for the prompt only: kinematic, like the untextured copies
        self.examples = [(self.add_object(c, s, size=small, static=True), self.add_object(c, s, static=True))
                         for c, s in pairs[:-1]]  # fmt: skip
        self.actor, self.twin = self.add_object(*pairs[-1], size=small), self.add_object(*pairs[-1])
        self.actor_bare = self.add_object(None, shapes[-1], static=True)
        # Ours: the main object and its twin keep ACTOR_CLEARANCE from everything placed, or the
        # vacuum head (6 x 7.4 cm) rests on the area or the twin above a small object's top
        for o in (self.actor, self.twin):
            self.place_randomly(o, grow=ACTOR_CLEARANCE)
        parked = [o for pair in self.examples for o in pair] + [self.actor_bare, self.area_bare]
        for k, o in enumerate(parked):  # out of the scene
            self.place(o, sapien.Pose([0.5 * k, 0.0, PARKED_Z]))
        self.adjective = str(self.rng.choice(ADJECTIVES, replace=False, size=1)[0])
        if self.nouns:
            self.actor_noun, self.area_noun = (str(n) for n in self.rng.choice(NOUNS, replace=False, size=2))
        self.areas, self.actors = [self.area], [self.actor, self.twin]
        self.predicate = P.Inside2d(self.env, self.actor, self.area)

    def task_actors(self):
        """The source's order: the main object, its twin, the area (the prompt-only copies are not task actors)."""
        return [self.actor, self.twin, self.area]

    def examples_text(self) -> str:
        return ", ".join(obj(a) + f" is {self.adjective} than " + obj(b) for a, b in self.examples)

    def prompts(self) -> list[str]:
        return [self.examples_text() + f". Put the {self.adjective} " + obj(self.actor_bare) + " on " + obj(self.area)]


@register_task("NovelNounAdjective")
class NovelNounAdjective(NovelAdjective):
    """NovelAdjective with the object and the area also named by made-up nouns: "This is a dax the
    cube. This is a blicket the hexagon. the red cube is daxer than the red cube. Put the daxer dax
    on blicket". The source takes the main object's twin as `_ex_actors_b[1]`, which is another
    example's twin once there are two or more examples (and that object is then parked); we take the
    main object's twin in every case, as NovelAdjective does."""

    pools = "NovelNounAdjective"
    nouns = True

    def prompts(self) -> list[str]:
        return [
            f"This is a {self.actor_noun} " + obj(self.actor_bare) + f". This is a {self.area_noun} "
            + obj(self.area_bare) + ". " + self.examples_text()
            + f". Put the {self.adjective} {self.actor_noun} on {self.area_noun}"
        ]  # fmt: skip
