"""Phi-3 in Flax NNX against transformers' PyTorch Phi3ForCausalLM, on tiny random weights built here.

Weights are redrawn with a large spread (not HF's 0.02 init) so attention is peaked: with near-uniform
attention a wrong RoPE, window or mask would hide below the tolerance.
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import Phi3Config as HFPhi3Config
from transformers import Phi3ForCausalLM as HFPhi3ForCausalLM

from c2a_jax.convert.phi3 import export_phi3, hf_state_dict, load_phi3, phi3_from_state_dict
from c2a_jax.convert.safetensors_io import INDEX_FILE, CheckpointError, load_state_dict, save_state_dict
from c2a_jax.models import LOGICAL_AXES
from c2a_jax.models.phi3 import Phi3Config, decode_step, init_cache, prefill

VOCAB = 300
LONGROPE = {
    "rope_type": "longrope",
    "short_factor": [1.0 + 0.1 * i for i in range(8)],
    "long_factor": [2.0 + 0.3 * i for i in range(8)],
}
VARIANTS = {
    # grouped-query attention, default RoPE, separate lm_head
    "gqa": dict(num_key_value_heads=2),
    # multi-head attention, tied embeddings, partial rotary, a sliding window shorter than the sequences
    "mha": dict(
        num_key_value_heads=4, tie_word_embeddings=True, partial_rotary_factor=0.5, rope_theta=500.0, sliding_window=5
    ),
    # longrope: original_max_position_embeddings 16, so 24 tokens take the long factors and 12 the short ones
    "longrope": dict(
        num_key_value_heads=2, rope_scaling=LONGROPE, max_position_embeddings=64, original_max_position_embeddings=16
    ),
}


def _hf_config(variant):
    return HFPhi3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **VARIANTS[variant],
    )


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """variant -> (PyTorch model, directory it was saved to with save_pretrained); built on first use."""
    built = {}

    def get(variant):
        if variant not in built:
            torch.manual_seed(list(VARIANTS).index(variant))
            model = HFPhi3ForCausalLM(_hf_config(variant)).eval()
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
            directory = tmp_path_factory.mktemp(variant)
            model.save_pretrained(directory)
            built[variant] = model, str(directory)
        return built[variant]

    return get


def _forward(model):
    """Jitted uncached forward: (ids, mask=None, positions=None) -> numpy logits."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, ids, mask, positions):
        return nnx.merge(graphdef, state)(ids, attention_mask=mask, positions=positions)[0]

    return lambda ids, mask=None, positions=None: np.asarray(f(state, ids, mask, positions))


def _hf_logits(model, ids, mask, positions):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions)
        )
    return out.logits.numpy()


def _padded_batch(length, seed=0):
    """Three rows: full, left-padded by 4, right-padded by 5; positions count real tokens."""
    ids = np.random.RandomState(seed).randint(3, VOCAB, (3, length))
    mask = np.ones((3, length), np.int64)
    mask[1, :4] = 0
    mask[2, -5:] = 0
    positions = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    return ids, mask, positions


@pytest.mark.parametrize(("variant", "length"), [("gqa", 12), ("mha", 12), ("longrope", 24), ("longrope", 12)])
def test_logits_match_transformers_with_padding(hf_models, variant, length):
    hf, directory = hf_models(variant)
    config, model = load_phi3(directory)
    if variant == "longrope":  # the two lengths sit on either side of the long/short switch
        assert (length > config.original_max_position_embeddings) == (length == 24)
    ids, mask, positions = _padded_batch(length)
    ref = _hf_logits(hf, ids, mask, positions)
    ours = _forward(model)(jnp.asarray(ids), jnp.asarray(mask))  # positions derived from the mask
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)
    assert np.abs(ref[real]).max() > 1.0  # logits of a useful scale


def test_full_mask_prefix_lm_matches_transformers(hf_models):
    """A (B, T, T) mask (full attention on a prefix, causal after it, padding hidden) is used as given."""
    hf, directory = hf_models("gqa")
    _, model = load_phi3(directory)
    ids, mask, positions = _padded_batch(12, seed=1)
    prefix_end = np.argmax(mask, 1) + np.array([5, 7, 3])  # first real slot + prefix length
    q, k = np.arange(12)[:, None], np.arange(12)[None, :]
    full = mask[:, None, :].astype(bool) & ((k <= q) | (k < prefix_end[:, None, None]))
    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(full[:, None]),
            position_ids=torch.tensor(positions),
        ).logits.numpy()
    ours = _forward(model)(jnp.asarray(ids), jnp.asarray(full), jnp.asarray(positions))
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)
    causal = _forward(model)(jnp.asarray(ids), jnp.asarray(mask))
    assert np.abs(causal[real] - ours[real]).max() > 1e-2  # the prefix mask changed something


