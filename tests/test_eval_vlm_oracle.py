"""The VLM+Oracle loop: a code writer in this process, the simulator in a worker process.

With the oracle's own key-steps replayed (`ReplayCodeWriter`) the loop reproduces the oracle's
success, seed by seed, on two L0 tasks; hostile generated lines (the parser's attack corpus and
lines that name unknown objects or ask for impossible things) go through the loop without an
exception, are counted as parse errors or invalid calls, and move nothing. The loop's bookkeeping
is also checked against a stand-in simulator without SAPIEN. One worker process serves the whole
file (its first render costs ~15 s on lavapipe).
"""

import numpy as np
import pytest

from c2a_jax.eval.vlm_oracle import EpisodeRecord, SimulatorClient, run_episode
from c2a_jax.infer.replay import ReplayCodeWriter, oracle_keysteps
from c2a_jax.sim.worker import WorkerError
from tests.test_codeapi_parse import ATTACKS

IMAGE = 32


@pytest.fixture(scope="module")
def sim():
    with SimulatorClient("Pick", image_size=IMAGE, timeout_s=300) as client:
        yield client
        assert client.restarts == 0


L0 = [("Pick", {}), ("PlaceOnTop", {"spawn_at_gripper": True})]


@pytest.mark.parametrize("task,args", L0, ids=[t for t, _ in L0])
def test_replayed_oracle_keysteps_match_the_oracle_seed_by_seed(sim, task, args):
    for seed in range(4):
        meta = sim.record_oracle(seed=seed, task=task, task_args=args, max_steps=400)
        lines = oracle_keysteps(meta, "level1")
        writer = ReplayCodeWriter(lines)
        record = run_episode(sim, writer, seed, task=task, task_args=args, level="level1")
        assert record.success == meta["success"], (seed, record.to_json())
        assert record.steps == meta["num_steps"]  # the same solvers from the same scene: the same episode
        assert (record.parse_errors, record.invalid_calls, record.commented) == (0, 0, 0)
        assert record.end_reason == ("success" if meta["success"] else "done")
        assert record.code == lines[: record.queries] and record.queries == writer.queries
        assert record.actions == sum(c["status"] == "action" for c in record.calls) >= 1
        assert record.task == task and record.seed == seed and record.prompt
        assert record.sim_s > 0 and record.vlm_s >= 0 and record.total_s >= record.sim_s


def test_hostile_lines_go_through_the_loop_and_move_nothing(sim):
    start = sim.reset(seed=1, task="PlaceOnTop", task_args={"num_actors": 2, "num_areas": 2})
    names = [a["name"] for a in start["actors"]]
    a, b = names[-1], names[0]
    lines = list(ATTACKS) + [
        "pick_move3d_place(actor=get_actor('golden teapot'))",
        f"touch(actor=get_actor('{a}', (99, 99)), topple=True) and os.system('true')",
        f"rotate_z(get_pose(actor=get_actor('{a}')), 1e308)",
        f"pick_move3d_place(actor=get_actor('{a}'), target_pose=rotate_z(get_pose(actor=get_actor('{a}')), 'x'))",
        f"touch(actor='{a}')",
        f"touch(actor=get_actor('{a}'), push=1)",
        f"fly(actor=get_actor('{a}'))",
        "os.system('echo pwned')",
        f"place(actor=get_actor('{a}'), target_actor=get_actor('{b}'))",
        f"move3d(actor=get_actor('{a}'), target_pose=Pose([1e9, -1e9, 1e9], [1, 0, 0, 0]))",
        f"pick_move3d_place(actor=get_actor('{a}'), target_pose=Pose([-0.2, 0.0, 0.1], [0, 0, 0, 0]))",
        f"pick_move3d_place(actor=get_actor('{a}'), target_pose=pose_dict['nothing stored'])",
        f"pick_move3d_place(actor=get_actor('{a}'), target_actor=get_actor('{a}'))",
        f"hit(get_actor('{a}'), get_actor('{a}'))",  # throwing runs since issue 9, but not at itself
        f"pick_move3d_place(actor=get_actor('{a}'), target_pose=get_actor_pose(image='x', actor=get_actor('{a}')))",
        f"# pick_move3d_place(actor=get_actor('{a}'))",
        None,
        b"done()",
    ]
    writer = ReplayCodeWriter([])
    writer.lines = lines  # sent as they are, non-strings included
    spy = Spy(sim)
    record = run_episode(spy, writer, 1, task="PlaceOnTop", task_args={"num_actors": 2, "num_areas": 2},
                         max_queries=len(lines) + 1)  # fmt: skip
    assert record.queries == len(lines) + 1 and record.end_reason == "done" and not record.success
    assert record.parse_errors + record.invalid_calls + record.commented == len(lines), record.to_json()
    assert record.invalid_calls >= 7 and record.commented == 1
    assert record.steps == 0 and record.actions == 0
    assert all(c["error"] for c in record.calls[:-1])
    kinds = {c["status"] for c in record.calls}
    assert kinds == {"parse_error", "invalid", "unsupported", "commented", "done"}, kinds
    errors = " | ".join(c["error"] for c in record.calls if c["status"] == "invalid")
    for fragment in ("unknown object 'golden teapot'", "not held", "out of the robot's reach", "zero length",
                     "no entry 'nothing stored'", "the actor itself"):  # fmt: skip
        assert fragment in errors
    first, last = spy.first["observation"], spy.last["observation"]
    assert first["actor_keys"] == last["actor_keys"]
    np.testing.assert_allclose(last["actors"][:, :7], first["actors"][:, :7], atol=1e-4)  # poses unchanged
    assert sim.restarts == 0


