"""The simulator worker bridge: frames, the worker loop, and a pool that survives crashes and hangs.

Frames are checked in-process (hypothesis round trips, refusals naming the key path, a frame built
by hand from the docstring's layout); the pool runs real child processes serving
`tests.sim_worker_fixtures.Dummy`, and is crashed, killed and hung on purpose.
"""

import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from c2a_jax.sim.worker import (
    PROTOCOL_VERSION,
    JobResult,
    ProtocolError,
    WorkerError,
    WorkerPool,
    decode,
    encode,
    read_frame,
    serve,
    write_frame,
)
from tests.sim_worker_fixtures import expected_arrays

ROOT = Path(__file__).resolve().parents[1]
FACTORY = "tests.sim_worker_fixtures:Dummy"
ENV = {"PYTHONPATH": str(ROOT)}


def make_pool(**kwargs) -> WorkerPool:
    kwargs.setdefault("num_workers", 1)
    kwargs.setdefault("env", ENV)
    return WorkerPool(kwargs.pop("factory", FACTORY), **kwargs)


def job(method: str, **kwargs) -> dict:
    return {"method": method, "kwargs": kwargs}


def assert_same(a, b, path="") -> None:
    """Equal values of equal types; arrays bit for bit with the same dtype and shape."""
    if isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray), path
        assert (a.dtype, a.shape) == (b.dtype, b.shape), path
        assert a.tobytes() == np.ascontiguousarray(b).tobytes(), path
    elif isinstance(b, dict):
        assert type(a) is dict and list(a) == list(b), path
        for key in b:
            assert_same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(b, list):
        assert type(a) is list and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert type(a) is type(b) and a == b, path


