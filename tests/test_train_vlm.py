"""VLM training end to end on the shared loop: a tiny LLaVA overfits 20 code examples to 100% exact
match of greedily decoded code, read back from its own checkpoint."""

from __future__ import annotations

import itertools
import json

import ml_collections
import numpy as np
from flax import nnx

from c2a_jax.data import tokenizer as tokenizer_lib
from c2a_jax.data import vlm
from c2a_jax.data.synthetic import DONE, MOVE, PICK, PLACE, TARGET, make_episode
from c2a_jax.models.llava import LlavaForConditionalGeneration
from c2a_jax.train import vlm_task
from c2a_jax.train.loop import restore_checkpoint, train
from c2a_jax.train.state import model_from_state
from c2a_jax.train.vlm_loss import batch_counts, make_loss_fn


def twenty_examples() -> list[vlm.VlmExample]:
    episodes = [
        make_episode(size=32, key="a/0"),
        make_episode(((0, 2, MOVE), (2, 5, PICK), (5, 7, PLACE), (7, 8, DONE)), size=32, key="b/1"),
        make_episode(((0, 3, TARGET), (3, 6, PLACE), (6, 7, DONE)), size=32, key="c/2"),
    ]
    for i, episode in enumerate(episodes):  # images far apart: step t of episode i is one grey level
        episode["image"] = ((episode["image"].astype(np.int64) * 29 + 97 * i) % 256).astype(np.uint8)
    cfg = vlm.VlmExampleConfig(keystep_request_fraction=0.3, grid_question_fraction=0.0)
    rng = np.random.default_rng(0)
    seen, out = set(), []
    for episode in itertools.cycle(episodes):
        for ex in vlm.episode_examples(episode, cfg, rng, []):
            key = (ex.source, ex.kind)
            if key not in seen:
                seen.add(key)
                out.append(ex)
        if len(out) >= 20:
            return out[:20]
    raise AssertionError("unreachable")


def test_tiny_vlm_overfits_twenty_code_examples(tmp_path):
    tok = tokenizer_lib.load_tokenizer(tokenizer_lib.TINY)
    model_cfg = ml_collections.ConfigDict(dict(vision_width=32, vision_layers=1, vision_heads=2, patch_size=8,
                                               text_width=96, text_layers=2, text_heads=4, text_kv_heads=2,
                                               mlp_ratio=2, dtype="float32", remat=False))  # fmt: skip
    llava = vlm_task.llava_config(model_cfg, 32, tok)
    examples = twenty_examples()
    assert len({(e.source, e.kind) for e in examples}) == 20 and {e.kind for e in examples} == {"code", "keystep"}
    assert len({e.answer for e in examples}) >= 6  # plain and commented lines of several calls
    vt = vlm.VlmTokenizer(tok, llava.image_tokens, 160)
    batch = vlm.stack_rows(list(vlm.pack_rows([vt(e) for e in examples], 160, 1, tok.pad_id)))
    assert batch["tokens"].shape == (20, 160)

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.train = ml_collections.ConfigDict(dict(steps=250, batch_size=20, learning_rate=3e-3, warmup_steps=20,
                                                  end_lr_fraction=0.05, log_every=25, eval_every=250,
                                                  checkpoint_every=250, progress=False, tensorboard=False))  # fmt: skip

    def model_fn(rngs):
        return LlavaForConditionalGeneration(llava, rngs=rngs)

    def eval_fn(model, step):
        return vlm_task.exact_match(model, tok, examples, max_new_tokens=96)

    result = train(config, workdir=str(tmp_path), model_fn=model_fn, loss_fn=make_loss_fn("full"),
                   make_batches=lambda: itertools.repeat(batch), eval_fn=eval_fn, count_fn=batch_counts)  # fmt: skip
    assert result["step"] == 250
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[0] > 1.0 and losses[-1] < 0.05  # from near-chance to memorised
    assert [r["eval/exact_match"] for r in records if "eval/exact_match" in r] == [1.0]

    # the checkpoint holds the same model: decode again from it
    state, graphdef, items = restore_checkpoint(str(tmp_path), model_fn)
    restored = model_from_state(graphdef, state)
    assert isinstance(restored, nnx.Module)
    assert vlm_task.exact_match(restored, tok, examples, max_new_tokens=96)["exact_match"] == 1.0
    assert items["config"]["train"]["steps"] == 250


