"""Object-name substitution for VLM examples (`c2a_jax.data.rename`): consistent across prompt,
memory and answer, simultaneous (swaps do not collapse), whole names only, train-split names only,
and off unless configured."""

import re

import numpy as np

from c2a_jax.data import vlm
from c2a_jax.data.rename import rename_map, substitute, train_pool
from c2a_jax.data.synthetic import make_episode
from c2a_jax.sim.objects import SPLIT_PAIRS, object_name

NAMES = re.compile(r"get_actor\('([^']+)'\)")


def test_rename_map_is_injective_stays_in_the_pool_and_leaves_other_names_alone():
    pool = ["red cube", "blue cube", "green cube", "red star"]
    rng = np.random.default_rng(0)
    targets = set()
    for _ in range(200):
        m = rename_map(["red cube", "blue cube", "dax", "red star"], pool, rng)
        assert set(m) == {"red cube", "blue cube", "red star"}  # 'dax' is not in the pool: kept
        assert len(set(m.values())) == 3 and set(m.values()) <= set(pool)
        targets.update(m.values())
    assert targets == set(pool)  # every pool name is drawn sometimes
    assert rename_map(["dax", "wug"], pool, rng) == {}


def test_substitution_is_simultaneous_and_whole_names_only():
    swap = {"red cube": "blue cube", "blue cube": "red cube"}
    text = "Place the red cube left of the blue cube; get_actor('red cube') red cubes, dark-red cube"
    assert substitute(text, swap) == (
        "Place the blue cube left of the red cube; get_actor('blue cube') red cubes, dark-blue cube"
    )
    assert substitute("pose_dict['red cube target']", swap) == "pose_dict['blue cube target']"
    longer = {"red cube": "x", "big red cube": "y"}
    assert substitute("the big red cube and the red cube", longer) == "the y and the x"
    assert substitute("nothing here", {}) == "nothing here"


def test_the_pool_is_the_train_split():
    expected = {object_name(c, s) for c, s in SPLIT_PAIRS["train"]}
    held_out = {object_name(c, s) for c, s in SPLIT_PAIRS["test"]}
    assert set(train_pool()) == expected and not set(train_pool()) & held_out and len(train_pool()) == 24


def test_renamed_examples_agree_across_prompt_memory_and_answer():
    episode = make_episode()
    cfg = vlm.VlmExampleConfig(grid_question_fraction=0.25, rename_objects_fraction=0.5)
    plain = vlm.VlmExampleConfig(grid_question_fraction=0.25)
    rng = np.random.default_rng(4)
    examples = [e for _ in range(60) for e in vlm.episode_examples(episode, cfg, rng, ["green star"])]
    code = [e for e in examples if e.prompt is not None]
    renamed = [e for e in code if e.prompt not in episode["prompts"]]
    assert 0.35 < len(renamed) / len(code) < 0.6  # the configured share (a draw may keep both names)
    pool = set(train_pool())
    for e in code:
        names = set(NAMES.findall(e.answer)) | {n for m in e.memory for n in NAMES.findall(m)}
        assert names <= pool and all(n in e.prompt for n in names)  # every named object is the prompt's
    for e in renamed:  # the same map on both objects of PlaceNextTo: two distinct names
        first, second = re.match(r"\w+ the (\w+ \w+) .* the (\w+ \w+)$", e.prompt).groups()
        assert first != second and first in pool and second in pool
    # grid questions are left alone, and a zero fraction draws nothing (the stream is the paper's)
    assert all(e.prompt is None for e in examples if e.question is not None)
    a = vlm.episode_examples(episode, plain, np.random.default_rng(5), ["green star"])
    b = vlm.episode_examples(episode, vlm.VlmExampleConfig(grid_question_fraction=0.25, rename_objects_fraction=0.0),
                             np.random.default_rng(5), ["green star"])  # fmt: skip
    assert [(x.prompt, x.answer, x.memory) for x in a] == [(x.prompt, x.answer, x.memory) for x in b]
