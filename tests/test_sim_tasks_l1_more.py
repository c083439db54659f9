"""The rest of issue 9's tasks: FollowOrder (and its restore form), Neighbour, Sort2d,
RotateSymmetry, Swap by pushing and SwapRotate. Each builds and its oracle solves a fixed seed,
with the level-1 code the spec gives for it. Physics only (no images): rollouts run at 32 px with
rendering off, under a short step limit.
"""

import re

import pytest

from tests.test_sim_tasks_l1 import make, solve

PMP = "pick_move3d_place(actor=get_actor('{}'), target_actor=get_actor('{}'))"


@pytest.mark.parametrize("restore", [False, True])
def test_follow_order_visits_the_areas_in_order(restore):
    args = {"num_areas": 2, "num_predicates": 2, "restore": True} if restore else {}
    task, meta, code, _ = solve("FollowOrder", 1, **args)
    visited = task.areas[1 : 1 + task.num_predicates] + (task.areas[:1] if restore else [])
    assert code == [PMP.format(task.actor.name, a.name) for a in visited] + ["done()"]
    suffix = " and then restore" if restore else ""
    prompts = meta["natural_prompts"]
    assert (
        prompts[1]
        == f"Put the {task.actor.name} on "
        + " then on ".join(f"the {a.name}" for a in task.areas[1 : 1 + task.num_predicates])
        + suffix
    )
    assert "ks:keystep_1" in prompts[0]  # the image prompt: evaluation falls back to prompt 1
    from c2a_jax.eval.vlm_oracle import default_prompt_index

    assert default_prompt_index("FollowOrder", prompts) == 1


@pytest.mark.parametrize("task,seed", [("Neighbour", 0), ("Sort2d", 0)])
def test_area_tasks_put_every_object_in_its_area(task, seed):
    t, meta, code, _ = solve(task, seed)
    pairs = (
        [(t.actor, t.area), (t.neighbour, t.area)]
        if task == "Neighbour"
        else list(zip(t.actors, t.targets, strict=True))
    )
    for actor, area in pairs:  # every object inside its area at the end
        assert abs(actor.pose().p[0] - area.pose().p[0]) < 0.175 and abs(actor.pose().p[1] - area.pose().p[1]) < 0.175
    assert code[-1] == "done()" and all(re.fullmatch(r"pick_move3d_place\(.*target_actor=.*\)", c) for c in code[:-1])
    prompt = meta["natural_prompts"][0]
    if task == "Neighbour":
        assert prompt == (
            f"First put the {t.actor.name} in the {t.area.name} and then put the object that was at its "
            f"{t.direction} in the same the {t.area.name}"
        )
    else:
        assert prompt == "Place the objects in the identically textured areas"
        assert all(a.spec.colour == area.spec.colour for a, area in pairs)


@pytest.mark.parametrize("task", ["Neighbour", "Sort2d"])
def test_area_task_objects_start_in_reach_off_area_edges_and_off_their_target(task):
    """Our placement deviation (AreaTask.reach, bad_start): every object starts 0.30-0.68 m from the
    robot base, wholly on or off each area, and the task is not done before it starts (Sort2d: no
    object inside its own target area)."""
    import numpy as np

    from c2a_jax.sim.robot import BASE_POSE
    from c2a_jax.sim.tasks.areas import AREA_SIZE

    env = make(task)
    try:
        for seed in range(6):
            env.reset(seed=seed)
            t = env.task
            pairs = (
                [(t.actor, t.area), (t.neighbour, t.area)]
                if task == "Neighbour"
                else zip(t.actors, t.targets, strict=True)
            )
            for actor, target in pairs:
                p = np.asarray(actor.pose().p)
                assert 0.30 - 0.02 <= np.linalg.norm(p[:2] - np.asarray(BASE_POSE.p[:2])) <= 0.68 + 0.02, seed
                for area in t.areas:
                    inside = (np.abs(actor.world_vertices()[:, :2] - area.pose().p[:2]) <= AREA_SIZE[0] / 2 + 1e-3).all(
                        1
                    )
                    assert inside.all() or not inside.any(), (seed, actor.name, area.name)  # not on an edge
                    if task == "Sort2d":
                        assert not (area is target and inside.all()), (seed, actor.name)
            assert not t.evaluate()["success"]  # Neighbour: not both in the area
    finally:
        env.close()


def test_rotate_symmetry_turns_both_identically_coloured_objects():
    task, meta, code, _ = solve("RotateSymmetry", 0)
    a, b = task.actor_a, task.actor_b
    assert a.spec.colour == b.spec.colour and a is not b
    d = task.signed_degrees
    rotate = "target_pose = rotate_z(get_pose(actor=get_actor('{0}')), {1})\n" + (
        "pick_move3d_place(actor=get_actor('{0}'), target_pose=target_pose, match_ori=True)"
    )
    assert code == [rotate.format(a.name, d), rotate.format(b.name, d), "done()"]
    direction = "clockwise" if task.clockwise else "anti-clockwise"
    assert meta["natural_prompts"] == [
        f"Rotate objects with {a.spec.colour} texture {task.degrees} degrees {direction}",
        f"Rotate identically textured objects {task.degrees} degrees {direction}",
    ]


def test_swap_rotate_code_reads_the_stored_poses():
    task, meta, code, _ = solve("SwapRotate", 0, max_steps=1000)
    a, b, d = task.actor_a.name, task.actor_b.name, task.signed_degrees
    assert code[1] == (
        f"target_pose = rotate_z(Pose(pose_dict['{a}'].p, pose_dict['{b}'].q), {d})\n"
        f"pick_move3d_place(actor=get_actor('{b}'), target_pose=target_pose, match_ori=True)"
    )
    assert code[2].startswith(f"target_pose = rotate_z(Pose(pose_dict['{b}'].p, pose_dict['{a}'].q), {d})\n")
    assert code[0].startswith(f"pose_dict['{a}'] = get_pose(actor=get_actor('{a}'))") and code[-1] == "done()"
    assert meta["natural_prompts"][0].endswith(f" while rotating them by {task.degrees} degrees " + (
        "clockwise" if task.clockwise else "anti-clockwise"))  # fmt: skip


def test_swap_by_pushing_swaps_along_planned_paths():
    """Seed 0: the third push (A into B's old place) once shoved B, or stalled; the pushed object now
    goes around the other one (c2a_jax.sim.push_path)."""
    task, meta, code, _ = solve("Swap", 0, max_steps=400, push=True)
    a, b = task.actor_a.name, task.actor_b.name
    assert meta["natural_prompts"][0] == f"Swap positions of the {a} and the {b} by pushing"
    assert code == [
        f"pose_dict['{a}'] = get_pose(actor=get_actor('{a}'))\n"
        f"pose_dict['{b}'] = get_pose(actor=get_actor('{b}'))\n"
        f"push(actor=get_actor('{a}'), target_pose=free_space(actor=get_actor('{a}')))",
        f"pose_dict['{b}'] = get_pose(actor=get_actor('{b}'))\n"
        f"push(actor=get_actor('{b}'), target_pose=pose_dict['{a}'])",
        f"pose_dict['{a}'] = get_pose(actor=get_actor('{a}'))\n"
        f"push(actor=get_actor('{a}'), target_pose=pose_dict['{b}'])",
        "done()",
    ]
    assert all(type(s).__name__ == "AtPositionPushed" for s in task.steps)
    assert meta["traces"][0][1]["solver_class"] == "PushSolver"
    classes = {state["solver_class"] for trace in meta["traces"] for state in trace}
    assert "PickSolver" not in classes and "PushAlongPathSolver" in classes
