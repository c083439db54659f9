"""Diffusion-policy training end to end: a synthetic demonstration -> RLDS -> ``train_dp.py`` on the
shared loop (EMA, eval, checkpoint) -> `DiffusionPolicyRunner.from_checkpoint` -> action chunks in
robot units; plus the T5 embedding cache and the batch streams of every conditioning mode.

The training run is one subprocess (TensorFlow reads the RLDS dataset, and TensorFlow must not
enter the test process, see tests/conftest.py); it starts when the module's first test runs and
trains while the in-process tests run on the other core.

Why the run can overfit in a CPU test: the tiny policy (ResNet widths 16, a two-level
UNet of 32/64 channels) predicts the clean chunk (``diffusion.prediction_type = "sample"``, MSE
loss) -- with epsilon prediction DDIM samples need thousands of steps before they are accurate,
which the model and diffusion tests cover instead (tests/test_models_dp.py, tests/test_diffusion.py);
here the point is that the data, the conditioning, EMA, evaluation and the checkpoint fit together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from c2a_jax.infer.dp_runner import DiffusionPolicyRunner
from c2a_jax.train import dp_task
from c2a_jax.train.checkpoint import Checkpointer
from tests.dp_fixtures import demonstration
from tests.helpers import ROOT

STEPS = 200
SEED = 0
OVERRIDES = {
    "seed": SEED,
    "data.image_size": 32,  # the demonstration's own size: the reader's resize is the identity
    "data.crop_size": 28,
    "data.horizon": 8,
    "data.n_action_steps": 4,
    "data.shuffle_size": 64,
    "model.resnet_widths": "(16, 16, 16, 16)",
    "model.down_dims": "(32, 64)",
    "model.text_width": 32,
    "model.pool_width": 32,
    "model.diffusion_step_embed_dim": 32,
    "text.random_layers": 1,
    "diffusion.prediction_type": "sample",
    "diffusion.loss_weighting": "mse",
    "eval.frames": 11,  # every frame of the one validation episode
    "train.steps": STEPS,
    "train.batch_size": 16,
    "train.learning_rate": 3e-3,
    "train.warmup_steps": 10,
    "train.log_every": 20,
    "train.eval_every": 50,
    "train.checkpoint_every": 1000,
    "train.ema_max_decay": 0.9,  # the default 0.9999 would average over far more than 120 steps
    "train.progress": False,
    "train.tensorboard": False,
}


def _env() -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


class _Training:
    """The subprocess: build the RLDS dataset (tests/dp_fixtures.py), then ``train_dp.py``."""

    def __init__(self, root: str):
        self.workdir = os.path.join(root, "work")
        args = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
        args += [f"--config.workdir={self.workdir}", f"--config.data.dataset_dir={os.path.join(root, 'rlds')}"]
        script = 'set -e; "$0" tests/dp_fixtures.py "$1" >/dev/null; shift; exec "$0" train_dp.py "$@"'
        self.proc = subprocess.Popen(["bash", "-c", script, sys.executable, root, "--config=configs/dp/tiny.py",
                                      *args], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)  # fmt: skip
        self._done = None

    def result(self) -> dict:
        if self._done is None:
            out, err = self.proc.communicate(timeout=900)
            assert self.proc.returncode == 0, out[-3000:] + err[-5000:]
            self._done = json.loads(out[out.index("{") :])
        return self._done

    def records(self) -> list[dict]:
        with open(os.path.join(self.workdir, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f]


@pytest.fixture(scope="module", autouse=True)
def training(tmp_path_factory):
    run = _Training(str(tmp_path_factory.mktemp("dp")))
    yield run
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.communicate()


def tiny_config(mode: str = "hierarchical", **model) -> ml_collections.ConfigDict:
    """configs/dp/tiny.py with the test's sizes (what the subprocess trains)."""
    from c2a_jax.config import apply_override, load_config_file

    config = load_config_file(os.path.join(ROOT, "configs", "dp", f"tiny.py:{mode}"))
    for key, value in OVERRIDES.items():
        apply_override(config, key, str(value))
    config.model.update(model)
    return config


