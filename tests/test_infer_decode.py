"""VLM decoding: KV-cache greedy decoding equals uncached decoding on a tiny random LLaVA; the
paper's early stop, stop tokens and token limits on a scripted model whose outputs we choose;
sampled rows follow the tempered softmax (numpy's) and reproduce per seed; the memory buffer is
updated by key-steps only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from c2a_jax.codeapi import comment
from c2a_jax.data import tokenizer as tokenizer_lib
from c2a_jax.data import vlm
from c2a_jax.infer import code_writer, decode, scripted
from c2a_jax.models.clip import ClipVisionConfig
from c2a_jax.models.llava import LlavaConfig, LlavaForConditionalGeneration
from c2a_jax.models.phi3 import Phi3Config

PICK = "pick(actor=get_actor('red cube'))"
MOVE = "move3d(target_actor=get_actor('blue cylinder'))"


@pytest.fixture(scope="module")
def tok():
    return tokenizer_lib.load_tokenizer(tokenizer_lib.TINY)


def tiny_llava(tok, seed=0) -> LlavaForConditionalGeneration:
    vision = ClipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)  # fmt: skip
    text = Phi3Config(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      original_max_position_embeddings=512)  # fmt: skip
    model = LlavaForConditionalGeneration(LlavaConfig(vision, text, tok.image_id), rngs=nnx.Rngs(seed))
    # sharpen the random weights so that greedy decoding is not one repeated token
    state = nnx.state(model, nnx.Param)
    key = jax.random.key(seed + 1)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(key, len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape) if x.ndim == 2 else x for x, k in zip(leaves, keys, strict=True)]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))
    return model


def uncached_greedy(model, tok, prompt_ids, image, n, prefix_full=True) -> list[int]:
    """Reference: the whole sequence through the model again for every new token (one fixed-length
    buffer, so the forward compiles once; padding is masked out)."""
    p = len(prompt_ids)
    length = p + n
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, tokens, mask):
        logits, _ = nnx.merge(graphdef, state)(tokens, jnp.asarray(image[None]), attention_mask=mask)
        return logits

    seq = np.full((1, length), tok.pad_id, np.int32)
    seq[0, :p] = prompt_ids
    mask_ar = np.r_[np.zeros(p, bool), np.ones(n, bool)] if prefix_full else np.ones(length, bool)
    out = []
    for i in range(n):
        real = (np.arange(length) < p + i)[None]
        mask = vlm.attention_mask(real, mask_ar[None])
        logits = forward(state, jnp.asarray(seq), jnp.asarray(mask))
        nxt = int(jnp.argmax(logits[0, p + i - 1]))
        out.append(nxt)
        seq[0, p + i] = nxt
    return out


@pytest.mark.parametrize("prefix_attention", ["full", "causal"])
def test_kv_cache_decoding_equals_uncached(tok, prefix_attention):
    model = tiny_llava(tok)
    writer = code_writer.CodeWriter(model, tok, max_new_tokens=10, prefix_attention=prefix_attention)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    prompts = ["Pick up the red cube", "Place the red cube left of the blue cylinder on the table", "Touch it"]
    memories = [[], [PICK], [PICK, MOVE]]
    writer.generate_batch(images, prompts, memories, [False, True, False])
    result = writer.last_result
    vt = vlm.VlmTokenizer(tok, model.config.image_tokens, 10_000)
    for row in range(3):
        ids = vt.prefix_ids(vlm.code_question(prompts[row], memories[row], row == 1))
        n = int(result.lengths[row]) + 1 if result.lengths[row] < 10 else 10
        ref = uncached_greedy(model, tok, ids, images[row], n, prefix_full=prefix_attention == "full")
        assert result.tokens[row, :n].tolist() == ref
    assert len(set(result.tokens[0, :10].tolist())) > 1  # a non-degenerate generation was compared


def run_script(tok, texts, memories, *, k=0, newline=False, max_new=64, eos=True):
    graphdef, state = nnx.split(scripted.ScriptedModel(scripted.script_rows(tok, texts, eos), tok.vocab_size))
    stop, chars = decode.token_tables(tok, newline)
    lasts = [comment(m[-1]) if m else "" for m in memories]
    target = np.full((len(texts), 64), -1, np.int32)
    for row, text in enumerate(lasts):
        ids = tok.encode(text)
        target[row, : len(ids)] = ids
    result = decode.generate(graphdef, state, np.zeros((len(texts), 4), np.int32), forward=scripted.scripted_forward,
                             step=scripted.scripted_step, stop_table=stop, char_table=chars, max_new_tokens=max_new,
                             pad_id=tok.pad_id, target=target, target_chars=np.array([len(t) for t in lasts]),
                             early_k=k)  # fmt: skip
    return result, [tok.decode(result.tokens[r, : result.lengths[r]]) for r in range(len(texts))]


def test_early_stop_returns_the_commented_last_keystep(tok):
    text = comment(PICK)
    full, texts = run_script(tok, [text], [[PICK]], k=0)
    assert texts == [text] and not full.early[0]
    early, _ = run_script(tok, [text], [[PICK]], k=6)
    assert early.early[0] and early.steps < full.steps
    generated = tok.decode(early.tokens[0, : early.steps])
    assert len(generated) >= 6 and text.startswith(generated) and len(generated) < len(text)
    # k beyond the line's length: the whole line must match first
    whole, _ = run_script(tok, [text], [[PICK]], k=1000)
    assert whole.early[0] and tok.decode(whole.tokens[0, : whole.steps]) == text


def test_no_early_stop_on_a_different_line_or_without_memory(tok):
    result, texts = run_script(tok, [comment(MOVE), comment(PICK), PICK], [[PICK], [], [PICK]], k=4)
    assert not result.early.any()
    assert texts == [comment(MOVE), comment(PICK), PICK]


def test_stops_at_eos_newline_and_token_limit(tok):
    _, texts = run_script(tok, ["done()\npick(x)"], [[]], newline=True)
    assert texts[0].split("\n")[0] == "done()" and "pick" not in texts[0]
    _, texts = run_script(tok, ["done()\npick(x)"], [[]], newline=False)
    assert texts == ["done()\npick(x)"]
    result, _ = run_script(tok, [PICK], [[]], max_new=3, eos=False)
    assert result.steps == 3 and result.lengths[0] == 3


def test_rows_stop_independently(tok):
    result, texts = run_script(tok, ["done()", comment(PICK), MOVE], [[], [PICK], []], k=5)
    assert texts[0] == "done()" and texts[2] == MOVE
    assert result.early.tolist() == [False, True, False]
    assert result.steps == len(tok.encode(MOVE)) + 1


def test_session_memory_takes_keysteps_only(tok, monkeypatch):
    model = tiny_llava(tok)
    writer = code_writer.CodeWriter(model, tok, max_new_tokens=4)
    answers = iter([PICK, comment(PICK), comment(PICK), MOVE, "  "])
    monkeypatch.setattr(writer, "generate_code", lambda image, prompt, memory, request=False: next(answers))
    session = writer.session("Pick up the red cube")
    image = np.zeros((32, 32, 3), np.uint8)
    for _ in range(5):
        session.step(image)
    assert session.memory.entries == [PICK, MOVE]
    assert session.cache_info == "pose_dict = {}"


class FixedLogits(nnx.Module):
    """Every position's next-token logits are the same row we choose (sampling's reference)."""

    def __init__(self, logits: np.ndarray):
        self.table = nnx.Variable(jnp.asarray(logits, jnp.float32))

    def init_cache(self, batch_size: int, max_len: int) -> jax.Array:
        return jnp.zeros((batch_size,), jnp.int32)


def fixed_forward(model, tokens, images, mask, cache):
    return jnp.broadcast_to(model.table[...], (*tokens.shape, model.table.shape[-1])), cache + 1


def fixed_step(model, token, cache):
    return jnp.broadcast_to(model.table[...], (token.shape[0], model.table.shape[-1])), cache + 1


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampled_rows_follow_the_tempered_softmax_and_greedy_rows_stay_greedy(tok, temperature):
    vocab = tok.vocab_size
    logits = np.full(vocab, -30.0, np.float32)
    favourites = np.array([3, 17, 40, 41, 99]) % vocab
    logits[favourites] = [2.0, 1.5, 1.0, 0.2, -0.5]
    graphdef, state = nnx.split(FixedLogits(logits))
    stop, chars = decode.token_tables(tok, False)
    stop[:] = 0  # no token ends a row: the first token is the sample we look at
    n = 4000
    temps = np.full(n, temperature, np.float32)
    temps[:100] = 0.0  # greedy rows in the same batch
    run = dict(forward=fixed_forward, step=fixed_step, stop_table=stop, char_table=chars, max_new_tokens=3,
               pad_id=tok.pad_id)  # fmt: skip
    result = decode.generate(graphdef, state, np.zeros((n, 4), np.int32), temperature=temps, seeds=np.arange(n), **run)
    first = result.tokens[:, 0]
    assert (first[:100] == favourites[0]).all()
    counts = np.bincount(first[100:], minlength=vocab)[favourites] / (n - 100)
    scaled = logits[favourites] / temperature
    expected = np.exp(scaled - scaled.max()) / np.exp(scaled - scaled.max()).sum()  # the rest has ~0 mass
    np.testing.assert_allclose(counts, expected, atol=0.03)
    assert (result.tokens[100:, 1] != first[100:]).any()  # every step draws anew
    again = decode.generate(graphdef, state, np.zeros((n, 4), np.int32), temperature=temps, seeds=np.arange(n), **run)
    np.testing.assert_array_equal(again.tokens, result.tokens)  # same seeds, same tokens
    other = decode.generate(graphdef, state, np.zeros((n, 4), np.int32), temperature=temps, seeds=np.arange(n) + n,
                            **run)  # fmt: skip
    assert (other.tokens[100:] != result.tokens[100:]).any()
    with pytest.raises(ValueError, match="temperature"):
        decode.generate(graphdef, state, np.zeros((2, 4), np.int32), temperature=-1.0, **run)


def test_code_writer_samples_reproducibly_and_decodes_greedily_at_zero_temperature(tok):
    writer = code_writer.CodeWriter(tiny_llava(tok), tok, max_new_tokens=8)
    image = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    greedy = writer.generate_code(image, "Pick up the red cube", [PICK], True)
    greedy_tokens = writer.last_result.tokens.copy()
    assert writer.generate_code(image, "Pick up the red cube", [PICK], True, temperature=0.0, seed=9) == greedy
    np.testing.assert_array_equal(writer.last_result.tokens, greedy_tokens)
    hot = [writer.generate_code(image, "Pick up the red cube", [PICK], True, temperature=3.0, seed=s) for s in range(4)]
    assert len(set(hot)) > 1 and any(h != greedy for h in hot)
    assert writer.generate_code(image, "Pick up the red cube", [PICK], True, temperature=3.0, seed=2) == hot[2]
