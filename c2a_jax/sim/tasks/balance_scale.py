"""BalanceScale (clevrskills_spec.md 3.15 row `balance`): put every block on the scale so that it
balances.

As the source: N blocks (N drawn in [2, num_actors]; the benchmark's 4) of one colour and one
primitive (cube or cylinder), 10 x 10 cm, density 300, whose heights are whole numbers of a drawn
slice height (0.5-1.5 cm; blocks 2.1-8 cm tall); they are drawn as two towers of equal height (so
equal mass), k blocks for plate 1 and N - k for plate 2, redrawn until the totals match. The
scale (`c2a_jax.sim.scale`) pivots at (-0.05, 0, 0.7) with plates at y = -+0.25, z = 0.1.

Deviations for the Panda (documented): the blocks' workspace is x in [-0.35, -0.18] (the source's
[-0.5, -0.25] with the xArm6 9 cm nearer), and the disc kept free around the base while placing
them is 0.30 m in radius (the source's temporary cylinder: 0.2375): the Panda, folded, does not
reach down to a low block (2-3 cm) much nearer its base. (Moving the blocks further out, to x in
[-0.30, -0.12], made the oracle fail more often, not less.)
The colour is a top-role colour drawn from the split's pool; the primitive is drawn regardless of
the split, as in the source.
"""

from __future__ import annotations

import numpy as np

from c2a_jax.sim import predicates as P
from c2a_jax.sim.scale import build_scale, level
from c2a_jax.sim.tasks.base import Task, register_task, sample_int

MIN_BLOCK_HEIGHT, MAX_BLOCK_HEIGHT, MAX_TOWER_HEIGHT = 0.021, 0.08, 0.15
BLOCK_FOOTPRINT, BLOCK_DENSITY = 0.1, 300.0


def tower_slices(rng: np.random.RandomState, blocks: int, lo: int, hi: int, total: int) -> np.ndarray:
    """Slices per block: start at `lo` each, add one to a random block below `hi` until `total`."""
    n = np.full(blocks, lo)
    while n.sum() < total:
        n[rng.choice(np.where(n < hi)[0])] += 1
    return n


def sample_block_heights(rng: np.random.RandomState, num_actors: int) -> tuple[np.ndarray, int]:
    """(heights of the plate-1 blocks then the plate-2 blocks, number for plate 1), the source's draw."""
    while True:
        k1 = 1 + (rng.randint(num_actors - 2) if num_actors > 2 else 0)
        k1, k2 = sorted((k1, num_actors - k1))
        slice_height = rng.uniform(low=0.005, high=0.015)
        lo = int(np.ceil(MIN_BLOCK_HEIGHT / slice_height))
        hi = int(np.trunc(MAX_BLOCK_HEIGHT / slice_height))
        total = min(int(np.trunc(MAX_TOWER_HEIGHT / slice_height)), k1 * hi)
        n1, n2 = tower_slices(rng, k1, lo, hi, total), tower_slices(rng, k2, lo, hi, total)
        if n1.sum() == n2.sum():
            return slice_height * np.concatenate([n1, n2]), k1


@register_task("BalanceScale")
class BalanceScale(Task):
    pools = "BalanceScale"
    workspace = ((-0.35, -0.30), (-0.18, 0.30))
    base_keepout = 0.30

    def __init__(self, env, rng, split="train", num_actors: int = 4, sample_num_actors: bool = True, **kw):
        super().__init__(env, rng, split, **kw)
        self.num_actors = sample_int(rng, 2, num_actors, sample_num_actors)

    def setup(self) -> None:
        self.primitive = str(self.rng.choice(["cube", "cylinder"]))
        heights, self.plate1_blocks = sample_block_heights(self.rng, self.num_actors)
        self.colour = self.factory.get_random_top_textures(1)[0]
        self.blocks = []
        for h in heights:
            o = self.add_object(self.colour, self.primitive, size=(BLOCK_FOOTPRINT, BLOCK_FOOTPRINT, float(h)),
                                density=BLOCK_DENSITY)  # fmt: skip
            self.place_randomly(o, offset=0.01)
            self.blocks.append(o)
        self.scale, self.scale_px, self.plate1, self.plate2 = build_scale(self.env.scene)
        self.objects += [self.plate1, self.plate2]  # obstacles for planning and set-aside placement
        self.predicate = P.BalanceScale(self.env, self.scale_px, self.plate1, self.plate2, self.blocks)
        self.max_reward = self.predicate.max_reward

    def initialize(self) -> None:
        level(self.scale_px)

    def task_actors(self):
        return list(self.blocks)

    def code_actors(self):
        """What code may name: the blocks and the two plates (fine labels place onto a plate)."""
        return [*self.blocks, self.plate1, self.plate2]

    def prompts(self) -> list[str]:
        return [f"Place all the {self.colour} {self.primitive}s on the scale while keeping it in balance"]

    def solver_for(self, leaf):
        from c2a_jax.sim.solvers.balance import BalanceScaleSolver

        return BalanceScaleSolver(self.env, leaf) if isinstance(leaf, P.BalanceScale) else None
