"""Key-step labels, the memory buffer and `extract_memory_info` (paper Appendix E.3)."""

import pytest

from c2a_jax.codeapi import (
    NO_CACHE_INFO,
    MemoryBuffer,
    comment,
    early_stop,
    extract_memory_info,
    is_commented,
    is_keystep,
    uncomment,
)

# clevrskills_spec.md 6.9.2: the three key-steps of Swap before done().
SWAP_P1 = (
    "pose_dict['yellow cube'] = get_pose(actor=get_actor('yellow cube'))\n"
    "pose_dict['blue hexagon'] = get_pose(actor=get_actor('blue hexagon'))\n"
    "pick_move3d_place(actor=get_actor('yellow cube'), target_pose=free_space(actor=get_actor('yellow cube')))"
)
SWAP_P2 = (
    "pose_dict['blue hexagon'] = get_pose(actor=get_actor('blue hexagon'))\n"
    "pick_move3d_place(actor=get_actor('blue hexagon'), target_pose=pose_dict['yellow cube'])"
)
SWAP_P3 = (
    "pose_dict['yellow cube'] = get_pose(actor=get_actor('yellow cube'))\n"
    "pick_move3d_place(actor=get_actor('yellow cube'), target_pose=pose_dict['blue hexagon'])"
)


def test_swap_cache_info_after_each_keystep():
    memory = MemoryBuffer()
    assert memory.cache_info() == NO_CACHE_INFO

    # Every step of the call after its first is the commented line and leaves memory alone.
    for label in (SWAP_P1, comment(SWAP_P1), comment(SWAP_P1)):
        memory.update(label)
    assert memory.entries == [SWAP_P1]
    assert memory.cache_info() == (
        "pose_dict['yellow cube'] = get_pose(actor=get_actor('yellow cube'))\n"
        "pose_dict['blue hexagon'] = get_pose(actor=get_actor('blue hexagon'))"
    )

    memory.update(SWAP_P2)
    memory.update(comment(SWAP_P2))
    # The blue hexagon's pose is re-stored at point 2; the yellow cube's original pose stays visible.
    assert memory.cache_info().split("\n") == [
        "pose_dict['yellow cube'] = get_pose(actor=get_actor('yellow cube'))",
        "pose_dict['blue hexagon'] = get_pose(actor=get_actor('blue hexagon'))",
    ]

    memory.update(SWAP_P3)
    memory.update("done()")
    assert len(memory.entries) == 4
    assert extract_memory_info(memory.entries) == memory.cache_info()
    assert memory.past_actions().count("; ") == 3


def test_latest_assignment_of_a_key_wins():
    memory = [
        "pose_dict['a'] = get_pose(actor=get_actor('a'))\nmove3d(target_actor=get_actor('a'))",
        "pose_dict['b'] = free_space(actor=get_actor('b'))",
        "pose_dict['a'] = rotate_z(pose_dict['a'], 90)",
        "# pose_dict['c'] = get_pose(actor=get_actor('c'))",  # a comment writes nothing
        "move3d(actor=get_actor('a'), target_pose=pose_dict['a'])",  # a read is not a write
        'pose_dict["d"] == get_pose(actor=get_actor("d"))',  # a comparison is not a write
    ]
    assert extract_memory_info(memory) == (
        "pose_dict['a'] = rotate_z(pose_dict['a'], 90)\npose_dict['b'] = free_space(actor=get_actor('b'))"
    )


def test_no_assignment_gives_the_documented_value():
    assert extract_memory_info([]) == NO_CACHE_INFO
    assert extract_memory_info(["pick_move3d_place(actor=get_actor('red cube'))", "done()"]) == NO_CACHE_INFO


def test_comment_round_trip_and_keystep_tests():
    code = "target_pose = rotate_z(get_pose(actor=get_actor('red cube')), 60)\npick_move3d_place(actor=get_actor('red cube'), target_pose=target_pose, match_ori=True)"
    assert comment(code) == "# " + code.replace("\n", "\n# ")
    assert uncomment(comment(code)) == code
    assert is_keystep(code) and not is_commented(code)
    assert is_commented(comment(code)) and not is_keystep(comment(code))
    assert not is_keystep("") and not is_keystep("   \n ")


def test_early_stop_compares_the_first_k_characters():
    last = "pick_move3d_place(actor=get_actor('red cube'), target_actor=get_actor('green hexagon'))"
    target = comment(last)
    assert early_stop("# pick_mo", last, k=10) is None  # only 9 characters so far
    assert early_stop("# pick_mov", last, k=10) == target
    assert early_stop("# pick_up(", last, k=10) is None  # mismatch within k
    assert early_stop("pick_move3", last, k=10) is None  # a new key-step, not the commented one
    assert early_stop("# pick_mov", None, k=10) is None  # empty memory
    assert early_stop(target, "done()", k=100) is None
    assert early_stop("# done()", "done()", k=100) == "# done()"  # k beyond the line: the whole line
    with pytest.raises(ValueError):
        early_stop("x", last, k=0)