def test_sharded_checkpoint_loads_identically(hf_models, tmp_path):
    hf, directory = hf_models("gqa")
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert os.path.exists(tmp_path / INDEX_FILE)
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".safetensors")]) > 2
    config, single = load_phi3(directory)
    config_sharded, sharded = load_phi3(tmp_path)
    assert config_sharded == config
    a, b = hf_state_dict(config, single), hf_state_dict(config, sharded)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("variant", ["mha", "longrope"])
def test_export_reloads_in_transformers(hf_models, tmp_path, variant):
    hf, directory = hf_models(variant)
    config, model = load_phi3(directory)
    written = export_phi3(config, model, tmp_path, max_shard_bytes=60_000)
    assert str(tmp_path / INDEX_FILE) in written
    reloaded, info = HFPhi3ForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert Phi3Config.from_hf(reloaded.config) == config
    ids, mask, positions = _padded_batch(24, seed=2)
    np.testing.assert_allclose(
        _hf_logits(reloaded.eval(), ids, mask, positions), _hf_logits(hf, ids, mask, positions), atol=1e-6, rtol=0
    )
    with pytest.raises(FileExistsError):
        export_phi3(config, model, tmp_path)
    # bf16 export: single file over the old shards, loads back close to float32
    export_phi3(config, model, tmp_path, dtype="bfloat16", overwrite=True)
    assert not os.path.exists(tmp_path / INDEX_FILE)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    _, model_bf16 = load_phi3(tmp_path)
    for key, value in hf_state_dict(config, model_bf16).items():
        assert value.dtype == np.float32
        np.testing.assert_allclose(value, hf.state_dict()[key].numpy(), atol=2e-2, rtol=1e-2, err_msg=key)


def test_config_from_legacy_and_current_dicts(hf_models):
    hf, _ = hf_models("longrope")
    current = Phi3Config.from_hf(hf.config)
    legacy = {
        "model_type": "phi3",
        **{k: v for k, v in hf.config.to_dict().items() if k not in ("rope_parameters", "partial_rotary_factor")},
        "rope_theta": 10000.0,
        "rope_scaling": {
            "type": "su",
            "short_factor": LONGROPE["short_factor"],
            "long_factor": LONGROPE["long_factor"],
        },
    }
    assert Phi3Config.from_hf(legacy) == current
    assert Phi3Config.from_hf(current.to_hf_dict()) == current
    assert HFPhi3Config(**current.to_hf_dict()).rope_parameters["rope_type"] == "longrope"
    assert Phi3Config.from_hf(hf.config, dtype=jnp.bfloat16, remat=True).dtype == "bfloat16"
    with pytest.raises(ValueError, match="model_type"):
        Phi3Config.from_hf({**legacy, "model_type": "llama"})
    with pytest.raises(ValueError, match="short_factor"):
        Phi3Config.from_hf({**legacy, "rope_scaling": {**legacy["rope_scaling"], "short_factor": [1.0]}})


@pytest.mark.parametrize(
    ("variant", "layout"), [("gqa", ("none", "left", "right")), ("mha", ("none", "right", "left"))]
)
def test_kv_cache_prefill_and_decode_match_full_forward(hf_models, variant, layout):
    """Rows unpadded, padded left or right ("mha": with a sliding window shorter than the sequences); every
    prompt and decode logit equals the uncached forward of the row alone, unpadded."""
    _, directory = hf_models(variant)
    _, model = load_phi3(directory)
    rng = np.random.RandomState(3)
    prompt_lens, steps, width = [8, 5, 6], 5, 8
    seqs = [rng.randint(3, VOCAB, n + steps) for n in prompt_lens]
    ids, mask = np.zeros((3, width), np.int32), np.zeros((3, width), np.int32)
    for row, (seq, n, side) in enumerate(zip(seqs, prompt_lens, layout, strict=True)):
        assert (n == width) == (side == "none")
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, sl], mask[row, sl] = seq[:n], 1
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids, mask, cont):
        m = nnx.merge(graphdef, state)
        logits, cache = prefill(m, init_cache(m.config, 3, width + steps), jnp.asarray(ids), attention_mask=mask)
        step_logits = []
        for i in range(steps):
            out, cache = decode_step(m, cache, cont[:, i])
            step_logits.append(out)
        return logits, jnp.stack(step_logits, 1), cache

    cont = np.stack([seq[n:] for seq, n in zip(seqs, prompt_lens, strict=True)])
    prompt_logits, step_logits, cache = run(state, ids, mask, cont)
    assert int(cache.length) == width + steps
    np.testing.assert_array_equal(np.asarray(cache.next_position), np.array(prompt_lens) + steps)
    forward = _forward(model)
    for row, (seq, n) in enumerate(zip(seqs, prompt_lens, strict=True)):
        ref = forward(jnp.asarray(seq[None]))[0]
        np.testing.assert_allclose(np.asarray(prompt_logits)[row][mask[row] == 1], ref[:n], atol=1e-4, rtol=0)
        np.testing.assert_allclose(np.asarray(step_logits)[row], ref[n:], atol=1e-4, rtol=0)


