"""Simulator workers: environments in child processes, spoken to with numpy arrays and JSON only.

Why processes: a simulator step is slow, single-threaded C++ (SAPIEN), so demo generation and
evaluation run one environment per core. A child process also contains the damage: a segfault,
a hang or a leak in the simulator kills or stalls one worker, which the pool restarts, while the
caller gets a clear error for that episode and goes on with the rest.

Why a hand-written protocol and not `multiprocessing`: the worker may run in another interpreter
with other packages, for instance the original ClevrSkills on ManiSkill2 (numpy<1.24, SAPIEN 2) on a
GPU host, beside our JAX process (numpy>=2). Pickle ties both sides to the same classes and library
versions; the frames below need only Python and numpy on the worker side and never run code
they receive. This module imports nothing heavier than numpy and keeps to Python 3.8 syntax, so
that `python -m c2a_jax.sim.worker` runs in such an interpreter with only this file's package on
its path. POSIX only (process groups, signals).

Frame format, version 1 (each message travels as exactly one frame; integers little-endian):

    offset  size  field
    0       4     magic, the ASCII bytes b"C2AW"
    4       2     protocol version, uint16 (1)
    6       2     flags, uint16, 0 (reserved; readers reject other values)
    8       8     H, length of the header in bytes, uint64
    16      8     P, length of the payload in bytes, uint64
    24      H     header: the message as UTF-8 JSON
    24+H    P     payload: the raw bytes of every array, concatenated in index order, no padding

The header is the message itself with every numpy array replaced by a descriptor object
`{"__ndarray__": i, "dtype": d, "shape": [n0, n1, ...]}`: `i` numbers the arrays 0, 1, 2, ... (the
writer numbers them in depth-first order, dicts in insertion order, but a reader must follow the
numbers, not the order of appearance); `d` is numpy's `dtype.str` ("<f4", "|u1", "|b1", "<i8",
"<c8", ...: byte order, kind, item size), kind one of b (bool), i, u, f, c; the shape may be empty
(a 0-d array) and may hold zeros. Array i occupies prod(shape) * itemsize bytes in C order,
starting right after array i-1; P is the sum of those sizes. Everything else in the header is plain
JSON: objects with string keys (no object may have the key "__ndarray__" unless it is a
descriptor), arrays (from Python lists), strings, integers (no fraction or exponent; Python's json
reads them back as int), other numbers (float), true/false, null, plus the non-standard tokens
NaN, Infinity and -Infinity that Python's json writes for non-finite floats. numpy scalars
(np.float32(1.0), np.int64(3), ...) travel as 0-d arrays; tuples, sets, bytes and other objects are
refused with a TypeError naming the key path.

Conversation on a worker's stdin/stdout: the worker first sends
`{"ready": true, "pid": int, "protocol": 1, "python": str}` once its object is built, or
`{"ready": false, "error": str, "traceback": str}` and exits with status 1. Then each request
`{"id": int, "method": str, "kwargs": {...}}` gets one reply `{"id": ..., "ok": true, "result": ...}`
or `{"id": ..., "ok": false, "error": "<Type>: <message>", "traceback": str}`; methods whose name
starts with "_" are refused. `{"method": "__close__"}` or end of input stops the worker, which then
calls its object's `close()` if it has one. The worker writes nothing else to its stdout: Python's
`sys.stdout` and the C-level file descriptor 1 both go to stderr.

    python -m c2a_jax.sim.worker --factory package.module:callable --kwargs '{"seed": 0}'
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import itertools
import json
import logging
import os
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "PROTOCOL_VERSION",
    "JobResult",
    "ProtocolError",
    "WorkerError",
    "WorkerPool",
    "decode",
    "encode",
    "read_frame",
    "serve",
    "write_frame",
]

logger = logging.getLogger(__name__)

MAGIC = b"C2AW"
PROTOCOL_VERSION = 1
_PREFIX = struct.Struct("<4sHHQQ")  # magic, version, flags, header length, payload length
PREFIX_SIZE = _PREFIX.size  # 24
_ARRAY_KEY = "__ndarray__"
_ARRAY_KINDS = "biufc"
_ALLOWED = (
    "a message holds only dicts with str keys, lists, str, int, float, bool, None "
    "and numpy arrays or scalars of bool or numeric dtype"
)
_MODULE = "c2a_jax.sim.worker"
START_ATTEMPTS = 2  # a worker slot that fails to start this many times in a row is given up
_CLOSE_GRACE_S = 5.0


class ProtocolError(ValueError):
    """A frame that does not follow the format in this module's docstring."""