class Spy:
    """Passes calls to a simulator, keeping the first reset and the last execute reply."""

    def __init__(self, sim):
        self.sim, self.first, self.last = sim, None, None

    def reset(self, **kwargs):
        self.first = self.last = self.sim.reset(**kwargs)
        return self.first

    def execute(self, **kwargs):
        self.last = self.sim.execute(**kwargs)
        return self.last


def test_worker_observations_frames_and_stale_episodes(sim):
    start = sim.reset(seed=0, task="Pick", task_args={})
    obs = start["observation"]
    assert obs["image"].shape == (IMAGE, IMAGE, 3) and obs["image"].dtype == np.uint8 and obs["image"].std() > 5
    assert start["prompt"] == start["prompts"][3] and start["prompt_index"] == 3  # the benchmark's Pick prompt
    assert obs["actors"].shape == (len(start["actors"]), 13) and obs["steps"] == 0 and not obs["success"]
    name = start["actors"][0]["name"]
    reply = sim.execute(episode=start["episode"], code=f"pick_move3d_place(actor=get_actor('{name}'))",
                        record_frames=True)  # fmt: skip
    result = reply["result"]
    assert result["ok"] and result["outcome"] == "task_success" and reply["observation"]["success"]
    assert result["frames"].shape == (result["steps"], IMAGE, IMAGE, 3)
    assert reply["observation"]["steps"] == result["steps"]
    sim.record_oracle(seed=0)  # resets the scene: the episode above is over
    with pytest.raises(WorkerError, match="no episode"):
        sim.execute(episode=start["episode"], code="done()")
    record = run_episode(sim, ReplayCodeWriter([f"pick_move3d_place(actor=get_actor('{name}'))"]), 0,
                         record_frames=True)  # fmt: skip
    assert record.success and sum(len(f) for f in record.frames) == record.steps
    assert "frames" not in record.to_json()


# ---------------------------------------------------------------------------------------------
# The loop's bookkeeping, without a simulator


class FakeSim:
    """Answers like `VlmOracleWorker`: every parsed line runs for 10 steps, except lines naming
    'ghost' (invalid) and done(); success after `succeed_after` actions; `crash_on` raises."""

    def __init__(self, succeed_after=99, crash_on=None, budget=1000):
        self.actions, self.steps, self.succeed_after = 0, 0, succeed_after
        self.crash_on, self.budget, self.sent = crash_on, budget, []

    def obs(self, done=False):
        return {"image": np.zeros((4, 4, 3), np.uint8), "success": self.actions >= self.succeed_after,
                "steps": self.steps, "budget_left": self.budget - self.steps, "episode_done": done}  # fmt: skip

    def reset(self, seed, task=None, task_args=None, prompt_index=None):
        return {"episode": "e1", "task": task or "Fake", "task_args": task_args or {}, "seed": seed,
                "prompt": "do it", "prompt_index": 0, "prompts": ["do it"], "actors": [], "observation": self.obs()}  # fmt: skip

    def execute(self, episode, code, record_frames=False):
        assert episode == "e1"
        self.sent.append(code)
        if self.crash_on and self.crash_on in code:
            raise WorkerError("worker crashed (exit code -9, SIGKILL)")
        base = {"code": code, "function": None, "error": None, "steps": 0, "outcome": None, "finished": False,
                "timed_out": False, "goal_met": None, "success": False, "episode_done": False}  # fmt: skip
        if code == "done()":
            return {"result": {**base, "ok": True, "kind": "done", "episode_done": True}, "observation": self.obs(True)}
        if "ghost" in code:
            return {"result": {**base, "ok": False, "kind": "invalid", "error": "unknown object 'ghost'"},
                    "observation": self.obs()}  # fmt: skip
        self.actions += 1
        self.steps += 10
        result = {**base, "ok": True, "kind": "action", "steps": 10, "outcome": "finished", "finished": True}
        return {"result": result, "observation": self.obs()}


