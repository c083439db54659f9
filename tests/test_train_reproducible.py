"""Reproducible runs on RLDS data, for both trainers: the same command and seed train on the same
batches in any process, and a run killed with SIGKILL after a checkpoint, resumed with the same
command, ends where an uninterrupted run ends.

Everything runs as the user runs it: ``train_vlm.py`` / ``train_dp.py`` subprocesses reading a tiny
RLDS dataset (six distinct variants of tests/dp_fixtures.py's demonstration, built in a subprocess:
TensorFlow stays out of the test process, tests/conftest.py). The two uninterrupted runs of a
trainer run at the same time, so they also differ in thread timing.

What is compared, and why exactly: every logged per-step metric but the wall-clock rates (loss,
``loss_tokens`` / ``valid_fraction``, gradient norm, learning rate, ...) as logged, and every array
of the final checkpoint (parameters, optimizer state, EMA, RNG) bitwise. The same batches through
the same compiled step on XLA:CPU give the same bits, so any difference means a different batch
or state, not rounding; a tolerance would only hide a batch that differs in a few rows.

The killed run is the trainer's own ``main`` with one change: asking for batch `HANG_AT` + 1 it
hangs (after steps past the checkpoint have run and been logged), so the SIGKILL lands after
checkpoint `EVERY` and before the end whatever the machine's speed.

Time: XLA compiles take most of a tiny run (the DP's init and step: 20-25 s each on 2 cores), so the
killed and the resumed run load the programs the first uninterrupted run compiled from a
persistent compilation cache (the same executables); the two uninterrupted runs compile their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from tests.helpers import ROOT

STEPS, EVERY, HANG_AT = 8, 3, 5  # the killed run has checkpoint 3 and has logged steps 4 and 5
TIMEOUT = 900
COMMON = [f"--config.train.steps={STEPS}", f"--config.train.checkpoint_every={EVERY}", "--config.train.log_every=1",
          "--config.train.warmup_steps=1", "--config.data.image_size=32", "--config.seed=5"]  # fmt: skip
COMMANDS = {
    "vlm": ["train_vlm.py", "--config.data.max_length=192", "--config.data.shuffle_size=64",
            "--config.train.batch_size=4", "--config.eval.examples=0", "--config.model.vision_width=32",
            "--config.model.vision_layers=1", "--config.model.text_width=32", "--config.model.text_layers=1",
            "--config.model.text_heads=2", "--config.model.text_kv_heads=1", "--config.model.mlp_ratio=2"],
    "dp": ["train_dp.py", "--config=configs/dp/tiny.py:hierarchical,lowdim", "--config.data.crop_size=28",
           "--config.data.horizon=8", "--config.data.n_action_steps=4", "--config.data.shuffle_size=64",
           "--config.model.down_dims=(16, 32)", "--config.model.text_width=16", "--config.model.pool_width=16",
           "--config.model.diffusion_step_embed_dim=16", "--config.text.random_layers=1", "--config.text.batch_size=1",
           "--config.eval.frames=0", "--config.train.batch_size=8", "--config.train.tensorboard=False",
           "--config.train.progress=False"],
}  # fmt: skip
# Per trainer, the metric that counts what a batch holds: it differs between batches of another order.
BATCH_METRIC = {"vlm": "loss_tokens", "dp": "valid_fraction"}

HANGING_MAIN = r"""
import runpy, sys, time
from c2a_jax.train import resumable

hang_at, marker, script, args = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
original_next = resumable.CountingIterator.__next__


def next_or_hang(self):
    if self._consumed == hang_at:
        open(marker, "w").close()
        while True:
            time.sleep(1)
    return original_next(self)


