"""The ClevrSkills port on ManiSkill3: tasks build and render, oracles solve fixed seeds, predicates,
the vacuum, determinism, code labels, and demo generation with resume."""

import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import sapien

import c2a_jax.sim.env  # noqa: F401  (registers ClevrSkills-v0)
from c2a_jax.codeapi import parse
from c2a_jax.sim.rollout import OracleWorker, record_oracle_episode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make(task, **task_args):
    return gym.make("ClevrSkills-v0", task=task, task_args=task_args, image_size=64).unwrapped


@pytest.fixture(scope="module")
def pick_env():
    env = make("Pick")
    yield env
    env.close()


def test_pick_oracle_solves_and_labels_every_step(pick_env):
    episode = record_oracle_episode(pick_env, seed=0, max_steps=200)
    meta, arrays = episode["meta"], episode["arrays"]
    assert meta["success"]
    steps = meta["num_steps"] + 1
    for camera in ("base_image", "hand_image"):
        assert arrays[camera].shape == (steps, 64, 64, 3) and arrays[camera].dtype == np.uint8
        assert arrays[camera].std() > 5  # a real rendered scene, not a blank frame
    assert arrays["actions"].shape == (steps, 7) and np.abs(arrays["actions"][:-1]).max() <= 1.0 + 1e-6
    assert arrays["bboxes"].shape[1:] == (len(meta["actors"]), 2, 3)
    name = meta["actors"][0]["name"]
    keysteps = [lab["level1"] for lab in meta["labels"] if lab["level1_keystep"]]
    assert keysteps == [f"pick_move3d_place(actor=get_actor('{name}'))", "done()"]  # spec 3.1
    fine = [lab["fine"] for lab in meta["labels"] if lab["fine_keystep"]]
    assert fine[0] == f"move3d(target_actor=get_actor('{name}'))" and f"pick(actor=get_actor('{name}'))" in fine
    for lab in meta["labels"]:
        parse(lab["level1"], "level1")
        parse(lab["fine"], "fine")
    assert meta["natural_prompts"][3] == f"Pick up the the {name}"  # the converter's doubled article
    assert len(meta["traces"][0]) == 3 and meta["traces"][0][1]["solver_class"] == "PickMove3dPlaceSolver"


def test_same_seed_same_scene_and_same_first_50_actions(pick_env):
    runs = []
    for _ in range(2):
        pick_env.reset(seed=7)
        scene = [(o.name, np.round(o.pose().p, 6).tolist()) for o in pick_env.task.objects]
        solver = pick_env.task.solver()
        actions = []
        for _ in range(50):
            a = solver.step()
            actions.append(a)
            _, _, terminated, _, _ = pick_env.step(a)
            if bool(terminated[0]):
                break
        runs.append((scene, np.asarray(actions)))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_allclose(runs[0][1], runs[1][1], atol=1e-5)


def test_vacuum_grasps_carries_and_releases(pick_env):
    env = pick_env
    env.reset(seed=0)
    actor = env.task.actor
    solver = env.task.solver()
    for _ in range(60):
        _, _, terminated, _, _ = env.step(solver.step())
        if bool(terminated[0]):
            break
    assert env.agent.check_grasp(actor.body) and actor.bottom_z() > 0.02  # carried off the table
    for _ in range(15):
        env.step(np.array([0, 0, 0, 0, 0, 0, -1], np.float32))  # vacuum off
    assert not env.agent.check_grasp(actor.body)
    assert actor.bottom_z() < 0.01  # it fell back to the table: nothing was attached


@pytest.mark.parametrize(
    "task,args,seed,code",
    [
        (
            "PlaceOnTop",
            {"spawn_at_gripper": True},
            0,
            "pick_move3d_place(actor=get_actor('{a}'), target_actor=get_actor('{b}'))",
        ),
        ("Touch", {"push": True}, 2, "touch(actor=get_actor('{a}'), push=True)"),
        ("Touch", {}, 2, "touch(actor=get_actor('{a}'))"),
        ("Touch", {"topple": True}, 2, "touch(actor=get_actor('{a}'), topple=True)"),
        ("Push", {}, 1, "push(actor=get_actor('{a}'), target_actor=get_actor('{b}'))"),
        ("Rotate", {"restore": True}, 1, "target_pose = rotate_z(get_pose(actor=get_actor('{a}')), "),
        ("PlaceNextTo", {}, 1, "target_pose = free_space_next_to(actor=get_actor('{a}'), next_to_actor="),
        ("PlaceNextTo", {"spawn_at_gripper": True}, 0, "target_pose = free_space_next_to(actor=get_actor('{a}'), "),
    ],
)
def test_oracle_solves_a_fixed_seed(task, args, seed, code):
    worker = OracleWorker(task, args, image_size=32, max_steps=300)
    try:
        episode = worker.run_episode(seed, images=True)
    finally:
        worker.env.close()
    meta = episode["meta"]
    assert meta["success"], meta["natural_prompts"][0]
    for camera in ("base_image", "hand_image"):  # both cameras rendered every step
        frames = episode["arrays"][camera]
        assert frames.shape == (meta["num_steps"] + 1, 32, 32, 3) and frames.std() > 5
    first = next(lab["level1"] for lab in meta["labels"] if lab["level1_keystep"])
    trace = meta["traces"][0][1]  # the level-1 solver names the actors the code must name
    names = {"a": trace["actor"][0], "b": (trace.get("target_actor") or trace.get("area_actor") or [""])[0]}
    assert first.startswith(code.format(**names)), first
    assert [lab["level1"] for lab in meta["labels"]][-1] == "done()"
    keysteps = [lab for lab in meta["labels"] if lab["level1_keystep"]]
    assert sum(lab["level1"] == "done()" for lab in keysteps) == 1


