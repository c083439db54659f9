"""Unit tests of the training core: schedule, AdamW and its masks, freezing, parameter groups,
gradient accumulation, MFU terms, mesh sizes, logical-axis rules, resumable iterators, JSONL."""

import logging
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from c2a_jax.parallel import distributed, rules
from c2a_jax.parallel import mesh as mesh_lib
from c2a_jax.train import metrics as metrics_lib
from c2a_jax.train.optimizer import ParamGroups, build_optimizer, make_optimizer, warmup_cosine_schedule
from c2a_jax.train.resumable import CountingIterator, resumable
from c2a_jax.train.state import init_fn_for, seed_key
from c2a_jax.train.step import make_train_step
from tests.train_fixtures import mlp, mlp_batches

# --------------------------------------------------------------------------------------------
# Schedule and AdamW


def test_warmup_cosine_schedule_values():
    lr, warmup, total, end = 3e-3, 10, 50, 0.1
    schedule = warmup_cosine_schedule(lr, warmup, total, end)
    for s in (0, 1, 5, 10, 11, 25, 30, 49, 50, 60):
        if s < warmup:
            expected = lr * s / warmup
        else:
            t = min(s - warmup, total - warmup) / (total - warmup)
            expected = lr * end + (lr - lr * end) * 0.5 * (1 + math.cos(math.pi * t))
        assert float(schedule(s)) == pytest.approx(expected, rel=1e-5, abs=1e-9), s
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine_schedule(lr, 60, 50)


