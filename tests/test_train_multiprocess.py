"""Two processes (jax.distributed over localhost, gloo collectives), each feeding half of every batch,
train the tiny LLaVA exactly like one process fed the whole batch."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from flax import nnx

from c2a_jax.train.loop import restore_checkpoint, train
from c2a_jax.train.metrics import read_jsonl
from tests.helpers import ROOT
from tests.train_fixtures import tiny_llava, vlm_batch, vlm_loss_fn, vlm_train_config

STEPS, ROWS = 3, 8

CHILD = r"""
import json, sys
import ml_collections
from c2a_jax.train.loop import train
from c2a_jax.train.vlm_loss import batch_counts
from tests.train_fixtures import tiny_llava, vlm_batch, vlm_loss_fn, vlm_train_config

pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
cfg = vlm_train_config(steps=STEPS)
cfg.mesh = ml_collections.ConfigDict({"data": 2, "fsdp": -1, "tensor": 1})
cfg.distributed = ml_collections.ConfigDict(
    {"coordinator_address": f"localhost:{port}", "num_processes": 2, "process_id": pid})
half = ROWS // 2

def make_batches():
    for s in range(STEPS):
        batch = vlm_batch(ROWS, seed=100 + s)
        yield {k: v[half * pid: half * (pid + 1)] for k, v in batch.items()}

out = train(cfg, workdir=workdir, model_fn=tiny_llava, loss_fn=vlm_loss_fn, make_batches=make_batches,
            checkpoint_items={"tokenizer": {"name": "synthetic"}}, count_fn=batch_counts, flops_per_token=1e6)
import jax
print("RESULT" + json.dumps({"process_count": jax.process_count(), "devices": jax.device_count(),
                             "step": out["step"], "loss": out["loss"], "tokens_per_s": out.get("tokens_per_s"),
                             "mfu": out.get("mfu")}))
""".replace("STEPS", str(STEPS)).replace("ROWS", str(ROWS))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _flat(state) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(v) for p, v in nnx.to_flat_state(state.params)}


def test_two_processes_match_one(tmp_path):
    multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(pid), str(port), multi],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for pid in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            assert p.returncode == 0, stdout[-3000:] + stderr[-6000:]
            outputs.append(json.loads(stdout.split("RESULT", 1)[1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [o["process_count"] for o in outputs] == [2, 2] and outputs[0]["devices"] == 4
    assert outputs[0]["tokens_per_s"] > 0 and outputs[0]["mfu"] is None  # CPU: no peak FLOP/s, no MFU

    # The same run in this process, one device, whole batches.
    def make_batches():
        for s in range(STEPS):
            yield vlm_batch(ROWS, seed=100 + s)

    ref = train(vlm_train_config(steps=STEPS), workdir=single, model_fn=tiny_llava, loss_fn=vlm_loss_fn,
                make_batches=make_batches)  # fmt: skip
    assert ref["step"] == STEPS

    ref_losses = [r["loss"] for r in read_jsonl(os.path.join(single, "metrics.jsonl"))]
    multi_losses = [r["loss"] for r in read_jsonl(os.path.join(multi, "metrics.jsonl"))]
    assert len(ref_losses) == STEPS
    np.testing.assert_allclose(multi_losses, ref_losses, rtol=1e-5, atol=1e-5)
    assert len(set(np.round(ref_losses, 4))) == STEPS  # the losses move: the steps really trained

    # Final parameters: the two-process checkpoint (written sharded over 4 devices of 2 processes)
    # read back onto one device equals the one-process run's.
    multi_state, _, items = restore_checkpoint(multi, tiny_llava)
    single_state, _, _ = restore_checkpoint(single, tiny_llava)
    assert int(multi_state.step) == int(single_state.step) == STEPS
    a, b = _flat(multi_state), _flat(single_state)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5, err_msg=k)
    np.testing.assert_array_equal(np.asarray(multi_state.rng), np.asarray(single_state.rng))
    # Each process's data position was gathered into the checkpoint.
    from c2a_jax.train.checkpoint import Checkpointer

    reader = Checkpointer(os.path.join(multi, "checkpoints"), read_only=True)
    data = reader.read_items()["data_iterator"]
    reader.close()
    assert data == {"process_count": 2, "states": [{"consumed": STEPS}, {"consumed": STEPS}]}
    assert items["tokenizer"] == {"name": "synthetic"}
    assert items["config"]["distributed"]["num_processes"] == 2
