"""The hierarchical controller with stand-ins for both levels: chunk use and regeneration (both
behaviours), memory and cache info from key-steps, the flat mode, replayable sampling, timings."""

import numpy as np
import pytest

from c2a_jax.infer.controller import HierarchicalController

STORE = "pose_dict['red cube'] = get_pose(actor=get_actor('red cube'))"
MOVE = "move_to(pose=pose_dict['red cube'])"
PICK = "pick(actor=get_actor('red cube'))"


class ScriptedWriter:
    """Returns a fixed line per step and records what it was asked."""

    def __init__(self, lines):
        self.lines, self.calls = list(lines), []

    def __call__(self, image, prompt, memory, keystep_request):
        self.calls.append((image.shape, prompt, list(memory), keystep_request))
        return self.lines[len(self.calls) - 1]


class RecordingPolicy:
    """A chunk whose action i is (draw number, i, ...): shows which chunk and index each step used."""

    def __init__(self, horizon=16):
        self.horizon, self.calls = horizon, []

    def __call__(self, obs, rng, **text):
        self.calls.append(dict(text, rng=rng))
        draw = len(self.calls) - 1
        return np.stack([np.r_[draw, i, np.zeros(5)] for i in range(self.horizon)]).astype(np.float32)


def _obs():
    return {"image": np.zeros((32, 32, 3), np.uint8), "wrist_image": np.zeros((32, 32, 3), np.uint8),
            "state": np.zeros(9, np.float32)}  # fmt: skip


@pytest.mark.parametrize("regenerate", [True, False])
def test_chunks_are_used_up_or_regenerated_on_new_code(regenerate):
    lines = [STORE, "# " + STORE, MOVE] + ["# " + MOVE] * 3 + [PICK] + ["# " + PICK] * 7
    writer, policy = ScriptedWriter(lines), RecordingPolicy()
    ctl = HierarchicalController(policy, writer, n_action_steps=4, regenerate_on_keystep=regenerate)
    ctl.reset("Pick up the red cube", episode_seed=3)
    steps = [ctl.act(_obs()) for _ in lines]
    draws = [int(a[0]) for a, _ in steps]
    reasons = [info.reason for _, info in steps]
    if regenerate:
        # key-steps at steps 2 and 6; a chunk of 4 used up at step 10 (6..9)
        assert reasons == ["first", "", "new_keystep", "", "", "", "new_keystep", "", "", "", "used_up", "", "", ""]
        assert draws == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
        assert policy.calls[1]["code"] == MOVE and policy.calls[3]["code"] == "# " + PICK
    else:
        assert reasons == ["first", "", "", "", "used_up", "", "", "", "used_up", "", "", "", "used_up", ""]
        assert draws == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3]
        assert policy.calls[1]["code"] == "# " + MOVE  # the line as written at the step the chunk was drawn
    assert [int(a[1]) for a, _ in steps][:2] == [0, 1]
    # memory: the key-steps only, cache info from the pose_dict write
    assert ctl.memory.entries == [STORE, MOVE, PICK]
    assert all(c["cache_info"] == STORE for c in policy.calls)
    assert writer.calls[1][2] == [STORE] and writer.calls[0][3] is False  # intermediate mode, memory grows
    assert all(info.vlm_s >= 0 and (info.dp_s > 0) == info.new_chunk for _, info in steps)


def test_flat_mode_reads_the_prompt_and_sampling_replays():
    policy = RecordingPolicy(horizon=3)
    ctl = HierarchicalController(policy, None, n_action_steps=8, seed=5)
    ctl.reset("Touch the red cube", episode_seed=1)
    infos = [ctl.act(_obs())[1] for _ in range(7)]
    assert [i.reason for i in infos] == ["first", "", "", "used_up", "", "", "used_up"]  # horizon 3 < 8 steps
    assert policy.calls[0] == {"prompt": "Touch the red cube", "rng": policy.calls[0]["rng"]}
    first = [c["rng"] for c in policy.calls]
    assert len(set(first)) == len(first)  # a fresh key per chunk
    again = RecordingPolicy(horizon=3)
    ctl2 = HierarchicalController(again, None, n_action_steps=8, seed=5)
    ctl2.reset("Touch the red cube", episode_seed=1)
    for _ in range(7):
        ctl2.act(_obs())
    assert [c["rng"] for c in again.calls] == first
    ctl2.reset("Touch the red cube", episode_seed=2)
    ctl2.act(_obs())
    assert again.calls[-1]["rng"] != first[0]


def test_images_are_needed_exactly_before_a_draw_or_a_code_query():
    policy = RecordingPolicy(horizon=3)
    ctl = HierarchicalController(policy, None, n_action_steps=2)
    ctl.reset("Touch the red cube")
    needed = []
    for _ in range(7):
        needed.append(ctl.images_needed())
        ctl.act(_obs())
    draws = [i for i in range(7) if i % 2 == 0]  # a chunk every 2 steps
    assert [i for i, n in enumerate(needed) if n] == draws and len(policy.calls) == len(draws)
    assert all(needed[i] == ("image", "wrist_image") for i in draws)
    writer = lambda image, prompt, memory, request: "move3d()"  # noqa: E731
    for regenerate in (False, True):
        ctl = HierarchicalController(RecordingPolicy(horizon=3), writer, n_action_steps=2,
                                     regenerate_on_keystep=regenerate)  # fmt: skip
        ctl.reset("Touch the red cube")
        needed = []
        for _ in range(4):  # the code writer reads its camera every step, the policy both on draws
            needed.append(ctl.images_needed())
            ctl.act(_obs())
        both, base = ("image", "wrist_image"), ("image",)
        assert needed == ([both] * 4 if regenerate else [both, base, both, base])  # a new key-step draws


def test_bad_policy_output_and_settings_are_refused():
    with pytest.raises(ValueError, match="n_action_steps"):
        HierarchicalController(RecordingPolicy(), None, n_action_steps=0)
    ctl = HierarchicalController(lambda obs, **kw: np.zeros(7), None)
    ctl.reset("x")
    with pytest.raises(ValueError, match="action chunk"):
        ctl.act(_obs())