def as_sent(value):
    """What a value turns into on the wire: numpy scalars become 0-d arrays."""
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, dict):
        return {k: as_sent(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_sent(v) for v in value]
    return value


def children() -> set[int]:
    """Pids of this process's live (not yet reaped) children."""
    me, found = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.add(int(entry))
    return found


# ---------------------------------------------------------------------------------------------
# Frames

dtypes = st.sampled_from(["?", "u1", "i1", "<u2", "<i4", ">i8", "<f2", "<f4", ">f8", "<c8", "<c16"])
arrays = dtypes.flatmap(lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10) | arrays
keys = st.text(max_size=8).filter(lambda k: k != "__ndarray__")
messages = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_frames_round_trip(message):
    frame = encode(message)
    assert_same(decode(frame), message)
    assert_same(read_frame(io.BytesIO(frame + encode(1))), message)


def test_numpy_scalars_views_and_special_floats_round_trip():
    message = expected_arrays() | {"floats": [float("inf"), -0.0, 1e300], "np_float": np.float64(2.5)}
    decoded = decode(encode(message))
    assert_same(decoded, as_sent(message))
    assert decoded["image"].flags.writeable and decoded["image"].flags.c_contiguous
    assert np.isnan(decode(encode(float("nan"))))


@pytest.mark.parametrize(
    ("message", "where", "what"),
    [
        ({"a": [1, {"b": {1, 2}}]}, "['a'][1]['b']", "set"),
        ({"obs": {"cam": object()}}, "['obs']['cam']", "object"),
        ({"pose": (1.0, 2.0)}, "['pose']", "tuple"),
        ([{1: "x"}], "[0][1]", "keys must be str"),
        ({"names": np.array(["a", "b"])}, "['names']", "<U1"),
        ({"objs": np.array([None], dtype=object)}, "['objs']", "object"),
        ({"x": {"__ndarray__": 0}}, "['x']['__ndarray__']", "reserved"),
        ({"raw": b"bytes"}, "['raw']", "bytes"),
        (lambda: 0, "the top level", "function"),
    ],
)
def test_unsupported_values_are_refused_with_their_key_path(message, where, what):
    with pytest.raises(TypeError) as info:
        encode(message)
    assert f"at {where}:" in str(info.value) and what in str(info.value)


def test_circular_structures_are_refused():
    loop: list = [1]
    loop.append({"again": loop})
    with pytest.raises(TypeError, match=r"circular reference"):
        encode(loop)


def test_a_frame_built_from_the_docstring_decodes():
    """Follow the documented layout by hand: arrays listed out of order, loose JSON whitespace."""
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.array([True, False])
    header = json.dumps(
        {
            "b": {"__ndarray__": 1, "dtype": "|b1", "shape": [2]},
            "a": {"__ndarray__": 0, "dtype": "<f4", "shape": [2, 3]},
        },
        indent=2,
    ).encode()
    payload = a.tobytes() + b.tobytes()
    frame = b"C2AW" + struct.pack("<HHQQ", PROTOCOL_VERSION, 0, len(header), len(payload)) + header + payload
    decoded = decode(frame)
    assert_same(decoded["a"], a)
    assert_same(decoded["b"], b)
    # ... and what encode writes follows the same layout.
    mine = encode({"a": a})
    assert mine[:8] == b"C2AW" + struct.pack("<HH", PROTOCOL_VERSION, 0)
    header_size, payload_size = struct.unpack("<QQ", mine[8:24])
    assert json.loads(mine[24 : 24 + header_size]) == {"a": {"__ndarray__": 0, "dtype": "<f4", "shape": [2, 3]}}
    assert mine[24 + header_size :] == a.tobytes() and payload_size == a.nbytes


@pytest.mark.parametrize(
    "frame",
    [
        b"hello world, this is not a frame at all",
        b"C2AW" + struct.pack("<HHQQ", 99, 0, 2, 0) + b"{}",
        encode({"a": np.zeros(3)})[:-1],
        b"C2AW" + struct.pack("<HHQQ", PROTOCOL_VERSION, 0, 3, 0) + b"{x}",
        b"C2AW" + struct.pack("<HHQQ", PROTOCOL_VERSION, 0, 47, 1) + b'{"__ndarray__": 0, "dtype": "|O", "shape": [1]}',
    ],
)
def test_malformed_frames_raise_protocol_error(frame):
    with pytest.raises(ProtocolError):
        decode(frame)


# ---------------------------------------------------------------------------------------------
# The worker loop, in-process


def test_serve_answers_requests_in_process():
    requests = io.BytesIO()
    write_frame(requests, {"id": 1, "method": "echo", "kwargs": {"x": np.arange(3)}})
    write_frame(requests, {"id": 2, "method": "boom", "kwargs": {}})
    write_frame(requests, {"id": 3, "method": "_private", "kwargs": {}})
    write_frame(requests, {"id": 4, "method": "unsendable", "kwargs": {}})
    write_frame(requests, {"id": 5, "method": "get_tag"})
    write_frame(requests, {"method": "__close__"})
    write_frame(requests, {"id": 6, "method": "echo", "kwargs": {"x": "never read"}})
    requests.seek(0)
    replies = io.BytesIO()
    assert serve(FACTORY, {"tag": "t"}, reader=requests, writer=replies) == 0
    replies.seek(0)
    ready, *answers = iter(lambda: read_frame(replies), None)
    assert ready["ready"] is True and ready["pid"] == os.getpid()
    assert [a["id"] for a in answers] == [1, 2, 3, 4, 5]
    assert_same(answers[0]["result"], np.arange(3))
    assert answers[1]["ok"] is False and answers[1]["error"] == "ValueError: boom from the worker"
    assert "Traceback" in answers[1]["traceback"]
    assert answers[2]["ok"] is False and answers[2]["error"].startswith("AttributeError:")
    assert answers[3]["ok"] is False and "['result']['ok'][1]['bad']" in answers[3]["error"]
    assert answers[4] == {"id": 5, "ok": True, "result": "t"}


def test_serve_reports_a_failing_factory():
    replies = io.BytesIO()
    assert serve("tests.sim_worker_fixtures:broken_factory", {}, reader=io.BytesIO(), writer=replies) == 1
    replies.seek(0)
    ready = read_frame(replies)
    assert ready["ready"] is False and ready["error"] == "RuntimeError: this factory always fails"


# ---------------------------------------------------------------------------------------------
# The pool, with real worker processes


@pytest.fixture(scope="module")
def pool():
    with make_pool(num_workers=2, factory_kwargs={"tag": "shared", "noisy": True}) as p:
        yield p


@settings(max_examples=40, deadline=None)
@given(messages)
def test_messages_round_trip_through_a_worker(pool, message):
    assert_same(pool.call("echo", x=message), message)


def test_arrays_of_every_kind_and_a_large_one_come_back(pool):
    assert_same(pool.call("arrays"), as_sent(expected_arrays()))
    big = np.random.default_rng(1).standard_normal((1024, 1024, 3)).astype(np.float32)  # 12 MiB each way
    assert_same(pool.call("echo", x={"big": big}), {"big": big})


def test_stdout_noise_does_not_break_the_protocol(pool):
    # The pool's factory printed at construction; this job prints and writes to fd 1 too.
    assert pool.call("noisy") == "still fine"
    assert pool.call("get_tag") == "shared"


def test_a_method_exception_is_reported_without_a_restart(pool):
    pids_before, restarts = set(pool.pids), pool.restarts
    results = sorted(pool.map([job("boom"), job("echo", x=1), job("pid")]), key=lambda r: r.index)
    assert results[0].ok is False and results[0].error == "ValueError: boom from the worker"
    assert results[0].attempts == 1 and results[0].worker_restarts == 0 and "boom" in results[0].traceback
    assert results[1].ok and results[1].result == 1
    assert results[2].result in pids_before
    assert set(pool.pids) == pids_before and pool.restarts == restarts
    with pytest.raises(WorkerError, match="ValueError: boom"):
        pool.call("boom")


def test_jobs_that_cannot_be_sent_fail_alone(pool):
    jobs = [job("echo", x={1, 2}), job("_private"), "not a job", job("echo", x=2), job("unsendable")]
    results = sorted(pool.map(jobs), key=lambda r: r.index)
    assert [r.ok for r in results] == [False, False, False, True, False]
    assert "at ['kwargs']['x']" in results[0].error and results[0].attempts == 0
    assert "not public" in results[1].error
    assert results[3].result == 2
    assert "cannot encode set at ['result']['ok'][1]['bad']" in results[4].error
    with pytest.raises(WorkerError, match="kwargs"):
        pool.call("echo", x=object())


def test_two_workers_run_two_jobs_at_once_and_yield_in_completion_order():
    with make_pool(num_workers=2) as p:
        p.wait_ready()
        assert len(p.pids) == 2
        start = time.monotonic()
        results = list(p.map([job("hang", seconds=1.0), job("hang", seconds=1.0)]))
        elapsed = time.monotonic() - start
        assert elapsed < 1.7, elapsed
        assert all(r.ok for r in results) and {r.index for r in results} == {0, 1}
        assert [r.index for r in p.map([job("hang", seconds=0.5), job("echo", x=1)])] == [1, 0]


def test_maps_interleave_and_an_abandoned_map_does_not_leak_results():
    with make_pool(num_workers=2) as p:
        seen = []
        for r in p.map([job("hang", seconds=0.3), job("hang", seconds=0.3), job("echo", x="last")]):
            seen.append((r.index, p.call("echo", x=r.index)))  # a nested call while the map is suspended
        assert sorted(seen) == [(0, 0), (1, 1), (2, 2)]
        abandoned = p.map([job("hang", seconds=0.5), job("echo", x="quick")])
        assert next(abandoned).result == "quick"
        abandoned.close()  # the sleeper runs on; its result must go nowhere
        results = list(p.map([job("echo", x=i) for i in range(4)]))
        assert sorted(r.result for r in results) == [0, 1, 2, 3]
        assert sorted(r.index for r in results) == [0, 1, 2, 3]
        assert p.restarts == 0


def test_a_crash_mid_job_is_retried_on_a_fresh_worker(tmp_path):
    with make_pool(max_retries=1) as p:
        first_pid = p.call("pid")
        marker = tmp_path / "crashed-once"
        results = sorted(
            p.map([job("crash_once", path=str(marker)), job("echo", x="a"), job("pid")]), key=lambda r: r.index
        )
        assert int(marker.read_text()) == first_pid
        assert results[0] == JobResult(0, results[0].job, True, "recovered", None, attempts=2, worker_restarts=1)
        assert results[1].result == "a" and results[2].result != first_pid
        assert p.restarts == 1


def test_a_worker_killed_from_outside_is_replaced_and_the_job_retried():
    with make_pool(max_retries=1) as p:
        victim = p.call("pid")
        threading.Timer(0.5, os.kill, (victim, signal.SIGKILL)).start()
        start = time.monotonic()
        results = sorted(p.map([job("hang", seconds=1.0), job("echo", x=1), job("echo", x=2)]), key=lambda r: r.index)
        assert time.monotonic() - start < 5
        assert results[0].ok and results[0].attempts == 2 and results[0].worker_restarts == 1
        assert [r.result for r in results[1:]] == [1, 2]
        assert victim not in p.pids and victim not in children()


def test_a_worker_that_dies_while_idle_is_replaced():
    with make_pool() as p:
        victim = p.call("pid")
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.2)
        assert p.call("echo", x="fine") == "fine"
        assert p.call("pid") != victim


