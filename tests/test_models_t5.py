"""T5 encoder: parity with transformers' PyTorch T5EncoderModel, padding, checkpoint conversion errors.

Reference numbers come from transformers' own classes built here with tiny random weights; every
weight (norm scales included, which HF initialises to ones) is perturbed so a wrong mapping shows.
Sequences are longer than 2 * (num_buckets / 4) so both the exact and the log-spaced relative
position buckets are exercised, in both directions.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import T5Config as HFT5Config
from transformers import T5EncoderModel as HFT5EncoderModel
from transformers import T5ForConditionalGeneration

from c2a_jax.convert.safetensors_io import CheckpointError, load_state_dict, save_state_dict
from c2a_jax.convert.t5 import load_t5_encoder, t5_encoder_from_state, t5_encoder_to_state
from c2a_jax.models import LOGICAL_AXES
from c2a_jax.models.t5 import T5Config, T5EncoderModel, num_params, relative_position_buckets

TOL = 1e-4
TINY = dict(
    vocab_size=97,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=3,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=12,
    decoder_start_token_id=0,
)
LENGTH = 20


def _perturb(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _hf_encoder(ff: str, seed: int = 0, cls=HFT5EncoderModel):
    torch.manual_seed(seed)
    model = cls(HFT5Config(**TINY, feed_forward_proj=ff)).eval()
    _perturb(model, seed + 1)
    return model


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, TINY["vocab_size"], (3, LENGTH)).astype(np.int32)
    mask = np.ones((3, LENGTH), np.int32)
    mask[1, 13:] = 0  # right padding
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    return ids, mask


def _hf_run(model, ids, mask):
    with torch.no_grad():
        return model(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            output_hidden_states=True,
        )


def _close(ours, theirs, tol=TOL, what=""):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    err = float(np.abs(ours - theirs).max())
    assert err <= tol, f"{what}: max abs error {err} > {tol}"


@pytest.fixture(scope="module")
def forward():
    return jax.jit(lambda m, ids, mask: m(ids, mask, output_hidden_states=True))


@pytest.mark.parametrize("ff", ["gated-gelu", "relu"])
def test_forward_matches_transformers(tmp_path, forward, ff):
    hf = _hf_encoder(ff, seed=3)
    hf.save_pretrained(tmp_path)
    config, model = load_t5_encoder(tmp_path)
    assert config.feed_forward_proj == ff and config.num_layers == 3
    assert config.is_gated == (ff == "gated-gelu")
    ids, mask = _inputs(4)
    out = forward(model, ids, mask)
    ref = _hf_run(hf, ids, mask)
    _close(out.last_hidden_state, ref.last_hidden_state, what="last_hidden_state")
    assert len(out.hidden_states) == len(ref.hidden_states) == config.num_layers + 1
    for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states, strict=True)):
        _close(a, b, what=f"hidden_states[{i}]")
    # the frozen use: same numbers, no gradient into T5
    np.testing.assert_array_equal(jax.jit(lambda m, i, k: m.encode(i, k))(model, ids, mask), out.last_hidden_state)
    grads = nnx.grad(lambda m: m.encode(ids, mask).sum())(model)
    assert jax.tree.leaves(grads) and all(float(np.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
    assert sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == num_params(config)
    assert num_params(config) == sum(p.numel() for p in hf.parameters())  # shared and embed_tokens are one tensor


def test_padding_mask_is_respected(forward):
    hf = _hf_encoder("gated-gelu", seed=5)
    tensors = {k: v.numpy() for k, v in hf.state_dict().items()}
    config = T5Config.from_hf(hf.config)
    model = t5_encoder_from_state(config, t5_encoder_to_state(tensors, config))
    ids, mask = _inputs(6)
    base = forward(model, ids, mask).last_hidden_state
    # changing what sits in the padded slots changes nothing at real positions
    other = ids.copy()
    other[mask == 0] = np.random.default_rng(7).integers(1, TINY["vocab_size"], int((mask == 0).sum()))
    moved = forward(model, other, mask).last_hidden_state
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(moved)[real], np.asarray(base)[real], atol=1e-6)
    assert float(np.abs(np.asarray(moved)[~real] - np.asarray(base)[~real]).max()) > 1e-3
    # a padded row equals the same tokens run alone, unpadded (row 2 has 5 real tokens)
    alone = jax.jit(lambda m, i: m(i).last_hidden_state)(model, ids[2:3, :5])
    np.testing.assert_allclose(np.asarray(base)[2, :5], np.asarray(alone)[0], atol=1e-5)
    # without the mask the pads are attended to and real positions change
    unmasked = forward(model, ids, np.ones_like(mask)).last_hidden_state
    assert float(np.abs(np.asarray(unmasked)[2, :5] - np.asarray(base)[2, :5]).max()) > 1e-3


def test_relative_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    for q, k, buckets, dist in [(20, 20, 8, 12), (40, 33, 32, 128), (300, 300, 32, 128)]:
        rel = torch.arange(k)[None, :] - torch.arange(q)[:, None]
        ref = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=buckets, max_distance=dist)
        np.testing.assert_array_equal(relative_position_buckets(q, k, buckets, dist), ref.numpy())


def test_loads_encoder_of_t5_for_conditional_generation(tmp_path, forward):
    full = _hf_encoder("gated-gelu", seed=8, cls=T5ForConditionalGeneration)
    full.save_pretrained(tmp_path)
    keys = load_state_dict(tmp_path)
    assert any(k.startswith("decoder.") for k in keys)
    _, model = load_t5_encoder(tmp_path)
    ids, mask = _inputs(9)
    ref = _hf_run(full.get_encoder(), ids, mask)
    _close(
        forward(model, ids, mask).last_hidden_state, ref.last_hidden_state, what="encoder of T5ForConditionalGeneration"
    )


def _rewrite(src, dst, edit) -> str:
    tensors = load_state_dict(src)
    edit(tensors)
    save_state_dict(tensors, dst)
    shutil.copy(os.path.join(src, "config.json"), os.path.join(dst, "config.json"))
    return str(dst)


def test_conversion_errors_name_the_key(tmp_path):
    hf = _hf_encoder("relu", seed=10)
    src = tmp_path / "src"
    hf.save_pretrained(src)

    def missing(t):
        del t["encoder.block.2.layer.1.DenseReluDense.wo.weight"]

    with pytest.raises(CheckpointError, match=r"missing keys: encoder\.block\.2\.layer\.1\.DenseReluDense\.wo\.weight"):
        load_t5_encoder(_rewrite(src, tmp_path / "missing", missing))

    def unexpected(t):
        t["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = np.zeros((8, 4), np.float32)

    with pytest.raises(
        CheckpointError, match=r"unexpected keys: encoder\.block\.1\.layer\.0\.SelfAttention\.relative_attention_bias"
    ):
        load_t5_encoder(_rewrite(src, tmp_path / "unexpected", unexpected))

    def wrong_shape(t):
        t["encoder.block.0.layer.0.SelfAttention.k.weight"] = np.zeros((32, 31), np.float32)

    with pytest.raises(CheckpointError, match=r"SelfAttention\.k\.weight.*\(32, 31\).*\(32, 32\)"):
        load_t5_encoder(_rewrite(src, tmp_path / "shape", wrong_shape))

    # a gated checkpoint read with a relu config: wi_0/wi_1 unexpected, wi missing
    gated_dir = tmp_path / "gated"
    _hf_encoder("gated-gelu", seed=11).save_pretrained(gated_dir)
    cfg = json.load(open(gated_dir / "config.json"))
    json.dump(
        {**cfg, "feed_forward_proj": "relu", "dense_act_fn": "relu", "is_gated_act": False},
        open(gated_dir / "config.json", "w"),
    )
    with pytest.raises(
        CheckpointError,
        match=r"missing keys: encoder\.block\.0\.layer\.1\.DenseReluDense\.wi\.weight.*unexpected keys: encoder\.block\.0\.layer\.1\.DenseReluDense\.wi_0",
    ):
        load_t5_encoder(gated_dir)

    # the tied copy an older transformers saved stands in for shared.weight
    def legacy_embedding(t):
        t["encoder.embed_tokens.weight"] = t.pop("shared.weight")

    _, model = load_t5_encoder(_rewrite(src, tmp_path / "legacy", legacy_embedding))
    np.testing.assert_array_equal(np.asarray(model.shared[...]), hf.shared.weight.detach().numpy())

    os.remove(tmp_path / "legacy" / "config.json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_t5_encoder(tmp_path / "legacy")
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="swiglu-gated-x")


def test_every_param_has_logical_axes():
    model = nnx.eval_shape(
        lambda: T5EncoderModel(
            T5Config(
                **{k: v for k, v in TINY.items() if k != "decoder_start_token_id"}, feed_forward_proj="gated-gelu"
            ),
            rngs=nnx.Rngs(0),
        )
    )
    leaves = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert leaves
    for path, var in leaves:
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == len(var.shape), (path, axes)
        assert set(axes) <= set(LOGICAL_AXES), (path, axes)