@pytest.fixture(scope="module")
def cache():
    """The test config's text encoder behind its cache (shared, so its shapes compile once)."""
    return dp_task.embedding_cache(tiny_config())


# ------------------------------------------------------------------------------------------------
# in-process tests first: they run while the training subprocess compiles


def test_text_embedding_cache_encodes_each_distinct_string_once(cache):
    cache, tokenizer = cache
    texts = [
        "pick(actor=get_actor('cache test cube'))",
        "pose_dict['cache test'] = 1",
        "",
        "pick(actor=get_actor('cache test cube'))",
    ]
    before = cache.stats()
    emb, mask = cache(texts * 3)
    stats = cache.stats()
    assert stats["misses"] - before["misses"] == 3 and stats["encoded"] - before["encoded"] == 3
    assert stats["hits"] - before["hits"] == 9 and stats["calls"] - before["calls"] == 1
    assert emb.shape == (12, 64, 32) and emb.dtype == np.float32 and mask.shape == (12, 64)
    again, _ = cache(texts[:2])  # cached: no encoder call
    assert cache.stats()["calls"] == stats["calls"] and cache.stats()["encoded"] == stats["encoded"]
    np.testing.assert_array_equal(again, emb[:2])

    # the cached value is the encoder's output for the string on its own (T5 adds </s>)
    encoder, _ = dp_task.text_encoder(tiny_config())
    encode = nnx.jit(lambda model, ids, real: model.encode(ids, real))
    for i, text in enumerate(texts[:3]):
        ids = tokenizer([text])[0]
        assert ids[-1] == 2 and mask[i].sum() == len(ids) and not mask[i, len(ids) :].any()
        padded, real = np.zeros((1, 64), np.int32), np.arange(64)[None] < len(ids)
        padded[0, : len(ids)] = ids
        direct = np.asarray(encode(encoder, padded, real))[0, : len(ids)]
        np.testing.assert_allclose(emb[i, : len(ids)], direct, atol=2e-5, rtol=1e-5)
        assert not emb[i, len(ids) :].any()  # padding rows are zero
    # the random encoder is a function of the config: a second one is identical
    np.testing.assert_array_equal(
        np.asarray(encoder.shared[...]), np.asarray(dp_task.text_encoder(tiny_config())[0].shared[...])
    )

    long = " ".join(["move3d(target_actor=get_actor('blue cylinder'))"] * 8)
    _, long_mask = cache([long])
    assert long_mask.all() and cache.stats()["truncated"] == before["truncated"] + 1


def _stream_batches(mode: str, cache, episodes, **model):
    config = tiny_config(mode, **model)
    policy = dp_task.policy_config(config)
    normalizers = dp_task.normalizers_from_statistics(config, dp_task.episode_statistics(episodes))
    source = dp_task.memory_source(episodes)
    rng = np.random.default_rng([SEED, 0])
    return policy, dp_task.dp_batches(source.train(SEED, 0, 1), config, policy, normalizers, cache, 8, rng)


