"""`c2a_jax.host_memory`: XLA's per-call temporary buffer stops being faulted in 4 KB at a time.

The fault counts come from real processes (glibc reads its tunables at start): a jitted gradient
step with a temporary buffer of tens of MB, called repeatedly, with and without the tunable. The
control process shows the faults the tunable removes, so the test fails if either side changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from c2a_jax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r"""
import json, resource, statistics
import jax, jax.numpy as jnp

def loss(w, x):
    return jnp.mean(jnp.tanh(jnp.tanh(x @ w[0]) @ w[1]))

step = jax.jit(jax.value_and_grad(loss))
w = (jnp.ones((256, 1024)) * 0.01, jnp.ones((1024, 256)) * 0.01)
x = jnp.ones((8192, 256))
temp = step.lower(w, x).compile().memory_analysis().temp_size_in_bytes
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(step(w, x))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"temp_pages": temp // 4096, "faults_per_call": statistics.median(faults[3:])}))
"""

RESTART = r"""
import os, sys
print("started", os.getpid(), flush=True)
from c2a_jax.host_memory import reexec_with_huge_page_malloc
reexec_with_huge_page_malloc()
print(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], "tunables": os.environ.get("GLIBC_TUNABLES", "")}))
""".replace("import os, sys", "import json, os, sys")


def _run(code: str, env: dict[str, str], *args: str) -> list[str]:
    env = {**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300,
                         check=True, cwd=ROOT)  # fmt: skip
    return out.stdout.strip().splitlines()


def _plain_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.ENV_SWITCH)}
    return env


def test_huge_pages_stop_the_temporary_buffer_faulting_in_every_call():
    tuned_env = host_memory.huge_page_malloc_env(_plain_env())
    if tuned_env is None:  # no glibc >= 2.35 or no transparent huge pages here: the module must stand aside
        assert host_memory._glibc_version() < (2, 35) or not host_memory._transparent_huge_pages()
        return
    plain = json.loads(_run(PROBE, _plain_env())[-1])
    tuned = json.loads(_run(PROBE, tuned_env)[-1])
    assert plain["temp_pages"] > 8_000  # a buffer of >32 MB: glibc mmaps it afresh, the case at stake
    # 4 KB pages: every call faults the temporary buffer in again (the cost this module removes)
    assert plain["faults_per_call"] > 0.5 * plain["temp_pages"]
    # 2 MB pages: a few dozen faults per call on a quiet machine; where memory is fragmented some
    # 2 MB allocations fall back to 4 KB pages (1062 of 18,432 seen in a full test run), so the
    # test asks for a fourfold cut rather than the quiet figure
    assert tuned["faults_per_call"] < 0.25 * plain["faults_per_call"]


def test_restart_keeps_pid_and_arguments_and_adds_the_tunable_once():
    env = {**_plain_env(), "GLIBC_TUNABLES": "glibc.malloc.tcache_count=8"}
    lines = _run(RESTART, env, "--config.x=1", "two words")
    expected = host_memory.huge_page_malloc_env(env)
    result = json.loads(lines[-1])
    started = [line for line in lines if line.startswith("started")]
    assert result["argv"] == ["--config.x=1", "two words"]
    if expected is None:  # nothing to gain here: no restart
        assert len(started) == 1 and result["tunables"] == "glibc.malloc.tcache_count=8"
        return
    assert len(started) == 2 and started[0] == started[1] == f"started {result['pid']}"  # exec: same process
    assert result["tunables"] == "glibc.malloc.tcache_count=8:" + host_memory.TUNABLE  # the user's kept


def test_command_line_runs_a_command_with_the_tunable():
    env = {**_plain_env(), "PYTHONPATH": ROOT}
    show = [sys.executable, "-c", "import os; print(os.environ.get('GLIBC_TUNABLES', ''))"]
    out = subprocess.run([sys.executable, "-m", "c2a_jax.host_memory", *show], env=env, capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    expected = host_memory.huge_page_malloc_env(env)
    assert out.stdout.strip() == ("" if expected is None else expected["GLIBC_TUNABLES"])
    usage = subprocess.run([sys.executable, "-m", "c2a_jax.host_memory"], env=env, capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_environment_decides(monkeypatch):
    monkeypatch.setattr(host_memory, "_glibc_version", lambda: (2, 36))
    monkeypatch.setattr(host_memory, "_transparent_huge_pages", lambda: True)
    monkeypatch.setattr(host_memory.platform, "system", lambda: "Linux")
    assert host_memory.huge_page_malloc_env({})["GLIBC_TUNABLES"] == host_memory.TUNABLE
    for off in ("0", "off", "False"):
        assert host_memory.huge_page_malloc_env({host_memory.ENV_SWITCH: off}) is None
    # the user's own hugetlb setting wins, whatever its value
    assert host_memory.huge_page_malloc_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    monkeypatch.setattr(host_memory, "_transparent_huge_pages", lambda: False)
    assert host_memory.huge_page_malloc_env({}) is None
    monkeypatch.setattr(host_memory, "_transparent_huge_pages", lambda: True)
    monkeypatch.setattr(host_memory, "_glibc_version", lambda: (2, 34))
    assert host_memory.huge_page_malloc_env({}) is None