class MemoryWriter:
    """Writes the given lines and keeps the memory it was shown at each query."""

    def __init__(self, lines):
        self.lines, self.memories = list(lines), []

    def generate_code(self, image, prompt, memory, keystep_request=False):
        assert keystep_request is True and prompt == "do it" and image.shape == (4, 4, 3)
        self.memories.append(list(memory))
        return self.lines[len(self.memories) - 1] if len(self.memories) <= len(self.lines) else "done()"


def test_loop_counts_parse_errors_invalid_and_commented_lines_and_keeps_memory():
    touch = "touch(actor=get_actor('red cube'))"
    lines = [touch, "import os", "# " + touch, "touch(actor=get_actor('ghost'))", "push(actor=get_actor('b'), "
             "target_actor=get_actor('red cube'))", "done()"]  # fmt: skip
    writer, fake = MemoryWriter(lines), FakeSim()
    record = run_episode(fake, writer, 5, task="Fake")
    assert isinstance(record, EpisodeRecord) and record.end_reason == "done" and not record.success
    counts = (record.queries, record.parse_errors, record.commented, record.invalid_calls, record.actions)
    assert counts == (6, 1, 1, 1, 2)
    assert fake.sent == [lines[0], lines[3], lines[4], lines[5]]  # parse errors and comments never reach the simulator
    assert writer.memories[-1] == [lines[0], lines[4]]  # memory: the key-steps that ran
    assert record.steps == 20 and [c["status"] for c in record.calls] == [
        "action", "parse_error", "commented", "invalid", "action", "done"]  # fmt: skip
    assert record.to_json()["code"] == lines


def test_loop_ends_on_success_budget_query_limit_and_lost_worker():
    touch = "touch(actor=get_actor('red cube'))"
    record = run_episode(FakeSim(succeed_after=2), MemoryWriter([touch] * 5), 0)
    assert (record.end_reason, record.success, record.queries) == ("success", True, 2)
    record = run_episode(FakeSim(budget=30), MemoryWriter([touch] * 5), 0)
    assert (record.end_reason, record.steps, record.queries) == ("step_budget", 30, 3)
    record = run_episode(FakeSim(), MemoryWriter(["import os"] * 50), 0, max_queries=7)
    assert (record.end_reason, record.queries, record.parse_errors) == ("max_queries", 7, 7)
    record = run_episode(FakeSim(crash_on="boom"), MemoryWriter([touch, "touch(actor=get_actor('boom'))"]), 0)
    assert record.end_reason == "worker_error" and "SIGKILL" in record.error and record.actions == 1


class SamplingWriter(MemoryWriter):
    """A `MemoryWriter` that also keeps the sampling options of each query."""

    def __init__(self, lines):
        super().__init__(lines)
        self.options = []

    def generate_code(self, image, prompt, memory, keystep_request=False, **options):
        self.options.append(options)
        return super().generate_code(image, prompt, memory, keystep_request)


def test_queries_after_a_line_that_did_not_run_are_sampled_with_a_seed_per_query():
    touch = "touch(actor=get_actor('red cube'))"
    ghost = "touch(actor=get_actor('ghost'))"
    lines = [ghost, ghost, "import os", touch, ghost, touch, "done()"]
    writer = SamplingWriter(lines)
    record = run_episode(FakeSim(), writer, 11, refusal_temperature=0.7)
    sampled = [bool(o) for o in writer.options]
    assert sampled == [False, True, True, True, False, True, False]  # after invalid / parse error only
    assert all(o["temperature"] == 0.7 for o in writer.options if o)
    seeds = [o["seed"] for o in writer.options if o]
    assert len(set(seeds)) == len(seeds)  # a new draw at every query
    assert record.resampled == 4 and [c.get("sampled", False) for c in record.calls] == sampled
    again = SamplingWriter(lines)
    run_episode(FakeSim(), again, 11, refusal_temperature=0.7)
    assert again.options == writer.options  # a rerun of the seed draws the same way
    other = SamplingWriter(lines)
    run_episode(FakeSim(), other, 12, refusal_temperature=0.7)
    assert [o["seed"] for o in other.options if o] != seeds
    # greedy (the paper's decoding): a writer without sampling options is never asked for them
    record = run_episode(FakeSim(), MemoryWriter(lines), 11)
    assert record.resampled == 0 and record.invalid_calls == 3
    with pytest.raises(ValueError, match="refusal_temperature"):
        run_episode(FakeSim(), MemoryWriter(lines), 11, refusal_temperature=-1.0)