def test_a_permanent_crash_fails_after_its_retries_and_the_pool_goes_on():
    with make_pool(max_retries=1) as p:
        results = sorted(p.map([job("crash"), job("echo", x=7), job("crash")]), key=lambda r: r.index)
        assert not results[0].ok and results[0].attempts == 2 and results[0].worker_restarts == 2
        assert results[0].error == "worker crashed (exit code 3) while running job 0 (method 'crash'); retried 1 time"
        assert results[1].ok and results[1].result == 7
        assert not results[2].ok and "job 2" in results[2].error
        assert p.restarts == 4
        with pytest.raises(WorkerError, match=r"worker crashed \(exit code 3\).*not retried"):
            with make_pool(max_retries=0) as q:
                q.call("crash")


def test_a_hang_past_the_timeout_is_killed_and_reported():
    with make_pool(num_workers=1, timeout_s=1.5, max_retries=0) as p:
        hung = p.call("pid")
        start = time.monotonic()
        results = sorted(p.map([job("hang", seconds=60), job("echo", x="after")]), key=lambda r: r.index)
        assert time.monotonic() - start < 6
        assert not results[0].ok and results[0].attempts == 1
        assert results[0].error.startswith("worker timed out after 1.5 s while running job 0 (method 'hang')")
        assert results[1].result == "after"
        assert hung not in children()


