"""One sharded train step of a tiny LLaVA equals the single-device step (8 CPU devices, subprocess)."""

import json

from tests.helpers import run_with_devices

CODE = r"""
import json
import time
import jax
import numpy as np
from flax import nnx

from c2a_jax.parallel import batch_sharding, global_batch, make_mesh, state_shardings
from c2a_jax.parallel.rules import DEFAULT_RULES
from c2a_jax.train.optimizer import make_optimizer
from c2a_jax.train.state import init_fn_for, seed_key
from c2a_jax.train.step import batch_shardings, jit_train_step, make_train_step
from tests.train_fixtures import tiny_llava, vlm_batch, vlm_loss_fn, vlm_train_config

assert jax.device_count() == 8
cfg = vlm_train_config(warmup_steps=0)
opt = make_optimizer(cfg.train)
init_fn, graphdef = init_fn_for(tiny_llava, opt)
key = seed_key(0)
abstract = jax.eval_shape(init_fn, key)
local = vlm_batch(8, seed=1)

def flat(tree):
    return {"/".join(str(k) for k in path): np.asarray(v) for path, v in nnx.to_flat_state(tree)}

def leaf(state, path):
    node = state
    for k in path.split("/"):
        node = node[int(k) if k.isdigit() else k]
    return node.get_value()

def spec(arr):
    return [list(a) if isinstance(a, tuple) else a for a in arr.sharding.spec]

def run(sizes, devices, min_fsdp_bytes=0):
    t = time.perf_counter()
    mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), sizes)), devices)
    shardings = state_shardings(abstract, mesh, DEFAULT_RULES, min_fsdp_bytes)
    state = jax.jit(init_fn, out_shardings=shardings)(key)
    init_params = flat(jax.device_get(state.params))
    bsh = batch_sharding(mesh)
    batch = global_batch(local, mesh, bsh)
    step = jit_train_step(make_train_step(graphdef, vlm_loss_fn, opt, batch_sharding=bsh), shardings,
                          batch_shardings(batch, bsh))
    state, metrics = step(state, batch)
    info = {}
    for path in ("language_model/layers/0/mlp/down_proj/kernel", "language_model/layers/0/self_attn/qkv_proj/kernel",
                 "language_model/embed_tokens/embedding", "vision_tower/embeddings/class_embedding"):
        arr = leaf(state.params, path)[...]
        mu = leaf(state.opt_state[1].mu, path)[...]
        info[path] = {"spec": spec(arr), "shard": list(arr.addressable_shards[0].data.shape),
                      "full": list(arr.shape), "mu_spec": spec(mu)}
    info["batch_spec"] = spec(batch["tokens"])
    print(sizes, "run took", time.perf_counter() - t, flush=True)
    return init_params, flat(jax.device_get(state.params)), jax.device_get(metrics), info

devices = jax.devices()
init_ref, ref, ref_metrics, _ = run((1, 1, 1), devices[:1])
changed = max(float(np.abs(ref[k] - init_ref[k]).max()) for k in ref)
out = {"changed": changed, "loss": float(ref_metrics["loss"]), "meshes": {}}
for sizes in ((2, 4, 1), (1, 8, 1), (2, 2, 2)):
    _, params, metrics, info = run(sizes, devices)
    assert set(params) == set(ref), set(params) ^ set(ref)
    worst = max(float(np.abs(params[k] - ref[k]).max()) for k in ref)
    rel = max(float(np.abs(params[k] - ref[k]).max() / (np.abs(ref[k]).max() + 1e-12)) for k in ref)
    for k in ref:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=f"{sizes}: {k}")
    out["meshes"][str(sizes)] = {"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
                                             "ref_grad_norm": float(ref_metrics["grad_norm"]), "worst": worst,
                                             "rel": rel, "info": info}
# FSDP by size, without running a step: the shardings a 1024-byte threshold gives.
sh = state_shardings(abstract, make_mesh({"fsdp": 8}, devices), DEFAULT_RULES, 1024)
out["min_fsdp_1024"] = {p: [list(a) if isinstance(a, tuple) else a for a in leaf(sh.params, p).spec]
                        for p in ("vision_tower/embeddings/class_embedding",
                                  "language_model/layers/0/mlp/down_proj/kernel")}
print("RESULT" + json.dumps(out))
"""


def test_sharded_step_matches_single_device():
    result = run_with_devices(CODE, num_devices=8, timeout=900)
    out = json.loads(result.stdout.split("RESULT", 1)[1])
    assert out["changed"] > 1e-3  # the step really moved the parameters
    for name, m in out["meshes"].items():
        assert abs(m["loss"] - out["loss"]) <= 1e-5 * max(1.0, abs(out["loss"])), name
        assert abs(m["grad_norm"] - m["ref_grad_norm"]) <= 1e-5 * max(1.0, m["ref_grad_norm"]), name

    def info(mesh, path):
        return out["meshes"][mesh]["info"][path]

    down, qkv = "language_model/layers/0/mlp/down_proj/kernel", "language_model/layers/0/self_attn/qkv_proj/kernel"
    embed, cls = "language_model/embed_tokens/embedding", "vision_tower/embeddings/class_embedding"
    # data=2, fsdp=4: ("mlp", "embed") -> embed over fsdp (mlp's tensor axis has size 1); the
    # batch over data x fsdp; Adam's moments sharded like their parameter.
    assert info("(2, 4, 1)", down)["spec"] == [None, "fsdp"]
    assert info("(2, 4, 1)", down)["shard"] == [64, 32 // 4]
    assert info("(2, 4, 1)", down)["mu_spec"] == [None, "fsdp"]
    assert out["meshes"]["(2, 4, 1)"]["info"]["batch_spec"] == [["data", "fsdp"]]
    # fsdp=8: each device holds an eighth of the embedding; the batch is over fsdp alone.
    assert info("(1, 8, 1)", embed)["spec"] == [None, "fsdp"]
    assert info("(1, 8, 1)", embed)["shard"] == [64, 32 // 8]
    assert info("(1, 8, 1)", cls)["spec"] == ["fsdp"]
    assert out["meshes"]["(1, 8, 1)"]["info"]["batch_spec"] == ["fsdp"]
    # tensor=2: the fused qkv output and the vocabulary split over tensor, embed over fsdp.
    assert info("(2, 2, 2)", qkv)["spec"] == ["fsdp", "tensor"]
    assert info("(2, 2, 2)", qkv)["shard"] == [32 // 2, 64 // 2]
    assert info("(2, 2, 2)", embed)["spec"] == ["tensor", "fsdp"]
    # FSDP by size: at a 1024-byte threshold the 128-byte class embedding is replicated, the 8 KiB
    # kernel stays split.
    assert out["min_fsdp_1024"][cls] == [None]
    assert out["min_fsdp_1024"][down] == [None, "fsdp"]
