"""Object-name substitution: one episode's object names swapped consistently in its text.

Why: a small code-writing VLM trained on a few dozen scenes learns shortcuts where it should copy
names. Measured on the demo's data (README, "Results"): VLM+Oracle's failures are almost all wrong
names, the shape of the first Topple target carried over to the second ('yellow hexagon' for "the
yellow cube" after 'white hexagon'), or pairs remembered from training. Renaming every object of
an example the same way in the prompt, the memory and the answer (the image is left as it is)
makes the names in the answer predictable only from the prompt, which is what the model must
learn. It is not in the paper; it is off unless ``data.rename_objects_fraction`` > 0.

Only names from the pool are renamed, and only to other pool names, so made-up nouns ("dax") and
textured names are left alone. The default pool (`train_pool`) is the train split's colour-shape
pairs: the held-out test pairs never appear in training text. The substitution is simultaneous
(one regular expression over whole names), so "red cube" -> "blue cube" and "blue cube" -> "red
cube" in one example swap instead of collapsing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

import numpy as np


def rename_map(names: Sequence[str], pool: Sequence[str], rng: np.random.Generator) -> dict[str, str]:
    """An injective map of the pool names among `names` to pool names, drawn uniformly; names that
    are not in the pool are not renamed (and, not being pool names, are never a new name)."""
    choices = sorted(set(pool))
    renamed = sorted(set(names) & set(choices))
    drawn = rng.choice(len(choices), size=len(renamed), replace=False)
    return {old: choices[int(i)] for old, i in zip(renamed, drawn, strict=True)}


def substitute(text: str, mapping: Mapping[str, str]) -> str:
    """`text` with every whole occurrence of a key of `mapping` replaced by its value, at once."""
    if not mapping or not text:
        return text
    keys = sorted(mapping, key=len, reverse=True)  # "red cube" before a shorter name inside it
    pattern = re.compile(r"(?<![\w])(" + "|".join(re.escape(k) for k in keys) + r")(?![\w])")
    return pattern.sub(lambda m: mapping[m.group(1)], text)


@functools.cache
def train_pool() -> tuple[str, ...]:
    """The names of the train split's colour-shape pairs (`c2a_jax.sim.objects.SPLIT_PAIRS`)."""
    from c2a_jax.sim.objects import SPLIT_PAIRS, object_name

    return tuple(sorted(object_name(colour, shape) for colour, shape in SPLIT_PAIRS["train"]))
