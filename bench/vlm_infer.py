"""VLM inference speed against transformers' PyTorch `generate`, and the early stop's savings (JSON).

    .venv/bin/python bench/vlm_infer.py [--new-tokens 32] [--repeats 5] [--episodes 3] [--skip-speed]
    .venv/bin/python bench/vlm_infer.py --phi3-mini   # on a GPU: ms per token of a Phi-3-mini-size decoder

Figures:
* ``speed``: prefill latency and decode tokens per second of our jitted prefill + KV-cache
  `lax.while_loop` against transformers' `LlavaForConditionalGeneration.generate` (greedy, KV cache)
  on the same tiny LLaVA (configs/vlm/tiny.py sizes, the tiny tokenizer's vocabulary) with the same
  weights (built in PyTorch, saved, loaded by our converter), the same prompt and image, batch 1 (the
  control loop's case) and batch 8. Both use causal attention (what transformers' LLaVA does); both
  generate exactly `--new-tokens` tokens. Prefill latency = time of a 1-token generation; decode
  rate = (N - 1) / (t(N) - t(1)), with t(1) and t(N) timed back to back in each of `--repeats`
  pairs and the median taken of the pairs' differences (our 31 decode steps take about as long as
  the prefill's jitter; medians of t(1) and t(N) taken apart once gave t(N) < t(1)). A difference
  that does not come out positive is reported as null.
* ``early_stop``: tokens decoded per control step on recorded oracle episodes (fresh simulator
  episodes of Pick, PlaceNextTo and Touch) when the VLM writes the oracle's labels, without and
  with the paper's early stop (k characters), through our real decoding loop (a scripted model
  writes the labels). Split into key-step steps and the others; goal: >= 60% fewer tokens on the
  others.
* ``phi3_mini`` (``--phi3-mini``): batch-1 decode ms per token of a random-weight Phi-3-mini-4k
  decoder (3.8B, bf16) with a 512-token prompt: a GPU figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from c2a_jax.host_memory import reexec_with_huge_page_malloc  # noqa: E402

PROMPT = "Place the red cube to the left of the blue cylinder"
MEMORY = ["move3d(target_actor=get_actor('red cube'))", "pick(actor=get_actor('red cube'))"]


def hf_tiny_llava(tok, out_dir: str, image_size: int, patch_size: int):
    """A tiny random transformers LLaVA with the sizes of configs/vlm/tiny.py, saved to `out_dir`."""
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, Phi3Config

    from c2a_jax.config import load_config_file

    m = load_config_file(os.path.join(ROOT, "configs", "vlm", "tiny.py")).model
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=m.vision_width, intermediate_size=m.vision_width * m.mlp_ratio,
                              num_hidden_layers=m.vision_layers, num_attention_heads=m.vision_heads,
                              image_size=image_size, patch_size=patch_size)  # fmt: skip
    text = Phi3Config(vocab_size=tok.vocab_size, hidden_size=m.text_width, intermediate_size=m.text_width * m.mlp_ratio,
                      num_hidden_layers=m.text_layers, num_attention_heads=m.text_heads,
                      num_key_value_heads=m.text_kv_heads, max_position_embeddings=4096, pad_token_id=tok.pad_id,
                      bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)  # fmt: skip
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.image_id,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")  # fmt: skip
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(out_dir)
    return model


def _paired_times(short, long, repeats: int) -> tuple[float, float]:
    """Median time of `short`, and the median over back-to-back pairs of (time of `long` - time of
    `short`): a machine's drift falls on both members of a pair alike."""
    short(), long()  # warm-up (compilation)
    shorts, extras = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        short()
        middle = time.perf_counter()
        long()
        end = time.perf_counter()
        shorts.append(middle - start)
        extras.append((end - middle) - (middle - start))
    return statistics.median(shorts), statistics.median(extras)


def _rate(tokens: int, seconds: float) -> float | None:
    return round(tokens / seconds, 1) if seconds > 0 else None


def _ours_generate(writer, images, prompts, memories, n):
    writer.generate_batch(images, prompts, memories)
    assert int(writer.last_result.steps) == n


def _hf_generate(model, ids, pixel_values, pad_id, n):
    import torch

    with torch.no_grad():
        out = model.generate(input_ids=ids, pixel_values=pixel_values, attention_mask=torch.ones_like(ids),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad_id)  # fmt: skip
    assert out.shape[1] == ids.shape[1] + n


