"""A stand-in code writer that replays the oracle's own key-step lines.

Why: the VLM+Oracle loop (`c2a_jax.eval.vlm_oracle`) must be checked without a trained VLM. Fed the
key-steps the oracle itself labelled on the same seed (`record_oracle_episode`'s labels), a perfect
writer should do what the oracle did, so its success is the ceiling the mode can reach, and any
gap is the executor's or the loop's. Imports no JAX: usable beside the simulator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from c2a_jax.codeapi.registry import LEVELS

DONE = "done()"


def oracle_keysteps(meta: dict[str, Any], level: str = "level1") -> list[str]:
    """The key-step lines of a recorded oracle episode at `level`, in order (its final ``done()``
    included when the oracle succeeded)."""
    if level not in LEVELS:
        raise ValueError(f"unknown code level {level!r}; expected one of {LEVELS}")
    return [lab[level] for lab in meta["labels"] if lab is not None and lab[f"{level}_keystep"]]


class ReplayCodeWriter:
    """Answers the i-th query with the i-th line, then ``done()`` forever.

    The call signature is the code writer's, ``(image, prompt, memory, keystep_request=True)``; the
    arguments are ignored. One instance serves one episode (`reset()` rewinds it); `queries` counts
    the answers given. `from_episode` takes the lines from an oracle episode's metadata.
    """

    def __init__(self, lines: Sequence[str]):
        self.lines = [str(line) for line in lines]
        self.queries = 0

    @classmethod
    def from_episode(cls, meta: dict[str, Any], level: str = "level1") -> ReplayCodeWriter:
        return cls(oracle_keysteps(meta, level))

    def reset(self) -> None:
        self.queries = 0

    def __call__(self, image: np.ndarray, prompt: str, memory: Sequence[str], keystep_request: bool = True) -> str:
        line = self.lines[self.queries] if self.queries < len(self.lines) else DONE
        self.queries += 1
        return line

    generate_code = __call__