resumable.CountingIterator.__next__ = next_or_hang
sys.exit(runpy.run_path(script)["main"](args))
"""


def _env(compilation_cache: str | None = None) -> dict[str, str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return {**env, "JAX_COMPILATION_CACHE_DIR": compilation_cache} if compilation_cache else env


class Trainer:
    """One trainer subprocess writing to `workdir`; stdout and stderr in ``<workdir>.out`` / ``.err``
    (files, not pipes: nobody reads them while it runs)."""

    def __init__(
        self, trainer: str, dataset: str, workdir: str, hang: tuple[int, str] | None = None, cache: str | None = None
    ):
        script, *args = COMMANDS[trainer]
        args = [*args, *COMMON, f"--config.workdir={workdir}", f"--config.data.dataset_dir={dataset}"]
        prefix = [sys.executable, "-c", HANGING_MAIN, str(hang[0]), hang[1]] if hang else [sys.executable]
        self.workdir = workdir
        with open(workdir + ".out", "w") as out, open(workdir + ".err", "w") as err:
            self.proc = subprocess.Popen([*prefix, script, *args], cwd=ROOT, env=_env(cache), stdout=out, stderr=err)

    def output(self, stream: str = "err") -> str:
        with open(f"{self.workdir}.{stream}") as f:
            return f.read()

    def finish(self) -> dict:
        """The run's JSON report (the last thing it prints), once it has ended well."""
        try:
            self.proc.wait(timeout=TIMEOUT)
        finally:
            self.kill()
        out = self.output("out")
        assert self.proc.returncode == 0, out[-2000:] + self.output()[-5000:]
        lines = out.splitlines()
        return json.loads("\n".join(lines[len(lines) - lines[::-1].index("{") - 1 :]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def logged(workdir: str) -> list[dict]:
    """The per-step metrics of metrics.jsonl without the wall-clock rates (``*_per_s*``, ``mfu``)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if "_per_s" not in k and k != "mfu"} for r in records]


def final_arrays(workdir: str) -> dict[str, np.ndarray]:
    """Every array of the run's checkpoint at `STEPS` (train state: parameters, optimizer, EMA, RNG)."""
    import jax
    import orbax.checkpoint as ocp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sharding info not provided": restored as saved
        state = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(STEPS), "state"))
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def assert_same_training(workdir: str, reference: str) -> None:
    """Identical per-step metrics and bitwise identical final arrays (see the module docstring)."""
    assert logged(workdir) == logged(reference)
    ours, theirs = final_arrays(workdir), final_arrays(reference)
    assert ours.keys() == theirs.keys()
    different = [name for name in ours if not np.array_equal(ours[name], theirs[name])]
    assert not different, f"{len(different)} of {len(ours)} arrays differ, e.g. {different[:5]}"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """Six distinct episodes (different lengths, actions, images, prompts) in RLDS: 5 train, 1 val."""
    out = str(tmp_path_factory.mktemp("rlds"))
    build = subprocess.run([sys.executable, "tests/dp_fixtures.py", out, "6", "--distinct"], cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return build.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module", params=sorted(COMMANDS))
def trainer(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def uninterrupted(trainer, dataset, tmp_path_factory) -> tuple[str, str, str]:
    """Two uninterrupted runs of the same command, at the same time: their work directories, and
    the compilation cache the first one filled."""
    root = tmp_path_factory.mktemp(f"{trainer}_uninterrupted")
    cache = str(root / "compilation_cache")
    runs = [Trainer(trainer, dataset, str(root / "a"), cache=cache), Trainer(trainer, dataset, str(root / "b"))]
    try:
        reports = [run.finish() for run in runs]
    finally:
        for run in runs:
            run.kill()
    assert [r["step"] for r in reports] == [STEPS, STEPS]
    return runs[0].workdir, runs[1].workdir, cache


def test_same_command_and_seed_train_on_the_same_batches_in_two_processes(trainer, uninterrupted):
    first, second, _ = uninterrupted
    records = logged(first)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    batch_metric = [r[BATCH_METRIC[trainer]] for r in records]
    assert len(set(batch_metric)) > 1, f"{BATCH_METRIC[trainer]} does not tell batches apart: {batch_metric}"
    assert_same_training(second, first)


def test_sigkill_after_a_checkpoint_then_resume_ends_like_the_uninterrupted_run(trainer, dataset, uninterrupted,
                                                                               tmp_path):  # fmt: skip
    reference, _, cache = uninterrupted
    workdir, marker = str(tmp_path / "run"), str(tmp_path / "hanging")
    killed = Trainer(trainer, dataset, workdir, hang=(HANG_AT, marker), cache=cache)
    committed = os.path.join(workdir, "checkpoints", str(EVERY), "commit_success.txt")
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (os.path.exists(marker) and os.path.exists(committed)):
            assert killed.proc.poll() is None, killed.output()[-5000:]
            assert time.monotonic() < deadline, "the run never reached its checkpoint"
            time.sleep(0.2)
    finally:
        killed.kill()
    assert killed.proc.returncode == -signal.SIGKILL
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(EVERY)]
    assert [r["step"] for r in logged(workdir)] == list(range(1, HANG_AT + 1))  # steps past the checkpoint ran

    report = Trainer(trainer, dataset, workdir, cache=cache).finish()
    assert report["start_step"] == EVERY and report["step"] == STEPS
    assert_same_training(workdir, reference)