class WorkerError(RuntimeError):
    """A job failed: the method raised, or its worker crashed or timed out past its retries."""

    def __init__(self, message: str, traceback: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback


# ---------------------------------------------------------------------------------------------
# Frames


def _path_str(path: list[Any]) -> str:
    return "".join(f"[{key!r}]" for key in path) if path else "the top level"


def _refuse(value: Any, path: list[Any], hint: str = "") -> TypeError:
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return TypeError(f"cannot encode {name} at {_path_str(path)}: {hint or _ALLOWED}")


def _pack(value: Any, path: list[Any], arrays: list[np.ndarray], seen: set[int]) -> Any:
    """`value` as a JSON-able tree with arrays replaced by descriptors (appended to `arrays`)."""
    if isinstance(value, np.generic) and not isinstance(value, (str, bytes)):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _ARRAY_KINDS:
            raise _refuse(value, path, f"numpy dtype {value.dtype} is not bool or numeric")
        arrays.append(np.ascontiguousarray(value))
        return {_ARRAY_KEY: len(arrays) - 1, "dtype": value.dtype.str, "shape": list(value.shape)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (dict, list)):
        if id(value) in seen:
            raise _refuse(value, path, "circular reference")
        seen.add(id(value))
        try:
            if isinstance(value, list):
                return [_pack(item, [*path, i], arrays, seen) for i, item in enumerate(value)]
            packed = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _refuse(key, [*path, key], "dict keys must be str")
                if key == _ARRAY_KEY:
                    raise _refuse(value, [*path, key], f"the key {_ARRAY_KEY!r} is reserved for arrays")
                packed[key] = _pack(item, [*path, key], arrays, seen)
            return packed
        finally:
            seen.discard(id(value))
    hint = f"{type(value).__name__} is not allowed, use a list" if isinstance(value, (tuple, set, frozenset)) else ""
    raise _refuse(value, path, hint)


def encode(message: Any) -> bytes:
    """One frame holding `message`; TypeError (naming the key path) for values outside the format."""
    arrays: list[np.ndarray] = []
    header = json.dumps(_pack(message, [], arrays, set()), separators=(",", ":")).encode("ascii")
    payload_size = sum(a.nbytes for a in arrays)
    prefix = _PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, len(header), payload_size)
    return b"".join([prefix, header, *(a.tobytes() for a in arrays)])


def frame_size(prefix: bytes | bytearray | memoryview) -> int:
    """Total length of the frame whose first PREFIX_SIZE bytes are `prefix`; ProtocolError if invalid."""
    magic, version, flags, header_size, payload_size = _PREFIX.unpack(bytes(prefix[:PREFIX_SIZE]))
    if magic != MAGIC:
        raise ProtocolError(
            f"bad frame magic {bytes(prefix[:PREFIX_SIZE])!r} (expected {MAGIC!r}); "
            "did something write to the worker's stdout?"
        )
    if version != PROTOCOL_VERSION or flags != 0:
        raise ProtocolError(f"unsupported frame version {version} flags {flags} (this side speaks {PROTOCOL_VERSION})")
    return PREFIX_SIZE + header_size + payload_size


def _descriptor(obj: dict) -> tuple[int, np.dtype, tuple[int, ...]]:
    index, dtype, shape = obj.get(_ARRAY_KEY), obj.get("dtype"), obj.get("shape")
    if set(obj) != {_ARRAY_KEY, "dtype", "shape"} or type(index) is not int or not isinstance(dtype, str):
        raise ProtocolError(f"bad array descriptor {obj!r}")
    if not isinstance(shape, list) or any(type(n) is not int or n < 0 for n in shape):
        raise ProtocolError(f"bad array shape in {obj!r}")
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"bad array dtype in {obj!r}") from e
    if dt.kind not in _ARRAY_KINDS:
        raise ProtocolError(f"array dtype {dtype!r} is not bool or numeric")
    return index, dt, tuple(shape)


