"""The Throw family (issue 9): Throw at / to topple / onto, ThrowAndSort, `HitPredicate`, and the
executor's `hit` and `throw`. Each task builds and its oracle solves a fixed seed with the level-1
code of spec 3.14 / 3.15; the predicate latches a hit only while the thrown object is free, and
with `topple_target` needs the target fallen over. Physics only (no images).
"""

import numpy as np
import pytest
import sapien

from c2a_jax.sim import predicates as P
from c2a_jax.sim.executor import Executor
from tests.test_sim_tasks_l1 import make, solve

AT = {"spawn_at_gripper": True, "target_2d": False}


def hit(task, **extra) -> str:
    options = "".join(f", {k}=True" for k, v in extra.items() if v)
    return f"hit(get_actor('{task.actor.name}'), get_actor('{task.target.name}'){options})"


@pytest.mark.parametrize(
    "args,flags",
    [(AT, {}), ({**AT, "topple_target": True}, {"topple_target": True}), ({}, {"target_2d": True})],
    ids=["throw-at", "throw-to-topple", "throw-onto"],
)
def test_throw_oracle_hits_the_target(args, flags):
    task, meta, code, e = solve("Throw", 0, max_steps=300, **args)
    assert code == [hit(task, **flags), "done()"]
    assert e["target_hit"] and meta["labels"][-1]["level1"] == "done()"
    assert e["target_hit"] and not e["grasped"]
    if flags.get("topple_target"):
        assert e["target_toppled"]
        assert meta["natural_prompts"][0].endswith("falls over")
    if flags.get("target_2d"):
        assert task.target_2d and task.target.spec.static  # a static flat area
        assert meta["natural_prompts"][0].startswith("Throw the the ")  # the source's doubled article


def test_throw_and_sort_hits_every_matching_area():
    task, meta, code, _ = solve("ThrowAndSort", 2, max_steps=300, num_actors=4, num_areas=3)
    assert code == [f"hit(get_actor('{a.name}'), get_actor('{t.name}'))" for a, t in
                    zip(task.actors, task.targets, strict=True)] + ["done()"]  # fmt: skip
    for actor, area in zip(task.actors, task.targets, strict=True):
        assert actor.spec.colour == area.spec.colour
    assert meta["natural_prompts"][0] == "Place the objects in the identically textured areas by throwing"


def test_hit_latches_only_once_the_object_is_free():
    env = make("Throw", spawn_at_gripper=True, target_2d=True)
    try:
        env.reset(seed=1)
        task, pred = env.task, env.task.predicate
        assert env.agent.check_grasp(task.actor.body)
        below = np.asarray(task.actor.pose().p)
        task.target.set_pose(sapien.Pose([below[0], below[1], 0.006]))  # the area right under the held object
        for _ in range(3):
            env.step(np.array([0, 0, 0, 0, 0, 0, 1.0], np.float32))
        assert P.flat_distance(task.actor, task.target) < 0 and not pred.evaluate()["target_hit"]
        for _ in range(10):  # let go: it falls onto the area
            env.step(np.array([0, 0, 0, 0, 0, 0, -1.0], np.float32))
        assert pred.evaluate()["success"]
        task.target.set_pose(sapien.Pose([0.1, 0.5, 0.006]))  # moved away: the hit stays
        assert P.flat_distance(task.actor, task.target) > 0 and pred.evaluate()["success"]
    finally:
        env.close()


def test_topple_target_needs_the_target_fallen_over():
    env = make("Throw", **AT, topple_target=True)
    try:
        env.reset(seed=0)
        pred = env.task.predicate
        pred.target_hit = True  # as if the throw had touched it
        assert not pred.evaluate()["success"]
        p = env.task.target.pose().p
        env.task.target.set_pose(sapien.Pose(p, [np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0, 0.0]))  # on its side
        e = pred.evaluate()
        assert e["target_toppled"] and e["success"] and e["topple_angle"] == pytest.approx(90.0, abs=1.0)
    finally:
        env.close()


@pytest.mark.parametrize("fine", [False, True])
def test_executor_throws(fine):
    env = make("Throw", **AT)
    try:
        env.reset(seed=0)
        a, t = env.task.actor.name, env.task.target.name
        executor = Executor(env)
        code = (f"throw(actor=get_actor('{a}'), target_actor=get_actor('{t}'))" if fine
                else f"hit(get_actor('{a}'), get_actor('{t}'))")  # fmt: skip
        result = executor.execute(code)
        assert result.ok and result.kind == "action" and result.success, result
        assert result.outcome == "task_success" and 0 < result.steps < 200
        # nothing is left driving the arm: the joint velocity feed-forward was cleared
        assert not any(j._objs[0].drive_velocity_target.any() for j in env.agent.arm.joints)
    finally:
        env.close()


def test_targets_are_out_of_reach_in_front_of_the_robot():
    from c2a_jax.sim.tasks.throw import far_position

    rng = np.random.RandomState(0)
    points = np.stack([far_position(rng, 0.15) for _ in range(500)])
    rel = points[:, :2] - [-0.65, 0.0]
    distance = np.linalg.norm(rel, axis=1)
    assert distance.min() >= 0.75 and distance.max() <= 0.85
    assert np.all(rel[:, 0] >= np.cos(np.pi / 4) * 0.75 - 1e-9)  # within 45 deg of straight ahead
    assert np.allclose(points[:, 2], 0.15 / 2 + 0.001)
