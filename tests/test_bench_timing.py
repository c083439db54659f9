"""bench/timing.py: blocks alternate, the switch-over call of each block is not timed, and the
medians are those of the timed calls only (a fake clock makes the times exact)."""

import pytest

from bench import timing


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    return now


def _callable(name, clock, calls, slow_first=100.0):
    """A call advances the fake clock by 1 s (A) or 2 s (B), and by `slow_first` more when the
    previous call was the other side's (what a still-spinning peer thread pool costs)."""

    def fn():
        cost = {"a": 1.0, "b": 2.0}[name]
        if calls and calls[-1] != name:
            cost += slow_first
        calls.append(name)
        clock[0] += cost

    return fn


@pytest.mark.parametrize("steps,block", [(7, 3), (5, 5), (1, 4), (10, 1)])
def test_blocks_alternate_and_the_switch_over_call_is_untimed(clock, steps, block):
    calls = []
    a, b = _callable("a", clock, calls), _callable("b", clock, calls)
    t_a, t_b = timing.block_medians(a, b, steps, block, warmup=0)
    assert (t_a, t_b) == (1.0, 2.0)  # the +100 s switch-over calls never reach a median
    # runs of one side: 1 untimed + at most `block` timed, A and B in turn, `steps` timed each
    runs = []
    for name in calls:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    assert [r[0] for r in runs] == ["a", "b"] * (len(runs) // 2)
    assert all(2 <= n <= block + 1 for _, n in runs)
    assert sum(n - 1 for name, n in runs if name == "a") == steps
    assert sum(n - 1 for name, n in runs if name == "b") == steps


def test_warm_up_calls_come_first_and_are_untimed(clock):
    """Compilation: each side's first calls cost 1000 s; none of that reaches the medians."""
    calls = []
    a, b = _callable("a", clock, calls), _callable("b", clock, calls)

    def compiling(fn, name):
        def call():
            if calls.count(name) < 2:
                clock[0] += 1000.0
            fn()

        return call

    t_a, t_b = timing.block_medians(compiling(a, "a"), compiling(b, "b"), steps=6, block=3, warmup=2)
    assert (t_a, t_b) == (1.0, 2.0)
    assert calls[:4] == ["a", "a", "b", "b"]
    assert calls.count("a") == calls.count("b") == 2 + 2 * (1 + 3)  # warm-up, then 2 blocks


@pytest.mark.parametrize("steps,block,warmup", [(0, 5, 1), (3, 0, 1), (-1, 1, 1), (3, 3, -1)])
def test_bad_arguments_are_refused(steps, block, warmup):
    with pytest.raises(ValueError, match="must be >= 1"):
        timing.block_medians(lambda: None, lambda: None, steps, block, warmup)