def decode(frame: bytes | bytearray | memoryview) -> Any:
    """The message in one complete frame (arrays are fresh, writable copies); ProtocolError if invalid."""
    view = memoryview(frame).cast("B")
    if len(view) < PREFIX_SIZE or frame_size(view) != len(view):
        raise ProtocolError(f"frame of {len(view)} bytes does not match its length fields")
    _, _, _, header_size, payload_size = _PREFIX.unpack(bytes(view[:PREFIX_SIZE]))
    try:
        tree = json.loads(bytes(view[PREFIX_SIZE : PREFIX_SIZE + header_size]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"frame header is not UTF-8 JSON: {e}") from e

    refs: dict[int, dict] = {}

    def collect(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                collect(item)
        elif isinstance(node, dict):
            if _ARRAY_KEY in node:
                index = _descriptor(node)[0]
                if index in refs:
                    raise ProtocolError(f"array index {index} appears twice")
                refs[index] = node
            else:
                for item in node.values():
                    collect(item)

    collect(tree)
    if sorted(refs) != list(range(len(refs))):
        raise ProtocolError(f"array indices {sorted(refs)} are not 0..{len(refs) - 1}")
    arrays: dict[int, np.ndarray] = {}
    offset = PREFIX_SIZE + header_size
    for index in range(len(refs)):
        _, dt, shape = _descriptor(refs[index])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        nbytes = count * dt.itemsize
        if offset + nbytes > len(view):
            raise ProtocolError("frame payload is shorter than its arrays")
        if count == 0:
            arrays[index] = np.empty(shape, dtype=dt)
        else:
            arrays[index] = np.frombuffer(view, dtype=dt, count=count, offset=offset).reshape(shape).copy()
        offset += nbytes
    if offset != PREFIX_SIZE + header_size + payload_size:
        raise ProtocolError(f"payload of {payload_size} bytes does not match its arrays")

    def build(node: Any) -> Any:
        if isinstance(node, list):
            return [build(item) for item in node]
        if isinstance(node, dict):
            if _ARRAY_KEY in node:
                return arrays[node[_ARRAY_KEY]]
            return {key: build(item) for key, item in node.items()}
        return node

    return build(tree)


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise ProtocolError(f"stream ended inside a frame ({size - left} of {size} bytes)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: BinaryIO) -> Any:
    """Read one frame from a blocking binary stream; None at a clean end of stream."""
    first = stream.read(PREFIX_SIZE)
    if not first:
        return None
    prefix = first + _read_exact(stream, PREFIX_SIZE - len(first)) if len(first) < PREFIX_SIZE else first
    return decode(prefix + _read_exact(stream, frame_size(prefix) - PREFIX_SIZE))


def write_frame(stream: BinaryIO, message: Any) -> None:
    """Write `message` as one frame and flush."""
    stream.write(encode(message))
    stream.flush()


# ---------------------------------------------------------------------------------------------
# Worker side


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def load_factory(spec: str) -> Any:
    """The callable named by "package.module:attribute[.attribute...]"."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"factory {spec!r} is not of the form 'package.module:callable'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"factory {spec!r} is not callable")
    return obj


def _claim_stdio() -> tuple[BinaryIO, BinaryIO]:
    """Keep fds 0 and 1 for frames; point fd 0 at /dev/null and fd 1 (and sys.stdout) at stderr."""
    frames_in, frames_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(frames_in, "rb"), os.fdopen(frames_out, "wb")


def _watch_parent() -> None:
    """Exit when the parent dies (the worker is re-parented), even in the middle of a hung job."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="c2a-worker-parent-watch", daemon=True).start()


def _reply(obj: Any, request: Any) -> bytes:
    """The encoded reply to one request (never raises for a method's own errors)."""
    request_id = request.get("id") if isinstance(request, dict) else None
    try:
        if not isinstance(request, dict):
            raise TypeError(f"a request must be a dict, got {type(request).__name__}")
        method, kwargs = request.get("method"), request.get("kwargs", {})
        if not isinstance(method, str) or not method or method.startswith("_"):
            raise AttributeError(f"method {method!r} is not public (names starting with '_' are refused)")
        if not isinstance(kwargs, dict):
            raise TypeError(f"kwargs of {method!r} must be a dict, got {type(kwargs).__name__}")
        function = getattr(obj, method, None)
        if not callable(function):
            raise AttributeError(f"{type(obj).__name__} has no method {method!r}")
        result = function(**kwargs)
        return encode({"id": request_id, "ok": True, "result": result})
    except Exception as e:  # noqa: BLE001 -- the caller gets every method error as a reply
        return encode({"id": request_id, "ok": False, "error": _describe(e), "traceback": traceback.format_exc()})


def serve(
    factory_spec: str,
    kwargs: dict | None = None,
    *,
    reader: BinaryIO | None = None,
    writer: BinaryIO | None = None,
) -> int:
    """Build `factory(**kwargs)` and answer requests until "__close__" or end of input; the exit status.

    Without `reader`/`writer` the frames go over this process's stdin/stdout, which are first taken
    away from everything else (see `_claim_stdio`).
    """
    if reader is None or writer is None:
        reader, writer = _claim_stdio()
    try:
        obj = load_factory(factory_spec)(**(kwargs or {}))
    except Exception as e:  # noqa: BLE001 -- reported to the parent, which decides what to do
        tb = traceback.format_exc()
        sys.stderr.write(f"worker: factory {factory_spec} failed\n{tb}")
        write_frame(writer, {"ready": False, "error": _describe(e), "traceback": tb})
        return 1
    write_frame(writer, {"ready": True, "pid": os.getpid(), "protocol": PROTOCOL_VERSION, "python": sys.version})
    try:
        while True:
            request = read_frame(reader)
            if request is None or (isinstance(request, dict) and request.get("method") == "__close__"):
                return 0
            writer.write(_reply(obj, request))
            writer.flush()
    finally:
        close = getattr(obj, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001 -- shutting down anyway; leave a trace on stderr
                traceback.print_exc()


def main(argv: list[str] | None = None) -> int:
    """`python -m c2a_jax.sim.worker --factory module:callable --kwargs JSON`."""
    parser = argparse.ArgumentParser(prog="python -m c2a_jax.sim.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--factory", required=True, help="package.module:callable that builds the served object")
    parser.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments for the factory")
    args = parser.parse_args(argv)
    kwargs = json.loads(args.kwargs)
    if not isinstance(kwargs, dict):
        parser.error("--kwargs must be a JSON object")
    _watch_parent()
    try:
        return serve(args.factory, kwargs)
    except BrokenPipeError:  # the parent went away
        return 0


# ---------------------------------------------------------------------------------------------
# Parent side


@dataclasses.dataclass(frozen=True)
class JobResult:
    """The outcome of one job of `WorkerPool.map`."""

    index: int  # position of the job in the input
    job: dict
    ok: bool
    result: Any = None  # the method's return value when ok
    error: str | None = None  # "<Type>: <message>" from the method, or why the worker was lost
    attempts: int = 0  # how many times the job was sent to a worker
    worker_restarts: int = 0  # workers lost (crashed, timed out) while running this job
    traceback: str | None = None  # the worker's traceback when the method raised


@dataclasses.dataclass(eq=False)
class _Task:
    index: int
    job: dict
    frame: bytes
    request_id: int
    session: _Session
    attempts: int = 0
    restarts: int = 0


@dataclasses.dataclass(eq=False)
class _Session:
    """One `map` call: its finished events, and how many of its jobs are with workers."""

    events: deque = dataclasses.field(default_factory=deque)
    inflight: int = 0
    active: bool = True


class _Worker:
    """One child process and its pipe state, as the parent sees it."""

    def __init__(self, slot: int, proc: subprocess.Popen) -> None:
        self.slot = slot
        self.proc = proc
        self.rfd = proc.stdout.fileno()
        self.wfd = proc.stdin.fileno()
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)
        self.state = "starting"  # then "idle" <-> "busy"; "dead" once lost or closed
        self.inbuf = bytearray()
        self.out = memoryview(b"")
        self.task: _Task | None = None
        self.deadline: float | None = None


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the worker's process group (it leads one), or to the worker alone."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _stop(procs: Iterable[subprocess.Popen], grace_s: float) -> None:
    """Close the workers' stdin, wait up to `grace_s` for them to exit, then kill their process groups."""
    procs = list(procs)
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(OSError):
            proc.stdout.close()


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"exit code {code}, {signal.Signals(-code).name}"
    return f"exit code {code}"


class WorkerPool:
    """A pool of worker processes, each serving one object built by `factory(**factory_kwargs)`.

    `factory` is "package.module:callable", importable by the workers' interpreter
    (`python_executable`, default this one). Jobs are {"method": str, "kwargs": dict}; at most one
    runs on a worker at a time. A worker that crashes, breaks the protocol or runs past `timeout_s`
    is killed and replaced, and its job retried up to `max_retries` times; a method that raises is
    not retried. Workers start concurrently at construction; their stderr goes to this process's
    stderr, or is appended to `log_path`. Use from one thread; `map` generators may interleave.
    """

    def __init__(
        self,
        factory: str,
        factory_kwargs: dict | None = None,
        num_workers: int | None = None,
        timeout_s: float = 600.0,
        max_retries: int = 1,
        python_executable: str | None = None,
        env: dict | None = None,
        log_path: str | None = None,
    ) -> None:
        if ":" not in factory:
            raise ValueError(f"factory {factory!r} is not of the form 'package.module:callable'")
        self.factory = factory
        self.factory_kwargs = dict(factory_kwargs or {})
        self.num_workers = num_workers if num_workers is not None else (os.cpu_count() or 1)
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {self.num_workers}")
        if timeout_s <= 0 or max_retries < 0:
            raise ValueError(f"need timeout_s > 0 and max_retries >= 0, got {timeout_s} and {max_retries}")
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.python_executable = python_executable or sys.executable
        try:
            kwargs_json = json.dumps(self.factory_kwargs)
        except (TypeError, ValueError) as e:
            raise TypeError(f"factory_kwargs must be JSON-serializable: {e}") from e
        self._command = [self.python_executable, "-m", _MODULE, "--factory", factory, "--kwargs", kwargs_json]
        self._env = self._worker_env(env)
        self._log = open(log_path, "ab") if log_path else None
        self.restarts = 0  # workers replaced after a crash, a timeout or a protocol error
        self._ids = itertools.count(1)
        self._closed = False
        self._start_failures = [0] * self.num_workers
        self._last_start_error = ""
        self._procs: dict[int, subprocess.Popen] = {}  # every process not yet reaped, by pid
        self._finalizer = weakref.finalize(self, _stop, self._procs.values(), 1.0)
        self._workers: list[_Worker | None] = [None] * self.num_workers
        try:
            for slot in range(self.num_workers):
                self._spawn(slot)
        except BaseException:
            self.close()
            raise
        if not any(self._workers):
            self.close()
            raise WorkerError(f"could not start any worker: {self._last_start_error}")

    # -- public API ---------------------------------------------------------------------------

    def map(self, jobs: Iterable[dict]) -> Iterator[JobResult]:
        """Run `jobs` on the workers; yield a `JobResult` for each, in completion order.

        Jobs are read from `jobs` lazily, as workers become free. Abandoning the iterator leaves its
        running jobs to finish (their results are dropped) on otherwise usable workers.
        Raises WorkerError only when no worker can be started at all.
        """
        self._check_open()
        session = _Session()
        source = iter(enumerate(jobs))
        pending: deque[_Task] = deque()
        exhausted = False
        try:
            while True:
                while session.events:
                    result = self._resolve(session.events.popleft(), pending)
                    if result is not None:
                        yield result
                while not session.events:
                    worker = next((w for w in self._workers if w is not None and w.state == "idle"), None)
                    if worker is None:
                        break
                    if pending:
                        self._dispatch(worker, pending.popleft())
                    elif not exhausted:
                        try:
                            index, job = next(source)
                        except StopIteration:
                            exhausted = True
                        else:
                            task = self._make_task(index, job, session)
                            if task is not None:
                                self._dispatch(worker, task)
                    else:
                        break
                if session.events:
                    continue
                if exhausted and not pending and session.inflight == 0:
                    return
                self._poll()
        finally:
            session.active = False

    def call(self, method: str, /, **kwargs: Any) -> Any:
        """Run one job on any worker and return its result; WorkerError if it fails."""
        (result,) = list(self.map([{"method": method, "kwargs": kwargs}]))
        if not result.ok:
            raise WorkerError(result.error or "job failed", result.traceback)
        return result.result

    def wait_ready(self) -> None:
        """Block until every worker slot has started (or been given up); WorkerError if none has."""
        self._check_open()
        while any(w is not None and w.state == "starting" for w in self._workers):
            self._poll()
        if not any(self._workers):
            raise WorkerError(f"no worker could be started: {self._last_start_error}")

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [w.proc.pid for w in self._workers if w is not None]

    def close(self, grace_s: float = _CLOSE_GRACE_S) -> None:
        """Stop every worker: idle ones are asked to close, busy or starting ones are terminated;
        whatever still runs after `grace_s` is killed with its process group."""
        if self._closed:
            return
        self._closed = True
        workers = [w for w in self._workers if w is not None]
        self._workers = [None] * self.num_workers
        for w in workers:
            if w.state == "idle":
                with contextlib.suppress(OSError):
                    os.write(w.wfd, encode({"method": "__close__"}))
            else:
                _signal_group(w.proc, signal.SIGTERM)
            w.state = "dead"
        _stop(list(self._procs.values()), grace_s)
        self._procs.clear()
        self._finalizer.detach()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- workers ------------------------------------------------------------------------------

    def _worker_env(self, extra: dict | None) -> dict:
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (extra or {}).items()})
        env["PYTHONUNBUFFERED"] = "1"
        # The package root goes last on the path, so that the worker module imports in any interpreter.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in parts:
            env["PYTHONPATH"] = os.pathsep.join([*parts, root])
        return env

    def _check_open(self) -> None:
        if self._closed:
            raise WorkerError("the worker pool is closed")

    def _spawn(self, slot: int) -> None:
        """Start a worker in `slot` (without waiting for it), or give the slot up."""
        while True:
            try:
                proc = subprocess.Popen(
                    self._command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=self._log,
                    env=self._env,
                    bufsize=0,
                    start_new_session=True,  # its own process group: killed as a whole, deaf to Ctrl-C
                )
            except OSError as e:
                if self._start_failed(slot, f"could not run {self.python_executable}: {e}"):
                    continue
                return
            self._procs[proc.pid] = proc
            worker = _Worker(slot, proc)
            worker.deadline = time.monotonic() + self.timeout_s
            self._workers[slot] = worker
            return

    def _start_failed(self, slot: int, reason: str) -> bool:
        """Count a failed start; True when the slot may try again."""
        self._start_failures[slot] += 1
        self._last_start_error = reason
        if self._start_failures[slot] < START_ATTEMPTS:
            logger.warning("worker %d failed to start (%s); trying again", slot, reason)
            return True
        logger.error("worker %d failed to start %d times (%s); giving it up", slot, START_ATTEMPTS, reason)
        self._workers[slot] = None
        return False

    def _reap(self, worker: _Worker, grace_s: float) -> tuple[int, bool]:
        """Give the worker `grace_s` to exit, then kill its process group; (exit code, whether killed)."""
        worker.state = "dead"
        proc = worker.proc
        killed = False
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            killed = True
        code = proc.wait()
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self._procs.pop(proc.pid, None)
        return code, killed

    def _lose(self, worker: _Worker, reason: str | None = None) -> None:
        """The worker crashed (reason None: its pipe closed), hung or broke the protocol: reap it,
        report its job, start a new one."""
        if worker.state == "dead":
            return
        was, task = worker.state, worker.task
        code, killed = self._reap(worker, 0.0 if reason else 0.5)
        worker.task = None
        if reason is None:
            reason = "worker closed its pipes and was killed" if killed else f"worker crashed ({_exit_text(code)})"
        self._workers[worker.slot] = None
        if was == "starting":
            if not reason.startswith("factory "):
                reason += " before it was ready"
            if self._start_failed(worker.slot, reason):
                self._spawn(worker.slot)
            return
        self.restarts += 1
        logger.warning("worker %d (pid %d): %s; restarting it", worker.slot, worker.proc.pid, reason)
        if task is not None:
            task.restarts += 1
            task.session.inflight -= 1
            if task.session.active:
                task.session.events.append(("lost", task, reason))
        self._spawn(worker.slot)

    # -- jobs ---------------------------------------------------------------------------------

    def _make_task(self, index: int, job: Any, session: _Session) -> _Task | None:
        """A task for `job`, or None after queueing a failed result for a job that cannot be sent."""
        try:
            if not isinstance(job, dict):
                raise TypeError(f"a job must be a dict {{'method': str, 'kwargs': dict}}, got {type(job).__name__}")
            method, kwargs = job.get("method"), job.get("kwargs", {})
            if not isinstance(method, str) or not method or method.startswith("_"):
                raise ValueError(f"method {method!r} is not public (names starting with '_' are refused)")
            if not isinstance(kwargs, dict):
                raise TypeError(f"kwargs must be a dict, got {type(kwargs).__name__}")
            request_id = next(self._ids)
            frame = encode({"id": request_id, "method": method, "kwargs": kwargs})
        except (TypeError, ValueError) as e:
            error = f"could not send job {index}: {_describe(e)}"
            session.events.append(("result", JobResult(index, job, False, error=error)))
            return None
        return _Task(index, job, frame, request_id, session)

    def _dispatch(self, worker: _Worker, task: _Task) -> None:
        task.attempts += 1
        task.session.inflight += 1
        worker.state, worker.task = "busy", task
        worker.deadline = time.monotonic() + self.timeout_s
        worker.out = memoryview(task.frame)
        self._flush(worker)

    def _resolve(self, event: tuple, pending: deque[_Task]) -> JobResult | None:
        """The JobResult for a finished event, or None when the job was queued for a retry."""
        kind, payload = event[0], event[1]
        if kind == "result":
            return payload
        task: _Task = payload
        common = {"attempts": task.attempts, "worker_restarts": task.restarts}
        if kind == "reply":
            reply = event[2]
            if reply.get("ok") is True:
                return JobResult(task.index, task.job, True, result=reply.get("result"), **common)
            error, tb = reply.get("error"), reply.get("traceback")
            return JobResult(task.index, task.job, False, error=str(error), traceback=tb, **common)
        if task.attempts <= self.max_retries:
            pending.appendleft(task)
            return None
        retried = task.attempts - 1
        retries = "not retried" if retried == 0 else f"retried {retried} time{'s' if retried > 1 else ''}"
        method = task.job.get("method")
        error = f"{event[2]} while running job {task.index} (method {method!r}); {retries}"
        return JobResult(task.index, task.job, False, error=error, **common)

    # -- I/O ----------------------------------------------------------------------------------

    def _flush(self, worker: _Worker) -> None:
        """Write as much of the pending request as the pipe takes without blocking."""
        while worker.out.nbytes and worker.state != "dead":
            try:
                written = os.write(worker.wfd, worker.out)
            except BlockingIOError:
                return
            except (BrokenPipeError, ConnectionResetError):
                self._lose(worker)
                return
            worker.out = worker.out[written:]

    def _read(self, worker: _Worker) -> None:
        """Take what the worker wrote and act on every complete frame."""
        eof = False
        while not eof:
            try:
                chunk = os.read(worker.rfd, 1 << 20)
            except BlockingIOError:
                break
            eof = not chunk
            worker.inbuf += chunk
        while len(worker.inbuf) >= PREFIX_SIZE and worker.state != "dead":
            try:
                size = frame_size(worker.inbuf)
                if len(worker.inbuf) < size:
                    break
                frame = worker.inbuf[:size]
                del worker.inbuf[:size]
                message = decode(frame)
                if not isinstance(message, dict):
                    raise ProtocolError(f"a message must be a dict, got {type(message).__name__}")
            except ProtocolError as e:
                self._lose(worker, f"worker broke the protocol ({e})")
                return
            self._on_message(worker, message)
        if eof:
            self._lose(worker)

    def _on_message(self, worker: _Worker, message: dict) -> None:
        if worker.state == "starting":
            if message.get("ready") is True:
                worker.state, worker.deadline = "idle", None
                self._start_failures[worker.slot] = 0
            else:
                self._lose(worker, f"factory {self.factory} failed: {message.get('error')}")
            return
        task = worker.task
        if worker.state != "busy" or task is None or message.get("id") != task.request_id:
            self._lose(worker, f"worker broke the protocol (unexpected message {str(message)[:200]})")
            return
        worker.state, worker.task, worker.deadline = "idle", None, None
        task.session.inflight -= 1
        if task.session.active:
            task.session.events.append(("reply", task, message))

    def _poll(self) -> None:
        """Wait for any worker I/O (or the nearest deadline) once, then handle what happened."""
        self._check_open()
        live = [w for w in self._workers if w is not None]
        if not live:
            raise WorkerError(f"no worker could be started: {self._last_start_error}")
        deadlines = [w.deadline for w in live if w.deadline is not None]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 1.0
        with selectors.DefaultSelector() as selector:
            for w in live:
                selector.register(w.rfd, selectors.EVENT_READ, w)
                if w.out.nbytes:
                    selector.register(w.wfd, selectors.EVENT_WRITE, w)
            ready = selector.select(timeout)
        for key, mask in ready:
            worker = key.data
            if worker.state == "dead":
                continue
            if mask & selectors.EVENT_WRITE:
                self._flush(worker)
            else:
                self._read(worker)
        now = time.monotonic()
        for w in live:
            if w.state != "dead" and w.deadline is not None and now >= w.deadline:
                self._lose(w, f"worker timed out after {self.timeout_s:g} s")


if __name__ == "__main__":
    sys.exit(main())
