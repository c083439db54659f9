"""Exact resume: a run killed (SIGKILL), stopped (SIGTERM) or failing mid-way and then resumed from
its work directory logs the same per-step losses and sees the same batches as an uninterrupted run."""

import glob
import os
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from c2a_jax.train.checkpoint import Checkpointer
from c2a_jax.train.loop import restore_checkpoint, train
from c2a_jax.train.metrics import read_jsonl
from tests.helpers import ROOT
from tests.train_fixtures import mlp, mlp_batches, mlp_loss_fn

STEPS, EVERY, KEEP = 8, 3, 2
ITEMS = {"tokenizer": {"name": "c2a-tiny", "vocab_size": 64}, "dataset_statistics": {"action": {"mean": [0.5, -1.0]}}}


def config(**train):
    import ml_collections

    c = ml_collections.ConfigDict()
    c.seed = 3
    c.train = ml_collections.ConfigDict(
        dict(steps=STEPS, learning_rate=0.05, warmup_steps=2, weight_decay=0.01, log_every=1, checkpoint_every=EVERY,
             keep_checkpoints=KEEP, tensorboard=False, progress=False)
    )  # fmt: skip
    c.train.update(train)
    return c


def loss_with_batch_id(model, batch, rng):
    loss, metrics = mlp_loss_fn(model, batch, rng)
    return loss, {**metrics, "batch_id": batch["batch_id"].astype(np.float32).mean()}


def records(workdir):
    return [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    out = train(config(), workdir=workdir, model_fn=mlp, loss_fn=loss_with_batch_id, make_batches=mlp_batches,
                checkpoint_items=ITEMS)  # fmt: skip
    assert out["step"] == STEPS and out["stopped"] is None
    recs = records(workdir)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    assert [r["batch_id"] for r in recs] == list(range(STEPS))
    return workdir, recs


def assert_same_run(workdir, reference_records):
    recs = records(workdir)
    assert [r["step"] for r in recs] == [r["step"] for r in reference_records]
    assert [r["batch_id"] for r in recs] == [r["batch_id"] for r in reference_records]  # same data position
    np.testing.assert_allclose([r["loss"] for r in recs], [r["loss"] for r in reference_records], rtol=1e-6)
    np.testing.assert_allclose(
        [r["learning_rate"] for r in recs], [r["learning_rate"] for r in reference_records], rtol=1e-6
    )


def tfrecords(path):
    """The records of a TFRecord file (length, length CRC, data, data CRC), without TensorFlow."""
    data, at, out = open(path, "rb").read(), 0, []
    while at + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[at : at + 8])
        out.append(data[at + 12 : at + 12 + n])
        at += 12 + n + 4
    return out


CHILD = r"""
import sys
from c2a_jax.train.loop import restore_checkpoint, train
from tests.test_train_resume import ITEMS, config, loss_with_batch_id
from tests.train_fixtures import mlp, mlp_batches

workdir, marker, block_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
train(config(tensorboard=True), workdir=workdir, model_fn=mlp, loss_fn=loss_with_batch_id,
      make_batches=lambda: mlp_batches(block_at=block_at, marker=marker), checkpoint_items=ITEMS)
raise SystemExit("the run was meant to hang in its data iterator")
"""


def test_sigkill_after_checkpoint_then_resume(tmp_path, reference):
    ref_dir, ref_records = reference
    workdir, marker = str(tmp_path / "run"), str(tmp_path / "blocked")
    kill_after = 2 * EVERY  # the child hangs fetching the batch of step kill_after + 1
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = tmp_path / "child.log"
    with open(log, "w") as out:
        child = subprocess.Popen([sys.executable, "-c", CHILD, workdir, marker, str(kill_after)], cwd=ROOT, env=env,
                                 stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    final = os.path.join(workdir, "checkpoints", str(kill_after))
    try:
        deadline = time.time() + 300
        while not (os.path.exists(marker) and os.path.exists(os.path.join(final, "commit_success.txt"))):
            assert child.poll() is None, log.read_text()[-5000:]
            assert time.time() < deadline, "the child never reached its checkpoint"
            time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    ckpts = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    assert ckpts.all_steps() == [EVERY, kill_after]
    ckpts.close()
    # TensorBoard scalars were written (TensorFlow only ever ran in the child): one "loss" summary
    # per logged step in the event file's records.
    (events,) = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    assert sum(b"loss" in record and b"scalars" in record for record in tfrecords(events)) == kill_after
    assert [r["step"] for r in records(workdir)] == list(range(1, kill_after + 1))

    out = train(config(), workdir=workdir, model_fn=mlp, loss_fn=loss_with_batch_id, make_batches=mlp_batches,
                checkpoint_items=ITEMS)  # fmt: skip
    assert out["start_step"] == kill_after and out["step"] == STEPS
    assert_same_run(workdir, ref_records)

    # Async saves with keep-N: only the newest KEEP checkpoints remain, the final step included.
    ckpts = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    expected = sorted({*range(EVERY, STEPS + 1, EVERY), STEPS})[-KEEP:]
    assert ckpts.all_steps() == expected
    items = ckpts.read_items()
    ckpts.close()
    assert items["tokenizer"] == ITEMS["tokenizer"]
    assert items["dataset_statistics"] == ITEMS["dataset_statistics"]
    assert items["config"]["train"]["steps"] == STEPS and items["config"]["seed"] == 3
    assert items["data_iterator"] == {"process_count": 1, "states": [{"consumed": STEPS}]}
    assert os.path.exists(os.path.join(workdir, "config.json"))

    # The uninterrupted run saved step 6 asynchronously while steps 7 and 8 ran on donated
    # buffers; the killed run saved it and then stood still. Both hold the same arrays.
    ref_state, _, _ = restore_checkpoint(ref_dir, mlp, step=kill_after)
    state, _, _ = restore_checkpoint(workdir, mlp, step=kill_after)
    for a, b in zip(jax.tree.leaves(ref_state), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigterm_and_exception_save_then_resume(tmp_path, reference):
    _, ref_records = reference
    workdir = str(tmp_path / "run")

    def sigterm_at(k):
        def factory():
            for i, batch in enumerate(mlp_batches()):
                if i == k:  # a preemption notice arrives while batch k is being read
                    os.kill(os.getpid(), signal.SIGTERM)
                yield batch

        return factory

    out = train(config(), workdir=workdir, model_fn=mlp, loss_fn=loss_with_batch_id, make_batches=sigterm_at(1))
    assert out["stopped"] == "SIGTERM" and out["step"] == 2  # batch 1 was already handed out: step 2 ran
    assert Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True).all_steps() == [2]

    def failing_at(k):
        def factory():
            for i, batch in enumerate(mlp_batches()):
                if i == k:
                    raise OSError("corrupt shard (injected)")
                yield batch

        return factory

    with pytest.raises(OSError, match="injected"):
        train(config(), workdir=workdir, model_fn=mlp, loss_fn=loss_with_batch_id, make_batches=failing_at(4))
    # The failure saved the last finished step (4; keep-N dropped nothing yet) with its data position.
    ckpts = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    assert ckpts.all_steps() == [3, 4]
    assert ckpts.read_items()["data_iterator"]["states"] == [{"consumed": 4}]
    ckpts.close()

    out = train(config(), workdir=workdir, model_fn=mlp, loss_fn=loss_with_batch_id, make_batches=mlp_batches)
    assert out["start_step"] == 4 and out["step"] == STEPS and out["stopped"] is None
    assert_same_run(workdir, ref_records)
