"""Touch, and its Push and Topple forms (clevrskills_spec.md 3.4, 3.5, 3.13)."""

from __future__ import annotations

from c2a_jax.sim import predicates as P
from c2a_jax.sim.tasks.base import Task, obj, register_task, sample_int


@register_task("Touch")
class Touch(Task):
    workspace = ((-0.35, -0.30), (0.00, 0.30))
    max_reward = 3.0

    def __init__(self, env, rng, split="train", num_actors: int = 2, push: bool = False, topple: bool = False,
                 sample_num_actors: bool = True, **kw):  # fmt: skip
        super().__init__(env, rng, split, **kw)
        self.push, self.topple = bool(push), bool(topple)
        self.num_actors = sample_int(rng, 1, num_actors, sample_num_actors)
        self.size = (0.05, 0.05, 0.2) if self.topple else (0.1, 0.1, 0.05)

    def setup(self) -> None:
        for colour in self.factory.get_random_top_textures(self.num_actors):
            o = self.add_object(colour, self.factory.get_random_top_object(colour), size=self.size)
            self.place_randomly(o, grow=0.02)
        self.predicate = P.Set("Touch", [P.TouchPredicate(self.env, o, self.push, self.topple) for o in self.objects])
        self.max_reward = self.predicate.max_reward

    def after_settle(self) -> None:
        for leaf in self.predicate.children:
            leaf.reset()
        self.predicate.evaluate()  # captures the initial poses after settling

    def prompts(self) -> list[str]:
        extra = " and topple" if self.topple else " and push" if self.push else ""
        return ["Touch" + extra + ",".join(" " + obj(o) for o in self.objects)]
