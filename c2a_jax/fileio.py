"""Atomic file writes: a crash never leaves a half-written file where a finished one should be.

Long jobs (demo generation, training, evaluation) write their outputs with these helpers: the data
goes to a temporary file in the same directory, is flushed to disk, and is renamed over the target
in one step, so readers see either the old file or the new one. Their progress logs (which seeds,
steps or sources are done) are JSONL files appended one fsynced record at a time; a writer killed
mid-line leaves a torn last line, which the reader skips and the next append steps over.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (same-directory temp file, fsync, rename)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any], **dumps_kwargs: Any) -> None:
    """Append `record` as one JSON line in a single write, fsynced before returning. After a torn
    last line the record still starts a line of its own, so one crash costs one record, not two."""
    line = json.dumps(record, **dumps_kwargs) + "\n"
    fd = os.open(os.fspath(path), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The complete records of a JSONL file, in order: a torn line (one without its newline, or not
    a JSON object) is skipped; a missing file has none."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                out.append(record)
    return out


def latest_jsonl_records(path: str | os.PathLike, key: str) -> dict[Any, dict]:
    """`record[key]` -> the last complete record with that key (a progress log: seed -> outcome)."""
    return {r[key]: r for r in read_jsonl(path) if key in r}
