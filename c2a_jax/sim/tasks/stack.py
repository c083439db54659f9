"""SingleStack, ReverseStack and StackTopple (clevrskills_spec.md 3.6, 3.7, 3.9): stack every
object into one tower in the prompt's order (or its reverse), and optionally topple it afterwards.

ClevrSkills has one class (`SingleStackTask` with `reverse` and `topple`); the benchmark runs it with
`num_actors=4`, which is our default (the source's constructor default is 2). `ReverseStack` and
`StackTopple` are registry names for the reversed and toppled forms.

`objects` scripts the scene: a list of (colour, shape) pairs used instead of the random draw (and
the number of actors), e.g. to reproduce the spec's worked examples.
"""

from __future__ import annotations

from c2a_jax.sim import predicates as P
from c2a_jax.sim.tasks.base import Task, obj, register_task, sample_int, tex

TOPPLE_SUFFIX = " and then topple the stack"


@register_task("SingleStack")
class SingleStack(Task):
    pools = "SingleStack"
    workspace = ((-0.35, -0.30), (0.10, 0.30))

    def __init__(self, env, rng, split="train", num_actors: int = 4, sample_num_actors: bool = True,
                 reverse: bool = False, topple: bool = False, objects=None, **kw):  # fmt: skip
        super().__init__(env, rng, split, **kw)
        if num_actors < 2:
            raise ValueError(f"a stack needs at least 2 actors, got num_actors={num_actors}")
        self.reverse, self.topple = bool(reverse), bool(topple)
        self.scripted = [tuple(o) for o in objects] if objects is not None else None
        if self.scripted is not None and len(self.scripted) < 2:
            raise ValueError("a scripted stack needs at least 2 objects")
        self.num_actors = len(self.scripted) if self.scripted else sample_int(rng, 2, num_actors, sample_num_actors)

    def setup(self) -> None:
        if self.scripted:
            pairs = self.scripted
        else:
            colours = self.factory.get_random_top_textures(self.num_actors)
            pairs = [(c, None) for c in colours]
        self.actors = []
        for colour, shape in pairs:  # spec 3.6: an area object per colour, dynamic, placed right away
            o = self.add_object(colour, shape or self.factory.get_random_area_object(colour))
            self.place_randomly(o, grow=0.02)
            self.actors.append(o)
        a = self.actors
        if self.reverse:  # the last listed actor is the bottom, the first ends on top
            pairs_on_top = [(a[i - 1], a[i]) for i in range(len(a) - 1, 0, -1)]
        else:
            pairs_on_top = [(a[i + 1], a[i]) for i in range(len(a) - 1)]
        self.stack = P.Sequence("Stack the objects", [P.OnTop(self.env, t, b) for t, b in pairs_on_top])
        self.predicate = self.stack
        if self.topple:
            self.toppled = P.ToppleStructurePredicate(self.env, a, name="topple stack")
            self.predicate = P.Sequence(
                "First build the stack, and then topple it", [P.Once("Build the stack", self.stack), self.toppled]
            )
        self.max_reward = self.predicate.max_reward

    def task_actors(self):
        return list(self.actors)

    def _stack_prompt(self) -> str:
        """Prompt 0 of the forward stack (the source's `_get_prompt`): "Stack B on A, C on B, and D on C"."""
        a, n = self.actors, len(self.actors)
        pieces = []
        for i in range(n - 1):
            piece = obj(a[i + 1]) + " on " + obj(a[i])
            pieces.append(("and " if i == n - 2 and i > 0 else "") + piece)
        text = "Stack " + ", ".join(pieces)
        return text + TOPPLE_SUFFIX if self.topple else text

    def prompts(self) -> list[str]:
        a, n = self.actors, len(self.actors)
        if self.reverse:
            prompts = [
                "Stack " + ", ".join(" " + obj(o) for o in a) + " in the reversed order",
                "Stack " + ", ".join(" object with " + tex(o) + " texture" for o in a) + " in the reversed order",
            ]
        else:
            prompts = [
                self._stack_prompt(),
                "Stack " + ",".join(" " + obj(a[i + 1]) + " on " + obj(a[i]) for i in range(n - 1)),
                "Stack "
                + ",".join(
                    " object with " + tex(a[i + 1]) + " texture on object with " + tex(a[i]) + "  texture"
                    for i in range(n - 1)
                ),
                "Stack objects as in {ks:keystep_" + str(n - 1) + "}",
                "Stack objects in this order " + " ".join("{ks:keystep_" + str(i) + "}" for i in range(n)),
            ]
        if self.topple:  # prompt 0 of the forward form gets the suffix twice, as in the source
            prompts = [p + TOPPLE_SUFFIX for p in prompts]
        return prompts


@register_task("ReverseStack")
class ReverseStack(SingleStack):
    """`SingleStack` with `reverse=True` (ClevrSkills' `stack_reversed`)."""

    def __init__(self, env, rng, split="train", reverse: bool = True, **kw):
        super().__init__(env, rng, split, reverse=reverse, **kw)


@register_task("StackTopple")
class StackTopple(SingleStack):
    """`SingleStack` with `topple=True` (ClevrSkills' `stack_topple`)."""

    def __init__(self, env, rng, split="train", topple: bool = True, **kw):
        super().__init__(env, rng, split, topple=topple, **kw)
