"""The input pipelines on a real dataset: simulator episodes -> RLDS -> tf.data reader -> VLM token
batches and DP frames, with per-process sharding and the dataset's own statistics."""

from __future__ import annotations

import itertools
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


def test_shuffled_reads_repeat_the_same_order_for_a_seed(dataset):
    """The order of a shuffled, repeating read is a function of the seed: resuming a run replays it
    (`c2a_jax.train.resumable`). A parallel map that let episodes out as its threads finished gave
    a new order on every read."""

    def keys(seed: int) -> list[str]:
        episodes = rlds.rlds_episodes(dataset, "train", image_size=24, repeat=True, seed=seed, process_index=0,
                                      process_count=1)  # fmt: skip
        return [episode["key"] for episode in itertools.islice(episodes, 24)]

    first = keys(0)
    assert len(set(first)) > 1
    assert all(keys(0) == first for _ in range(4))
    assert keys(1) != first


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


def test_train_vlm_finetunes_a_hugging_face_llava_with_lora(dataset, tmp_path):
    """configs/vlm/finetune.py with LoRA from a (tiny, random) Hugging Face LLaVA directory: the
    checkpoint's weights are the starting point, only adapters and projector move, and the merged
    model exports back to transformers with the fine-tuned model's logits."""
    import jax
    import ml_collections
    import torch
    from flax import nnx
    from transformers import CLIPVisionConfig
    from transformers import LlavaConfig as HFLlavaConfig
    from transformers import LlavaForConditionalGeneration as HFLlava
    from transformers import Phi3Config as HFPhi3Config

    from c2a_jax.convert.llava import export_llava, llava_params_from_state_dict
    from c2a_jax.convert.safetensors_io import load_state_dict
    from c2a_jax.models.llava import LlavaForConditionalGeneration
    from c2a_jax.models.lora import merge_lora
    from c2a_jax.train import vlm_task
    from c2a_jax.train.loop import restore_checkpoint
    from c2a_jax.train.optimizer import param_path
    from c2a_jax.train.state import model_from_state

    tok = tokenizer.load_tokenizer(tokenizer.TINY)
    torch.manual_seed(0)
    hf = HFLlava(HFLlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=32, patch_size=16),
        text_config=HFPhi3Config(vocab_size=576, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_id,
                                 bos_token_id=tok.bos_id, eos_token_id=tok.eos_id),
        image_token_index=tok.image_id,
    )).eval()  # fmt: skip
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir)

    workdir = tmp_path / "ft"
    cmd = [sys.executable, os.path.join(ROOT, "train_vlm.py"), "--config=configs/vlm/finetune.py:base=tiny,lora=4,steps=3",
           f"--config.workdir={workdir}", f"--config.model.init_from={hf_dir}", f"--config.data.dataset_dir={dataset}",
           "--config.data.image_size=32", "--config.data.max_length=192", "--config.train.batch_size=4",
           "--config.train.log_every=1", "--config.eval.examples=0", "--config.train.learning_rate=0.01"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    llava = vlm_task.llava_config(config.model, 32, tok)
    assert llava.text.lora_rank == 4 and llava.text.hidden_size == 64  # the HF directory's architecture
    state, graphdef, _ = restore_checkpoint(str(workdir), lambda rngs: LlavaForConditionalGeneration(llava, rngs=rngs))
    params = {param_path(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(jax.device_get(state.params))}
    _, pretrained = llava_params_from_state_dict(llava, load_state_dict(str(hf_dir)))
    moved = set()
    for path, value in pretrained.items():
        name = param_path(path)
        if not np.array_equal(params[name], value):
            moved.add(name)
    assert moved and all(name.startswith("multi_modal_projector/") for name in moved)  # all else frozen as loaded
    adapters_b = [v for k, v in params.items() if k.endswith("lora_b")]
    assert len(adapters_b) == 8 and all(np.abs(b).max() > 0 for b in adapters_b)  # adapters trained from zero

    model = model_from_state(graphdef, state)
    plain = vlm_task.llava_config(ml_collections.ConfigDict({**config.model.to_dict(), "lora_rank": 0}), 32, tok)
    merged = merge_lora(lambda: LlavaForConditionalGeneration(plain, rngs=nnx.Rngs(0)), model)
    ids = np.random.default_rng(0).integers(5, 500, (2, 12))
    ours = np.asarray(model(ids)[0])
    np.testing.assert_allclose(np.asarray(merged(ids)[0]), ours, atol=1e-4, rtol=1e-4)
    export_llava(plain, merged, tmp_path / "export")
    with torch.no_grad():
        theirs = HFLlava.from_pretrained(tmp_path / "export").eval()(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)
