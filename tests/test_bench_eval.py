"""bench/eval.py's arithmetic on episode records: the per-step split (VLM, DP, simulator, the rest)
adds up to the step time, and resets stay out of it."""

from __future__ import annotations

import pytest

from bench.eval import summarize


def test_the_step_split_sums_to_the_step_time_without_resets():
    records = [
        {"steps": 3, "total_s": 2.0, "reset_s": 0.5, "vlm_s": 0.3, "dp_s": 0.15, "sim_s": 1.5, "wall_s": 2.1,
         "chunks": {"first": 1}, "success": False, "end_reason": "step_budget"},
        {"steps": 3, "total_s": 1.6, "reset_s": 0.4, "vlm_s": 0.3, "dp_s": 0.0, "sim_s": 1.2, "wall_s": 1.7,
         "chunks": {"first": 1}, "success": True, "end_reason": "success"},
    ]  # fmt: skip
    out = summarize(records)
    ms = out["step_ms"]
    assert ms["total"] == pytest.approx((2.0 + 1.6 - 0.9) / 6 * 1e3, abs=0.01)
    assert ms["sim"] == pytest.approx((1.5 + 1.2 - 0.9) / 6 * 1e3, abs=0.01)
    assert ms["vlm"] + ms["dp"] + ms["sim"] + ms["other"] == pytest.approx(ms["total"], abs=0.05)
    assert out["control_hz"] == pytest.approx(6 / 2.7, abs=0.01)
    assert out["episodes_per_hour_per_core"] == pytest.approx(3600 / 1.9, abs=0.1)
    assert out["reset_s_per_episode"] == pytest.approx(0.45) and out["success_rate"] == 0.5
    assert out["chunks_per_episode"] == 1.0 and "queries_per_episode" not in out