def test_optimizer_equals_optax_adamw_with_decay_mask():
    rng = np.random.default_rng(0)
    params = {
        "dense": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "bias": jnp.ones(3)},
        "final_norm": {"scale": jnp.ones(3)},
        "embed": {"table": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)},
    }
    schedule = warmup_cosine_schedule(1e-2, 2, 10, 0.0)
    ours = build_optimizer(schedule, weight_decay=0.1, b1=0.8, b2=0.95, eps=1e-6).tx
    decay = {"dense": {"kernel": True, "bias": False}, "final_norm": {"scale": False}, "embed": {"table": True}}
    reference = optax.adamw(schedule, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1, mask=decay)
    p_ours, p_ref = params, params
    s_ours, s_ref = ours.init(params), reference.init(params)
    for _ in range(4):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        u, s_ours = ours.update(grads, s_ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
        u, s_ref = reference.update(grads, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_param_groups_config_and_bad_regex():
    train = ml_collections.ConfigDict(
        {"freeze": ("vision_tower/.*",), "param_groups": ({"pattern": "multi_modal_projector/.*", "lr_scale": 10},)}
    )
    groups = ParamGroups.from_config(train)
    assert groups.lr_scale("vision_tower/encoder/layers/0/mlp/fc1/kernel") == 0.0
    assert groups.lr_scale("multi_modal_projector/linear_1/kernel") == 10.0
    assert groups.lr_scale("language_model/lm_head/kernel") == 1.0
    assert not groups.decays("language_model/layers/0/input_layernorm/scale", 1)
    assert not groups.decays("multi_modal_projector/linear_1/bias", 1)
    assert groups.decays("multi_modal_projector/linear_1/kernel", 2)
    with pytest.raises(ValueError, match=r"bad parameter-path regex '\('"):
        ParamGroups(freeze=("(",))


# --------------------------------------------------------------------------------------------
# The train step on one device: freezing, groups, accumulation


def _run(train_cfg, steps=2, accum_steps=1, weight_key=None, loss_fn=None, rows=8):
    from tests.train_fixtures import mlp_loss_fn

    cfg = ml_collections.ConfigDict(dict(steps=10, learning_rate=0.05, warmup_steps=0, eps=1e-3, grad_clip=1.0))
    cfg.update(train_cfg)
    optimizer = make_optimizer(cfg)
    init_fn, graphdef = init_fn_for(mlp, optimizer)
    state = jax.jit(init_fn)(seed_key(0))
    start = nnx.to_pure_dict(jax.device_get(state.params))
    step = jax.jit(make_train_step(graphdef, loss_fn or mlp_loss_fn, optimizer, accum_steps=accum_steps,
                                   weight_key=weight_key))  # fmt: skip
    batches = mlp_batches(rows=rows)
    history = []
    for _ in range(steps):
        state, m = step(state, next(batches))
        history.append(jax.device_get(m))
    return start, nnx.to_pure_dict(jax.device_get(state.params)), state, history


def test_frozen_parameters_do_not_move_and_have_no_optimizer_state():
    start, end, state, _ = _run({"freeze": ("w1",), "weight_decay": 0.1})
    np.testing.assert_array_equal(end["w1"], start["w1"])
    assert np.abs(end["w2"] - start["w2"]).max() > 1e-3 and np.abs(end["b1"] - start["b1"]).max() > 1e-4
    adam = state.opt_state[1]
    assert set(adam.mu.keys()) == {"b1", "w2"}  # no moments for the frozen kernel
    # lr_scale 0 in a group is freezing too.
    start, end, _, _ = _run({"param_groups": ({"pattern": "b1", "lr_scale": 0.0},)})
    np.testing.assert_array_equal(end["b1"], start["b1"])


def test_group_learning_rate_scales_the_update():
    base_start, base, _, _ = _run({"weight_decay": 0.05}, steps=1)
    start, scaled, _, _ = _run({"weight_decay": 0.05, "param_groups": ({"pattern": "w2", "lr_scale": 10.0},)}, steps=1)
    np.testing.assert_allclose(scaled["w2"] - start["w2"], 10.0 * (base["w2"] - base_start["w2"]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scaled["w1"], base["w1"], rtol=1e-6, atol=1e-7)
    assert np.abs(base["w2"] - base_start["w2"]).max() > 1e-3


def _masked_loss(model, batch, rng):
    """Token-mean style loss: rows carry different numbers of counted targets."""
    del rng
    err = ((model(batch["x"]) - batch["y"]) ** 2).sum(-1)
    x = batch["x"]
    weight = (x[:, 1] > -0.5) * (1.0 + (x[:, 0] > 0))  # 0, 1 or 2 targets per row, from the data
    count = weight.sum()
    return (err * weight).sum() / count, {"count": count, "mse": (err * weight).sum() / count}


def _row_mean_loss(model, batch, rng):
    del rng
    loss = jnp.mean((model(batch["x"]) - batch["y"]) ** 2)
    return loss, {"mse": loss}


@pytest.mark.parametrize("loss_fn,weight_key", [(_row_mean_loss, None), (_masked_loss, "count")])
def test_accumulated_microbatches_equal_one_big_batch(loss_fn, weight_key):
    _, big, _, big_m = _run({}, steps=2, loss_fn=loss_fn, rows=12)
    _, acc, _, acc_m = _run({}, steps=2, accum_steps=4, weight_key=weight_key, loss_fn=loss_fn, rows=12)
    for k in big:
        np.testing.assert_allclose(acc[k], big[k], rtol=1e-5, atol=1e-5, err_msg=k)
    for a, b in zip(acc_m, big_m, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        if weight_key:
            assert a[weight_key] == pytest.approx(b[weight_key], rel=1e-6)  # summed over microbatches


def test_unweighted_accumulation_of_a_token_mean_is_not_the_big_batch():
    """Why weight_key exists: equal weights average per-microbatch means, which differs here."""
    _, big, _, _ = _run({}, steps=1, loss_fn=_masked_loss, rows=12)
    _, acc, _, _ = _run({}, steps=1, accum_steps=4, loss_fn=_masked_loss, rows=12)
    assert max(np.abs(acc[k] - big[k]).max() for k in big) > 1e-5


def test_step_reports_metrics_and_advances_rng():
    _, _, state, history = _run({"warmup_steps": 4}, steps=2)
    assert set(history[0]) >= {"loss", "grad_norm", "learning_rate", "mse"}
    schedule = warmup_cosine_schedule(0.05, 4, 10)
    assert [float(h["learning_rate"]) for h in history] == pytest.approx([float(schedule(0)), float(schedule(1))])
    assert int(state.step) == 2
    assert not np.array_equal(np.asarray(state.rng), np.asarray(jax.random.key_data(jax.random.split(seed_key(0))[1])))


# --------------------------------------------------------------------------------------------
# Metrics


def test_transformer_flops_terms():
    f = metrics_lib.TransformerFlops(params=1000, layers=2, width=16, seq_len=8)
    assert f.terms() == {"dense_6N": 6 * 1000, "attention_12LdT": 12 * 2 * 16 * 8, "per_token": 6000 + 12 * 2 * 16 * 8}
    causal = metrics_lib.TransformerFlops(params=1000, layers=2, width=16, seq_len=8, attention_fraction=0.5)
    assert causal.attention == f.attention / 2
    assert "6*1,000" in f.describe() and "12*2*16*8" in f.describe()


def test_matmul_param_count_leaves_out_embedding_lookups():
    from c2a_jax.models.phi3 import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=2)  # fmt: skip
    params = nnx.state(nnx.eval_shape(lambda: Phi3ForCausalLM(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    total = sum(x.size for x in jax.tree.leaves(params))
    vectors = sum(x.size for x in jax.tree.leaves(params) if x.ndim < 2)
    assert metrics_lib.matmul_param_count(params) == total - vectors - 32 * 16


def test_throughput_and_mfu(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(metrics_lib.time, "perf_counter", lambda: clock[0])
    t = metrics_lib.Throughput(num_devices=4, flops_per_token=2e9, peak_flops=1e12)
    t.add(8, 1000)
    t.add(8, 1000)
    clock[0] += 4.0
    r = t.rates()
    assert r["examples_per_s"] == pytest.approx(4.0) and r["tokens_per_s"] == pytest.approx(500.0)
    assert r["tokens_per_s_per_device"] == pytest.approx(125.0)
    assert r["mfu"] == pytest.approx(2e9 * 500.0 / (1e12 * 4))
    assert metrics_lib.Throughput(4, 2e9, None).rates() == {}  # nothing since the reset
    no_peak = metrics_lib.Throughput(4, 2e9, None)
    no_peak.add(8, 1000)
    clock[0] += 1.0
    assert "mfu" not in no_peak.rates()


def test_peak_flops_lookup():
    table = dict(metrics_lib.PEAK_FLOPS)
    assert metrics_lib.peak_flops_per_device(123e12, "cpu") == 123e12  # the config wins
    assert metrics_lib.peak_flops_per_device(0, "cpu") is None
    assert metrics_lib.peak_flops_per_device(0, "NVIDIA H100 80GB HBM3") == table[r"H100|H200|GH200"]
    assert metrics_lib.peak_flops_per_device(0, "NVIDIA A100-SXM4-40GB") == table[r"A100"]
    assert metrics_lib.peak_flops_per_device(0, "TPU v5 lite") == table[r"TPU v5 ?lite|TPU v5e"]
    assert metrics_lib.peak_flops_per_device(0, "TPU v5") == table[r"TPU v5p|TPU v5$"]
    assert metrics_lib.peak_flops_per_device(0, "TPU v4") == table[r"TPU v4"]


def test_jsonl_append_read_truncate(tmp_path):
    path = str(tmp_path / "m.jsonl")
    for s in range(1, 6):
        metrics_lib.append_jsonl(path, {"step": s, "loss": 1.0 / s})
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')  # a torn line from a crash
    assert [r["step"] for r in metrics_lib.read_jsonl(path)] == [1, 2, 3, 4, 5]
    metrics_lib.truncate_jsonl(path, 3)
    assert [r["step"] for r in metrics_lib.read_jsonl(path)] == [1, 2, 3]
    assert open(path).read().endswith("\n")


# --------------------------------------------------------------------------------------------
# Mesh, rules, distributed


def test_mesh_shape_fill_and_errors():
    assert mesh_lib.mesh_shape({"data": 2, "fsdp": -1, "tensor": 1}, 8) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert mesh_lib.mesh_shape({"tensor": -1}, 4) == {"data": 1, "fsdp": 1, "tensor": 4}
    with pytest.raises(ValueError, match="data=-1, fsdp=-1"):
        mesh_lib.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="fsdp=0"):
        mesh_lib.mesh_shape({"fsdp": 0}, 8)
    with pytest.raises(ValueError, match=r"data=3, fsdp=-1, tensor=1.*8 devices"):
        mesh_lib.mesh_shape({"data": 3, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match=r"data=2, fsdp=2, tensor=1 needs 4 devices, but there are 8"):
        mesh_lib.mesh_shape({"data": 2, "fsdp": 2}, 8)
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1}), jax.devices()[:1])
    assert mesh.axis_names == ("data", "fsdp", "tensor") and mesh.size == 1
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


SIZES = {"data": 2, "fsdp": 4, "tensor": 2}


def test_logical_to_spec_rules():
    P = jax.sharding.PartitionSpec
    assert rules.logical_to_spec(("embed", "mlp"), (32, 64), SIZES) == P("fsdp", "tensor")
    assert rules.logical_to_spec(("norm",), (32,), SIZES) == P(None)
    # A dimension is never split over an axis already used by another one.
    assert rules.logical_to_spec(("embed", "embed"), (32, 32), SIZES) == P("fsdp", None)
    # Candidates in order; size-1 axes drop out, so a later rule takes over.
    fallback = (("mlp", "tensor"), ("mlp", "fsdp"))
    assert rules.logical_to_spec(("mlp",), (64,), {**SIZES, "tensor": 1}, fallback) == P("fsdp")
    assert rules.logical_to_spec(("mlp",), (64,), SIZES, fallback) == P("tensor")
    # FSDP by size keeps the tensor split.
    assert rules.logical_to_spec(("embed", "mlp"), (32, 64), SIZES, nbytes=100, min_fsdp_bytes=1000) == P(
        None, "tensor"
    )
    assert rules.logical_to_spec(("embed", "mlp"), (32, 64), SIZES, nbytes=1000, min_fsdp_bytes=1000) == P(
        "fsdp", "tensor"
    )
    # A rank mismatch (e.g. a factored optimizer moment) replicates.
    assert rules.logical_to_spec(("embed", "mlp"), (32,), SIZES) == P()
    with pytest.raises(ValueError, match="not in the mesh"):
        rules.logical_to_spec(("embed",), (32,), SIZES, (("embed", "model"),))
    with pytest.raises(ValueError, match="sharding rule must be"):
        rules.normalize_rules([("embed",)])


def test_indivisible_dimension_is_replicated_and_logged_once(caplog):
    P = jax.sharding.PartitionSpec
    caplog.set_level(logging.INFO, logger="c2a_jax.parallel.rules")
    for _ in range(3):
        assert rules.logical_to_spec(("vocab", "embed"), (51, 32), SIZES, name="lm/embedding") == P(None, "fsdp")
    messages = [r.getMessage() for r in caplog.records if "not divisible" in r.getMessage()]
    assert len(messages) == 1 and "'vocab'" in messages[0] and "size 51" in messages[0]


def test_state_shardings_follow_variable_metadata():
    mesh = mesh_lib.make_mesh({}, jax.devices()[:1])
    optimizer = make_optimizer(ml_collections.ConfigDict({"steps": 10}))
    init_fn, _ = init_fn_for(mlp, optimizer)
    abstract = jax.eval_shape(init_fn, seed_key(0))
    sh = rules.state_shardings(abstract, mesh)
    assert jax.tree.structure(sh) == jax.tree.structure(abstract)
    assert all(isinstance(s, jax.sharding.NamedSharding) for s in jax.tree.leaves(sh))
    restored = rules.with_shardings(abstract, sh)
    assert restored.params["w1"].get_value().sharding == sh.params["w1"].get_value()


def test_initialize_single_process_and_bad_config():
    assert distributed.initialize(None) == {"process_index": 0, "process_count": 1}
    bad = ml_collections.ConfigDict({"distributed": {"coordinator_address": "localhost:1", "num_processes": 2}})
    with pytest.raises(ValueError, match="process_id=-1"):
        distributed.initialize(bad)


def test_global_batch_single_process():
    mesh = mesh_lib.make_mesh({}, jax.devices()[:1])
    local = {"x": np.arange(12, dtype=np.float32).reshape(4, 3), "n": np.int32(2)}
    out = distributed.global_batch(local, mesh)
    np.testing.assert_array_equal(np.asarray(out["x"]), local["x"])
    assert out["n"].shape == () and int(out["n"]) == 2


# --------------------------------------------------------------------------------------------
# Resumable iterators


def test_counting_iterator_restores_position():
    def factory():
        return iter(range(100, 110))

    it = CountingIterator(factory)
    assert [next(it) for _ in range(3)] == [100, 101, 102]
    assert it.state() == {"consumed": 3}
    fresh = CountingIterator(factory)
    fresh.restore(it.state())
    assert next(fresh) == 103 and fresh.state() == {"consumed": 4}
    with pytest.raises(ValueError, match="ends after 10 batches"):
        CountingIterator(factory).restore({"consumed": 12})


def test_resumable_passes_native_sources_through():
    class Native:
        def __init__(self):
            self.i = 0

        def __next__(self):
            self.i += 1
            return self.i

        def state(self):
            return {"i": self.i}

        def restore(self, state):
            self.i = state["i"]

    native = Native()
    assert resumable(native) is native
    assert resumable(lambda: native) is native
    wrapped = resumable(lambda: iter([1, 2, 3]))
    assert isinstance(wrapped, CountingIterator) and next(wrapped) == 1
    with pytest.raises(TypeError, match="make_batches"):
        resumable(42)


# --------------------------------------------------------------------------------------------
# Pretrained weights at a fresh start


def test_init_params_replace_random_values_and_are_checked(tmp_path):
    from c2a_jax.train.loop import restore_checkpoint, train
    from tests.train_fixtures import mlp_loss_fn

    c = ml_collections.ConfigDict()
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    c.sharding = ml_collections.ConfigDict({"min_fsdp_bytes": 0})
    c.train = ml_collections.ConfigDict(dict(steps=1, learning_rate=0.0, tensorboard=False, progress=False,
                                             async_checkpoint=False, log_every=1))  # fmt: skip
    pretrained = {"w1": np.full((8, 32), 0.25, np.float32), "w2": np.arange(64, dtype=np.float32).reshape(32, 2)}
    train(c, workdir=str(tmp_path / "run"), model_fn=mlp, loss_fn=mlp_loss_fn, make_batches=mlp_batches,
          init_params=lambda: dict(pretrained))  # fmt: skip
    state, _, _ = restore_checkpoint(str(tmp_path / "run"), mlp)
    params = nnx.to_pure_dict(jax.device_get(state.params))
    np.testing.assert_array_equal(params["w1"], pretrained["w1"])  # learning rate 0: still the loaded values
    np.testing.assert_array_equal(params["w2"], pretrained["w2"])
    np.testing.assert_array_equal(params["b1"], np.zeros(32))  # left out: its own initialisation
    with pytest.raises(ValueError, match="lacks"):
        train(c, workdir=str(tmp_path / "bad"), model_fn=mlp, loss_fn=mlp_loss_fn, make_batches=mlp_batches,
              init_params=lambda: {"w3": np.zeros(3)})  # fmt: skip
    with pytest.raises(ValueError, match="wrong shape"):
        train(c, workdir=str(tmp_path / "bad2"), model_fn=mlp, loss_fn=mlp_loss_fn, make_batches=mlp_batches,
              init_params=lambda: {"w1": np.zeros((32, 8))})  # fmt: skip
