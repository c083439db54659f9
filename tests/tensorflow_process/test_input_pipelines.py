"""The input pipelines on a real dataset: simulator episodes -> RLDS -> tf.data reader -> VLM token
batches and DP frames, with per-process sharding and the dataset's own statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import ROOT

tf.config.set_visible_devices([], "GPU")

from c2a_jax.data import dp, normalization, rlds, tokenizer, vlm  # noqa: E402
from data_pipelines import build_rlds  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """Three short Pick episodes (image size 32) built into RLDS; returns the version directory."""
    demos = str(tmp_path_factory.mktemp("demos"))
    cmd = [sys.executable, os.path.join(ROOT, "data_pipelines", "generate_demos.py"), "--task", "Pick",
           "--num-episodes", "3", "--seed", "2", "--num-workers", "1", "--image-size", "32", "--max-steps", "200",
           "--out", demos]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    builder = build_rlds.build(demos, str(tmp_path_factory.mktemp("rlds")), progress=False)
    return os.fspath(builder.data_dir)


def test_reader_gives_whole_episodes_resized(dataset):
    episodes = list(
        rlds.rlds_episodes(dataset, "train", image_size=24, shuffle=False, process_index=0, process_count=1)
    )
    assert len(episodes) >= 2
    for ep in episodes:
        n = len(ep["action"])
        assert ep["image"].shape == (n, 24, 24, 3) and ep["wrist_image"].dtype == np.uint8
        assert ep["is_last"][-1] and not ep["is_last"][:-1].any()
        assert len(ep["code_fine"]) == n and ep["is_keystep_fine"][0]
        assert ep["code_fine"][-1] == "done()" or ep["code_fine"][-1] == "# done()"
        assert ep["key"].startswith("Pick/seed_") and ep["prompts"] and ep["actor_names"]
    assert len({ep["key"] for ep in episodes}) == len(episodes)


def test_each_process_reads_its_own_shard(dataset):
    keys = [
        {ep["key"] for ep in rlds.rlds_episodes(dataset, "train", shuffle=False, process_index=i, process_count=2)}
        for i in range(2)
    ]
    everything = {ep["key"] for ep in rlds.rlds_episodes(dataset, "train", shuffle=False, process_index=0, process_count=1)}  # fmt: skip
    assert keys[0] and keys[1] and not keys[0] & keys[1] and keys[0] | keys[1] == everything
    with pytest.raises(ValueError, match="processes"):
        next(rlds.rlds_episodes(dataset, "train", process_index=0, process_count=100))


def test_vlm_batches_from_rlds(dataset):
    tok = tokenizer.load_tokenizer(tokenizer.TINY)
    vt = vlm.VlmTokenizer(tok, num_image_tokens=16, max_length=192)
    episodes = rlds.rlds_episodes(dataset, "train", image_size=32, process_index=0, process_count=1)
    counters = vlm.PipelineCounters()
    batches = list(
        vlm.vlm_batches(episodes, vlm.VlmExampleConfig(), vt, 8, np.random.default_rng(0), counters=counters)
    )
    assert batches and counters.too_long == 0
    for b in batches:
        assert b["tokens"].shape == (8, 192) and b["images"].shape == (8, 1, 32, 32, 3)
        # loss only where the target is an answer token, never on image tokens or the question
        assert not np.isin(b["targets"][b["target_mask"]], [tok.image_id, tok.pad_id]).any()
        assert (b["tokens"] == tok.image_id).sum(axis=1).tolist() == [16] * 8


def test_dp_frames_from_rlds_with_saved_statistics(dataset, tmp_path):
    stats = normalization.load_statistics(dataset)
    norms = dp.dp_normalizers(stats)
    normalization.save_normalizers(norms, tmp_path / "norm.json")
    norms = normalization.load_normalizers(tmp_path / "norm.json")
    episodes = list(rlds.rlds_episodes(dataset, "train", image_size=32, process_index=0, process_count=1))
    cfg = dp.DpFrameConfig(horizon=8, crop_size=28)
    frames = list(dp.dp_frames(episodes, cfg, norms, np.random.default_rng(0)))
    assert len(frames) == sum(len(ep["action"]) - 1 for ep in episodes)
    actions = np.stack([f["action"][0] for f in frames])
    assert np.abs(actions[:, :6]).max() <= 1.0 and set(np.unique(actions[:, 6])) <= {-1.0, 1.0}
    # every dimension that varies reaches both ends of [-1, 1] over the train split (min/max bounds)
    varying = np.array(stats["action"]["max"]) - np.array(stats["action"]["min"]) > 1e-6
    varying[6] = False
    np.testing.assert_allclose(actions[:, varying].min(0), -1, atol=1e-5)
    np.testing.assert_allclose(actions[:, varying].max(0), 1, atol=1e-5)
    assert all(f["image"].shape == (28, 28, 3) for f in frames)
    raw = np.concatenate([ep["action"][:-1] for ep in episodes])
    np.testing.assert_allclose(norms["action"].unnormalize(actions), raw, atol=1e-5)


def test_missing_or_corrupt_dataset_is_named(tmp_path, dataset):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        next(rlds.rlds_episodes(tmp_path / "nothing_here", process_index=0, process_count=1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="dataset_info.json"):
        next(rlds.rlds_episodes(tmp_path / "empty", process_index=0, process_count=1))
    with pytest.raises(ValueError, match="no split"):
        next(rlds.rlds_episodes(dataset, "test", process_index=0, process_count=1))


def test_train_vlm_runs_on_the_dataset_and_resumes(dataset, tmp_path):
    """train_vlm.py end to end on the simulator-built RLDS: metrics, exact-match eval, checkpoints,
    and a second invocation that continues from the first one's last step."""
    workdir = tmp_path / "vlm"
    args = [sys.executable, os.path.join(ROOT, "train_vlm.py"), f"--config.workdir={workdir}",
            f"--config.data.dataset_dir={dataset}", "--config.data.image_size=32", "--config.data.max_length=192",
            "--config.train.batch_size=4", "--config.train.log_every=2", "--config.train.checkpoint_every=2",
            "--config.train.eval_every=4", "--config.eval.examples=2", "--config.eval.max_new_tokens=16",
            "--config.train.warmup_steps=1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "JAX_PLATFORMS": "cpu"}
    first = subprocess.run([*args, "--config.train.steps=4"], capture_output=True, text=True, timeout=900, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4] and all(
        np.isfinite(r["loss"]) for r in records if "loss" in r
    )
    assert any("eval/exact_match" in r for r in records)
    assert sorted(os.listdir(workdir / "checkpoints"))[-1] == "4"
    second = subprocess.run([*args, "--config.train.steps=6"], capture_output=True, text=True, timeout=900, env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    report = json.loads(second.stdout[second.stdout.index("{") :])
    assert report["start_step"] == 4 and report["step"] == 6