def test_batches_carry_the_streams_of_each_conditioning_mode(cache):
    cache, _ = cache
    episode = demonstration()
    codes = set(episode["code_fine"])
    policy, batches = _stream_batches("hierarchical", cache, [episode])
    batch = next(batches)
    assert policy.streams == ("code", "cache_info")
    assert {k for k in batch if k.endswith(("_tokens", "_mask"))} == {
        "code_tokens", "code_mask", "cache_info_tokens", "cache_info_mask", "action_mask"}  # fmt: skip
    assert batch["image"].shape == batch["wrist_image"].shape == (8, 28, 28, 3)  # both cameras, cropped alike
    np.testing.assert_array_equal(batch["wrist_image"], 255 - batch["image"])
    assert batch["state"].shape == (8, 9) and batch["action"].shape == (8, 8, 7)
    assert np.abs(batch["action"]).max() <= 1.0 and set(np.unique(batch["action"][..., 6])) <= {-1.0, 1.0}
    assert len(codes) >= 4 and batch["code_tokens"].shape == (8, 64, 32)

    # flat: the prompt and nothing else; prompts are drawn from the episode's variants
    policy, batches = _stream_batches("flat", cache, [episode])
    batch = next(batches)
    assert policy.streams == ("prompt",)
    assert {k for k in batch if k.endswith("_tokens")} == {"prompt_tokens"}
    prompt_rows = {cache(list(episode["prompts"]))[0][i].tobytes() for i in range(2)}
    assert {row.tobytes() for row in batch["prompt_tokens"]} <= prompt_rows

    # oracle: code, cache info and the episode's oracle text when it has one (optional otherwise)
    with_oracle = {**episode, "oracle": [f"red cube target at cell {t}" for t in range(len(episode["action"]))]}
    policy, batches = _stream_batches("oracle", cache, [with_oracle])
    assert policy.streams == ("code", "cache_info", "oracle")
    assert {k for k in next(batches) if k.endswith("_tokens")} == {"code_tokens", "cache_info_tokens", "oracle_tokens"}
    _, batches = _stream_batches("oracle", cache, [episode])
    assert {k for k in next(batches) if k.endswith("_tokens")} == {"code_tokens", "cache_info_tokens"}

    # lowdim: a state + actor-grid vector in place of the cameras
    _, batches = _stream_batches("hierarchical", cache, [episode], observation="lowdim", lowdim_dim=21)
    batch = next(batches)
    assert batch["lowdim"].shape == (8, 21) and "image" not in batch
    np.testing.assert_array_equal(batch["lowdim"][:, :9], batch["state"])
    np.testing.assert_array_equal(batch["lowdim"][:, 11], 1.0)  # the first actor is visible
    np.testing.assert_array_equal(batch["lowdim"][:, 12:], 0.0)  # the second is not, actors 3 and 4 do not exist

    # the stream is a function of the seed (what exact resume replays)
    first = [next(_stream_batches("hierarchical", cache, [episode, demonstration(key="b/1")])[1]) for _ in range(2)]
    for key in first[0]:
        np.testing.assert_array_equal(first[0][key], first[1][key])


def _eval_frames(config, episode, normalizers):
    policy = dp_task.policy_config(config)
    return dp_task.validation_frames(config, dp_task.memory_source([episode]), normalizers, policy, 11)


def _chunk_floor(config, episode) -> float:
    """MSE of the best prediction that ignores the observation and the code: every frame's chunk
    replaced by the mean chunk over the demonstration (per position, real steps only)."""
    normalizers = dp_task.normalizers_from_statistics(config, dp_task.episode_statistics([episode]))
    frames = _eval_frames(config, episode, normalizers)
    actions = np.stack([f["action"] for f in frames])
    mask = np.stack([f["action_mask"] for f in frames])[..., None]
    mean = (actions * mask).sum(0) / np.maximum(mask.sum(0), 1)
    return float((((actions - mean) ** 2) * mask).sum() / (mask.sum() * actions.shape[-1]))


def demo_inputs(episode):
    """The runner's inputs for every frame of `episode`: raw observations (uncropped, unnormalised)
    and the code and cache info of each step."""
    n = len(episode["action"]) - 1
    obs = {"image": episode["image"][:n], "wrist_image": episode["wrist_image"][:n], "state": episode["state"][:n]}
    return obs, episode["code_fine"][:n], episode["cache_info_fine"][:n]


@pytest.fixture(scope="module")
def untrained(cache):
    """An untrained policy of the test's architecture, run through the runner on the demonstration:
    its chunk errors (the baseline the trained policy must beat). It also compiles the runner's
    sampler for both batch shapes while the training subprocess runs (the compiled function is
    shared by every runner of this architecture)."""
    from flax import nnx

    from c2a_jax.models.policy import CodePolicy

    config, episode = tiny_config(), demonstration()
    normalizers = dp_task.normalizers_from_statistics(config, dp_task.episode_statistics([episode]))
    policy = dp_task.policy_config(config)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: CodePolicy(policy, rngs=nnx.Rngs(1))))
    # one jitted initialisation; the rbg generator compiles in half the time of threefry on XLA:CPU
    init = jax.jit(lambda key: nnx.split(CodePolicy(policy, rngs=nnx.Rngs(key)))[1])
    model = nnx.merge(graphdef, init(jax.random.key(1, impl="unsafe_rbg")))
    runner = DiffusionPolicyRunner(model, config, normalizers, cache[0])
    obs, codes, caches = demo_inputs(episode)
    chunks = runner.sample(obs, codes, caches, rng=SEED)
    runner.sample({k: v[5] for k, v in obs.items()}, codes[5], caches[5], rng=1)
    target = dp_task.make_batch(_eval_frames(config, episode, normalizers), runner.policy, runner.cache)
    return dp_task.chunk_errors(normalizers["action"].normalize(chunks), target, 4)


def test_an_untrained_policy_is_no_better_than_guessing(untrained):
    floor = _chunk_floor(tiny_config(), demonstration())
    assert 0.2 < floor < 0.6  # a chunk of this demonstration is not guessable without its inputs
    assert untrained["action_mse"] > floor, (untrained, floor)


