"""evaluate.py end to end with tiny untrained models: VLM+Oracle through the real worker processes
(whatever an untrained VLM writes is recorded, never executed as Python), the report, and a
rerun that skips finished episodes; VLM+DP with an untrained VLM and an untrained diffusion policy
runs a few control steps and records every step's code line and the time split."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from c2a_jax.config import load_config_file
from tests.helpers import ROOT


def _vlm_checkpoint(workdir: str) -> None:
    """One training step of a tiny VLM at 32 px on synthetic examples: a real checkpoint + config."""
    from c2a_jax.data import tokenizer as tokenizer_lib
    from c2a_jax.data import vlm
    from c2a_jax.data.synthetic import make_episode
    from c2a_jax.models.llava import LlavaForConditionalGeneration
    from c2a_jax.train import vlm_task
    from c2a_jax.train.loop import train
    from c2a_jax.train.vlm_loss import make_loss_fn

    config = load_config_file(os.path.join(ROOT, "configs", "vlm", "tiny.py"))
    config.data.image_size, config.data.max_length = 32, 128
    config.model.update(dict(vision_width=32, vision_layers=1, text_width=64, text_layers=1))
    config.train.update(dict(steps=1, batch_size=4, log_every=1, eval_every=0, warmup_steps=0, progress=False,
                             tensorboard=False))  # fmt: skip
    tok = tokenizer_lib.load_tokenizer(config.data.tokenizer)
    llava = vlm_task.llava_config(config.model, 32, tok)
    vt = vlm.VlmTokenizer(tok, llava.image_tokens, 128)
    rng = np.random.default_rng(0)
    examples = [vt(e) for e in vlm.episode_examples(make_episode(size=32, key="t/0"), vlm.VlmExampleConfig(), rng, [])]
    batch = vlm.stack_rows(list(vlm.pack_rows(examples[:4], 128, 1, tok.pad_id)))
    train(config, workdir=workdir, model_fn=lambda rngs: LlavaForConditionalGeneration(llava, rngs=rngs),
          loss_fn=make_loss_fn("full"), make_batches=lambda: iter([batch] * 2),
          checkpoint_items={"tokenizer": tok.reference()})  # fmt: skip


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory) -> str:
    workdir = str(tmp_path_factory.mktemp("vlm"))
    _vlm_checkpoint(workdir)
    return workdir


def test_vlm_oracle_evaluation_records_reports_and_resumes(vlm_dir, tmp_path):
    from c2a_jax.eval.evaluate import evaluate

    config = load_config_file(os.path.join(ROOT, "configs", "eval", "default.py") + ":vlm_oracle")
    config.update(dict(workdir=str(tmp_path / "eval"), tasks=("Pick", "Topple"), num_seeds=2, num_workers=2,
                       vlm_checkpoint=vlm_dir, max_queries=2, videos_per_task=0, max_steps=60))  # fmt: skip
    result = evaluate(config)
    assert result["run"] == 4 and result["skipped"] == 0
    records = [json.loads(line) for line in (tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()]
    assert {(r["task"], r["seed"]) for r in records} == {("Pick", 0), ("Pick", 1), ("Topple", 0), ("Topple", 1)}
    for r in records:
        assert r["mode"] == "vlm_oracle" and r["level"] == "L0" and not r.get("error")
        assert r["queries"] == len(r["code"]) == len(r["calls"]) <= 2
        assert r["parse_errors"] + r["invalid_calls"] + r["commented"] + r["actions"] + r["queries"] >= r["queries"]
        assert r["vlm_s"] > 0 and r["sim_s"] > 0
    assert records[0]["task_args"] == {} and any(r["task_args"] == {"topple": True} for r in records)
    report = (tmp_path / "eval" / "report" / "report.md").read_text()
    assert "Pick" in report and "Topple" in report and "paper: success %" in report
    again = evaluate(config)
    assert again["run"] == 0 and again["skipped"] == 4


def test_oracle_mode_records_the_solver_alone_as_the_upper_bound(tmp_path):
    """The `oracle` mode needs no checkpoint: each record is the scripted solver's own episode (no
    rendering), with its calls (fine key-steps, done() last) counted as Table 2's actions."""
    from c2a_jax.eval.evaluate import evaluate

    config = load_config_file(os.path.join(ROOT, "configs", "eval", "default.py") + ":oracle")
    config.update(dict(workdir=str(tmp_path / "eval"), tasks=("Topple",), num_seeds=2, first_seed=5, num_workers=1,
                       videos_per_task=0))  # fmt: skip
    result = evaluate(config)
    assert result["run"] == 2 and result["success_rate"] == 1.0
    records = [json.loads(line) for line in (tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()]
    for r in records:
        assert r["mode"] == "oracle" and r["level"] == "L0" and r["success"] and 0 < r["steps"] < 1000
        assert r["queries"] == len(r["code"]) >= 3 and r["code"][-1] == "done()"
        assert r["code"][0].startswith("move3d(") and any("topple=True" in c for c in r["code"])
    assert "Oracle (scripted solver)" in (tmp_path / "eval" / "report" / "report.md").read_text()


def _untrained_dp_runner():
    """A tiny two-camera DP at 32 px, randomly initialised, behind the inference runner, with
    normalisers from the synthetic demonstration (no training: that has its own tests)."""
    from flax import nnx

    from c2a_jax.config import apply_override
    from c2a_jax.infer.dp_runner import DiffusionPolicyRunner
    from c2a_jax.models.policy import CodePolicy
    from c2a_jax.train import dp_task
    from tests.dp_fixtures import demonstration

    config = load_config_file(os.path.join(ROOT, "configs", "dp", "tiny.py"))
    for key, value in {"data.image_size": 32, "data.crop_size": 28, "data.horizon": 8, "data.n_action_steps": 4,
                       "model.resnet_widths": "(16, 16, 16, 16)", "model.down_dims": "(16, 32)", "model.text_width": 16,
                       "model.pool_width": 16, "model.diffusion_step_embed_dim": 16, "text.random_layers": 1,
                       "diffusion.num_inference_steps": 2}.items():  # fmt: skip
        apply_override(config, key, str(value))
    normalizers = dp_task.normalizers_from_statistics(config, dp_task.episode_statistics([demonstration(size=32)]))
    cache, _ = dp_task.embedding_cache(config)
    model = CodePolicy(dp_task.policy_config(config), rngs=nnx.Rngs(0))
    return DiffusionPolicyRunner(model, config, normalizers, cache)


def test_vlm_dp_runs_a_few_steps_with_untrained_models(vlm_dir):
    from c2a_jax.eval.policy_episodes import PolicyWorker, run_policy_episode
    from c2a_jax.infer.code_writer import CodeWriter
    from c2a_jax.infer.controller import HierarchicalController
    from c2a_jax.train.vlm_task import load_trained_vlm

    model, tok, _ = load_trained_vlm(vlm_dir)
    writer = CodeWriter(model, tok, max_new_tokens=12)
    runner = _untrained_dp_runner()
    controller = HierarchicalController(runner.sample, writer.generate_code, n_action_steps=4)
    sim = PolicyWorker(task="Pick", image_size=32, max_steps=5)
    try:
        record = run_policy_episode(sim, controller, {"task": "Pick", "seed": 1}, record_frames=True)
    finally:
        sim.close()
    assert record["steps"] == 5 and record["end_reason"] in ("step_budget", "success")
    assert sum(n for _, n in record["code_runs"]) == 5  # every step's code line, run-length encoded
    assert record["chunks"].get("first") == 1 and sum(record["chunks"].values()) >= 2  # 5 steps, chunks of 4
    assert record["vlm_s"] > 0 and record["dp_s"] > 0 and record["sim_s"] > record["reset_s"] > 0
    assert len(record["_frames"]) == 5 and record["_frames"][0].shape == (32, 32, 3)


def test_policy_episodes_render_only_the_images_the_models_read():
    from c2a_jax.eval.policy_episodes import PolicyWorker, run_policy_episode
    from c2a_jax.infer.controller import HierarchicalController

    seen, written = [], []

    def policy(obs, rng, **text):  # records whether it was shown rendered images
        seen.append((bool(np.asarray(obs["image"]).any()), bool(np.asarray(obs["wrist_image"]).any())))
        return np.zeros((3, 7), np.float32)

    def writer(image, prompt, memory, request):
        written.append(bool(np.asarray(image).any()))
        return "move3d()"

    sim = PolicyWorker(task="Pick", image_size=32, max_steps=7)
    renders = []
    render_cameras = sim.env.render_cameras
    sim.env.render_cameras = lambda uids=("base_camera", "hand_camera"): renders.extend(uids) or render_cameras(uids)
    try:
        sim.reset(seed=1)
        at_reset = len(renders)
        renders.clear()
        flat = HierarchicalController(policy, None, n_action_steps=3)
        record = run_policy_episode(sim, flat, {"task": "Pick", "seed": 1})
        assert record["steps"] == 7 and seen == [(True, True)] * 3  # draws at steps 0, 3, 6, all rendered
        assert len(renders) == at_reset + 4  # both cameras before steps 3 and 6 only, not all 7
        renders.clear()
        record = run_policy_episode(sim, flat, {"task": "Pick", "seed": 1}, record_frames=True)
        assert len(renders) == at_reset + 14 and len(record["_frames"]) == 7  # videos need every frame
        renders.clear()
        seen.clear()
        hierarchical = HierarchicalController(policy, writer, n_action_steps=3, regenerate_on_keystep=False)
        run_policy_episode(sim, hierarchical, {"task": "Pick", "seed": 1})
        assert written == [True] * 7 and seen == [(True, True)] * 3  # the VLM's camera every step
        assert renders.count("hand_camera") == at_reset // 2 + 2 and renders.count("base_camera") == at_reset // 2 + 7
        with pytest.raises(ValueError, match="images must be"):
            sim.step(sim.reset(seed=1)["episode"], np.zeros(7), images=["depth"])
    finally:
        sim.close()


def test_models_of_other_image_sizes_read_larger_renderings_resized_as_in_training(vlm_dir):
    """The paper's VLM reads 336 px and its DP 128 px: evaluation renders once at the larger size and
    each model resizes to its own. A 64 px frame must give exactly what its training-style 32 px
    resize gives, for the code writer and for the DP runner."""
    from c2a_jax.infer.code_writer import CodeWriter
    from c2a_jax.infer.resize import resize_images
    from c2a_jax.train.vlm_task import load_trained_vlm

    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    small = resize_images(frame, 32)
    assert small.shape == (32, 32, 3) and resize_images(small, 32) is small
    model, tok, _ = load_trained_vlm(vlm_dir)
    writer = CodeWriter(model, tok, max_new_tokens=8)
    writer.generate_code(frame, "Pick up the red cube", [])
    tokens_big = writer.last_result.tokens.copy()
    writer.generate_code(small, "Pick up the red cube", [])
    np.testing.assert_array_equal(tokens_big, writer.last_result.tokens)

    runner = _untrained_dp_runner()
    state = rng.normal(size=9).astype(np.float32)
    wrist = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    text = {"code": "pick(actor=get_actor('red cube'))", "cache_info": "pose_dict = {}"}
    big = runner.sample({"image": frame, "wrist_image": wrist, "state": state}, rng=0, **text)
    resized = {"image": small, "wrist_image": resize_images(wrist, 32), "state": state}
    np.testing.assert_array_equal(big, runner.sample(resized, rng=0, **text))
    with pytest.raises(ValueError, match="uint8"):
        runner.sample({"image": frame.astype(np.float32), "wrist_image": wrist, "state": state}, rng=0, **text)


def test_a_stand_in_code_writer_per_episode_needs_no_vlm_checkpoint(tmp_path):
    """`code_writer_for(job)` answers each episode's queries (here: done() at once); without a VLM
    checkpoint the image size comes from the config."""
    from c2a_jax.eval.evaluate import evaluate
    from c2a_jax.infer.replay import ReplayCodeWriter

    config = load_config_file(os.path.join(ROOT, "configs", "eval", "default.py") + ":vlm_oracle")
    config.update(dict(workdir=str(tmp_path / "eval"), tasks=("Pick",), num_seeds=2, num_workers=1, image_size=32,
                       videos_per_task=0, max_steps=20))  # fmt: skip
    seen = []

    def writer_for(job):
        seen.append(job["seed"])
        return ReplayCodeWriter([])  # done() to every query

    assert evaluate(config, code_writer_for=writer_for)["run"] == 2
    records = [json.loads(line) for line in (tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()]
    assert seen == [0, 1] and [r["code"] for r in records] == [["done()"], ["done()"]]
    assert all(r["end_reason"] == "done" and r["queries"] == 1 and not r.get("error") for r in records)
    assert all(0 < r["reset_s"] <= r["sim_s"] for r in records)  # the reset is the simulator's, timed apart
    config.image_size = 0
    with pytest.raises(ValueError, match="image size"):
        evaluate(config, code_writer_for=writer_for)


@pytest.mark.parametrize(
    "task,task_args,seed", [("PlaceNextTo", {"spawn_at_gripper": True}, 3), ("Touch", {"topple": True}, 2)]
)
def test_oracle_dp_gives_the_recorders_labels_when_the_policy_replays_the_oracle(task, task_args, seed):
    """Oracle+DP: a policy that replays the oracle's recorded actions (one per chunk) succeeds as the
    oracle did, and the shadow solver beside it writes exactly the recorder's fine labels, plain on
    key-steps, commented after: the code a learned policy is shown is the code it was trained on."""
    from c2a_jax.codeapi import comment
    from c2a_jax.eval.policy_episodes import PolicyWorker, run_policy_episode
    from c2a_jax.infer.controller import ORACLE_CODE, HierarchicalController
    from c2a_jax.sim.rollout import record_oracle_episode

    sim = PolicyWorker(task=task, task_args=task_args, image_size=32, max_steps=300)
    try:
        recorded = record_oracle_episode(sim.env, seed, max_steps=300, images=False)
        assert recorded["meta"]["success"]
        actions = recorded["arrays"]["actions"]
        expected = [lab["fine"] if lab["fine_keystep"] else comment(lab["fine"]) for lab in recorded["meta"]["labels"]]
        seen: list[dict] = []

        def replay(obs, rng, **text):
            seen.append(text)
            return actions[obs["steps"] : obs["steps"] + 1]

        controller = HierarchicalController(replay, ORACLE_CODE, n_action_steps=1)
        assert controller.reads_oracle_code
        record = run_policy_episode(
            sim, controller, {"task": task, "registry": task, "task_args": task_args, "seed": seed}
        )
    finally:
        sim.close()
    assert record["success"] and record["steps"] == recorded["meta"]["num_steps"]
    written = [line for line, n in record["code_runs"] for _ in range(n)]
    # every step but the last: the recorder labels the step whose action succeeds done(), which
    # the solver beside a policy cannot know before the action
    assert len(written) == len(expected) - 1 and written[:-1] == expected[: len(written) - 1]
    assert expected[len(written) - 1] == "done()" and written[-1] != "done()"
    assert sum(1 for line in written if not line.startswith("#")) >= 2  # the hierarchy advanced
    assert [c["code"] for c in seen] == written  # the policy is shown each step's line
    assert controller.memory.entries == [line for line in written if not line.startswith("#")]


def test_oracle_dp_needs_the_solvers_line_in_the_observation():
    from c2a_jax.infer.controller import ORACLE_CODE, HierarchicalController

    controller = HierarchicalController(lambda obs, rng, **text: np.zeros((4, 7)), ORACLE_CODE)
    with pytest.raises(KeyError, match="oracle_code"):
        controller.act({"image": np.zeros((8, 8, 3), np.uint8), "wrist_image": np.zeros((8, 8, 3), np.uint8)})


def test_explicit_seeds_replace_the_range_and_repeats_are_refused():
    from c2a_jax.eval.evaluate import episode_seeds

    config = load_config_file(os.path.join(ROOT, "configs", "eval", "default.py") + ":oracle_dp")
    config.first_seed, config.num_seeds = 100, 3
    assert episode_seeds(config) == [100, 101, 102]
    config.seeds = (7, 3, 5)
    assert episode_seeds(config) == [7, 3, 5]
    config.seeds = (7, 7)
    with pytest.raises(ValueError, match="repeats"):
        episode_seeds(config)