def test_explicit_python_executable_and_factory_kwargs():
    with make_pool(python_executable=sys.executable, factory_kwargs={"tag": "explicit"}) as p:
        assert p.call("get_tag") == "explicit"
        assert p.python_executable == sys.executable


def test_a_factory_that_cannot_build_raises_a_clear_error():
    with make_pool(factory="tests.sim_worker_fixtures:broken_factory") as p:
        with pytest.raises(WorkerError, match="RuntimeError: this factory always fails"):
            p.call("echo", x=1)
    with make_pool(factory="tests.no_such_module:Thing") as p:
        with pytest.raises(WorkerError, match="No module named 'tests.no_such_module'"):
            p.wait_ready()


def test_close_stops_busy_and_idle_workers_and_leaves_no_children():
    before = children()
    p = make_pool(num_workers=2)
    pids = set(p.pids)
    running = p.map([job("hang", seconds=60), job("echo", x=1)])
    first = next(running)  # one worker now idles, the other sleeps
    assert first.result == 1
    start = time.monotonic()
    p.close()
    assert time.monotonic() - start < 3
    assert not (children() - before) and not (pids & children())
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    with pytest.raises(WorkerError, match="closed"):
        p.call("echo", x=1)
    p.close()  # twice is fine


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_exit_when_their_parent_dies():
    code = f"""
import os
from c2a_jax.sim.worker import WorkerPool
pool = WorkerPool({FACTORY!r}, num_workers=2, env={ENV!r})
pool.wait_ready()
running = pool.map([{{"method": "hang", "kwargs": {{"seconds": 60}}}}, {{"method": "echo", "kwargs": {{"x": 1}}}}])
next(running)  # one worker idles, the other sleeps
print(*pool.pids, flush=True)
os._exit(0)  # no close, no finalizers
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    pids = [int(pid) for pid in out.stdout.split()]
    assert len(pids) == 2, out.stderr
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)


def test_a_missing_interpreter_fails_at_construction():
    with pytest.raises(WorkerError, match="could not run /nonexistent/python"):
        make_pool(python_executable="/nonexistent/python")


def test_worker_stderr_can_go_to_a_log_file(tmp_path):
    log = tmp_path / "workers.log"
    with make_pool(factory_kwargs={"noisy": True}, log_path=str(log)) as p:
        assert p.call("noisy") == "still fine"
    text = log.read_text()
    assert "Dummy says hello on stdout" in text and "raw write to fd 1 inside a job" in text


def test_the_module_imports_no_heavy_frameworks():
    code = "import sys, c2a_jax.sim.worker; print(sorted({'jax', 'torch', 'tensorflow', 'sapien'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr
