"""The executor: parsed robot-API code run by the oracle's solvers on the live simulator.

Every call type the L0 tasks' oracles write, at both granularities, is executed on a fixed seed
(the oracle's own key-steps, replayed) and solves the task; the fine calls the replays do not
reach (hold, carry to a pose, place at a pose, retreat) run on their own; code that cannot run is
a no-op that changes neither the scene nor the pose memory. In-process and without rendering
(the first render of a process costs ~15 s on lavapipe).
"""

import gymnasium as gym
import numpy as np
import pytest

import c2a_jax.sim.env  # noqa: F401  (registers ClevrSkills-v0)
from c2a_jax.codeapi import Assign, Call, extract_memory_info, parse
from c2a_jax.infer.replay import oracle_keysteps
from c2a_jax.sim import placement
from c2a_jax.sim import predicates as P
from c2a_jax.sim import robot as robot_lib
from c2a_jax.sim.executor import Executor
from c2a_jax.sim.rollout import record_oracle_episode
from c2a_jax.sim.solvers.base import quat_mul, quat_z


def make(task, **task_args):
    return gym.make("ClevrSkills-v0", task=task, task_args=task_args, image_size=32).unwrapped


def call_type(line: str) -> str:
    """``name(keywords)`` of a line's action; a keyword whose value was assigned in the same line
    from an API function shows that function (``target_pose=rotate_z``)."""
    program = parse(line)
    sources = {s.target: s.value.name for s in program if isinstance(s, Assign) and isinstance(s.value, Call)}
    action = program[-1]
    return f"{action.name}({', '.join(f'{k}={sources[v]}' if v in sources else k for k, v in action.kwargs)})"


COVERED: dict[str, set] = {"level1": set(), "fine": set()}
L0 = [
    ("Pick", {}, 0),
    ("PlaceOnTop", {"spawn_at_gripper": True}, 0),
    ("PlaceNextTo", {"spawn_at_gripper": True}, 0),
    ("Rotate", {"num_actors": 3}, 0),
    ("Touch", {}, 0),
    ("Touch", {"push": True}, 0),
    ("Touch", {"topple": True}, 0),
    ("Push", {}, 0),
]


@pytest.mark.parametrize("task,args,seed", L0, ids=[f"{t}-{'-'.join(a) or 'plain'}" for t, a, _ in L0])
def test_oracle_keysteps_replayed_by_the_executor_solve_the_task(task, args, seed):
    env = make(task, **args)
    try:
        meta = record_oracle_episode(env, seed, max_steps=400, images=False)["meta"]
        assert meta["success"]
        executor = Executor(env)
        for level in ("level1", "fine"):
            env.reset(seed=seed)
            executor.reset()
            steps = 0
            for line in oracle_keysteps(meta, level):
                result = executor.execute(line)
                assert result.ok, (level, line, result.error)
                if result.kind == "action":
                    assert result.finished and not result.timed_out, (level, line, result)
                    COVERED[level].add(call_type(line))
                steps += result.steps
                if result.episode_done or executor.success_seen:
                    break
            assert executor.success_seen, (level, meta["natural_prompts"][0])
            assert bool(env.task.evaluate()["success"])
            if level == "level1" and task in ("Pick", "PlaceOnTop", "Touch", "Push"):
                assert steps == meta["num_steps"]  # the same solvers from the same state: the same episode
    finally:
        env.close()


def test_fine_calls_hold_carry_place_at_a_pose_and_retreat():
    env = make("Pick", num_actors=1, sample_num_actors=False)
    try:
        env.reset(seed=0)
        executor = Executor(env, level="fine", stop_on_success=False)
        a = env.task.actor
        start = np.asarray(a.pose().p)
        goal = [float(start[0]), float(start[1]) + (0.1 if start[1] < 0 else -0.1), float(start[2])]
        ref = f"get_actor('{a.name}')"
        held = lambda: env.agent.check_grasp(a.body)  # noqa: E731
        tcp_z = lambda: float(env.agent.tcp_pose().p[2])  # noqa: E731

        def run(line, outcome="finished"):
            result = executor.execute(line)
            assert result.ok and result.outcome == outcome, (line, result)
            COVERED["fine"].add(call_type(line))
            return result

        run(f"move3d(target_actor={ref})")
        run(f"pick(actor={ref})")
        assert held()
        z = float(a.pose().p[2])
        run(f"move3d(actor={ref})")  # hold it lifted
        assert held() and a.pose().p[2] > z + 0.03
        target = f"Pose({goal}, {np.round(a.pose().q, 6).tolist()})"
        run(f"pose_dict['goal'] = {target}\nmove3d(actor={ref}, target_pose=pose_dict['goal'])")
        assert held() and np.linalg.norm(a.pose().p[:2] - np.asarray(goal[:2])) < 0.02
        result = run(f"place(actor={ref}, target_pose=pose_dict['goal'])", "goal_met")
        assert result.goal_met and not held() and a.bottom_z() < 0.005
        assert np.linalg.norm(a.pose().p[:2] - np.asarray(goal[:2])) < 0.02
        z = tcp_z()
        run("move3d()")
        assert tcp_z() > z + 0.08
    finally:
        env.close()


def test_every_l0_call_type_was_executed():
    """Runs after the tests above: together they executed every call type of the L0 oracles."""
    if len(COVERED["level1"]) < 2:
        pytest.skip("run the whole file")
    assert COVERED["level1"] >= {
        "pick_move3d_place(actor)",
        "pick_move3d_place(actor, target_actor)",
        "pick_move3d_place(actor, target_pose=free_space_next_to)",
        "pick_move3d_place(actor, target_pose=rotate_z, match_ori)",
        "touch(actor)",
        "touch(actor, push)",
        "touch(actor, topple)",
        "push(actor, target_actor)",
    }, COVERED["level1"]
    assert COVERED["fine"] >= {
        "move3d(target_actor)",
        "move3d(actor, target_actor)",
        "move3d(actor)",
        "move3d(actor, target_pose=free_space_next_to)",
        "move3d(actor, target_pose=Pose)",
        "move3d()",
        "pick(actor)",
        "place(actor, target_actor)",
        "place(actor, target_pose)",
        "place(actor, target_pose, match_ori)",
        "touch(actor)",
        "touch(actor, push)",
        "touch(actor, topple)",
        "push(actor, target_actor)",
    }, COVERED["fine"]


# ---------------------------------------------------------------------------------------------
# Code that cannot run, memory, naming


@pytest.fixture(scope="module")
def scene():
    """A PlaceOnTop scene with at least three actors, the smallest held by nobody."""
    env = make("PlaceOnTop", num_actors=3, num_areas=3, sample_num_actors=False)
    env.reset(seed=0)
    yield env
    env.close()


def snapshot(env):
    return np.stack([o.state() for o in env.task.objects])


def test_code_that_cannot_run_is_a_no_op(scene):
    env = scene
    executor = Executor(env)
    executor.reset()
    a, b = env.task.actor.name, env.task.area.name
    executor.execute(f"pose_dict['kept'] = get_pose(actor=get_actor('{a}'))")
    memory = dict(executor.pose_dict)
    before = snapshot(env)
    cases = [
        ("pick_move3d_place(actor=get_actor('golden teapot'))", "invalid", "unknown object 'golden teapot'"),
        (f"place(actor=get_actor('{a}'), target_actor=get_actor('{b}'))", "invalid", "not held"),
        (f"move3d(actor=get_actor('{a}'))", "invalid", "not held"),
        (f"pick_move3d_place(actor=get_actor('{a}'), target_actor=get_actor('{a}'))", "invalid", "itself"),
        (f"pick_move3d_place(actor=get_actor('{a}'), target_pose=Pose([1e8, 0, 0], [1, 0, 0, 0]))", "invalid",
         "out of the robot's reach"),
        (f"pick_move3d_place(actor=get_actor('{a}'), target_pose=Pose([-0.2, 0, 0.1], [0, 0, 0, 0]))", "invalid",
         "zero length"),
        (f"pose_dict['lost'] = get_pose(actor=get_actor('{a}'))\n"
         f"pick_move3d_place(actor=get_actor('{a}'), target_pose=pose_dict['never stored'])", "invalid",
         "no entry 'never stored'"),
        (f"push(actor=get_actor('{a}'))", "invalid", "needs target_actor or target_pose"),
        (f"hit(get_actor('{a}'), get_actor('{a}'))", "invalid", "itself"),
        (f"balance_scale([(get_actor('{a}')), (get_actor('{b}'))])", "invalid", "no scale in this scene"),
        (f"throw(actor=get_actor('{a}'), target_actor=get_actor('{b}'))", "invalid", "not held"),
        (f"pick_move3d_place(actor=get_actor('{a}'), target_pose=get_actor_pose(image='x', actor=get_actor('{a}')))",
         "unsupported", "reference image"),
        (f"touch(actor=get_actor('{a}'))\ndone()", "invalid", "at most one action"),
        (f"touch(actor=get_actor('{a}'), push=1)", "parse_error", "True or False"),
        ("import os", "parse_error", "imports are not allowed"),
        (f"# touch(actor=get_actor('{a}'))", "commented", "nothing to execute"),
    ]  # fmt: skip
    for code, kind, message in cases:
        result = executor.execute(code)
        assert (result.ok, result.kind, result.steps) == (False, kind, 0), (code, result)
        assert message in result.error, (code, result.error)
    np.testing.assert_array_equal(snapshot(env), before)  # nothing stepped, nothing moved
    assert executor.pose_dict.keys() == memory.keys()  # the failed unit's assignment was not kept
    result = executor.execute("done()")
    assert result.ok and result.episode_done
    result = executor.execute(f"touch(actor=get_actor('{a}'))")
    assert not result.ok and "episode is over" in result.error