def test_greedy_decoding_in_while_loop_matches_transformers(hf_models):
    hf, directory = hf_models("gqa")
    _, model = load_phi3(directory)
    ids, mask, positions = _padded_batch(9, seed=4)
    ids, mask, positions = ids[:2], mask[:2], positions[:2]  # full and left-padded rows
    new = 6
    graphdef, state = nnx.split(model)

    @jax.jit
    def greedy(state, ids, mask):
        m = nnx.merge(graphdef, state)
        logits, cache = prefill(m, m.init_cache(2, ids.shape[1] + new), ids, attention_mask=mask)
        token = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
        out = jnp.zeros((2, new), jnp.int32).at[:, 0].set(token)

        def body(carry):
            i, token, cache, out = carry
            logits, cache = decode_step(m, cache, token)
            token = jnp.argmax(logits, -1).astype(jnp.int32)
            return i + 1, token, cache, out.at[:, i].set(token)

        return jax.lax.while_loop(lambda c: c[0] < new, body, (1, token, cache, out))[3]

    ours = np.asarray(greedy(state, jnp.asarray(ids), jnp.asarray(mask)))
    seq, seq_mask = ids.copy(), mask.copy()
    for _ in range(new):  # transformers, uncached, one token at a time
        pos = np.clip(np.cumsum(seq_mask, 1) - 1, 0, None)
        token = _hf_logits(hf, seq, seq_mask, pos)[:, -1].argmax(-1)
        seq, seq_mask = np.concatenate([seq, token[:, None]], 1), np.concatenate([seq_mask, np.ones((2, 1), int)], 1)
    np.testing.assert_array_equal(ours, seq[:, -new:])


def _write_checkpoint(tmp_path, directory, tensors):
    save_state_dict(tensors, tmp_path)
    shutil.copy(os.path.join(directory, "config.json"), tmp_path / "config.json")
    return tmp_path


def test_bad_checkpoints_name_the_key(hf_models, tmp_path):
    _, directory = hf_models("gqa")
    tensors = load_state_dict(directory)
    bad_key = "model.layers.1.mlp.down_proj.weight"
    wrong_shape = {**tensors, bad_key: np.zeros((64, 80), np.float32)}
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.down_proj\.weight.*\(64, 80\).*\(64, 96\)"):
        load_phi3(_write_checkpoint(tmp_path / "shape", directory, wrong_shape))
    missing = {k: v for k, v in tensors.items() if k != "model.norm.weight"}
    with pytest.raises(CheckpointError, match=r"missing keys: model\.norm\.weight; unexpected keys: none"):
        load_phi3(_write_checkpoint(tmp_path / "missing", directory, missing))
    extra_key = "model.layers.0.self_attn.rotary_emb.inv_freq"
    extra = {**tensors, extra_key: np.zeros((8,), np.float32)}
    with pytest.raises(CheckpointError, match=r"missing keys: none; unexpected keys: .*rotary_emb\.inv_freq"):
        load_phi3(_write_checkpoint(tmp_path / "extra", directory, extra))
    with pytest.raises(CheckpointError, match="config"):
        load_phi3(tmp_path / "nowhere")
    # a tied model may carry lm_head.weight (older exports): it is accepted and ignored
    hf_tied, tied_dir = hf_models("mha")
    tied = load_state_dict(tied_dir)
    tied["lm_head.weight"] = tied["model.embed_tokens.weight"]
    config, _ = load_phi3(_write_checkpoint(tmp_path / "tied", tied_dir, tied))
    assert config.tie_word_embeddings


