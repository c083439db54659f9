"""bench/vlm_train.py --paper on a shrunken paper config (the GPU figure's code path, on CPU): the
step runs through the training loop's own step, the FLOPs' parameter counts equal a count from
the architecture's widths, and the throughput fields agree with each other."""

from __future__ import annotations

import math

import pytest

from bench.vlm_train import paper

SMALL = {
    "model.text_width": 64, "model.text_heads": 4, "model.text_kv_heads": 2, "model.text_intermediate": 96,
    "model.vocab_size": 640, "model.vision_width": 32, "model.vision_heads": 2, "model.vision_intermediate": 48,
    "model.vision_layers": 3, "data.image_size": 28, "data.max_length": 128,
}  # fmt: skip


def test_paper_mode_on_a_shrunken_config():
    out = paper(batch=2, steps=1, layers=2, overrides=SMALL)
    e, heads, kv, f, vocab = 64, 4, 2, 96, 640
    d = e // heads
    layer = e * (heads + 2 * kv) * d + heads * d * e + e * 2 * f + f * e
    projector = 32 * e + e * e
    assert out["flops"]["params_decoder_projector"] == 2 * layer + e * vocab + projector
    vw, vf = 32, 48
    vision_layer = 4 * vw * vw + 2 * vw * vf
    assert out["flops"]["params_vision_tower"] == 3 * 14 * 14 * vw + 3 * vision_layer
    assert out["flops"]["vision_layers_run"] == 2  # feature layer -2 of 3 layers
    assert out["seq_len"] == 128 and out["rows"] == 2 and 0 < out["real_tokens_per_step"] <= 2 * 128
    assert out["tokens_per_s"] == pytest.approx(2 * 128 / (out["step_ms"] / 1e3), rel=0.01)
    per_token = out["flops"]["decoder_projector_per_token"]
    assert per_token["dense_6N"] == 6 * out["flops"]["params_decoder_projector"]
    assert per_token["attention_12LdT"] == 12 * 2 * e * 128
    assert out["flops"]["per_step"] == pytest.approx(
        per_token["per_token"] * 2 * 128 + out["flops"]["vision_dense"] + out["flops"]["vision_attention"]
    )
    assert out["mfu"] is None and out["device"] == "cpu"  # no peak known for a CPU
    assert math.isfinite(out["loss"]) and out["loss"] > 0
    # the GPU figure's remat: the paper config's policy reaches the decoder the step runs
    assert out["remat"] is True and out["remat_policy"] == "dots_with_no_batch_dims_saveable"