def speed(new_tokens: int, repeats: int, image_size: int = 64, patch_size: int = 16) -> dict:
    import torch

    from c2a_jax.convert.llava import load_llava
    from c2a_jax.data import tokenizer as tokenizer_lib
    from c2a_jax.data import vlm
    from c2a_jax.infer.code_writer import CodeWriter
    from c2a_jax.models.llava import CLIP_MEAN, CLIP_STD

    tok = tokenizer_lib.load_tokenizer(tokenizer_lib.TINY)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        hf = hf_tiny_llava(tok, tmp, image_size, patch_size)
        _, ours = load_llava(tmp)
    for batch in (1, 8):
        rng = np.random.default_rng(batch)
        images = rng.integers(0, 255, (batch, image_size, image_size, 3), dtype=np.uint8)
        prompts, memories = [PROMPT] * batch, [MEMORY] * batch

        writers = {}
        for n in (1, new_tokens):
            w = CodeWriter(ours, tok, max_new_tokens=n, prefix_attention="causal")
            w.stop_table[:] = 0  # generate exactly n tokens, as min_new_tokens does for transformers
            writers[n] = w
        ours_1, ours_extra = _paired_times(
            partial(_ours_generate, writers[1], images, prompts, memories, 1),
            partial(_ours_generate, writers[new_tokens], images, prompts, memories, new_tokens),
            repeats,
        )

        vt = vlm.VlmTokenizer(tok, ours.config.image_tokens, 1 << 20)
        ids = torch.tensor([vt.prefix_ids(vlm.code_question(PROMPT, MEMORY))] * batch)
        pixels = (images.astype(np.float32) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
        pixel_values = torch.tensor(pixels.transpose(0, 3, 1, 2), dtype=torch.float32)
        hf_1, hf_extra = _paired_times(
            partial(_hf_generate, hf, ids, pixel_values, tok.pad_id, 1),
            partial(_hf_generate, hf, ids, pixel_values, tok.pad_id, new_tokens),
            repeats,
        )
        ours_rate = _rate(batch * (new_tokens - 1), ours_extra)
        hf_rate = _rate(batch * (new_tokens - 1), hf_extra)
        out[f"batch_{batch}"] = {
            "prompt_tokens": int(ids.shape[1]),
            "ours_prefill_ms": round(ours_1 * 1e3, 2),
            "transformers_prefill_ms": round(hf_1 * 1e3, 2),
            "prefill_speedup": round(hf_1 / ours_1, 2),
            "ours_decode_tokens_per_s": ours_rate,
            "transformers_decode_tokens_per_s": hf_rate,
            "decode_speedup": round(ours_rate / hf_rate, 2) if ours_rate and hf_rate else None,
        }
    return out


def recorded_labels(episodes: int) -> list:
    """Per-step fine labels of fresh oracle episodes (no images)."""
    import gymnasium as gym

    import c2a_jax.sim.env  # noqa: F401
    from c2a_jax.data.labels import step_labels
    from c2a_jax.sim.rollout import record_oracle_episode

    out = []
    for task, args in (("Pick", {}), ("PlaceNextTo", {"spawn_at_gripper": True}), ("Touch", {})):
        env = gym.make("ClevrSkills-v0", task=task, task_args=args, image_size=32).unwrapped
        for seed in range(episodes):
            episode = record_oracle_episode(env, seed, max_steps=600, images=False)
            if episode["meta"]["success"]:
                out.append(step_labels(episode["meta"], "fine", episode["arrays"]["success"]))
        env.close()
    return out


def early_stop(episodes: int, ks: tuple[int, ...] = (5, 10, 20)) -> dict:
    from flax import nnx

    from c2a_jax.codeapi import comment
    from c2a_jax.data import tokenizer as tokenizer_lib
    from c2a_jax.infer import decode, scripted

    tok = tokenizer_lib.load_tokenizer(tokenizer_lib.TINY)
    stop, chars = decode.token_tables(tok, stop_at_newline=False)
    episodes_labels = recorded_labels(episodes)
    counts: dict[str, dict[str, list[int]]] = {}
    for labels in episodes_labels:
        codes = [label.code for label in labels]
        lasts = [comment(label.memory[-1]) if label.memory else "" for label in labels]
        script = scripted.script_rows(tok, codes)
        target = scripted.script_rows(tok, lasts, eos=False)
        target = np.where(target == tok.pad_id, -1, target)
        graphdef, state = nnx.split(scripted.ScriptedModel(script, tok.vocab_size))
        for k in (0, *ks):
            result = decode.generate(graphdef, state, np.zeros((len(codes), 4), np.int32),
                                     forward=scripted.scripted_forward, step=scripted.scripted_step, stop_table=stop,
                                     char_table=chars, max_new_tokens=script.shape[1], pad_id=tok.pad_id,
                                     target=target, target_chars=np.array([len(t) for t in lasts]),
                                     early_k=k)  # fmt: skip
            decoded = result.lengths + (~result.early).astype(int)  # + the EOS token read, unless cut early
            for label, n, early in zip(labels, decoded, result.early, strict=True):
                kind = "keystep" if label.is_keystep else "other"
                counts.setdefault(f"k={k}", {}).setdefault(kind, []).append(int(n))
                if early:
                    assert not label.is_keystep
    base = counts["k=0"]
    out = {"episodes": len(episodes_labels), "steps": sum(len(v) for v in base.values())}
    for name, by_kind in counts.items():
        out[name] = {kind: round(float(np.mean(v)), 2) for kind, v in by_kind.items()}
        if name != "k=0":
            out[name]["other_reduction"] = round(1 - np.mean(by_kind["other"]) / np.mean(base["other"]), 3)
            total = sum(sum(v) for v in by_kind.values()) / sum(sum(v) for v in base.values())
            out[name]["all_steps_reduction"] = round(1 - total, 3)
    return out


def phi3_mini(prompt_tokens: int = 512, new_tokens: int = 64, repeats: int = 3) -> dict:
    import jax
    from flax import nnx

    from c2a_jax.infer import decode
    from c2a_jax.models.phi3 import Phi3Config, Phi3ForCausalLM, prefill
    from c2a_jax.models.phi3 import decode_step as phi3_step

    config = Phi3Config(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                        original_max_position_embeddings=4096, sliding_window=2047, dtype="bfloat16",
                        param_dtype="bfloat16")  # fmt: skip
    model = nnx.eval_shape(lambda: Phi3ForCausalLM(config, rngs=nnx.Rngs(0)))
    graphdef, abstract = nnx.split(model)
    key = iter(jax.random.split(jax.random.key(0), 1000))
    state = jax.tree.map(lambda a: (0.02 * jax.random.normal(next(key), a.shape)).astype(a.dtype), abstract)
    vocab = config.vocab_size
    stop = np.zeros(vocab, np.int8)
    chars = np.ones(vocab, np.int32)
    tokens = np.random.default_rng(0).integers(0, vocab, (1, prompt_tokens)).astype(np.int32)

    def forward(model, tokens, images, mask, cache):
        return prefill(model, cache, tokens)

    def step(model, token, cache):
        return phi3_step(model, cache, token)

    def run(n):
        decode.generate(graphdef, state, tokens, forward=forward, step=step, stop_table=stop, char_table=chars,
                        max_new_tokens=n, pad_id=0)  # fmt: skip

    t1, extra = _paired_times(lambda: run(1), lambda: run(new_tokens), repeats)
    peer = _hf_phi3_mini(config, tokens, new_tokens, repeats)
    ours_ms = extra / (new_tokens - 1) * 1e3
    return {
        "transformers_prefill_ms": peer["prefill_ms"],
        "transformers_decode_ms_per_token": peer["decode_ms_per_token"],
        "decode_speedup": round(peer["decode_ms_per_token"] / ours_ms, 2),
        "device": str(jax.devices()[0]),
        "prefill_ms": round(t1 * 1e3, 1),
        "decode_ms_per_token": round(ours_ms, 2),
        "params_b": round(sum(x.size for x in jax.tree.leaves(state)) / 1e9, 2),
        "dtype": "bfloat16",
        "prompt_tokens": prompt_tokens,
    }


def _hf_phi3_mini(config, tokens, new_tokens: int, repeats: int) -> dict:
    """transformers' Phi3ForCausalLM.generate (bf16, sdpa, KV cache) on the same shapes, same GPU."""
    import torch
    from transformers import Phi3Config as HFPhi3Config
    from transformers import Phi3ForCausalLM as HFPhi3

    hf_config = HFPhi3Config(**config.to_hf_dict())
    with torch.device("cuda"):
        model = HFPhi3(hf_config).to(torch.bfloat16).eval()
    ids = torch.tensor(tokens, device="cuda")

    def run(n):
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)  # fmt: skip
        torch.cuda.synchronize()

    t1, extra = _paired_times(lambda: run(1), lambda: run(new_tokens), repeats)
    return {"prefill_ms": round(t1 * 1e3, 1), "decode_ms_per_token": round(extra / (new_tokens - 1) * 1e3, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--episodes", type=int, default=3, help="oracle episodes per task for the early-stop figure")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-early-stop", action="store_true")
    ap.add_argument("--phi3-mini", action="store_true", help="only the Phi-3-mini decode figure (for a GPU)")
    args = ap.parse_args(argv)
    if args.phi3_mini:
        print(json.dumps({"phi3_mini": phi3_mini()}, indent=2))
        return 0
    result = {}
    if not args.skip_speed:
        result["speed"] = speed(args.new_tokens, args.repeats)
    if not args.skip_early_stop:
        result["early_stop"] = early_stop(args.episodes)
    result["config"] = vars(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    reexec_with_huge_page_malloc()  # XLA's large CPU buffers on huge pages (c2a_jax/host_memory.py)
    sys.exit(main())