def test_pose_memory_follows_the_latest_write_and_rotate_z_turns_about_world_z(scene):
    env = scene
    executor = Executor(env)
    executor.reset()
    a = env.task.actor
    lines = [
        f"pose_dict['{a.name}'] = get_pose(actor=get_actor('{a.name}'))",
        f"target_pose = rotate_z(pose_dict['{a.name}'], 90)\npose_dict['turned'] = target_pose",
        f"pose_dict['{a.name}'] = Pose(pose_dict['turned'].p, [0.0, 0.0, 0.0, 2.0])",
    ]
    for line in lines:
        result = executor.execute(line)
        assert (result.ok, result.kind, result.steps) == (True, "memory", 0), result
    pose = a.pose()
    turned = executor.pose_dict["turned"]
    np.testing.assert_allclose(turned.p, pose.p, atol=1e-6)
    q = quat_mul(quat_z(np.pi / 2), pose.q)
    assert abs(abs(float(np.dot(turned.q, q))) - 1.0) < 1e-6
    latest = executor.pose_dict[a.name]
    np.testing.assert_allclose(latest.q, [0, 0, 0, 1], atol=1e-6)  # normalised; the later write won
    assert list(executor.pose_dict) == [a.name, "turned"]
    assert extract_memory_info(lines).split("\n")[0] == lines[2]  # the same rule as the cache info
    for _ in range(5):  # Swap's buffer pose: clear of the other objects, where the arm can put it down
        assert executor.execute(f"pose_dict['buffer'] = free_space(actor=get_actor('{a.name}'))").ok
        buffer = np.asarray(executor.pose_dict["buffer"].p)
        reach = buffer - np.asarray(robot_lib.BASE_POSE.p)
        assert np.linalg.norm(reach) < 0.6 and np.linalg.norm(reach[:2]) >= P.MIN_PLACE_REACH
        for yaw in np.linspace(0, np.pi, 6):  # clear of the others whatever yaw the actor arrives with
            moved = placement.rotate_z(a.local_vertices, yaw) + buffer
            others = [placement.footprint(o.world_vertices()) for o in env.task.objects if o is not a]
            assert min(placement.polygon_distance(placement.footprint(moved), o) for o in others) > 0.01


def test_get_actor_grid_position_picks_among_actors_of_the_same_name(scene):
    env = scene
    executor = Executor(env)
    first, second = env.task.objects[0], env.task.objects[-1]
    cell_1, cell_2 = executor.grid_position(first), executor.grid_position(second)
    assert cell_1 != cell_2 and min(cell_1 + cell_2) >= 0
    name = second.name
    second.name = first.name  # two actors of one name, as some tasks have
    try:
        from c2a_jax.codeapi import Actor

        assert executor.resolve_actor(Actor(first.name, cell_2)) is second
        assert executor.resolve_actor(Actor(first.name, cell_1)) is first
        assert executor.resolve_actor(Actor(first.name.upper())) is first  # case and spacing are forgiven
    finally:
        second.name = name


def test_a_solver_failing_mid_call_is_an_error_result_with_its_steps(scene, monkeypatch):
    from c2a_jax.sim.solvers.touch import Move3dTouchSolver

    env = scene
    executor = Executor(env, level="level1")
    executor.reset()
    result = executor.execute("move3d()")  # a fine call, refused at level 1
    assert (result.ok, result.kind) == (
        False,
        "parse_error",
    ) and "unknown function 'move3d' at level level1" in result.error
    calls = {"n": 0}
    step = Move3dTouchSolver.step

    def failing(self):
        calls["n"] += 1
        if calls["n"] > 3:
            raise FloatingPointError("solver blew up")
        return step(self)

    monkeypatch.setattr(Move3dTouchSolver, "step", failing)
    result = executor.execute(f"touch(actor=get_actor('{env.task.actor.name}'))")
    assert (result.ok, result.kind, result.steps, result.outcome) == (False, "error", 3, "error")
    assert "FloatingPointError: solver blew up" in result.error
