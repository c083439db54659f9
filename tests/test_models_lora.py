"""LoRA on the Phi-3 decoder: against adapters hooked onto transformers' PyTorch Phi-3, a fresh adapter
is the identity, merging folds it into the kernels, only adapters train under LORA_FREEZE, and a
LoRA model refuses to export unmerged."""

import dataclasses

import jax
import ml_collections
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import Phi3Config as HFPhi3Config
from transformers import Phi3ForCausalLM as HFPhi3ForCausalLM

from c2a_jax.convert.phi3 import export_phi3, load_phi3
from c2a_jax.models.lora import LORA_FREEZE, LORA_TARGETS, merge_lora
from c2a_jax.models.phi3 import Phi3ForCausalLM
from c2a_jax.train.optimizer import make_optimizer

RANK, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    hf = HFPhi3ForCausalLM(HFPhi3Config(vocab_size=200, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)).eval()  # fmt: skip
    directory = tmp_path_factory.mktemp("phi3")
    hf.save_pretrained(directory)
    return hf, str(directory)


def _logits(model, ids):
    return np.asarray(model(ids)[0])


def _randomise_adapters(model, seed):
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        if path[-1] in ("lora_a", "lora_b"):
            var.set_value(jax.numpy.asarray(0.3 * rng.normal(size=var.get_value().shape), var.get_value().dtype))
    nnx.update(model, state)


def test_adapters_match_hooks_on_transformers_and_merge(checkpoint, tmp_path):
    hf, directory = checkpoint
    ids = np.random.default_rng(1).integers(3, 200, (2, 9))
    config, plain = load_phi3(directory)
    _, lora = load_phi3(directory, lora_rank=RANK, lora_alpha=ALPHA)
    adapters = [p for p, _ in nnx.to_flat_state(nnx.state(lora, nnx.Param)) if p[-1] in ("lora_a", "lora_b")]
    assert len(adapters) == 2 * len(LORA_TARGETS) * 2  # two matrices, four targets, two layers
    np.testing.assert_allclose(_logits(lora, ids), _logits(plain, ids), atol=1e-6)  # B = 0: the identity

    _randomise_adapters(lora, seed=2)
    params = dict(nnx.to_flat_state(nnx.state(lora, nnx.Param)))
    hooks = []
    for layer_index, layer in enumerate(hf.model.layers):
        for owner, name in ((layer.self_attn, "qkv_proj"), (layer.self_attn, "o_proj"), (layer.mlp, "gate_up_proj"),
                            (layer.mlp, "down_proj")):  # fmt: skip
            parent = ("layers", layer_index, "self_attn" if owner is layer.self_attn else "mlp", name)
            a = torch.tensor(np.asarray(params[(*parent, "lora_a")].get_value()))
            b = torch.tensor(np.asarray(params[(*parent, "lora_b")].get_value()))
            hooks.append(getattr(owner, name).register_forward_hook(
                lambda mod, inp, out, a=a, b=b: out + (ALPHA / RANK) * (inp[0] @ a) @ b))  # fmt: skip
    with torch.no_grad():
        expected = hf(input_ids=torch.tensor(ids)).logits.numpy()
    for h in hooks:
        h.remove()
    np.testing.assert_allclose(_logits(lora, ids), expected, atol=1e-4, rtol=1e-4)
    assert np.abs(expected - _logits(plain, ids)).max() > 1e-2  # the adapters do change the output

    merged = merge_lora(lambda: Phi3ForCausalLM(config, rngs=nnx.Rngs(0)), lora)
    np.testing.assert_allclose(_logits(merged, ids), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="merge_lora"):
        export_phi3(dataclasses.replace(config, lora_rank=RANK), lora, tmp_path / "unmerged")
    export_phi3(config, merged, tmp_path / "merged")
    with torch.no_grad():
        reloaded = HFPhi3ForCausalLM.from_pretrained(tmp_path / "merged").eval()(input_ids=torch.tensor(ids)).logits
    np.testing.assert_allclose(reloaded.numpy(), expected, atol=1e-4, rtol=1e-4)


def test_lora_freeze_leaves_only_adapters_trainable(checkpoint):
    _, directory = checkpoint
    _, lora = load_phi3(directory, lora_rank=RANK)
    optimizer = make_optimizer(ml_collections.ConfigDict({"freeze": (LORA_FREEZE,), "steps": 10}))
    trainable, frozen = optimizer.split(nnx.state(lora, nnx.Param))
    names = [p for p, _ in nnx.to_flat_state(trainable)]
    assert names and all(p[-1] in ("lora_a", "lora_b") for p in names)
    assert not any(p[-1] in ("lora_a", "lora_b") for p, _ in nnx.to_flat_state(frozen))


def test_bad_lora_targets_are_refused(checkpoint):
    _, directory = checkpoint
    with pytest.raises(Exception, match="lora_targets"):
        load_phi3(directory, lora_rank=2, lora_targets=("q_proj",))
