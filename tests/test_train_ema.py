"""The parameters' moving average: decay schedule against diffusers' EMAModel, the average the
train step keeps against a recurrence on the recorded parameters, frozen parameters, the loop's
checkpoints and the EMA model used for evaluation."""

import jax
import ml_collections
import numpy as np
import pytest
import torch
from diffusers.training_utils import EMAModel
from flax import nnx

from c2a_jax.train.ema import EmaConfig
from c2a_jax.train.loop import restore_checkpoint, train
from c2a_jax.train.optimizer import make_optimizer
from c2a_jax.train.state import init_fn_for, model_from_state, seed_key
from c2a_jax.train.step import make_train_step
from tests.train_fixtures import mlp, mlp_batches, mlp_loss_fn


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(power=0.75, max_decay=0.9999),
        dict(power=2 / 3, max_decay=0.999, min_decay=0.1, update_after_step=5, inv_gamma=2.0),
    ],
)
def test_decay_matches_diffusers_ema_model(kwargs):
    ours = EmaConfig(**kwargs)
    theirs = EMAModel(
        [torch.nn.Parameter(torch.zeros(1))],
        decay=ours.max_decay, min_decay=ours.min_decay, update_after_step=ours.update_after_step,
        use_ema_warmup=True, inv_gamma=ours.inv_gamma, power=ours.power,
    )  # fmt: skip
    steps = [0, 1, 2, 3, 6, 7, 10, 100, 1000, 10_000, 250_000]
    expected = [theirs.get_decay(s) for s in steps]
    np.testing.assert_allclose([float(ours.decay(s)) for s in steps], expected, rtol=1e-6, atol=1e-7)
    assert float(ours.decay(1)) == 0.0 and 0.0 < float(ours.decay(3 + ours.update_after_step)) < ours.max_decay


def test_bad_ema_config_is_refused():
    assert EmaConfig.from_config(ml_collections.ConfigDict({"ema_power": 0.0})) is None
    with pytest.raises(ValueError, match="ema_max_decay"):
        EmaConfig(max_decay=1.0)
    with pytest.raises(ValueError, match="ema_power"):
        EmaConfig(power=-1.0)


def _run_steps(train_cfg, steps):
    cfg = ml_collections.ConfigDict(dict(steps=20, learning_rate=0.05, eps=1e-3, grad_clip=1.0, ema_power=0.75))
    cfg.update(train_cfg)
    ema = EmaConfig.from_config(cfg)
    optimizer = make_optimizer(cfg)
    init_fn, graphdef = init_fn_for(mlp, optimizer, ema)
    state = jax.jit(init_fn)(seed_key(0))
    step = jax.jit(make_train_step(graphdef, mlp_loss_fn, optimizer, ema=ema))
    batches = mlp_batches()
    trajectory, decays = [nnx.to_pure_dict(jax.device_get(state.params))], []
    for _ in range(steps):
        state, metrics = step(state, next(batches))
        trajectory.append(nnx.to_pure_dict(jax.device_get(state.params)))
        decays.append(float(metrics["ema_decay"]))
    return ema, graphdef, state, trajectory, decays


def test_train_step_keeps_the_average_of_the_parameter_trajectory():
    ema, graphdef, state, trajectory, decays = _run_steps({}, steps=6)
    # diffusion_policy's convention: the update after n earlier steps uses get_decay(n).
    reference = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=0.9999, use_ema_warmup=True, power=0.75)
    assert decays == pytest.approx([reference.get_decay(n) for n in range(6)], abs=1e-7)
    expected = {k: np.asarray(v, np.float64) for k, v in trajectory[0].items()}
    for params, decay in zip(trajectory[1:], decays, strict=True):
        expected = {k: decay * expected[k] + (1 - decay) * params[k] for k in expected}
    got = nnx.to_pure_dict(jax.device_get(state.ema_params))
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
        assert np.abs(got[k] - trajectory[-1][k]).max() > 1e-4  # the average lags the parameters
    # The EMA model carries the average; the plain one the raw parameters.
    np.testing.assert_allclose(nnx.state(model_from_state(graphdef, state, ema=True), nnx.Param)["w1"][...],
                               got["w1"], rtol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(nnx.state(model_from_state(graphdef, state), nnx.Param)["w1"][...],
                                  trajectory[-1]["w1"])  # fmt: skip


def test_frozen_parameters_have_no_average_and_keep_their_values():
    _, graphdef, state, trajectory, _ = _run_steps({"freeze": ("w1",)}, steps=3)
    assert set(nnx.to_pure_dict(state.ema_params)) == {"b1", "w2"}
    model = model_from_state(graphdef, state, ema=True)
    np.testing.assert_array_equal(nnx.state(model, nnx.Param)["w1"][...], trajectory[0]["w1"])


def _loop_config(steps, **train):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    c.train = ml_collections.ConfigDict(
        dict(steps=steps, learning_rate=0.05, end_lr_fraction=1.0, eps=1e-3, log_every=1, eval_every=0, checkpoint_every=2,
             tensorboard=False, progress=False, async_checkpoint=False, ema_power=0.75, ema_max_decay=0.99)
    )  # fmt: skip
    c.train.update(train)
    return c


def test_loop_checkpoints_the_average_resumes_it_and_evaluates_with_it(tmp_path):
    seen = []

    def eval_fn(model, step):
        seen.append((step, np.asarray(nnx.state(model, nnx.Param)["w2"][...])))
        return {}

    whole = tmp_path / "whole"
    train(_loop_config(6, eval_every=6), workdir=str(whole), model_fn=mlp, loss_fn=mlp_loss_fn,
          make_batches=mlp_batches, eval_fn=eval_fn)  # fmt: skip
    split = tmp_path / "split"
    # end_lr_fraction 1: a constant rate, so a 3-step run is the first half of a 6-step one.
    train(_loop_config(3), workdir=str(split), model_fn=mlp, loss_fn=mlp_loss_fn, make_batches=mlp_batches)
    train(_loop_config(6), workdir=str(split), model_fn=mlp, loss_fn=mlp_loss_fn, make_batches=mlp_batches)

    state_a, graphdef, _ = restore_checkpoint(str(whole), mlp)
    state_b, _, _ = restore_checkpoint(str(split), mlp)
    ema_a, ema_b = (
        nnx.to_pure_dict(jax.device_get(state_a.ema_params)),
        nnx.to_pure_dict(jax.device_get(state_b.ema_params)),
    )
    for k in ema_a:
        np.testing.assert_allclose(ema_b[k], ema_a[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert seen and seen[-1][0] == 6
    np.testing.assert_allclose(seen[-1][1], ema_a["w2"], rtol=1e-6)  # eval_fn saw the EMA weights
    assert np.abs(ema_a["w2"] - np.asarray(nnx.to_pure_dict(jax.device_get(state_a.params))["w2"])).max() > 1e-5