def test_place_on_top_predicate_on_constructed_states():
    env = make("PlaceOnTop", num_actors=1, num_areas=1, spawn_at_gripper=False)
    try:
        env.reset(seed=3)
        top, bottom = env.task.actor, env.task.area
        pred = env.task.predicate
        zero = np.array([0, 0, 0, 0, 0, 0, -1], np.float32)

        def settle():
            for _ in range(15):
                env.step(zero)

        b = np.asarray(bottom.pose().p)
        top.set_pose(sapien.Pose([b[0], b[1], bottom.top_z() + (top.pose().p[2] - top.bottom_z()) + 0.002]))
        settle()
        assert pred.evaluate()["success"]
        top.set_pose(sapien.Pose([b[0] + 0.25, b[1], top.pose().p[2] - top.bottom_z() + 0.002]))
        settle()
        e = pred.evaluate()
        assert not e["success"] and not e["top_actor_resting_on_bottom_actor"]
    finally:
        env.close()


def test_next_to_and_topple_predicates_on_constructed_states():
    from c2a_jax.sim import predicates as P
    from c2a_jax.sim.tasks.place import DIRECTIONS

    env = make("PlaceNextTo", num_actors=2)
    try:
        env.reset(seed=1)
        a, b = env.task.actor, env.task.other
        half = float(a.pose().p[2] - a.bottom_z())
        base = np.array([-0.15, 0.0])
        b.set_pose(sapien.Pose([base[0], base[1], float(b.pose().p[2] - b.bottom_z()) + 0.001]))
        for description, direction in DIRECTIONS:
            a.set_pose(sapien.Pose([base[0] + 0.12 * direction[0], base[1] + 0.12 * direction[1], half + 0.001]))
            for _ in range(10):
                env.step(np.array([0, 0, 0, 0, 0, 0, -1], np.float32))
            results = {d: P.NextTo(env, a, b, v, d).evaluate()["actor_at_pos"] for d, v in DIRECTIONS}
            assert results[description], (description, results)
            assert sum(results.values()) == 1, results
    finally:
        env.close()

    env = make("Touch", topple=True, num_actors=1)
    try:
        env.reset(seed=0)
        leaf = env.task.predicate.children[0]
        o = leaf.actor
        o.set_pose(sapien.Pose([-0.2, 0.2, 0.101]))  # standing
        o.set_velocity()
        for _ in range(5):
            env.step(np.array([0, 0, 0, 0, 0, 0, -1], np.float32))
        assert leaf.evaluate()["topple_angle"] < 5
        o.set_pose(sapien.Pose([-0.2, 0.2, 0.03], [0.7071068, 0.7071068, 0, 0]))  # lying on its side
        for _ in range(5):
            env.step(np.array([0, 0, 0, 0, 0, 0, -1], np.float32))
        assert leaf.evaluate()["topple_angle"] >= 45
    finally:
        env.close()


def test_generate_demos_keeps_successes_and_resumes(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "data_pipelines", "generate_demos.py"), "--task", "Pick",
           "--num-episodes", "2", "--num-workers", "1", "--image-size", "32", "--out", str(tmp_path),
           "--max-steps", "200"]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    directory = tmp_path / "Pick"
    records = [json.loads(line) for line in (directory / "manifest.jsonl").read_text().splitlines()]
    kept = [r for r in records if r["status"] == "success"]
    assert len(kept) == 2
    for r in kept:
        data = np.load(directory / (r["path"] + ".npz"))
        meta = json.loads((directory / (r["path"] + ".json")).read_text())
        assert data["base_image"].shape[0] == meta["num_steps"] + 1 and meta["success"]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert second.returncode == 0
    again = (directory / "manifest.jsonl").read_text().splitlines()
    assert len(again) == len(records)  # nothing was re-run
    bad = subprocess.run(cmd[:3] + ["NoSuchTask"] + cmd[4:], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert bad.returncode == 2 and "unknown task 'NoSuchTask'" in bad.stderr


def test_a_simulator_worker_killed_mid_episode_is_replaced(tmp_path):
    """SIGKILL the worker while it runs an episode: the pool restarts it, retries, and finishes."""
    import signal
    import threading

    from c2a_jax.sim.worker import WorkerPool

    kwargs = {"task": "Pick", "image_size": 32, "max_steps": 200}
    with WorkerPool("c2a_jax.sim.rollout:OracleWorker", kwargs, num_workers=1, timeout_s=300,
                    env={"PYTHONPATH": ROOT}) as pool:  # fmt: skip
        pool.wait_ready()
        victim = pool.pids[0]
        threading.Timer(1.0, lambda: os.kill(victim, signal.SIGKILL)).start()
        jobs = [{"method": "run_episode", "kwargs": {"seed": s, "images": True}} for s in (0, 1)]
        results = sorted(pool.map(jobs), key=lambda r: r.index)
        assert pool.restarts >= 1 and victim not in pool.pids
    assert all(r.ok and r.result["meta"]["success"] for r in results), [r.error for r in results]
    assert results[0].attempts == 2  # the killed attempt and its retry
