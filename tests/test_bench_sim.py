"""bench/sim.py's resumable oracle run: seeds already in the per-seed log are not run again, a
torn last line (a run killed mid-write) neither breaks the reading nor the next append, and the
summary counts logged and new seeds alike."""

from __future__ import annotations

import json

from bench.sim import oracle
from c2a_jax.fileio import latest_jsonl_records


def test_a_rerun_runs_only_the_missing_seeds(tmp_path):
    log = tmp_path / "Pick.jsonl"
    log.write_text(
        json.dumps({"seed": 0, "success": True, "steps": 30}) + "\n"
        + json.dumps({"seed": 1, "success": False, "steps": 500}) + "\n"
        + '{"seed": 2, "succ'  # torn
    )  # fmt: skip
    out = oracle(["Pick"], seeds=3, imaged=0, workers=1, seed_log=str(tmp_path))["Pick"]
    lines = log.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1])["seed"] == 2  # only seed 2 ran, on its own line
    records = latest_jsonl_records(log, "seed")
    assert sorted(records) == [0, 1, 2] and records[1]["success"] is False
    new = records[2]
    assert new["steps"] > 0 and new["seconds"] > 0 and "error" not in new
    assert out["seeds"] == 3 and out["successes"] == 1 + int(new["success"])
    assert out["failed_seeds"] == [1] + ([] if new["success"] else [2])
    again = oracle(["Pick"], seeds=3, imaged=0, workers=1, seed_log=str(tmp_path))["Pick"]
    assert again == out and len(log.read_text().splitlines()) == 4  # nothing left to run
