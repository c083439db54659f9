"""CLIP vision tower: parity with transformers' PyTorch CLIPVisionModel, checkpoint conversion both ways.

Every reference number comes from transformers' own classes built here with tiny random weights;
all weights (norms and biases included, which HF initialises to ones/zeros) are perturbed so a
wrong mapping cannot hide behind an initial value.
"""

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaConfig,
    LlavaModel,
)

from c2a_jax.convert.clip import (
    LLAVA_VISION_PREFIXES,
    clip_vision_from_state,
    clip_vision_hf_keys,
    clip_vision_model_from_state,
    clip_vision_to_state,
    export_clip_vision,
    find_clip_vision_prefix,
    load_clip_vision,
)
from c2a_jax.convert.safetensors_io import INDEX_FILE, CheckpointError, load_state_dict, save_state_dict
from c2a_jax.models import LOGICAL_AXES
from c2a_jax.models.clip import ClipVisionConfig, ClipVisionModel, num_params, select_features

TOL = 1e-4
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8
)


def _tiny_config(**overrides) -> CLIPVisionConfig:
    return CLIPVisionConfig(**{**TINY, **overrides})


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Add noise to every parameter (HF initialises norms to 1/0 and biases to 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _hf_tower(seed: int = 0, **overrides) -> CLIPVisionModel:
    torch.manual_seed(seed)
    model = CLIPVisionModel(_tiny_config(**overrides)).eval()
    _perturb(model, seed + 1)
    return model


def _pixels(seed: int = 0, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)


def _hf_outputs(model: CLIPVisionModel, pixels: np.ndarray):
    with torch.no_grad():
        return model(torch.from_numpy(pixels), output_hidden_states=True)


def _assert_close(ours, theirs, tol=TOL, what=""):
    ours = np.asarray(ours, dtype=np.float32)
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    err = float(np.abs(ours - theirs).max())
    assert err <= tol, f"{what}: max abs error {err} > {tol}"


def _assert_matches_hf(ours, hf_out, tol=TOL):
    _assert_close(ours.last_hidden_state, hf_out.last_hidden_state, tol, "last_hidden_state")
    _assert_close(ours.pooler_output, hf_out.pooler_output, tol, "pooler_output")
    assert len(ours.hidden_states) == len(hf_out.hidden_states)
    for i, (a, b) in enumerate(zip(ours.hidden_states, hf_out.hidden_states, strict=True)):
        _assert_close(a, b, tol, f"hidden_states[{i}]")


@pytest.fixture(scope="module")
def saved_tower(tmp_path_factory):
    """A tiny quick_gelu CLIPVisionModel saved with save_pretrained, and its outputs on fixed pixels."""
    model = _hf_tower(seed=0)
    path = tmp_path_factory.mktemp("clip") / "tower"
    model.save_pretrained(path)
    pixels = _pixels()
    return model, str(path), pixels, _hf_outputs(model, pixels)


# (1) forward parity, every hidden state, for the activations CLIP checkpoints use.
@pytest.mark.parametrize("act", ["quick_gelu", "gelu", "gelu_pytorch_tanh"])
def test_forward_matches_transformers(tmp_path, act):
    hf = _hf_tower(seed=3, hidden_act=act)
    hf.save_pretrained(tmp_path)
    config, model = load_clip_vision(tmp_path)
    assert config.hidden_act == act and config.num_hidden_layers == 3
    pixels = _pixels(seed=4)
    out = jax.jit(lambda m, x: m(x, output_hidden_states=True))(model, pixels)
    _assert_matches_hf(out, _hf_outputs(hf, pixels))
    plain = model(pixels)
    assert plain.hidden_states is None
    _assert_close(plain.last_hidden_state, out.last_hidden_state, 1e-5, "without hidden states")


def test_hidden_state_convention(saved_tower):
    _, path, pixels, _ = saved_tower
    _, model = load_clip_vision(path)
    out = model(pixels, output_hidden_states=True)
    # index 0: embeddings after pre_layrnorm; index -1: the last layer, before post_layernorm.
    embedded = model.pre_layrnorm(model.embeddings(pixels))
    np.testing.assert_allclose(out.hidden_states[0], embedded, atol=1e-6)
    np.testing.assert_array_equal(out.hidden_states[-1], out.last_hidden_state)
    np.testing.assert_allclose(out.pooler_output, model.post_layernorm(out.last_hidden_state[:, 0]), atol=1e-6)


def test_channels_last_and_input_checks(saved_tower):
    _, path, pixels, hf_out = saved_tower
    _, model = load_clip_vision(path)
    nhwc = model(pixels.transpose(0, 2, 3, 1), channels_last=True)
    _assert_close(nhwc.last_hidden_state, hf_out.last_hidden_state, TOL, "NHWC")
    with pytest.raises(ValueError, match="32x32"):
        model(np.zeros((1, 3, 28, 28), np.float32))
    with pytest.raises(ValueError, match="channels"):
        model(np.zeros((1, 32, 32, 3), np.float32))  # NHWC passed without channels_last
    with pytest.raises(ValueError, match="4-D"):
        model(np.zeros((3, 32, 32), np.float32))


# (2) LLaVA's feature selection, against transformers' LlavaModel.get_image_features.
@pytest.mark.parametrize(
    ("layer", "strategy"), [(-2, "default"), (-2, "full"), ([-3, -1], "default"), ([0, -2], "full")]
)
def test_select_features_matches_llava(tmp_path, layer, strategy):
    torch.manual_seed(5)
    text = dict(
        model_type="llama",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
    )
    hf_config = LlavaConfig(
        vision_config=_tiny_config().to_dict(),
        text_config=text,
        image_token_id=63,
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
    )
    llava = LlavaModel(hf_config).eval()
    _perturb(llava.vision_tower, 6)
    _perturb(llava.multi_modal_projector, 7)
    llava.save_pretrained(tmp_path)

    # The tower inside a LLaVA checkpoint, through the functions LLaVA's converter reuses.
    tensors = load_state_dict(tmp_path)
    prefix = find_clip_vision_prefix(tensors)
    assert prefix == "vision_tower." and prefix in LLAVA_VISION_PREFIXES
    config = ClipVisionConfig.from_hf(json.load(open(tmp_path / "config.json")))
    model = clip_vision_model_from_state(config, clip_vision_to_state(tensors, config, prefix))

    pixels = _pixels(seed=8)
    ours = select_features(model(pixels, output_hidden_states=True).hidden_states, layer, strategy)
    np.testing.assert_allclose(model.image_features(pixels, layer, strategy), ours, atol=1e-6)
    with torch.no_grad():
        theirs = llava.get_image_features(
            pixel_values=torch.from_numpy(pixels), vision_feature_layer=layer, vision_feature_select_strategy=strategy
        ).pooler_output
        projected = llava.multi_modal_projector(torch.from_numpy(np.array(ours)))
    n_tokens = 16 + (strategy == "full")
    width = 64 * (1 if isinstance(layer, int) else len(layer))
    assert ours.shape == (2, n_tokens, width)
    _assert_close(projected, torch.stack(list(theirs)), TOL, f"LLaVA features {layer} {strategy}")


def test_select_features_against_hf_hidden_states(saved_tower):
    _, path, pixels, hf_out = saved_tower
    _, model = load_clip_vision(path)
    hs = model(pixels, output_hidden_states=True).hidden_states
    ref = [h.numpy() for h in hf_out.hidden_states]
    _assert_close(select_features(hs), ref[-2][:, 1:], TOL, "layer -2 default")
    _assert_close(select_features(hs, -1, "full"), ref[-1], TOL, "layer -1 full")
    _assert_close(select_features(hs, [1, -2], "default"), np.concatenate([ref[1], ref[-2]], -1)[:, 1:], TOL, "list")
    _assert_close(select_features(hs, (np.int64(2),), "full"), ref[2], TOL, "tuple of numpy ints")
    with pytest.raises(ValueError, match="strategy"):
        select_features(hs, -2, "cls")
    with pytest.raises(IndexError, match="out of range"):
        select_features(hs, 4)
    with pytest.raises(IndexError, match="out of range"):
        model.image_features(pixels, [-5])
    with pytest.raises(ValueError, match="empty"):
        select_features(hs, [])


def test_llava_legacy_prefix(saved_tower):
    """transformers 4.x LLaVA checkpoints nest the tower as vision_tower.vision_model.*."""
    _, path, pixels, hf_out = saved_tower
    tensors = load_state_dict(path)
    legacy = {f"vision_tower.vision_model.{k}": v for k, v in tensors.items()}
    legacy["multi_modal_projector.linear_1.weight"] = np.zeros((4, 4), np.float32)
    legacy["language_model.model.embed_tokens.weight"] = np.zeros((4, 4), np.float32)
    prefix = find_clip_vision_prefix(legacy)
    assert prefix == "vision_tower.vision_model."
    config = ClipVisionConfig.from_hf(_tiny_config())
    model = clip_vision_model_from_state(config, clip_vision_to_state(legacy, config, prefix))
    _assert_close(model(pixels).last_hidden_state, hf_out.last_hidden_state, TOL, "legacy LLaVA prefix")
    assert clip_vision_hf_keys(config, prefix) == {k for k in legacy if k.startswith(prefix)}
    with pytest.raises(CheckpointError, match="no CLIP vision tower"):
        find_clip_vision_prefix({"language_model.lm_head.weight": None})
    with pytest.raises(CheckpointError, match="several"):
        find_clip_vision_prefix({**legacy, **{f"other.{k}": v for k, v in tensors.items()}})


# (3) sharded checkpoints load identically.
def test_sharded_checkpoint_loads_identically(tmp_path, saved_tower):
    hf, path, pixels, hf_out = saved_tower
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert os.path.exists(tmp_path / INDEX_FILE)
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".safetensors")]) > 1
    _, single = load_clip_vision(path)
    _, sharded = load_clip_vision(tmp_path / INDEX_FILE)
    a, b = nnx.to_flat_state(nnx.state(single, nnx.Param)), nnx.to_flat_state(nnx.state(sharded, nnx.Param))
    assert [p for p, _ in a] == [p for p, _ in b]
    for (p, x), (_, y) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[...], y[...], err_msg=str(p))
    _assert_matches_hf(sharded(pixels, output_hidden_states=True), hf_out)


# (4) export, reload in transformers, same outputs and same tensors.
@pytest.mark.parametrize("prefix", ["vision_model.", ""])
def test_export_reloads_in_transformers(tmp_path, saved_tower, prefix):
    hf, path, pixels, hf_out = saved_tower
    config, model = load_clip_vision(path)
    written = export_clip_vision(config, model, tmp_path, prefix=prefix)
    assert {os.path.basename(w) for w in written} == {"model.safetensors", "config.json"}
    reloaded, info = CLIPVisionModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    for key, value in hf.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    _assert_matches_hf(model(pixels, output_hidden_states=True), _hf_outputs(reloaded.eval(), pixels))
    assert ClipVisionConfig.from_hf(reloaded.config) == config
    # our own loader reads the export back to the same parameters
    _, again = load_clip_vision(tmp_path)
    for key, value in clip_vision_from_state(again).items():
        np.testing.assert_array_equal(value, hf.state_dict()[key].numpy(), err_msg=key)


def test_export_bfloat16(tmp_path, saved_tower):
    _, path, pixels, hf_out = saved_tower
    config, model = load_clip_vision(path)
    export_clip_vision(config, model, tmp_path, dtype="bfloat16")
    assert json.load(open(tmp_path / "config.json"))["dtype"] == "bfloat16"
    assert all(v.dtype == jnp.bfloat16 for v in load_state_dict(tmp_path).values())
    reloaded, info = CLIPVisionModel.from_pretrained(tmp_path, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    # bf16 checkpoints are loaded as float32 parameters by default
    _, ours = load_clip_vision(tmp_path)
    assert all(v[...].dtype == jnp.float32 for _, v in nnx.to_flat_state(nnx.state(ours, nnx.Param)))
    _assert_matches_hf(ours(pixels, output_hidden_states=True), _hf_outputs(reloaded.eval(), pixels))


# (5) the vision half of a full CLIPModel checkpoint.
def test_load_from_full_clip_model(tmp_path):
    torch.manual_seed(9)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99)
    text.update(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    clip = CLIPModel(CLIPConfig(vision_config=_tiny_config(hidden_act="gelu").to_dict(), text_config=text)).eval()
    _perturb(clip, 10)
    clip.save_pretrained(tmp_path)
    assert any(k.startswith("text_model.") for k in load_state_dict(tmp_path))
    config, model = load_clip_vision(tmp_path)
    assert config.hidden_act == "gelu"
    pixels = _pixels(seed=11)
    with torch.no_grad():
        hf_out = clip.vision_model(torch.from_numpy(pixels), output_hidden_states=True)
    _assert_matches_hf(model(pixels, output_hidden_states=True), hf_out)


# (6) a checkpoint that does not fit names the key.
def _rewrite(src: str, dst, edit) -> str:
    tensors = load_state_dict(src)
    edit(tensors)
    save_state_dict(tensors, dst)
    shutil.copy(os.path.join(src, "config.json"), os.path.join(dst, "config.json"))
    return str(dst)


def test_bad_checkpoints_name_the_key(tmp_path, saved_tower):
    _, path, pixels, hf_out = saved_tower
    key = "encoder.layers.1.mlp.fc1.weight"

    def wrong_shape(t):
        t[key] = np.zeros((100, 64), np.float32)

    with pytest.raises(CheckpointError, match=r"encoder\.layers\.1\.mlp\.fc1\.weight.*\(100, 64\).*\(128, 64\)"):
        load_clip_vision(_rewrite(path, tmp_path / "shape", wrong_shape))

    def missing(t):
        del t["encoder.layers.2.self_attn.v_proj.bias"]

    with pytest.raises(CheckpointError, match=r"missing keys: encoder\.layers\.2\.self_attn\.v_proj\.bias"):
        load_clip_vision(_rewrite(path, tmp_path / "missing", missing))

    def extra(t):
        t["encoder.layers.0.self_attn.rotary.weight"] = np.zeros(3, np.float32)

    with pytest.raises(CheckpointError, match=r"unexpected keys: encoder\.layers\.0\.self_attn\.rotary\.weight"):
        load_clip_vision(_rewrite(path, tmp_path / "extra", extra))

    def extra_outside(t):
        for k in list(t):
            t["vision_model." + k] = t.pop(k)
        t["some_head.weight"] = np.zeros(3, np.float32)

    with pytest.raises(CheckpointError, match=r"unexpected keys: some_head\.weight"):
        load_clip_vision(_rewrite(path, tmp_path / "outside", extra_outside))

    # the position_ids buffer old transformers versions saved is not an error
    def legacy_buffer(t):
        t["embeddings.position_ids"] = np.arange(17, dtype=np.int64)[None]

    _, model = load_clip_vision(_rewrite(path, tmp_path / "buffer", legacy_buffer))
    _assert_close(model(pixels).last_hidden_state, hf_out.last_hidden_state, TOL, "with position_ids buffer")

    # config.json and weights that disagree: the first absent layer is named
    deeper = tmp_path / "deeper"
    shutil.copytree(path, deeper)
    cfg = json.load(open(deeper / "config.json"))
    json.dump({**cfg, "num_hidden_layers": 4}, open(deeper / "config.json", "w"))
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.3\.layer_norm1\.bias"):
        load_clip_vision(deeper)

    os.remove(deeper / "config.json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_clip_vision(deeper)

    tensors = load_state_dict(path)
    with pytest.raises(CheckpointError, match=r"missing keys: vision_model\.embeddings\.class_embedding"):
        clip_vision_to_state(tensors, ClipVisionConfig.from_hf(_tiny_config()), "vision_model.")


# (7) bf16 compute stays close; remat changes nothing but memory.
def test_bfloat16_compute(saved_tower):
    _, path, pixels, hf_out = saved_tower
    config, model = load_clip_vision(path, dtype="bfloat16")
    assert config.dtype == "bfloat16" and config.param_dtype == "float32"
    out = jax.jit(lambda m, x: m(x, output_hidden_states=True))(model, pixels)
    assert out.last_hidden_state.dtype == jnp.bfloat16 and out.pooler_output.dtype == jnp.bfloat16
    for ours, theirs in [(out.last_hidden_state, hf_out.last_hidden_state), (out.pooler_output, hf_out.pooler_output)]:
        ref = theirs.numpy()
        err = np.abs(np.asarray(ours, np.float32) - ref).max()
        assert err <= 0.03 * np.abs(ref).max(), err


def _has_remat(jaxpr) -> bool:
    """Whether a jaxpr holds a jax.checkpoint (printed as remat2 or checkpoint, by JAX version)."""
    return re.search(r"\b(remat2?|checkpoint)\[", str(jaxpr)) is not None


def test_remat_gives_identical_outputs_and_gradients(saved_tower):
    _, path, pixels, _ = saved_tower

    def traced(model):
        graphdef, params = nnx.split(model)

        def loss(p):
            out = nnx.merge(graphdef, p)(pixels)
            return jnp.sum(out.last_hidden_state**2) + jnp.sum(out.pooler_output), out.last_hidden_state

        return jax.value_and_grad(loss, has_aux=True), params

    results = {}
    for name, options in [("plain", {}), ("remat", {"remat": True})]:
        fn, params = traced(load_clip_vision(path, **options)[1])
        assert _has_remat(jax.make_jaxpr(fn)(params)) == (name == "remat")
        results[name] = jax.jit(fn)(params)
    (loss, out), grad = results["plain"]
    (loss_r, out_r), grad_r = results["remat"]
    np.testing.assert_allclose(out_r, out, rtol=0, atol=1e-6)
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grad_r), jax.tree.leaves(grad), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # a named jax.checkpoint_policies entry is accepted and traces
    _, policy = load_clip_vision(path, remat=True, remat_policy="dots_with_no_batch_dims_saveable")
    fn, params = traced(policy)
    assert _has_remat(jax.make_jaxpr(fn)(params))
    with pytest.raises(ValueError, match="remat_policy"):
        ClipVisionConfig(remat=True, remat_policy="no_such_policy")


# (8) logical axis names on every parameter.
def test_every_param_has_logical_axes():
    config = ClipVisionConfig.from_hf(_tiny_config())
    model = nnx.eval_shape(lambda: ClipVisionModel(config, rngs=nnx.Rngs(0)))
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert len(flat) == len(clip_vision_hf_keys(config))
    axes = {}
    for path, param in flat:
        names = param.get_metadata().get("out_sharding")
        assert isinstance(names, tuple) and len(names) == len(param.shape), (path, names)
        assert set(names) <= set(LOGICAL_AXES), (path, names)
        axes[".".join(map(str, path))] = names
    assert axes["embeddings.patch_embedding"] == ("patch", "embed")
    assert axes["embeddings.class_embedding"] == ("embed",)
    assert axes["embeddings.position_embedding"] == ("position", "embed")
    assert axes["layers.0.self_attn.q_proj.kernel"] == ("embed", "heads")
    assert axes["layers.0.self_attn.q_proj.bias"] == ("heads",)
    assert axes["layers.0.self_attn.out_proj.kernel"] == ("heads", "embed")
    assert axes["layers.2.mlp.fc1.kernel"] == ("embed", "mlp")
    assert axes["layers.2.mlp.fc2.kernel"] == ("mlp", "embed")
    assert axes["pre_layrnorm.scale"] == axes["post_layernorm.bias"] == ("norm",)
    assert num_params(config) == sum(int(np.prod(p.shape)) for _, p in flat)
    assert num_params(config) == sum(p.numel() for p in CLIPVisionModel(_tiny_config()).parameters())


def test_config_from_hf_variants():
    # defaults of a config.json written as a diff: transformers' CLIPVisionConfig defaults
    assert ClipVisionConfig.from_hf({}) == ClipVisionConfig.from_hf(CLIPVisionConfig())
    # LLaVA's default vision tower is CLIP ViT-L/14-336, our defaults
    assert ClipVisionConfig.from_hf(LlavaConfig()) == ClipVisionConfig()
    assert ClipVisionConfig.from_hf(LlavaConfig().to_dict()) == ClipVisionConfig()
    full = CLIPConfig(vision_config=_tiny_config(hidden_act="gelu").to_dict())
    assert ClipVisionConfig.from_hf(full.to_dict()) == ClipVisionConfig.from_hf(_tiny_config(hidden_act="gelu"))
    config = ClipVisionConfig.from_hf(_tiny_config(layer_norm_eps=1e-6), dtype=jnp.bfloat16, remat=True)
    assert (config.dtype, config.remat, config.layer_norm_eps) == ("bfloat16", True, 1e-6)
    round_trip = CLIPVisionConfig(**config.to_hf_dict())
    assert ClipVisionConfig.from_hf(round_trip, dtype="bfloat16", remat=True) == config
    with pytest.raises(ValueError, match="hidden_act"):
        ClipVisionConfig.from_hf(_tiny_config(hidden_act="relu"))
    with pytest.raises(ValueError, match="siglip_vision_model"):
        ClipVisionConfig.from_hf({"model_type": "siglip_vision_model"})
    with pytest.raises(ValueError, match="divisible"):
        ClipVisionConfig.from_hf({**TINY, "num_attention_heads": 5})
    with pytest.raises(ValueError, match="cudnn"):
        ClipVisionConfig(attention_impl="cudnn")  # float32 compute
    with pytest.raises(TypeError, match="unknown"):
        ClipVisionConfig.from_hf({}, dtpye="bfloat16")
