"""The episode runner without a simulator: resume skips finished episodes, a worker error is retried
once then recorded, exceptions never escape, records are whole lines even after a killed writer."""

import json
import threading

import pytest

from c2a_jax.eval import runner


class FakeSim:
    def __init__(self, slot):
        self.slot, self.closed = slot, False

    def close(self):
        self.closed = True


def _jobs():
    return runner.make_jobs([{"task": "Pick"}, {"task": "Touch", "task_args": {"push": True}}], range(4),
                            mode="vlm_oracle", object_split="test")  # fmt: skip


def test_resume_runs_only_missing_episodes(tmp_path):
    out = tmp_path / "episodes.jsonl"
    seen, sims = [], []

    def make_sim(slot):
        sims.append(FakeSim(slot))
        return sims[-1]

    def episode(sim, job):
        seen.append((job["task"], job["seed"]))
        return {"success": job["seed"] % 2 == 0, "end_reason": "done"}

    counts = runner.run_jobs(_jobs()[:5], make_sim=make_sim, episode_fn=episode, out_path=out, num_workers=2,
                             progress=False)  # fmt: skip
    assert counts == {"skipped": 0, "run": 5, "errors": 0} and all(s.closed for s in sims)
    # a killed writer left half a line: the next run cuts it and goes on
    with open(out, "a") as f:
        f.write('{"task": "Touch", "se')
    seen.clear()
    counts = runner.run_jobs(_jobs(), make_sim=make_sim, episode_fn=episode, out_path=out, num_workers=2,
                             progress=False)  # fmt: skip
    assert counts == {"skipped": 5, "run": 3, "errors": 0} and sorted(seen) == [
        ("Touch", 1),
        ("Touch", 2),
        ("Touch", 3),
    ]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 8 and len({runner.job_key(r) for r in records}) == 8
    assert all(r["mode"] == "vlm_oracle" and r["object_split"] == "test" and r["attempts"] == 1 for r in records)
    assert runner.run_jobs(_jobs(), make_sim=make_sim, episode_fn=episode, out_path=out, progress=False)["run"] == 0


def test_worker_errors_are_retried_once_then_recorded(tmp_path):
    out = tmp_path / "episodes.jsonl"
    calls = {}
    lock = threading.Lock()

    def episode(sim, job):
        with lock:
            calls[job["seed"]] = calls.get(job["seed"], 0) + 1
            n = calls[job["seed"]]
        if job["seed"] == 0 and n == 1:
            return {"end_reason": "worker_error", "error": "worker died", "success": False}  # then fine
        if job["seed"] == 1:
            raise BrokenPipeError("simulator gone")  # every time
        return {"success": True, "end_reason": "done"}

    jobs = runner.make_jobs([{"task": "Pick"}], range(3), mode="dp")
    counts = runner.run_jobs(jobs, make_sim=FakeSim, episode_fn=episode, out_path=out, progress=False)
    assert counts == {"skipped": 0, "run": 3, "errors": 1}
    records = {r["seed"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert records[0]["success"] and records[0]["attempts"] == 2 and "error" not in records[0]
    assert records[1]["attempts"] == 2 and "BrokenPipeError" in records[1]["error"] and not records[1]["success"]
    assert calls == {0: 2, 1: 2, 2: 1}


def test_a_slot_that_cannot_start_is_reported(tmp_path):
    def make_sim(slot):
        raise OSError("no display")

    with pytest.raises(RuntimeError, match="not run"):
        runner.run_jobs(_jobs(), make_sim=make_sim, episode_fn=lambda s, j: {}, out_path=tmp_path / "x.jsonl",
                        progress=False)  # fmt: skip
