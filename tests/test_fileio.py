"""The atomic writes and the JSONL progress logs every long job resumes from: a crash mid-write
never leaves a half file in place, and a torn log line costs that one record only."""

from __future__ import annotations

import json
import os

import pytest

from c2a_jax.fileio import append_jsonl, atomic_write_text, latest_jsonl_records, read_jsonl


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "out" / "a.json"
    atomic_write_text(path, "first")
    assert path.read_text() == "first"

    def crash(*_):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(path, "second")
    assert path.read_text() == "first" and os.listdir(path.parent) == ["a.json"]  # no temp file left


def test_append_after_a_torn_line_starts_a_new_line(tmp_path):
    path = tmp_path / "log.jsonl"
    assert read_jsonl(path) == [] and latest_jsonl_records(path, "seed") == {}
    append_jsonl(path, {"seed": 0, "ok": True})
    with open(path, "a") as f:
        f.write('{"seed": 1, "o')  # the writer was killed here
    append_jsonl(path, {"seed": 1, "ok": False})
    append_jsonl(path, {"seed": 0, "ok": False}, sort_keys=True)
    lines = path.read_text().splitlines()
    assert lines[1] == '{"seed": 1, "o' and json.loads(lines[2]) == {"seed": 1, "ok": False}
    assert [r["seed"] for r in read_jsonl(path)] == [0, 1, 0]
    assert latest_jsonl_records(path, "seed") == {0: {"ok": False, "seed": 0}, 1: {"seed": 1, "ok": False}}


def test_a_complete_looking_last_line_without_newline_is_torn(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"seed": 0}\n[1, 2]\n{"seed": 1}')  # a non-record line, then no newline: torn
    assert read_jsonl(path) == [{"seed": 0}]
