"""Transition precision and recall (`c2a_jax.eval.transitions`), and the late key-step examples that
teach a VLM queried every step to write a call it missed (`data.late_keystep_fraction`)."""

import numpy as np
import pytest

from c2a_jax.codeapi import comment
from c2a_jax.data import vlm
from c2a_jax.data.synthetic import DONE, PICK, PLACE, TARGET, make_episode
from c2a_jax.eval.transitions import episode_counts, keystep_events, summarise

A, B, C = "move3d(pose=1)", "place(actor=get_actor('red cube'))", "done()"


def _codes(starts, calls, n):
    """Per-step code: each call plain at its start, commented until the next one."""
    out = []
    for t in range(n):
        i = max(j for j, s in enumerate(starts) if s <= t)
        out.append(calls[i] if t == starts[i] else "# " + calls[i])
    return out


def test_a_writer_that_never_leaves_its_first_call_has_zero_recall_but_high_agreement():
    reference = _codes([0, 10, 20], [A, B, C], 22)
    stuck = _codes([0], [A], 22)
    counts = episode_counts(reference, stuck)
    summary = summarise([counts])
    assert summary["reference"] == 2 and summary["predicted"] == 0
    assert summary["recall"] == 0.0 and summary["precision"] is None
    assert summary["first_call_agreement"] == 1.0
    assert summary["commented_agreement"] == pytest.approx(9 / 19, abs=1e-4)


def test_matches_within_the_window_same_line_once_and_timing_apart():
    reference = _codes([0, 10, 20], [A, B, C], 30)
    late = _codes([0, 13, 24], [A, B, C], 30)  # B 3 steps late (counts), done() 4 late (does not)
    summary = summarise([episode_counts(reference, late, within=3)], within=3)
    assert (summary["matched"], summary["recall"], summary["precision"]) == (1, 0.5, 0.5)
    assert summarise([episode_counts(reference, late, within=4)])["recall"] == 1.0
    wrong = _codes([0, 10, 20], [A, "place(actor=get_actor('blue cube'))", C], 30)
    summary = summarise([episode_counts(reference, wrong)])
    assert summary["recall"] == 0.5 and summary["timing_recall"] == 1.0
    repeated = list(reference)
    repeated[11] = B  # the same line twice: one match, one false transition
    summary = summarise([episode_counts(reference, repeated)])
    assert summary["recall"] == 1.0 and summary["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert keystep_events(reference) == [(10, B), (20, C)]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="steps"):
        episode_counts([A, "# " + A], [A])
    with pytest.raises(ValueError, match="within"):
        episode_counts([A], [A], within=-1)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_late_keystep_examples_ask_mid_call_with_the_call_missing_from_memory(fraction):
    episode = make_episode()  # PICK [0, 3), TARGET [3, 7), PLACE [7, 10), DONE [10, 12)
    starts = {0: PICK, 3: TARGET, 7: PLACE, 10: DONE}
    cfg = vlm.VlmExampleConfig(keystep_request_fraction=0.0, grid_question_fraction=0.0,
                               late_keystep_fraction=fraction)  # fmt: skip
    rng = np.random.default_rng(0)
    examples = [e for _ in range(40) for e in vlm.episode_examples(episode, cfg, rng, [])]
    late = normal = 0
    for e in examples:
        t = int(e.image[0, 0, 0])  # the synthetic image holds its step
        start = max(s for s in starts if s <= t)
        calls_before = [starts[s] for s in sorted(starts) if s < start]
        if t == start:  # a key-step: always the plain call with the calls before it
            assert e.answer == starts[start] and list(e.memory) == calls_before
        elif e.answer == starts[start]:  # late: the running call, plain, not yet in memory
            late += 1
            assert list(e.memory) == calls_before
        else:
            normal += 1
            assert e.answer == comment(starts[start]) and list(e.memory) == [*calls_before, starts[start]]
    mid = late + normal
    assert mid > 200
    assert late / mid == pytest.approx(fraction, abs=0.08)
