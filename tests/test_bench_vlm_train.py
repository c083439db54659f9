"""bench/vlm_train.py's CPU comparison on a small batch: each side timed in its own processes
(rounds), the figures are those rounds' medians and agree with each other, and a side that fails
is reported with its error rather than as a number."""

from __future__ import annotations

import json

import pytest

from bench import vlm_train


def test_rounds_in_separate_processes_make_the_figures(capsys):
    argv = ["--batch-size", "4", "--max-length", "64", "--steps", "2", "--rounds", "1"]
    assert vlm_train.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    (only,) = out["rounds_ms"]
    assert set(only) == {"ours", "transformers"}
    assert set(only["ours"]) == {"padded", "packed"}
    assert set(only["transformers"]) == {"padded", "padded_to_longest"}
    assert out["ours_step_ms"] == only["ours"]["padded"] > 0
    assert out["transformers_step_ms"] == only["transformers"]["padded"] > 0
    assert out["ours_packed_step_ms"] == only["ours"]["packed"] > 0
    assert out["speedup"] == pytest.approx(out["transformers_step_ms"] / out["ours_step_ms"], abs=0.02)
    assert out["speedup_per_round"] == [out["speedup"]]
    assert out["packed_vs_padded_to_longest_speedup"] == pytest.approx(
        only["transformers"]["padded_to_longest"] / only["ours"]["packed"], abs=0.02
    )
    assert out["ours_tokens_per_s"] == pytest.approx(out["real_tokens_per_batch"] / out["ours_step_ms"] * 1e3, rel=0.01)
    assert 0 < out["longest_example_tokens"] <= 64 and out["packed_rows"] <= 4
    same = out["same_process"]
    assert same["speedup"] == pytest.approx(same["transformers_step_ms"] / same["ours_step_ms"], abs=0.02)
    assert out["config"]["side"] is None


def test_a_failing_side_raises_with_its_error():
    with pytest.raises(RuntimeError, match=r"(?s)ours side failed \(exit 1\).*ExampleTooLong.*max_length 8"):
        vlm_train._run_side("ours", ["--batch-size", "4", "--max-length", "8", "--steps", "1"])


@pytest.mark.parametrize("bad", [["--rounds", "0"], ["--steps", "0"]])
def test_no_rounds_or_no_steps_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        vlm_train.main(bad)
    assert exit_info.value.code == 2 and "must be >= 1" in capsys.readouterr().err