def test_help_and_a_missing_dataset(tmp_path):
    help_out = subprocess.run([sys.executable, "train_dp.py", "--help", "--config=configs/dp/tiny.py:flat,lowdim"],
                              cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert help_out.returncode == 0 and "DiffusionPolicyRunner" in help_out.stdout, help_out.stderr
    assert "conditioning = 'flat'" in help_out.stdout and "model.observation = 'lowdim'" in help_out.stdout
    missing = tmp_path / "no_dataset"
    run = subprocess.run([sys.executable, "train_dp.py", f"--config.workdir={tmp_path / 'w'}",
                          f"--config.data.dataset_dir={missing}"], cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 2 and str(missing) in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert json.loads((tmp_path / "w" / "config.json").read_text())["data"]["dataset_dir"] == str(missing)


# ------------------------------------------------------------------------------------------------
# the training run


def test_train_dp_writes_checkpoints_with_statistics_and_config(training):
    result = training.result()
    assert result["step"] == STEPS and result["stopped"] is None
    ckpt = Checkpointer(os.path.join(training.workdir, "checkpoints"), read_only=True)
    try:
        assert ckpt.all_steps() == [STEPS]
        items = ckpt.read_items()
    finally:
        ckpt.close()
    config = items["config"]
    assert config["conditioning"] == "hierarchical" and config["data"]["horizon"] == 8
    assert config["train"]["ema_power"] == 0.75 and config["model"]["cameras"] == ["image", "wrist_image"]
    stats = items["dataset_statistics"]
    norm = stats["normalization"]
    np.testing.assert_allclose(norm["action"]["low"], stats["action"]["min"], rtol=1e-6)
    np.testing.assert_allclose(norm["state"]["high"], stats["state"]["max"], rtol=1e-6)
    assert norm["action"]["skip"] == [6] and norm["state"]["skip"] == []  # the vacuum command stays binary
    assert items["tokenizer"]["name"] == "c2a-tiny" and items["tokenizer"]["kind"] == "t5"
    # T5 ran once per distinct string the run ever saw: the demonstration's code lines and cache infos
    episode = demonstration()
    strings = set(episode["code_fine"][:-1]) | set(episode["cache_info_fine"][:-1])
    assert result["text_cache/encoded"] == result["text_cache/misses"] == len(strings)
    assert result["text_cache/hits"] + result["text_cache/misses"] == (STEPS * 16 + 11) * 2  # train + eval lookups


def test_tiny_policy_overfits_one_demonstration(training, untrained):
    training.result()
    records = training.records()
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval/action_mse"] for r in records if "eval/action_mse" in r]
    assert len(evals) == STEPS // 50 and losses[-1] < 0.5 * losses[0]
    floor = _chunk_floor(tiny_config(), demonstration())
    # The EMA policy's DDIM samples must beat any observation-blind prediction fivefold: a policy
    # that ignored images, state and code cannot get below `floor` (an untrained one is above it).
    assert evals[-1] < floor / 5 and evals[-1] < untrained["action_mse"] / 5, (evals, floor, untrained)
    assert evals[-1] < evals[0]


def test_restored_runner_reproduces_the_training_eval_in_robot_units(training):
    training.result()
    records = training.records()
    logged = [r for r in records if "eval/action_mse" in r][-1]
    from c2a_jax.infer import dp_runner

    compiled = dp_runner._sample._cache_size()  # the untrained fixture compiled both batch shapes
    runner = DiffusionPolicyRunner.from_checkpoint(training.workdir)
    episode = demonstration()
    obs, codes, caches = demo_inputs(episode)
    n = len(codes)
    chunks = runner.sample(obs, codes, caches, rng=SEED)
    assert chunks.shape == (n, 8, 7) and chunks.dtype == np.float32

    # the restored EMA weights, crop, normalisation and text give back the eval the run logged
    action_norm = runner.normalizers["action"]
    config = runner.config
    frames = _eval_frames(config, episode, runner.normalizers)
    assert [f["code"] for f in frames] == list(codes)
    target = dp_task.make_batch(frames, runner.policy, runner.cache)
    errors = dp_task.chunk_errors(action_norm.normalize(chunks), target, 4)
    for key in ("action_mse", "action_mae", "action_mse_executed"):
        assert errors[key] == pytest.approx(logged[f"eval/{key}"], rel=1e-4, abs=1e-6), key

    # robot units: the dataset's action range (about 0.4 wide here), not [-1, 1]; the vacuum
    # command (dim 6) is not normalised and passes through
    low, high = action_norm.low, action_norm.high
    assert (high - low)[:6].max() < 0.5 and action_norm.skip == (6,)
    assert (chunks[..., :6] >= low[:6] - 1e-6).all() and (chunks[..., :6] <= high[:6] + 1e-6).all()
    np.testing.assert_allclose(chunks, action_norm.unnormalize(action_norm.normalize(chunks)), atol=1e-6)
    real = np.stack([f["action_mask"] for f in frames])
    raw = np.stack([episode["action"][np.minimum(np.arange(t, t + 8), n - 1)] for t in range(n)])
    span = float((high - low)[:6].mean())
    assert np.abs(chunks - raw)[..., :6][real].mean() < 0.2 * span  # close to the demonstration in robot units

    # same key, same chunk (from a second restore); another key, another chunk; one observation -> (H, 7)
    again = DiffusionPolicyRunner.from_checkpoint(training.workdir).sample(obs, codes, caches, rng=jax.random.key(SEED))
    np.testing.assert_array_equal(again, chunks)
    one = {k: v[5] for k, v in obs.items()}
    single = runner.sample(one, codes[5], caches[5], rng=1)
    assert single.shape == (8, 7)
    np.testing.assert_array_equal(single, runner.sample(one, codes[5], caches[5], rng=1))
    assert np.abs(single - runner.sample(one, codes[5], caches[5], rng=2)).max() > 0
    assert dp_runner._sample._cache_size() == compiled  # restored runners reuse the compiled sampler

    with pytest.raises(ValueError, match="prompt"):
        runner.sample(obs, codes, caches, rng=0, prompt=["x"] * n)
    with pytest.raises(ValueError, match="cache_info"):
        runner.sample(obs, codes, rng=0)
    with pytest.raises(ValueError, match="uint8"):  # other sizes are resized; other dtypes refused
        runner.sample({**obs, "image": obs["image"].astype(np.float32)}, codes, caches, rng=0)
