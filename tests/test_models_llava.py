"""LLaVA (CLIP tower + projector + Phi-3) against transformers' PyTorch LlavaForConditionalGeneration.

Tiny HF models are built here (torch.manual_seed) and every weight is redrawn (norms near 1, biases
non-zero, large spread so attention is peaked): a wrong mapping, layer choice or merge order cannot hide
below the tolerance. The HF side gets its pixel_values from transformers' own CLIP image processor; our
side gets the same uint8 images (normalised on the device) or the processor's floats.
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
from transformers import CLIPVisionConfig
from transformers import LlavaConfig as HFLlavaConfig
from transformers import LlavaForConditionalGeneration as HFLlava
from transformers import Phi3Config as HFPhi3Config
from transformers.activations import ACT2FN
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from c2a_jax.convert.llava import (
    LAYOUTS,
    detect_layout,
    export_llava,
    hf_llava_state_dict,
    load_llava,
)
from c2a_jax.convert.safetensors_io import INDEX_FILE, CheckpointError, load_state_dict, save_state_dict
from c2a_jax.data import vlm
from c2a_jax.models import LOGICAL_AXES
from c2a_jax.models.llava import (
    PROJECTOR_ACTIVATIONS,
    LlavaConfig,
    LlavaForConditionalGeneration,
    preprocess_images,
)

TOL = 1e-4
VOCAB, IMAGE_ID, SIZE = 128, 127, 32  # 32x32 images, 8x8 patches: 16 patches
VARIANTS = {
    # LLaVA-Phi-3's settings: layer -2 without the class token, erf GELU, separate LM head, GQA decoder
    "default": dict(),
    # a list of feature layers (the embeddings among them), class token kept, tanh GELU, no projector
    # bias, and a head tied by the top-level flag only (what transformers 5 writes for a tied LLaVA)
    "multi_full": dict(
        vision_feature_layer=[0, -3, -1],
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu_pytorch_tanh",
        multimodal_projector_bias=False,
        tie_word_embeddings=True,
    ),
}


def _hf_config(variant: str) -> HFLlavaConfig:
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=SIZE, patch_size=8
    )
    text = HFPhi3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return HFLlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_ID, **VARIANTS[variant])


def _redraw(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "norm" in name:  # layer norms, RMS norms (and CLIP's "pre_layrnorm")
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.15 * noise)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """variant -> (PyTorch model, directory it was saved to with save_pretrained); built on first use."""
    built = {}

    def get(variant):
        if variant not in built:
            torch.manual_seed(0)
            model = HFLlava(_hf_config(variant)).eval()
            _redraw(model, list(VARIANTS).index(variant) + 1)
            directory = tmp_path_factory.mktemp(variant)
            model.save_pretrained(directory)
            built[variant] = model, str(directory)
        return built[variant]

    return get


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _pixel_values(images: np.ndarray) -> np.ndarray:
    """transformers' CLIP preprocessing (rescale, normalise; no resize or crop at the model's size), NCHW."""
    processor = CLIPImageProcessorPil(do_resize=False, do_center_crop=False)
    return processor(images=list(images), return_tensors="np")["pixel_values"]


def _batch(n_image_tokens: int, seed: int = 0):
    """Two rows of 24 tokens: [bos, 3 text, image tokens, 4 text], the second left-padded by 3 (one
    text token fewer before and after the image in row 1)."""
    rng = np.random.default_rng(seed)
    length = 8 + n_image_tokens
    ids = rng.integers(3, IMAGE_ID, (2, length))
    ids[:, 0] = 1
    ids[0, 4 : 4 + n_image_tokens] = IMAGE_ID
    ids[1, :3] = 0
    ids[1, 3] = 1
    ids[1, 4 : 4 + n_image_tokens] = IMAGE_ID
    mask = np.ones((2, length), np.int64)
    mask[1, :3] = 0
    positions = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    return ids, mask, positions


def _hf_logits(model, ids, pixel_values, mask, positions) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            pixel_values=None if pixel_values is None else torch.tensor(pixel_values),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions),
        )
    return out.logits.numpy()


def _forward(model):
    """Jitted forward: (ids, images=None, pixel_values=None, mask=None, positions=None) -> numpy logits."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, ids, images, pixel_values, mask, positions):
        logits, _ = nnx.merge(graphdef, state)(
            ids, images, pixel_values=pixel_values, attention_mask=mask, positions=positions
        )
        return logits

    return lambda ids, images=None, pixel_values=None, mask=None, positions=None: np.asarray(
        f(state, ids, images, pixel_values, mask, positions)
    )


def _flat_params(model) -> dict:
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _assert_same_params(a, b, **tol):
    pa, pb = _flat_params(a), _flat_params(b)
    assert pa.keys() == pb.keys()
    for path in pa:
        if tol:
            np.testing.assert_allclose(pa[path], pb[path], err_msg=str(path), **tol)
        else:
            np.testing.assert_array_equal(pa[path], pb[path], err_msg=str(path))


# (a), (b): logits with images, uint8 and float paths, both variants.
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_with_images_match_transformers(hf_models, variant):
    hf, directory = hf_models(variant)
    config, model = load_llava(directory)
    n_tokens = 16 + (variant == "multi_full")
    assert config.image_tokens == n_tokens
    assert config.text.tie_word_embeddings == (variant == "multi_full")
    assert (model.language_model.lm_head is None) == config.text.tie_word_embeddings
    ids, mask, positions = _batch(n_tokens)
    images = _images(2)
    pixel_values = _pixel_values(images)
    ref = _hf_logits(hf, ids, pixel_values, mask, positions)
    real = mask.astype(bool)
    assert np.abs(ref[real]).max() > 1.0  # logits of a useful scale

    forward = _forward(model)
    ours = forward(jnp.asarray(ids), jnp.asarray(images), mask=jnp.asarray(mask))  # positions from the mask
    np.testing.assert_allclose(ours[real], ref[real], atol=TOL, rtol=0)
    # the documented float path: transformers' own normalised pixels, NCHW -> NHWC, one image slot per row
    nhwc = jnp.asarray(pixel_values.transpose(0, 2, 3, 1))[:, None]
    ours_float = forward(jnp.asarray(ids), pixel_values=nhwc, mask=jnp.asarray(mask), positions=jnp.asarray(positions))
    np.testing.assert_allclose(ours_float[real], ref[real], atol=TOL, rtol=0)
    # on-device normalisation equals the processor's
    np.testing.assert_allclose(preprocess_images(jnp.asarray(images)), nhwc[:, 0], atol=1e-6, rtol=0)
    # the images matter: other images change the logits after the image tokens
    other = forward(jnp.asarray(ids), jnp.asarray(_images(2, seed=1)), mask=jnp.asarray(mask))
    assert np.abs(other[:, -4:] - ours[:, -4:]).max() > 1e-2
    with pytest.raises(TypeError, match="uint8"):
        model(jnp.asarray(ids), jnp.asarray(images, jnp.float32))


def test_projector_activations_match_transformers():
    x = np.linspace(-6, 6, 241, dtype=np.float32)
    for name, fn in PROJECTOR_ACTIVATIONS.items():
        ref = ACT2FN[name](torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(fn(jnp.asarray(x)), ref, atol=2e-6, rtol=0, err_msg=name)


def test_config_from_transformers(hf_models):
    hf, _ = hf_models("multi_full")
    config = LlavaConfig.from_hf(hf.config)
    assert config.vision_feature_layer == (0, -3, -1) and config.num_feature_layers == 3
    assert config.vision_feature_select_strategy == "full" and config.projector_hidden_act == "gelu_pytorch_tanh"
    assert not config.multimodal_projector_bias and config.image_token_id == IMAGE_ID
    # transformers ties when either flag says so; the top-level one is what 5.x writes
    assert not hf.config.text_config.tie_word_embeddings and config.text.tie_word_embeddings
    assert LlavaConfig.from_hf(config.to_hf_dict()) == config
    assert HFLlavaConfig(**config.to_hf_dict()).image_token_id == IMAGE_ID
    # image_token_id (5.x attribute) and image_token_index (what config.json holds) are the same field
    legacy = {**config.to_hf_dict(), "vision_feature_layer": -2}
    del legacy["image_token_index"]
    assert LlavaConfig.from_hf({**legacy, "image_token_id": 5}).image_token_id == 5
    options = LlavaConfig.from_hf(hf.config, dtype="bfloat16", vision_options={"attention_impl": None})
    assert options.vision.dtype == options.text.dtype == "bfloat16" and options.vision.attention_impl is None
    with pytest.raises(TypeError, match="attention_impl"):
        LlavaConfig.from_hf(hf.config, attention_impl=None)
    with pytest.raises(ValueError, match="phi3"):
        LlavaConfig.from_hf({**config.to_hf_dict(), "text_config": {"hidden_size": 64}})  # a Llama in transformers
    with pytest.raises(ValueError, match="out of range"):
        dataclasses.replace(config, vision_feature_layer=4)
    with pytest.raises(ValueError, match="projector_hidden_act"):
        dataclasses.replace(config, projector_hidden_act="mish")
    with pytest.raises(ValueError, match="vocabulary"):
        dataclasses.replace(config, image_token_id=VOCAB)


# (c) export -> transformers reload -> same logits, both layouts; bf16 export.
@pytest.mark.parametrize(("variant", "layout"), [("default", "transformers4"), ("multi_full", "transformers5")])
def test_export_reloads_in_transformers(hf_models, tmp_path, variant, layout):
    hf, directory = hf_models(variant)
    config, model = load_llava(directory)
    written = export_llava(config, model, tmp_path, max_shard_bytes=40_000, layout=layout)
    assert str(tmp_path / INDEX_FILE) in written
    keys = set(load_state_dict(tmp_path))
    assert detect_layout(keys) == LAYOUTS[layout]
    if layout == "transformers5":  # byte-for-byte the key set transformers' save_pretrained writes
        assert keys == set(load_state_dict(directory))
    reloaded, info = HFLlava.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert LlavaConfig.from_hf(reloaded.config) == config
    n_tokens = config.image_tokens
    ids, mask, positions = _batch(n_tokens, seed=2)
    pixel_values = _pixel_values(_images(2, seed=3))
    np.testing.assert_allclose(
        _hf_logits(reloaded.eval(), ids, pixel_values, mask, positions),
        _hf_logits(hf, ids, pixel_values, mask, positions),
        atol=1e-6,
        rtol=0,
    )
    with pytest.raises(FileExistsError):
        export_llava(config, model, tmp_path)
    export_llava(config, model, tmp_path, dtype="bfloat16", overwrite=True)
    assert not os.path.exists(tmp_path / INDEX_FILE)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    _, model_bf16 = load_llava(tmp_path)
    for value in _flat_params(model_bf16).values():
        assert value.dtype == np.float32
    _assert_same_params(model_bf16, model, atol=3e-2, rtol=1e-2)


def _legacy_key(key: str) -> str:
    """transformers 4.x names of a 5.x-saved LLaVA key (the inverse of transformers 5's "llava"
    conversion mapping plus CLIPVisionModel's ``vision_model.``)."""
    return key.replace("vision_tower.", "vision_tower.vision_model.", 1) if key.startswith("vision_tower.") else key


def _module_key(key: str) -> str:
    """transformers 5 module names (``model.state_dict()``) of a 5.x-saved LLaVA key."""
    if key == "language_model.lm_head.weight":
        return "lm_head.weight"
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model.") :]
    return "model." + key


# (d) the 4.x / Hub layout (with a 4.x config.json and bf16 weights) and the 5.x module-name layout.
def test_legacy_and_module_layouts_load(hf_models, tmp_path):
    hf, directory = hf_models("default")
    config, model = load_llava(directory)
    tensors = load_state_dict(directory)

    legacy = {_legacy_key(k): v for k, v in tensors.items()}
    legacy["vision_tower.vision_model.embeddings.position_ids"] = np.arange(17, dtype=np.int64)[None]  # 4.x buffer
    assert any(k.startswith("language_model.model.layers.") for k in legacy)
    save_state_dict(legacy, tmp_path / "legacy")
    hf_config = hf.config.to_dict()
    text = {k: v for k, v in hf_config["text_config"].items() if k != "rope_parameters"}
    vision = {k: v for k, v in hf_config["vision_config"].items() if k in ("hidden_size", "intermediate_size",
              "num_hidden_layers", "num_attention_heads", "image_size", "patch_size", "model_type")}  # fmt: skip
    old = {**hf_config, "text_config": {**text, "rope_theta": 10000.0, "rope_scaling": None}, "vision_config": vision}
    old.pop("dtype", None)
    old["torch_dtype"] = "float32"
    assert "image_token_index" in old and "image_token_id" not in old
    (tmp_path / "legacy" / "config.json").write_text(json.dumps(old))
    legacy_config, legacy_model = load_llava(tmp_path / "legacy")
    assert legacy_config == config
    _assert_same_params(legacy_model, model)
    # transformers 5 itself reads this layout (so the renaming above is the one its mapping undoes)
    _, info = HFLlava.from_pretrained(tmp_path / "legacy", output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]

    modules = {_module_key(k): v for k, v in tensors.items()}
    assert set(modules) == set(hf.state_dict())
    save_state_dict(modules, tmp_path / "modules")
    shutil.copy(os.path.join(directory, "config.json"), tmp_path / "modules")
    _, modules_model = load_llava(tmp_path / "modules")
    _assert_same_params(modules_model, model)

    # bf16 checkpoint -> float32 parameters by default, bf16 on request
    bf16 = {k: v.astype(jnp.bfloat16) if v.dtype == np.float32 else v for k, v in legacy.items()}
    save_state_dict(bf16, tmp_path / "bf16")
    shutil.copy(tmp_path / "legacy" / "config.json", tmp_path / "bf16")
    _, bf16_model = load_llava(tmp_path / "bf16")
    assert {v.dtype for v in _flat_params(bf16_model).values()} == {np.dtype(np.float32)}
    _assert_same_params(bf16_model, model, atol=3e-2, rtol=1e-2)
    _, bf16_params = load_llava(tmp_path / "bf16", param_dtype="bfloat16")
    assert {v.dtype for v in _flat_params(bf16_params).values()} == {np.dtype(jnp.bfloat16)}


# (e) sharded checkpoints written by transformers.
def test_sharded_checkpoint_loads_identically(hf_models, tmp_path):
    hf, directory = hf_models("default")
    _, model = load_llava(directory)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / INDEX_FILE).exists()
    assert len(set(json.loads((tmp_path / INDEX_FILE).read_text())["weight_map"].values())) > 2
    _, sharded = load_llava(tmp_path)
    _assert_same_params(sharded, model)
    _, via_index = load_llava(tmp_path / INDEX_FILE)
    _assert_same_params(via_index, model)


# (f) a checkpoint that does not fit names the key.
def test_bad_checkpoints_name_the_key(hf_models, tmp_path):
    _, directory = hf_models("default")
    tensors = load_state_dict(directory)

    def load(name, changed, config=None):
        out = tmp_path / name
        save_state_dict(changed, out)
        if config is None:
            shutil.copy(os.path.join(directory, "config.json"), out)
        else:
            (out / "config.json").write_text(json.dumps(config))
        return load_llava(out)

    wrong = dict(tensors, **{"multi_modal_projector.linear_1.weight": np.zeros((64, 48), np.float32)})
    with pytest.raises(CheckpointError, match=r"multi_modal_projector\.linear_1\.weight.*\(64, 48\).*\(64, 32\)"):
        load("shape_projector", wrong)
    wrong = dict(tensors, **{"language_model.model.layers.1.mlp.down_proj.weight": np.zeros((64, 80), np.float32)})
    with pytest.raises(CheckpointError, match=r"language_model\.model\.layers\.1\.mlp\.down_proj\.weight.*\(64, 80\)"):
        load("shape_text", wrong)
    wrong = dict(tensors, **{"vision_tower.encoder.layers.2.mlp.fc1.weight": np.zeros((64, 16), np.float32)})
    with pytest.raises(CheckpointError, match=r"vision_tower\.encoder\.layers\.2\.mlp\.fc1\.weight.*\(64, 16\)"):
        load("shape_vision", wrong)
    missing = {k: v for k, v in tensors.items() if k != "vision_tower.post_layernorm.bias"}
    with pytest.raises(
        CheckpointError, match=r"missing keys: vision_tower\.post_layernorm\.bias; unexpected keys: none"
    ):
        load("missing", missing)
    missing = {k: v for k, v in tensors.items() if k != "language_model.lm_head.weight"}
    with pytest.raises(CheckpointError, match=r"missing keys: language_model\.lm_head\.weight;"):
        load("missing_head", missing)
    extra = dict(tensors, **{"multi_modal_projector.linear_3.weight": np.zeros((4, 4), np.float32)})
    with pytest.raises(CheckpointError, match=r"missing keys: none; unexpected keys: multi_modal_projector\.linear_3"):
        load("extra", extra)
    extra = dict(tensors, **{"image_newline": np.zeros((64,), np.float32)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: image_newline"):
        load("extra_top", extra)
    mixed = dict(tensors, **{"lm_head.weight": tensors["language_model.lm_head.weight"]})
    with pytest.raises(CheckpointError, match=r"LM head appears under several layouts"):
        load("mixed", mixed)
    ints = dict(tensors, **{"multi_modal_projector.linear_2.bias": np.zeros((64,), np.int32)})
    with pytest.raises(CheckpointError, match=r"multi_modal_projector\.linear_2\.bias.*int32"):
        load("ints", ints)
    hf_config = json.loads(open(os.path.join(directory, "config.json")).read())
    with pytest.raises(CheckpointError, match="phi3"):
        load("llama", tensors, {**hf_config, "text_config": {**hf_config["text_config"], "model_type": "llama"}})


def test_tied_config_with_a_different_head_loads_untied(hf_models, tmp_path):
    """transformers unties when a tied config's checkpoint holds a head that differs from the embedding."""
    hf, directory = hf_models("multi_full")
    tensors = load_state_dict(directory)
    assert "language_model.lm_head.weight" not in tensors
    embedding = tensors["language_model.model.embed_tokens.weight"]
    save_state_dict({**tensors, "language_model.lm_head.weight": embedding}, tmp_path / "same")
    save_state_dict({**tensors, "language_model.lm_head.weight": embedding + 0.5}, tmp_path / "different")
    for name in ("same", "different"):
        shutil.copy(os.path.join(directory, "config.json"), tmp_path / name)
    config, _ = load_llava(tmp_path / "same")
    assert config.text.tie_word_embeddings
    with pytest.warns(UserWarning, match="untied"):
        config, model = load_llava(tmp_path / "different")
    assert not config.text.tie_word_embeddings
    head = np.asarray(model.language_model.lm_head.kernel.get_value())
    np.testing.assert_array_equal(head, (embedding + 0.5).T)
    reloaded = HFLlava.from_pretrained(tmp_path / "different")
    np.testing.assert_array_equal(reloaded.lm_head.weight.detach().numpy(), embedding + 0.5)


# (g) packed rows: two examples (and their images) in one row equal the two rows apart.
def test_packed_rows_match_separate_rows(hf_models):
    _, directory = hf_models("default")
    _, model = load_llava(directory)
    rng = np.random.default_rng(5)

    def example(n_before, n_after):
        tokens = np.r_[1, rng.integers(3, IMAGE_ID, n_before), [IMAGE_ID] * 16, rng.integers(3, IMAGE_ID, n_after)]
        mask_ar = np.r_[np.zeros(1 + n_before + 16 + 2, bool), np.ones(n_after - 2, bool)]  # prefix, then answer
        return tokens.astype(np.int32), mask_ar

    (a, a_ar), (b, b_ar) = example(3, 6), example(2, 5)
    images = _images(2, seed=7)
    length = 56  # 26 + 24 tokens and 6 pads

    # separate rows, right-padded, one image each
    sep_ids = np.zeros((2, length), np.int32)
    sep_ar = np.ones((2, length), bool)
    sep_real = np.zeros((2, length), bool)
    for i, (t, ar) in enumerate([(a, a_ar), (b, b_ar)]):
        sep_ids[i, : len(t)], sep_ar[i, : len(t)], sep_real[i, : len(t)] = t, ar, True
    sep_mask = vlm.attention_mask(sep_real, sep_ar)
    sep_pos = np.where(sep_real, np.cumsum(sep_real, 1) - 1, 0)
    forward = _forward(model)
    sep = forward(jnp.asarray(sep_ids), jnp.asarray(images), mask=jnp.asarray(sep_mask), positions=jnp.asarray(sep_pos))

    # one packed row: segments 1 and 2, positions restart per segment, image slots in segment order
    n_a, n_b = len(a), len(b)
    ids = np.zeros((1, length), np.int32)
    ids[0, :n_a], ids[0, n_a : n_a + n_b] = a, b
    segments = np.zeros((1, length), np.int32)
    segments[0, :n_a], segments[0, n_a : n_a + n_b] = 1, 2
    mask_ar = np.ones((1, length), bool)
    mask_ar[0, :n_a], mask_ar[0, n_a : n_a + n_b] = a_ar, b_ar
    positions = np.zeros((1, length), np.int32)
    positions[0, :n_a], positions[0, n_a : n_a + n_b] = np.arange(n_a), np.arange(n_b)
    mask = vlm.attention_mask(segments > 0, mask_ar, segments)
    packed = forward(
        jnp.asarray(ids), jnp.asarray(images[None]), mask=jnp.asarray(mask), positions=jnp.asarray(positions)
    )
    np.testing.assert_allclose(packed[0, :n_a], sep[0, :n_a], atol=1e-5, rtol=0)
    np.testing.assert_allclose(packed[0, n_a : n_a + n_b], sep[1, :n_b], atol=1e-5, rtol=0)
    # the slot order is what pairs images with segments
    swapped = forward(
        jnp.asarray(ids), jnp.asarray(images[None, ::-1]), mask=jnp.asarray(mask), positions=jnp.asarray(positions)
    )
    assert np.abs(swapped[0, n_a - 5 : n_a] - packed[0, n_a - 5 : n_a]).max() > 1e-2


# (h) logical axes on every parameter, no eager sharding; the converter's tables cover every parameter.
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_param_has_logical_axes(hf_models, variant):
    hf, _ = hf_models(variant)
    config = LlavaConfig.from_hf(hf.config)
    model = LlavaForConditionalGeneration(config, rngs=nnx.Rngs(0))
    params = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert len(params) == len(hf.state_dict()) - config.text.tie_word_embeddings  # HF lists a tied head too
    for path, param in params:
        axes = param.get_metadata("out_sharding")
        assert axes is not None and len(axes) == param.get_value().ndim, path
        assert set(axes) <= set(LOGICAL_AXES), path
        assert param.get_metadata("eager_sharding") is False, path
    projector = {path[1:]: p.get_metadata("out_sharding") for path, p in params if path[0] == "multi_modal_projector"}
    expected = {("linear_1", "kernel"): ("embed", "mlp"), ("linear_2", "kernel"): ("mlp", "embed")}
    if config.multimodal_projector_bias:
        expected |= {("linear_1", "bias"): ("mlp",), ("linear_2", "bias"): ("embed",)}
    assert projector == expected
    assert len(hf_llava_state_dict(config, model)) == len(params)
