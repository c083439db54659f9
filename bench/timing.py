"""Timing two step functions against each other in one process, fairly.

Both sides run in alternating blocks (A x block, B x block, A x block, ...) so that load from
elsewhere on a shared machine falls on both alike, and the first call of every block is run
untimed: it pays for the other framework's thread pool still winding down. Timing A, B, A, B
one call at a time measured that instead of the step: PyTorch's OpenMP workers (libgomp) spin
for a while after each parallel region, and on 2 cores our next XLA step ran beside them --
the tiny LLaVA train step took 90-104 ms timed so and 82 ms in blocks on the same machine, in
the same process (with ``OMP_WAIT_POLICY=passive`` the gap closed and PyTorch's own step
slowed by 15%); XLA's Eigen workers spin likewise after our step.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def block_medians(
    fn_a: Callable[[], object], fn_b: Callable[[], object], steps: int, block: int = 5, warmup: int = 3
) -> tuple[float, float]:
    """Median seconds per call of `fn_a` and `fn_b` over `steps` timed calls each, timed in
    alternating blocks of at most `block` calls, each block after one untimed call; first
    `warmup` untimed calls of each (compilation, first-touch allocation)."""
    if steps < 1 or block < 1 or warmup < 0:
        raise ValueError(f"steps and block must be >= 1 and warmup >= 0, got {steps=}, {block=}, {warmup=}")
    for fn in (fn_a, fn_b):
        for _ in range(warmup):
            fn()
    times: tuple[list[float], list[float]] = ([], [])
    while len(times[1]) < steps:
        n = min(block, steps - len(times[0]))
        for fn, out in zip((fn_a, fn_b), times, strict=True):
            fn()  # the switch-over call: untimed
            for _ in range(n):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])
