"""Issue 9's BalanceScale and SortStack (clevrskills_spec.md 3.15, 4.7, 4.12): each builds and its
oracle solves a fixed seed with the level-1 code the spec gives; the predicates fail on an
unbalanced / unsorted scene; the executor runs `balance_scale(...)`. Physics only (no images).
"""

import re

import numpy as np
import pytest
import sapien

from c2a_jax.codeapi import parse
from c2a_jax.sim import predicates as P
from c2a_jax.sim.executor import Executor
from c2a_jax.sim.rollout import record_oracle_episode
from c2a_jax.sim.tasks.balance_scale import MAX_TOWER_HEIGHT, MIN_BLOCK_HEIGHT, sample_block_heights
from tests.test_sim_tasks_l1 import keysteps, make

PMP = "pick_move3d_place(actor=get_actor('{}'), target_actor=get_actor('{}'))"
GRID_CELL = re.compile(r", actor_pos=\(\d+, \d+\)")  # grid_refs.py's cell on a same-named actor
HOLD = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)


def solve(env, seed, max_steps=1000):
    meta = record_oracle_episode(env, seed=seed, max_steps=max_steps, images=False)["meta"]
    assert meta["success"], (meta["natural_prompts"][0], keysteps(meta))
    for lab in meta["labels"]:  # every label is valid code at its level
        parse(lab["level1"], "level1")
        parse(lab["fine"], "fine")
    return meta


def settle(env, steps=15):
    for _ in range(steps):
        env.step(HOLD)


@pytest.fixture(scope="module")
def balance():
    env = make("BalanceScale")
    yield env
    env.close()


def test_block_heights_make_two_towers_of_equal_height():
    rng = np.random.RandomState(3)
    for n in (2, 3, 4):
        heights, k1 = sample_block_heights(rng, n)
        assert len(heights) == n and 1 <= k1 <= n - k1
        assert np.isclose(heights[:k1].sum(), heights[k1:].sum())
        assert heights[:k1].sum() <= MAX_TOWER_HEIGHT + 1e-9 and heights.min() >= MIN_BLOCK_HEIGHT - 1e-9


def test_balance_scale_oracle_balances_the_blocks(balance):
    env = balance
    meta = solve(env, 0)
    task = env.task
    names = ", ".join(f"(get_actor('{o.name}'))" for o in task.blocks)
    assert keysteps(meta) == [f"balance_scale([{names}])", "done()"]
    assert meta["natural_prompts"] == [
        f"Place all the {task.colour} {task.primitive}s on the scale while keeping it in balance"
    ]
    fine = keysteps(meta, "fine")
    assert any("target_actor=get_actor('plate1')" in c for c in fine) and fine[-1] == "done()"
    e = task.evaluate()
    assert e["scale_balanced"] and not e["unplaced"] and not e["incorrect"]
    assert len(e["stack1"]) + len(e["stack2"]) == len(task.blocks)


def test_balance_predicate_fails_on_an_unbalanced_scale(balance):
    env = balance
    env.reset(seed=0)
    task = env.task
    assert not task.evaluate()["success"]  # nothing on the scale yet
    block, plate = task.blocks[0], task.plate1
    p = plate.pose().p
    block.set_pose(sapien.Pose([p[0], p[1], p[2] + 0.012 + block.spec.size[2] / 2]))
    settle(env, 40)
    e = task.evaluate()
    assert e["stack1"] == [block.name] and not e["success"]
    assert not e["scale_balanced"]  # one block alone tips the beam to its limit
    assert abs(float(task.scale_px.get_qpos()[0])) > np.deg2rad(19)


def test_executor_runs_balance_scale(balance):
    env = balance
    env.reset(seed=0)
    executor = Executor(env)
    executor.reset()
    names = ", ".join(f"(get_actor('{o.name}'))" for o in env.task.blocks)  # one name, distinct blocks
    result = executor.execute(f"balance_scale([{names}])", max_steps=600)
    assert result.ok and result.kind == "action" and result.function == "balance_scale", result
    assert executor.success_seen and bool(env.task.evaluate()["success"])
    too_many = executor.execute(f"balance_scale([{names}, {names}])")
    assert not too_many.ok and "more" in too_many.error


SORT_SEED = 5


def test_sort_stack_oracle_stacks_each_colour():
    env = make("SortStack")
    try:
        meta = solve(env, SORT_SEED)
        task = env.task
        expected = [PMP.format(g[i + 1].name, g[i].name) for g in task.groups for i in range(len(g) - 1)]
        lines = keysteps(meta)
        assert [GRID_CELL.sub("", c) for c in lines] == [*expected, "done()"]
        names = [o.name for g in task.groups for o in g]
        for name, cell in re.findall(r"get_actor\('([^']+)'(, actor_pos=\(\d+, \d+\))?\)", " ".join(lines)):
            assert bool(cell) == (names.count(name) > 1), name  # a name two objects share gets its cell
        assert meta["natural_prompts"] == [
            "Stack identically textured objects",
            "Place identically textured objects on top of each other",
        ]
        for group in task.groups:  # one colour per stack, every object of that colour in it
            assert len({o.spec.colour for o in group}) == 1
            assert P.StackPredicate(env, group).success()
        assert sum(len(g) for g in task.groups) == task.num_actors > task.num_areas
    finally:
        env.close()


def test_stack_predicate_needs_one_stack_of_all_in_any_order():
    env = make("SortStack")
    try:
        env.reset(seed=SORT_SEED)
        group = max(env.task.groups, key=len)
        pred = P.StackPredicate(env, group)
        settle(env, 2)
        assert not pred.success() and not env.task.evaluate()["success"]  # unsorted: spread on the table
        x, y = -0.1, 0.0
        z = 0.0
        for o in reversed(group):  # one stack, in the reverse of the oracle's order
            h = o.spec.size[2]
            o.set_pose(sapien.Pose([x, y, z + h / 2 + 0.001]))
            o.set_velocity()
            z += h + 0.002
        settle(env, 30)
        assert pred.success() and pred.evaluate()["success"]
        top = group[0]
        top.set_pose(sapien.Pose([0.0, -0.2, top.spec.size[2] / 2 + 0.001]))  # off the stack, onto the table
        settle(env, 30)
        assert not pred.success()
    finally:
        env.close()


def test_executor_replays_sort_stack_with_repeated_names():
    """The oracle's level-1 lines name two objects alike ("stack the blue cube on the blue cube"):
    the executor takes them as two objects and the replay solves the task."""
    env = make("SortStack")
    try:
        meta = solve(env, SORT_SEED)
        lines = keysteps(meta)
        bare = [GRID_CELL.sub("", c) for c in lines[:-1]]
        assert any(c.count(c[c.index("get_actor(") : c.index(")") + 1]) == 2 for c in bare)  # a repeated name
        env.reset(seed=SORT_SEED)
        executor = Executor(env)
        executor.reset()
        for line in lines:
            result = executor.execute(line, max_steps=500)
            assert result.ok, (line, result.error)
            if executor.success_seen:
                break
        assert executor.success_seen and bool(env.task.evaluate()["success"])
    finally:
        env.close()
