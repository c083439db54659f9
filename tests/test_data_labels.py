"""Per-step training labels (memory, past actions, cache info) and the shift augmentation.

The worked examples are clevrskills_spec.md 6.7-6.9; the augmentation is paper section 5.2.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c2a_jax.codeapi import NO_CACHE_INFO, comment, extract_memory_info
from c2a_jax.data import (
    DONE_CODE,
    Segment,
    labels_from_segments,
    segments_of,
    shift_labels,
    step_labels,
)
from tests.test_codeapi_memory import SWAP_P1, SWAP_P2, SWAP_P3  # spec 6.9.2, written out once

YELLOW_P1 = "pose_dict['yellow cube'] = get_pose(actor=get_actor('yellow cube'))"
BLUE = "pose_dict['blue hexagon'] = get_pose(actor=get_actor('blue hexagon'))"


def fake_meta(calls: list[tuple[str, int]], terminal: bool = True) -> dict:
    """Episode metadata whose labels (both levels alike) run each (code, steps) call in turn,
    as the recorder stores them; with `terminal`, one more commented done() step (the final
    observation) follows the last call."""
    labels = []
    for code, steps in calls:
        for i in range(steps):
            labels.append({"level1": code, "level1_keystep": i == 0, "fine": code, "fine_keystep": i == 0})
    if terminal:
        code = calls[-1][0]
        labels.append({"level1": code, "level1_keystep": False, "fine": code, "fine_keystep": False})
    return {"labels": labels}


def test_swap_memory_past_actions_and_cache_info_per_step():
    meta = fake_meta([(SWAP_P1, 3), (SWAP_P2, 3), (SWAP_P3, 3), (DONE_CODE, 1)])
    labels = step_labels(meta, "level1")
    assert [lab.step for lab in labels] == list(range(11))
    assert [lab.is_keystep for lab in labels] == [True, False, False] * 3 + [True, False]
    assert [lab.code for lab in labels[:3]] == [SWAP_P1, comment(SWAP_P1), comment(SWAP_P1)]
    assert labels[10].code == "# done()"

    p1_cache = f"{YELLOW_P1}\n{BLUE}"
    expected_memory = [(), (SWAP_P1,), (SWAP_P1,)]
    expected_memory += [(SWAP_P1,), (SWAP_P1, SWAP_P2), (SWAP_P1, SWAP_P2)]
    expected_memory += [(SWAP_P1, SWAP_P2), (SWAP_P1, SWAP_P2, SWAP_P3), (SWAP_P1, SWAP_P2, SWAP_P3)]
    expected_memory += [(SWAP_P1, SWAP_P2, SWAP_P3), (SWAP_P1, SWAP_P2, SWAP_P3, DONE_CODE)]
    assert [lab.memory for lab in labels] == expected_memory
    assert [lab.past_actions for lab in labels] == ["; ".join(m) for m in expected_memory]
    # The memory at a key-step does not hold it yet; the cache info does (the DP executes it).
    assert labels[0].past_actions == "" and labels[0].cache_info == p1_cache
    # Point 2 re-stores B (same line); point 3 overwrites A's entry: keys keep first-write order.
    assert [lab.cache_info for lab in labels[3:6]] == [f"{YELLOW_P1}\n{BLUE}"] * 3
    assert [lab.cache_info for lab in labels[6:]] == [f"{YELLOW_P1}\n{BLUE}"] * 5
    for lab in labels:
        keysteps = lab.memory + ((lab.instruction,) if lab.is_keystep else ())
        assert lab.cache_info == extract_memory_info(keysteps)
    assert labels[9].past_actions == f"{SWAP_P1}; {SWAP_P2}; {SWAP_P3}"


def test_single_stack_past_actions_at_done():
    first = "pick_move3d_place(actor=get_actor('red cube'), target_actor=get_actor('cyan hexagon'))"
    second = "pick_move3d_place(actor=get_actor('white cylinder'), target_actor=get_actor('red cube'))"
    labels = step_labels(fake_meta([(first, 4), (second, 5), (DONE_CODE, 1)]))
    done = next(lab for lab in labels if lab.instruction == DONE_CODE)
    assert done.is_keystep and done.code == "done()" and done.step == 9
    assert done.past_actions == (
        "pick_move3d_place(actor=get_actor('red cube'), target_actor=get_actor('cyan hexagon')); "
        "pick_move3d_place(actor=get_actor('white cylinder'), target_actor=get_actor('red cube'))"
    )
    assert labels[4].past_actions == first and labels[4].is_keystep
    assert {lab.cache_info for lab in labels} == {NO_CACHE_INFO}


def test_place_next_to_level1_variable_is_not_cache_info():
    code = (
        "target_pose = free_space_next_to(actor=get_actor('red cube'), next_to_actor=get_actor('yellow cylinder'), "
        'direction=[0.0, 1.0, 0.0], description="left of")\n'
        "pick_move3d_place(actor=get_actor('red cube'), target_pose=target_pose)"
    )
    labels = step_labels(fake_meta([(code, 3), (DONE_CODE, 1)]), "level1")
    assert labels[3].past_actions == code  # spec 6.7 entry 2: the two lines, one action
    assert labels[1].code == comment(code) and labels[1].code.count("# ") == 2
    assert {lab.cache_info for lab in labels} == {NO_CACHE_INFO}


def test_done_holds_from_first_success():
    meta = fake_meta([("pick(actor=get_actor('a'))", 4), ("move3d(actor=get_actor('a'))", 4), (DONE_CODE, 1)])
    success = np.zeros(10, bool)
    success[5:] = True  # the recorder's labels say done() only at step 8: success wins
    labels = step_labels(meta, success=success)
    assert [lab.instruction for lab in labels] == ["pick(actor=get_actor('a'))"] * 4 + [
        "move3d(actor=get_actor('a'))"
    ] + [DONE_CODE] * 5
    assert [lab.step for lab in labels if lab.is_keystep] == [0, 4, 5]
    assert labels[-1].memory[-1] == DONE_CODE
    # Labels that already agree with the flags are left alone.
    success[:] = False
    success[8:] = True
    assert step_labels(meta, success=success) == step_labels(meta)
    with pytest.raises(ValueError, match="success flags"):
        step_labels(meta, success=success[:-1])


def test_bad_labels_are_rejected():
    meta = fake_meta([("pick(actor=get_actor('a'))", 3)])
    meta["labels"][0]["fine_keystep"] = False
    with pytest.raises(ValueError, match="step 0 must be a fine key-step"):
        step_labels(meta)
    meta = fake_meta([("pick(actor=get_actor('a'))", 3)])
    meta["labels"][2]["fine"] = "place(actor=get_actor('a'))"
    with pytest.raises(ValueError, match="step 2"):
        step_labels(meta)
    with pytest.raises(ValueError, match="unknown label level"):
        step_labels(meta, "coarse")
    with pytest.raises(ValueError, match="no label"):
        step_labels({"labels": [None]})
    with pytest.raises(ValueError, match="at least one step"):
        Segment(3, 3, "pick()")
    with pytest.raises(ValueError, match="plain"):
        Segment(0, 3, "# pick()")


# ---------------------------------------------------------------------------------------------
# The shift augmentation: properties over random episodes.

CODES = (
    "move3d(target_actor=get_actor('red cube'))",
    "pick(actor=get_actor('red cube'))",
    "pose_dict['red cube target'] = free_space(actor=get_actor('red cube'))\n"
    "move3d(actor=get_actor('red cube'), target_pose=pose_dict['red cube target'])",
    "place(actor=get_actor('red cube'), target_pose=pose_dict['red cube target'])",
    "pose_dict['red cube'] = get_pose(actor=get_actor('red cube'))\npush(actor=get_actor('red cube'))",
)


@st.composite
def episodes(draw):
    """Segments of random lengths and codes (repeats allowed), optionally ending in done()."""
    lengths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=8))
    codes = [draw(st.sampled_from(CODES)) for _ in lengths]
    if draw(st.booleans()):
        lengths.append(draw(st.integers(1, 5)))
        codes.append(DONE_CODE)
    bounds = np.cumsum([0, *lengths]).tolist()
    return [Segment(bounds[i], bounds[i + 1], c) for i, c in enumerate(codes)]


def check_consistent(labels):
    """Every invariant that ties the fields of a label list together."""
    segments = segments_of(labels)
    assert [lab.step for lab in labels] == list(range(len(labels)))
    starts = {s.start for s in segments}
    for lab in labels:
        seg = segments[lab.segment]
        assert seg.start <= lab.step < seg.end and lab.instruction == seg.code
        assert lab.is_keystep == (lab.step in starts)
        assert lab.code == (seg.code if lab.is_keystep else comment(seg.code))
        assert lab.memory == tuple(s.code for s in segments if s.start < lab.step)
        assert lab.past_actions == "; ".join(lab.memory)
        assert lab.cache_info == extract_memory_info([s.code for s in segments if s.start <= lab.step])
    return segments


@settings(max_examples=150, deadline=None)
@given(episodes(), st.integers(0, 8), st.integers(0, 2**32 - 1), st.booleans())
def test_shift_keeps_segments_ordered_nonempty_and_labels_consistent(segments, k, seed, fix_done):
    labels = labels_from_segments(segments)
    check_consistent(labels)
    shifted = shift_labels(labels, k, np.random.default_rng(seed), fix_done=fix_done)
    new = check_consistent(shifted)
    assert len(shifted) == len(labels)  # every step labelled
    assert [s.code for s in new] == [s.code for s in segments]  # same calls, same order, none vanished
    assert all(s.end > s.start for s in new) and new[0].start == 0
    for old, moved in zip(segments, new, strict=True):
        assert abs(moved.start - old.start) <= k
        if fix_done and old.code == DONE_CODE:
            assert moved.start == old.start
    # Deterministic in the rng state.
    assert shift_labels(labels, k, np.random.default_rng(seed), fix_done=fix_done) == shifted


@settings(max_examples=30, deadline=None)
@given(episodes(), st.integers(0, 2**32 - 1))
def test_shift_zero_is_identity(segments, seed):
    labels = labels_from_segments(segments)
    assert shift_labels(labels, 0, np.random.default_rng(seed)) == labels


def test_shift_moves_boundaries_and_recomputes_memory():
    meta = fake_meta([(SWAP_P1, 10), (SWAP_P2, 10), (SWAP_P3, 10), (DONE_CODE, 1)])
    labels = step_labels(meta)
    moved = {
        tuple(lab.step for lab in shift_labels(labels, 4, np.random.default_rng(s)) if lab.is_keystep)
        for s in range(40)
    }
    assert len(moved) > 10  # boundaries really move
    assert all(starts[0] == 0 and starts[-1] == 30 for starts in moved)  # done() stays at first success
    shifted = shift_labels(labels, 4, np.random.default_rng(1))
    p2 = next(lab.step for lab in shifted if lab.is_keystep and lab.instruction == SWAP_P2)
    assert shifted[p2].memory == (SWAP_P1,) and shifted[p2 - 1].code == comment(SWAP_P1)
    with pytest.raises(ValueError, match="k must be >= 0"):
        shift_labels(labels, -1, np.random.default_rng(0))
    # A legacy RandomState works too.
    check_consistent(shift_labels(labels, 3, np.random.RandomState(0)))