def test_remat_with_a_frozen_vision_tower_matches_the_plain_step():
    """The paper's recipe (vision tower frozen) with remat in both towers: the frozen tower's
    parameters are closed over by the gradient of the trainable ones, which nnx.remat refused
    (TraceContextError); the step must run and equal the step without remat, also with the
    paper config's ``model.remat_policy`` (saves the dense projections)."""
    import jax

    from c2a_jax.train.optimizer import make_optimizer
    from c2a_jax.train.state import init_fn_for, seed_key
    from c2a_jax.train.step import make_train_step

    tok = tokenizer_lib.load_tokenizer(tokenizer_lib.TINY)
    vt_examples = twenty_examples()[:4]
    train_cfg = ml_collections.ConfigDict(
        dict(learning_rate=1e-2, warmup_steps=0, steps=2, freeze=("vision_tower/.*",))
    )
    results = []
    for remat, policy in ((False, ""), (True, ""), (True, "dots_with_no_batch_dims_saveable")):
        model_cfg = ml_collections.ConfigDict(dict(vision_width=32, vision_layers=3, vision_heads=2, patch_size=8,
                                                   text_width=64, text_layers=2, text_heads=4, text_kv_heads=2,
                                                   mlp_ratio=2, dtype="float32", remat=remat,
                                                   remat_policy=policy))  # fmt: skip
        llava = vlm_task.llava_config(model_cfg, 32, tok)
        assert llava.text.remat_policy == (policy or None)
        vt = vlm.VlmTokenizer(tok, llava.image_tokens, 128)
        batch = vlm.stack_rows(list(vlm.pack_rows([vt(e) for e in vt_examples], 128, 1, tok.pad_id)))
        batch = {k: v for k, v in batch.items() if k != "num_images"}
        optimizer = make_optimizer(train_cfg)
        init_fn, graphdef = init_fn_for(lambda rngs, c=llava: LlavaForConditionalGeneration(c, rngs=rngs), optimizer)
        state = init_fn(seed_key(0))
        step = jax.jit(make_train_step(graphdef, make_loss_fn("full"), optimizer))
        losses = []
        for _ in range(2):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        results.append((losses, state.params))
    (plain_losses, plain), *rematted_runs = results
    for remat_losses, rematted in rematted_runs:
        np.testing.assert_allclose(remat_losses, plain_losses, rtol=1e-5)
        flat_plain, flat_remat = dict(nnx.to_flat_state(plain)), dict(nnx.to_flat_state(rematted))
        assert flat_plain.keys() == flat_remat.keys()
        for path, var in flat_plain.items():
            np.testing.assert_allclose(flat_remat[path].get_value(), var.get_value(), atol=1e-5, err_msg=str(path))


def test_loss_at_answer_positions_only_equals_the_full_loss_and_gradients():
    """``train.loss_tokens_per_row``: the LM head at each row's answer tokens only gives the loss,
    metrics and gradients of the head at every position, packed rows and both attention modes
    included; a row with more answer tokens is refused on the host, not dropped silently."""
    import jax
    import pytest

    from c2a_jax.train.vlm_loss import check_loss_tokens, vlm_loss
    from tests.train_fixtures import tiny_llava, vlm_batch

    model = tiny_llava(nnx.Rngs(3), text_layers=2)
    padded = vlm_batch(6, seed=5)
    packed = vlm.stack_rows(list(vlm.pack_rows([vlm.TokenizedExample(
        r["tokens"][r["input_mask"]], r["mask_ar"][r["input_mask"]], r["mask_loss"][r["input_mask"]],
        r["images"][0]) for r in ({k: v[i] for k, v in padded.items()} for i in range(6))], 48, 3, 0)))  # fmt: skip
    assert packed["tokens"].shape[0] < 6  # several examples share a row
    for batch, mode in ((padded, "full"), (packed, "causal")):
        most = int(batch["target_mask"].sum(1).max())
        assert 0 < most < batch["tokens"].shape[1]
        device_batch = {k: v for k, v in batch.items() if k != "num_images"}

        def loss(m, k, b=device_batch, mode=mode):
            return vlm_loss(m, b, mode, k)

        grad = nnx.value_and_grad(loss, has_aux=True)
        (full, full_metrics), full_grads = grad(model, 0)
        (part, part_metrics), part_grads = grad(model, most)
        np.testing.assert_allclose(part, full, rtol=1e-6)
        for key in ("token_accuracy", "loss_tokens"):
            np.testing.assert_allclose(part_metrics[key], full_metrics[key], rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), part_grads, full_grads)
        check_loss_tokens(batch, most)  # fits: no error
        with pytest.raises(ValueError, match="loss_tokens_per_row"):
            check_loss_tokens(batch, most - 1)
        (_, short_metrics), _ = grad(model, most - 1)  # what the check prevents: a token left out
        assert float(short_metrics["loss_tokens"]) < float(full_metrics["loss_tokens"])