def test_bf16_compute_and_remat(hf_models):
    _, directory = hf_models("gqa")
    config, model = load_phi3(directory)
    ids, mask, _ = _padded_batch(12, seed=5)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    ref = _forward(model)(ids, mask)
    real = np.asarray(mask).astype(bool)

    _, model_bf16 = load_phi3(directory, dtype="bfloat16")
    assert all(p.get_value().dtype == jnp.float32 for _, p in nnx.to_flat_state(nnx.state(model_bf16, nnx.Param)))
    assert init_cache(model_bf16.config, 1, 4).k[0].dtype == jnp.bfloat16
    low = _forward(model_bf16)(ids, mask)
    err = np.abs(low - ref)[real]
    assert np.isfinite(low).all() and err.max() < 0.1 * np.abs(ref).max() and err.mean() < 0.02 * np.abs(ref).max()

    remat_model = phi3_from_state_dict(dataclasses.replace(config, remat=True), hf_state_dict(config, model))
    np.testing.assert_allclose(_forward(remat_model)(ids, mask), ref, atol=1e-6, rtol=0)

    def grads(m):
        graphdef, state = nnx.split(m, nnx.Param)

        def loss(state):
            logits, _ = nnx.merge(graphdef, state)(ids, attention_mask=mask)
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])

        return jax.jit(jax.grad(loss))(state)

    for a, b in zip(jax.tree.leaves(grads(model)), jax.tree.leaves(grads(remat_model)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", ["gqa", "mha"])
def test_every_param_has_logical_axes(hf_models, variant):
    _, directory = hf_models(variant)
    config, model = load_phi3(directory)
    expected = {
        "embedding": ("vocab", "embed"),
        "qkv_proj": ("embed", "qkv_fused"),
        "o_proj": ("heads", "embed"),
        "gate_up_proj": ("embed", "mlp_fused"),
        "down_proj": ("mlp", "embed"),
        "lm_head": ("embed", "vocab"),
        "scale": ("norm",),
    }
    params = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert len(params) == 2 + 6 * config.num_hidden_layers + (0 if config.tie_word_embeddings else 1)
    for path, param in params:
        axes = param.get_metadata("out_sharding")
        assert axes is not None and len(axes) == param.get_value().ndim, path
        assert set(axes) <= set(LOGICAL_AXES), path
        name = next(p for p in reversed(path) if p in expected)
        assert tuple(axes) == expected[name], path


def test_causal_block_skipping_matches_transformers_with_packed_segments(hf_models):
    """``causal_mask=True`` (attention in 4 query blocks of 32, nothing above the diagonal computed)
    on two rows: one packed with three causal segments, one right-padded; logits of the real tokens
    equal transformers' with the same (B, 1, T, T) mask, and the unblocked path's."""
    from c2a_jax.models.phi3 import causal_chunks_for

    hf, directory = hf_models("gqa")
    _, model = load_phi3(directory)
    length = 128
    assert causal_chunks_for(length) == 4 and causal_chunks_for(96) == 2 and causal_chunks_for(12) == 1
    ids = np.random.RandomState(3).randint(3, VOCAB, (2, length))
    segments = np.zeros((2, length), np.int64)
    segments[0, :50], segments[0, 50:90], segments[0, 90:120] = 1, 2, 3  # 8 pads at the end
    segments[1, :77] = 1
    real = segments > 0
    positions = np.zeros((2, length), np.int64)
    for row in range(2):
        for seg in (1, 2, 3):
            where = segments[row] == seg
            positions[row, where] = np.arange(where.sum())
    q, k = np.arange(length)[:, None], np.arange(length)[None, :]
    full = (segments[:, :, None] == segments[:, None, :]) & real[:, None, :] & (k <= q)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(full[:, None]),
                 position_ids=torch.tensor(positions)).logits.numpy()  # fmt: skip

    @nnx.jit(static_argnums=4)
    def forward(model, ids, mask, positions, causal):
        return model(jnp.asarray(ids), attention_mask=mask, positions=positions, causal_mask=causal)[0]

    blocked = forward(model, ids, jnp.asarray(full), jnp.asarray(positions), True)
    plain = forward(model, ids, jnp.asarray(full), jnp.asarray(positions), False)
    np.testing.assert_allclose(blocked[real], ref[real], atol=1e-4, rtol=0)
    np.testing.assert_allclose(blocked[real], plain[real], atol=1e-5, rtol=0)
    text = str(jax.make_jaxpr(lambda i, m, p: model(i, attention_mask=m, positions=p, causal_mask=True)[0])(
        jnp.asarray(ids), jnp.asarray(full), jnp.asarray(positions)))  # fmt: skip
    assert "32,32" in text.replace(" ", "") and "32,128" in text.replace(" ", "")  # the first and last blocks
