"""The VLM and DP input pipelines on constructed episodes: masks, memory, key-step requests, grid
questions, packing, normalisation, action chunks, crops, instruction sources, and the shipped
tokenizer. (The same pipelines on a real simulator-built RLDS dataset: tests/tensorflow_process/.)"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from c2a_jax.codeapi import comment
from c2a_jax.data import dp, iterators, normalization, tokenizer, vlm
from c2a_jax.data.synthetic import DONE, MOVE, PICK, PLACE, TARGET, make_episode


@pytest.fixture(scope="module")
def tiny():
    return tokenizer.load_tokenizer(tokenizer.TINY)


# ---------------------------------------------------------------------------------------------
# Tokenizer


def test_shipped_tokenizer_is_reproducible_from_its_corpus(tmp_path):
    with open(tokenizer.TINY_FILE, encoding="utf-8") as f:
        shipped = f.read()
    assert tokenizer.train_tiny(tokenizer.CORPUS_FILE) == shipped


@pytest.mark.parametrize(
    "text",
    ["", "done()", TARGET, "Ünïcode ✓ 日本語 and\ttabs\n\nnewlines", "pose_dict = {}", "<image>\nPast actions:\n"],
)
def test_tiny_tokenizer_round_trips_any_text(tiny, text):
    assert tiny.decode(tiny.encode(text)) == text


def test_tiny_tokenizer_special_ids_and_compactness(tiny):
    ids = {tiny.pad_id, tiny.bos_id, tiny.eos_id, tiny.image_id}
    assert len(ids) == 4 and max(ids) < tiny.vocab_size
    assert tiny.encode("<image>") == [tiny.image_id]
    # trained on our code: a whole code line is far fewer tokens than bytes
    assert len(tiny.encode(PICK)) < len(PICK) / 2.5


def test_tokenizer_from_a_local_hugging_face_directory(tmp_path, tiny):
    tiny.hf.save_pretrained(tmp_path / "tok")
    loaded = tokenizer.load_tokenizer(str(tmp_path / "tok"))
    assert loaded.encode(TARGET) == tiny.encode(TARGET)
    assert (loaded.eos_id, loaded.image_id) == (tiny.eos_id, tiny.image_id)


def test_tokenizer_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        tokenizer.load_tokenizer(str(tmp_path / "nowhere"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises((ValueError, OSError), match="broken"):
        tokenizer.load_tokenizer(str(tmp_path / "broken"))


# ---------------------------------------------------------------------------------------------
# VLM examples


def test_code_question_layout():
    q = vlm.code_question("Pick the cube", [PICK, MOVE], keystep_request=True)
    assert q == f"<image>\nPick the cube\nPast actions:\n{PICK}; {MOVE}\nPlease give a keystep reply"
    assert vlm.code_question("P", []) == "<image>\nP\nPast actions:\n"


def test_code_examples_follow_the_labels_and_the_keystep_request():
    episode = make_episode()
    rng = np.random.default_rng(1)
    cfg = vlm.VlmExampleConfig(keystep_request_fraction=0.5, grid_question_fraction=0.0)
    examples = [e for _ in range(20) for e in vlm.episode_examples(episode, cfg, rng, ["green star"])]
    kinds = {e.kind for e in examples}
    assert kinds == {"code", "keystep"}
    share = np.mean([e.kind == "keystep" for e in examples])
    assert 0.35 < share < 0.65  # moving a request to a key-step keeps the configured share
    assert {int(e.source.split("#")[1]) for e in examples if e.kind == "keystep"} == {0, 3, 7, 10}
    for e in examples:
        t = int(e.source.split("#")[1])
        assert int(e.image[0, 0, 0]) == t
        assert e.prompt in episode["prompts"]
        running = [s for s in ((0, 3, PICK), (3, 7, TARGET), (7, 10, PLACE), (10, 12, DONE)) if s[0] <= t < s[1]][0]
        if e.kind == "keystep":  # asked at key-steps only (ClevrSkills' conversation points)
            assert t == running[0] and e.answer == running[2]
        else:
            assert e.answer == (running[2] if t == running[0] else comment(running[2]))
        # memory: the key-steps strictly before t
        assert list(e.memory) == [
            s[2] for s in ((0, 3, PICK), (3, 7, TARGET), (7, 10, PLACE), (10, 12, DONE)) if s[0] < t
        ]


def test_grid_questions_are_mixed_in_at_the_configured_ratio():
    episode = make_episode()
    rng = np.random.default_rng(2)
    cfg = vlm.VlmExampleConfig(grid_question_fraction=0.3)
    examples = [e for _ in range(100) for e in vlm.episode_examples(episode, cfg, rng, ["green star", "red cube"])]
    share = np.mean([e.prompt is None for e in examples])
    assert 0.22 < share < 0.38
    grid = [e for e in examples if e.prompt is None]
    assert all(e.text().startswith("<image>\n") for e in grid)
    where = [e for e in grid if e.text().endswith("location of the red cube?")]
    assert where and all(e.answer == "The red cube is at (3, 4)" for e in where)


def test_shift_augmentation_moves_keysteps_at_most_k():
    episode = make_episode()
    cfg = vlm.VlmExampleConfig(grid_question_fraction=0.0, keystep_request_fraction=0.0, shift_k=2)
    rng = np.random.default_rng(3)
    starts_seen = set()
    for _ in range(30):
        keys = tuple(int(e.source.split("#")[1]) for e in vlm.episode_examples(episode, cfg, rng, []) if not e.answer.startswith("#"))  # fmt: skip
        assert len(keys) == 4 and keys[0] == 0 and keys[3] == 10  # done() stays at the first success
        assert abs(keys[1] - 3) <= 2 and abs(keys[2] - 7) <= 2
        starts_seen.add(keys[1:3])
    assert len(starts_seen) > 3


def test_prefix_lm_masks_have_no_loss_on_the_prefix(tiny):
    vt = vlm.VlmTokenizer(tiny, num_image_tokens=5, max_length=160)
    ex = vlm.VlmExample(np.zeros((8, 8, 3), np.uint8), comment(TARGET), "code", prompt="Place it", memory=(PICK,))
    out = vt(ex)
    n_prefix = len(vt.prefix_ids(ex.text()))
    assert not out.mask_loss[:n_prefix].any() and out.mask_loss[n_prefix:].all()
    assert tiny.decode(out.tokens[n_prefix:][:-1]) == comment(TARGET) and out.tokens[-1] == tiny.eos_id
    assert (out.tokens == tiny.image_id).sum() == 5 and out.tokens[0] == tiny.bos_id
    (row,) = vlm.pack_rows([out], 160, 1, tiny.pad_id)
    # targets are the next tokens; the loss covers exactly the answer and EOS
    assert tiny.decode(row["targets"][row["target_mask"]][:-1]) == comment(TARGET)
    assert row["target_mask"].sum() == len(out.tokens) - n_prefix
    mask = vlm.attention_mask(row["input_mask"][None], row["mask_ar"][None])[0]
    n = len(out.tokens)
    assert mask[:n_prefix, :n_prefix].all()  # full attention inside the prefix
    assert not mask[:n_prefix, n_prefix:].any()  # the prefix never sees the answer
    assert np.array_equal(mask[n_prefix:n, n_prefix:n], np.tril(np.ones((n - n_prefix,) * 2, bool)))
    assert mask[n_prefix:n, :n_prefix].all()
    assert not mask[n:].any() and not mask[:, n:].any()  # padding


def test_too_long_examples_drop_the_oldest_memory_first(tiny):
    memory = tuple(f"pick(actor=get_actor('red cube{i}'))" for i in range(30))
    ex = vlm.VlmExample(np.zeros((4, 4, 3), np.uint8), PICK, "code", prompt="Pick", memory=memory)
    vt = vlm.VlmTokenizer(tiny, num_image_tokens=4, max_length=120)
    out = vt(ex)
    assert 0 < out.dropped_memory < 30 and len(out.tokens) <= 120
    text = tiny.decode(out.tokens)
    assert "red cube29" in text and "red cube0'" not in text
    with pytest.raises(vlm.ExampleTooLong, match="max_length"):
        vlm.VlmTokenizer(tiny, num_image_tokens=100, max_length=50)(ex)


def test_packing_keeps_examples_apart(tiny):
    vt = vlm.VlmTokenizer(tiny, num_image_tokens=3, max_length=200)
    examples = [
        vt(vlm.VlmExample(np.full((4, 4, 3), i, np.uint8), a, "code", prompt="Go", memory=()))
        for i, a in enumerate([PICK, MOVE, DONE, PLACE])
    ]
    rows = list(vlm.pack_rows(examples, 200, 3, tiny.pad_id))
    assert sum(int(r["num_images"]) for r in rows) == 4 and int(rows[0]["num_images"]) == 3
    r = rows[0]
    seg = r["segment_ids"]
    mask = vlm.attention_mask(r["input_mask"][None], r["mask_ar"][None], seg[None])[0]
    for a in (1, 2, 3):
        for b in (1, 2, 3):
            if a != b:
                assert not mask[np.ix_(seg == a, seg == b)].any()
        assert r["positions"][seg == a][0] == 0
        assert int(r["images"][a - 1, 0, 0, 0]) == a - 1
    # a target never crosses into the next example
    ends = np.flatnonzero(np.diff(seg) != 0)
    assert not r["target_mask"][ends].any()
    assert r["target_mask"].sum() == sum(int(e.mask_loss.sum()) for e in examples[:3])


def test_first_fit_packing_fills_rows_that_greedy_packing_leaves_short():
    """Sizes 150, 120, 100, 50, 60 in rows of 256: greedy (arrival order) needs 3 rows, first fit 2;
    every example lands once, in a row within the length and the images per row."""
    image = np.zeros((2, 2, 3), np.uint8)
    sizes = [150, 120, 100, 50, 60]
    examples = [
        vlm.TokenizedExample(np.full(n, i + 1, np.int32), np.ones(n, bool), np.ones(n, bool), image, 0)
        for i, n in enumerate(sizes)
    ]
    greedy = list(vlm.pack_rows(examples, 256, 4, 0, open_rows=1))
    first_fit = list(vlm.pack_rows(examples, 256, 4, 0))
    assert len(greedy) == 3 and len(first_fit) == 2
    for rows in (greedy, first_fit):
        seen = sorted(int(t) for r in rows for t in np.unique(r["tokens"][r["input_mask"]]))
        assert seen == [1, 2, 3, 4, 5]
        assert all(int(r["input_mask"].sum()) <= 256 and int(r["num_images"]) <= 4 for r in rows)
    assert [int(r["num_images"]) for r in vlm.pack_rows(examples, 256, 2, 0)] == [2, 2, 1]
    assert len(list(vlm.pack_rows(examples, 256, 1, 0))) == 5  # padding: one example per row
    with pytest.raises(ValueError, match="open_rows"):
        list(vlm.pack_rows(examples, 256, 4, 0, open_rows=0))


def test_vlm_batches_stream(tiny):
    episodes = [make_episode(key=f"ds/{i}") for i in range(3)]
    counters = vlm.PipelineCounters()
    vt = vlm.VlmTokenizer(tiny, num_image_tokens=4, max_length=128)
    batches = list(vlm.vlm_batches(episodes, vlm.VlmExampleConfig(), vt, 4, np.random.default_rng(0),
                                   shuffle_size=16, object_names=["green star"], counters=counters))  # fmt: skip
    assert len(batches) == 36 // 4 and counters.examples == 36
    b = batches[0]
    assert b["tokens"].shape == (4, 128) and b["images"].shape == (4, 1, 16, 16, 3)
    assert b["tokens"].dtype == np.int32 and b["target_mask"].any(axis=1).all()


# ---------------------------------------------------------------------------------------------
# Normalisation


def test_normalizer_round_trip_and_file(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 5, size=(200, 4)).astype(np.float32)
    x[:, 2] = 0.25  # constant
    x[:, 3] = np.sign(x[:, 3])  # binary gripper, left alone
    stats = {"action": {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "p01": np.percentile(x, 1, 0).tolist(),
                        "p99": np.percentile(x, 99, 0).tolist()}}  # fmt: skip
    norm = normalization.Normalizer.from_statistics(stats, "action", skip=(3,))
    y = norm.normalize(x)
    assert y[:, :2].min() == pytest.approx(-1) and y[:, :2].max() == pytest.approx(1)
    assert np.all(y[:, 2] == 0) and np.array_equal(y[:, 3], x[:, 3])
    np.testing.assert_allclose(norm.unnormalize(y), x, atol=1e-5)
    path = tmp_path / "norm.json"
    normalization.save_normalizers({"action": norm}, path)
    again = normalization.load_normalizers(path)["action"]
    np.testing.assert_array_equal(again.normalize(x), y)
    q = normalization.Normalizer.from_statistics(stats, "action", "p01_p99")
    assert np.abs(q.normalize(x)).max() <= 1.0  # outliers clipped


def test_normalizer_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="high < low"):
        normalization.Normalizer(np.array([1.0]), np.array([0.0]))
    with pytest.raises(ValueError, match="last dimension"):
        normalization.Normalizer(np.zeros(3), np.ones(3)).normalize(np.zeros((2, 4)))
    with pytest.raises(FileNotFoundError, match="stats_dir"):
        normalization.load_statistics(tmp_path / "stats_dir")
    bad = tmp_path / "dataset_statistics.json"
    bad.write_text("[1, 2")
    with pytest.raises(ValueError, match="dataset_statistics.json"):
        normalization.load_statistics(tmp_path)
    with pytest.raises(KeyError, match="qpos"):
        normalization.Normalizer.from_statistics({"action": {}}, "qpos")


# ---------------------------------------------------------------------------------------------
# DP frames


def _identity_normalizers(episode):
    a, s = episode["action"], episode["state"]
    return {
        "action": normalization.Normalizer(a.min(0) - 1, a.max(0) + 1, skip=(6,)),
        "state": normalization.Normalizer(s.min(0), s.max(0)),
    }


def test_dp_frames_chunks_and_pad_masks():
    episode = make_episode()
    norms = _identity_normalizers(episode)
    cfg = dp.DpFrameConfig(horizon=4)
    frames = list(dp.dp_frames([episode], cfg, norms, np.random.default_rng(0)))
    n = len(episode["action"]) - 1
    assert len(frames) == n
    actions = norms["action"].normalize(episode["action"][:n])
    for t, f in enumerate(frames):
        assert int(f["image"][0, 0, 0]) == t and int(f["wrist_image"][0, 0, 0]) == t + 100
        valid = min(4, n - t)
        assert f["action_mask"].tolist() == [True] * valid + [False] * (4 - valid)
        np.testing.assert_array_equal(f["action"][:valid], actions[t : t + valid])
        np.testing.assert_array_equal(f["action"][valid:], np.repeat(actions[n - 1 : n], 4 - valid, 0))
        assert f["code"] == episode["code_fine"][t] and f["cache_info"] == episode["cache_info_fine"][t]
    assert frames[3]["cache_info"].startswith("pose_dict['red cube target']")
    assert np.array_equal(frames[0]["action"][:, 6], episode["action"][:4, 6])  # vacuum left binary


def test_dp_crop_is_shared_across_cameras_and_centred_for_eval():
    episode = make_episode(size=16)
    yy, xx = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    pattern = (yy * 16 + xx).astype(np.uint8)[None, :, :, None]
    episode["image"] = np.broadcast_to(pattern, episode["image"].shape).copy()
    episode["wrist_image"] = episode["image"].copy()
    norms = _identity_normalizers(episode)
    cfg = dp.DpFrameConfig(horizon=2, crop_size=10)
    frames = list(dp.dp_frames([episode] * 5, cfg, norms, np.random.default_rng(0)))
    corners = set()
    for f in frames:
        assert f["image"].shape == (10, 10, 3)
        np.testing.assert_array_equal(f["image"], f["wrist_image"])
        corners.add(int(f["image"][0, 0, 0]))
    assert len(corners) > 5
    (center, *_) = dp.dp_frames([episode], cfg, norms, np.random.default_rng(0), train=False)
    assert int(center["image"][0, 0, 0]) == 3 * 16 + 3


def test_dp_instruction_sources(tmp_path):
    episode = make_episode()
    norms = _identity_normalizers(episode)
    n = len(episode["action"])
    codes = [PICK] + [comment(PICK)] * 2 + [TARGET] + [comment(TARGET)] * (n - 4)
    path = tmp_path / "vlm.jsonl"
    path.write_text("".join(json.dumps({"episode": "ds/7", "step": t, "code": c}) + "\n" for t, c in enumerate(codes)))
    cfg = dp.DpFrameConfig(horizon=2, instruction_source="vlm_file", vlm_labels_file=str(path))
    frames = list(dp.dp_frames([episode], cfg, norms, np.random.default_rng(0)))
    assert [f["code"] for f in frames] == codes[:-1]
    assert frames[2]["cache_info"] == "pose_dict = {}" and frames[3]["cache_info"].startswith("pose_dict['red cube")
    with pytest.raises(KeyError, match="ds/8"):
        list(dp.dp_frames([make_episode(key="ds/8")], cfg, norms, np.random.default_rng(0)))
    path.write_text('{"episode": "ds/7", "step": 0}\n')
    with pytest.raises(ValueError, match=r"vlm.jsonl:1"):
        dp.load_vlm_labels(path)
    shifted = dp.DpFrameConfig(horizon=2, instruction_source="shifted", shift_k=2)
    starts = {tuple(t for t, f in enumerate(dp.dp_frames([episode], shifted, norms, np.random.default_rng(s)))
                    if not f["code"].startswith("#")) for s in range(10)}  # fmt: skip
    assert len(starts) > 1 and all(s[0] == 0 for s in starts)
    with pytest.raises(ValueError, match="shift_k"):
        dp.DpFrameConfig(instruction_source="shifted")
    with pytest.raises(ValueError, match="vlm_labels_file"):
        dp.DpFrameConfig(instruction_source="vlm_file")


def test_dp_collate_batches():
    episode = make_episode()
    frames = list(dp.dp_frames([episode], dp.DpFrameConfig(horizon=3), _identity_normalizers(episode),
                               np.random.default_rng(0)))  # fmt: skip
    (batch,) = list(iterators.batched(frames[:5], 5, dp.collate))
    assert batch["action"].shape == (5, 3, 7) and batch["image"].shape == (5, 16, 16, 3)
    assert batch["code"].dtype == object and batch["code"][0] == PICK


# ---------------------------------------------------------------------------------------------
# Iterators


def test_shuffle_buffer_is_a_permutation():
    out = list(iterators.shuffle_buffer(range(100), 10, np.random.default_rng(0)))
    assert sorted(out) == list(range(100)) and out != list(range(100))
    assert list(iterators.shuffle_buffer(range(5), 1, np.random.default_rng(0))) == list(range(5))


def test_prefetch_passes_items_and_errors():
    assert list(iterators.prefetch(iter(range(50)), 3)) == list(range(50))

    def broken():
        yield 1
        raise OSError("disk gone")

    it = iterators.prefetch(broken())
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)


def test_assets_are_packaged():
    assert os.path.exists(tokenizer.TINY_FILE) and os.path.exists(tokenizer.CORPUS_FILE)
