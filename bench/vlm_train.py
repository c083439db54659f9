"""VLM training throughput against transformers' PyTorch training step, same config and batch (JSON).

    .venv/bin/python bench/vlm_train.py [--batch-size 16] [--max-length 256] [--steps 10] [--rounds 3]

Both sides train the tiny LLaVA of configs/vlm/tiny.py (CLIP tower + projector + Phi-3 decoder,
the tiny tokenizer's vocabulary) on one batch made by our VLM pipeline from synthetic episodes:
forward, cross-entropy on the answer tokens, backward, AdamW (lr 1e-3, weight decay 0.01, no
clipping). Ours: one jitted functional step with donated buffers, causal attention (the same
computation as transformers' LLaVA; prefix-LM costs the same). Peer: LlavaForConditionalGeneration
with labels = -100 outside the answer, torch.optim.AdamW, eager PyTorch on the same CPU threads.
Ours computes the LM head and the loss at each row's answer tokens only (``--logits-at answers``,
`train.loss_tokens_per_row` = the batch's most answer tokens in a row, rounded up to 16: the same
loss and gradients, tests/test_train_vlm.py); transformers at every position, as its default.
``--logits-at all``: ours at every position too. Every process runs with glibc's ``hugetlb``
malloc tunable (c2a_jax/host_memory.py), both sides alike.
Figure: real (non-pad) tokens per second from the median step time. Each side is timed alone in
a fresh process of this script (``--side``, as a training run has one framework to itself),
`--steps` steps after 3 of warm-up; ``--rounds`` such processes per side, the sides in turn so
that load from elsewhere falls on both alike, and the figures are the medians over the rounds
(each round's ratio is printed too). ``same_process``: the same-tensor pair once more with both
frameworks in one process, timed in alternating blocks (bench/timing.py); on a 2-core machine
our step took 0-9% longer there than alone (each side's idle thread pool still spins beside the
other's step), and timed one step each in turn 10-25% longer.

Second figure (``packed_*``): the same examples packed ``--pack`` per row (our pipeline's
``images_per_row``, first fit; segment ids keep them apart), so that our step skips most of the
padding, against transformers on the padded batch again (its LLaVA has no packed-sequence
attention). Third (``packed_vs_padded_to_longest``): the packed step against transformers on the
batch padded only to its longest example (what its default collator does), its best case.
Both sides train with causal attention, ours skipping the blocks above the diagonal.

``--paper``: the paper's LLaVA-Phi-3-mini (configs/vlm/llava_phi3_mini.py: CLIP ViT-L/14-336 frozen,
Phi-3-mini decoder, bfloat16 compute, float32 parameters and AdamW state, remat) from random
weights, trained by the training loop's own step (`make_train_step`, FSDP mesh over this host's
devices) on `--paper-batch` pipeline rows of 1024 tokens: tokens/s and MFU with the FLOPs' terms
(meant for a GPU; issue #6's goal is MFU >= 40%, MaxText's Llama2-7B reaches about 50% on H100).
Model FLOPs: decoder and projector 6N per token plus attention 12LdT (`TransformerFlops`; every
row position counts, padding included, as it is computed); the frozen vision tower 2N per patch
for the layers its feature layer uses, plus its attention. `--paper-layers N` keeps N decoder
and N vision layers (a smoke run on a small machine; the figure is for the full depth).

    .venv/bin/python bench/vlm_train.py --paper [--paper-batch 8] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench.timing import block_medians  # noqa: E402
from c2a_jax.host_memory import reexec_with_huge_page_malloc  # noqa: E402


def pipeline_batch(
    batch_size: int, max_length: int, image_size: int, patch_size: int, images_per_row: int = 1
) -> tuple[dict, object]:
    """`batch_size` code examples and grid questions from synthetic episodes, padded one per row
    (``images_per_row=1``) or packed several per row (the same examples in fewer rows)."""
    from c2a_jax.data import tokenizer as tokenizer_lib
    from c2a_jax.data import vlm
    from c2a_jax.data.synthetic import make_episode

    tok = tokenizer_lib.load_tokenizer(tokenizer_lib.TINY)
    vt = vlm.VlmTokenizer(tok, (image_size // patch_size) ** 2, max_length)
    episodes = [make_episode(size=image_size, key=f"bench/{i}") for i in range(8)]
    rng = np.random.default_rng(0)
    examples = [e for episode in episodes for e in vlm.episode_examples(episode, vlm.VlmExampleConfig(), rng,
                                                                          ["green star", "red cube"])]  # fmt: skip
    chosen = [vt(examples[i]) for i in rng.permutation(len(examples))[:batch_size]]
    rows = list(vlm.pack_rows(chosen, max_length, images_per_row, tok.pad_id))
    return vlm.stack_rows(rows), tok


def loss_tokens_per_row(batch: dict, logits_at: str) -> int:
    """``train.loss_tokens_per_row`` for this batch: its most answer tokens in a row, rounded up to
    a multiple of 16 (``logits_at="answers"``), or 0: logits at every position (``"all"``)."""
    if logits_at == "all":
        return 0
    return -(-int(batch["target_mask"].sum(1).max()) // 16) * 16


def ours(batch: dict, tok, image_size: int, patch_size: int, logits_at: str = "answers"):
    """Our train step as a no-argument callable."""
    import jax
    import optax
    from flax import nnx

    from bench.data import tiny_llava
    from c2a_jax.train.vlm_loss import vlm_loss

    model = tiny_llava(tok, image_size, patch_size)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3, weight_decay=0.01), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    k = loss_tokens_per_row(batch, logits_at)

    def train_step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        (loss, _), grads = nnx.value_and_grad(vlm_loss, has_aux=True)(model, batch, "causal", k)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    step_fn = jax.jit(train_step, donate_argnums=0)
    device_batch = jax.device_put({k: v for k, v in batch.items() if k != "num_images"})
    holder = {"state": state}

    def step():
        holder["state"], loss = step_fn(holder["state"], device_batch)
        loss.block_until_ready()

    return step


def transformers_step(batch: dict, tok, image_size: int, patch_size: int):
    """transformers' train step as a no-argument callable."""
    import tempfile

    import torch

    from bench.vlm_infer import hf_tiny_llava
    from c2a_jax.models.llava import CLIP_MEAN, CLIP_STD

    with tempfile.TemporaryDirectory() as tmp:
        model = hf_tiny_llava(tok, tmp, image_size, patch_size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    ids = torch.tensor(batch["tokens"], dtype=torch.long)
    mask = torch.tensor(batch["input_mask"], dtype=torch.long)
    labels = torch.where(torch.tensor(batch["mask_loss"]), ids, torch.full_like(ids, -100))
    images = batch["images"][:, 0].astype(np.float32) / 255.0
    pixels = torch.tensor(
        ((images - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(0, 3, 1, 2), dtype=torch.float32
    )

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, labels=labels)
        out.loss.backward()
        optimizer.step()

    return step


def paper_config(layers: int = 0, batch: int = 8, overrides: dict | None = None):
    """configs/vlm/llava_phi3_mini.py with `batch` rows, the tiny tokenizer (ids fit Phi-3's
    vocabulary; throughput does not depend on the text), optionally `layers` deep, and any
    ``{"section.key": value}`` overrides (tests shrink the widths)."""
    from c2a_jax.config import load_config_file
    from c2a_jax.data import tokenizer as tokenizer_lib
    from c2a_jax.train.loop import with_defaults

    config = load_config_file(os.path.join(ROOT, "configs", "vlm", "llava_phi3_mini.py"))
    config.data.tokenizer = tokenizer_lib.TINY
    config.data.dataset_dir = "(synthetic episodes)"
    config = with_defaults(config)
    config.train.batch_size = batch
    config.data.template = "plain"
    if layers:
        config.model.text_layers = layers
        config.model.vision_layers = layers
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        config[section][name] = value
    return config


def paper_flops(llava, params, rows: int, seq_len: int, frozen_vision: bool) -> dict:
    """Model FLOPs of one training step, by term (see the module docstring)."""
    from flax import nnx

    from c2a_jax.train.metrics import TransformerFlops, matmul_param_count

    flat = {"/".join(str(k) for k in path): leaf for path, leaf in nnx.to_flat_state(params)}
    vision = {k: v for k, v in flat.items() if k.startswith("vision_tower/")}
    vision_n = matmul_param_count({k: v.get_value() for k, v in vision.items()})
    total_n = matmul_param_count({k: v.get_value() for k, v in flat.items()})
    v, t = llava.vision, llava.text
    used = [i % (v.num_hidden_layers + 1) for i in llava.feature_layers]  # hidden state i = after i layers
    layers_used = max(used)
    patches = (v.image_size // v.patch_size) ** 2 + 1  # + class token
    per_layer = vision_n / max(v.num_hidden_layers, 1)  # the patch embedding is small beside a layer
    passes = 2.0 if frozen_vision else 6.0
    vision_dense = passes * per_layer * layers_used * patches * rows
    vision_attention = passes * 2.0 * layers_used * v.hidden_size * patches * patches * rows
    text = TransformerFlops(params=total_n - vision_n, layers=t.num_hidden_layers, width=t.hidden_size,
                            seq_len=seq_len)  # fmt: skip
    decoder = text.per_token * rows * seq_len
    return {
        "decoder_projector_per_token": text.terms(),
        "decoder_projector": decoder,
        "vision_dense": vision_dense,
        "vision_attention": vision_attention,
        "per_step": decoder + vision_dense + vision_attention,
        "params_decoder_projector": total_n - vision_n,
        "params_vision_tower": vision_n,
        "vision_layers_run": layers_used,
    }


def paper(batch: int, steps: int, layers: int = 0, overrides: dict | None = None) -> dict:
    """Tokens/s and MFU of the paper-size LLaVA's training step on this host's devices."""
    import jax
    from flax import nnx

    from c2a_jax.data import tokenizer as tokenizer_lib
    from c2a_jax.data import vlm
    from c2a_jax.data.synthetic import make_episode
    from c2a_jax.models.llava import LlavaForConditionalGeneration
    from c2a_jax.parallel import distributed
    from c2a_jax.parallel import rules as rules_lib
    from c2a_jax.parallel.mesh import make_mesh
    from c2a_jax.train.ema import EmaConfig
    from c2a_jax.train.loop import _setup
    from c2a_jax.train.metrics import peak_flops_per_device
    from c2a_jax.train.step import batch_shardings, jit_train_step, make_train_step
    from c2a_jax.train.vlm_loss import make_loss_fn
    from c2a_jax.train.vlm_task import example_config, llava_config, vlm_tokenizer

    config = paper_config(layers, batch, overrides)
    tokenizer = tokenizer_lib.load_tokenizer(str(config.data.tokenizer))
    llava = llava_config(config.model, int(config.data.image_size), tokenizer)
    tok = vlm_tokenizer(config, llava, tokenizer)
    episodes = [make_episode(size=int(config.data.image_size), key=f"bench/paper/{i}") for i in range(2)]
    rng = np.random.default_rng(0)
    examples = [e for episode in episodes
                for e in vlm.episode_examples(episode, example_config(config.data), rng, ["green star", "red cube"])]  # fmt: skip
    rows = list(vlm.pack_rows([tok(examples[i % len(examples)]) for i in range(batch)], tok.max_length, 1,
                              tokenizer.pad_id))  # fmt: skip
    host_batch = {k: v for k, v in vlm.stack_rows(rows).items() if k != "num_images"}

    def model_fn(rngs):
        return LlavaForConditionalGeneration(llava, rngs=rngs)

    mesh = make_mesh(config.mesh)
    rules = rules_lib.normalize_rules(config.sharding.rules)
    optimizer, init_fn, graphdef, key, abstract, shardings = _setup(config, model_fn, mesh)
    state = jax.jit(init_fn, out_shardings=shardings)(key)
    batch_sh = batch_shardings(host_batch, distributed.batch_sharding(mesh, rules))
    step = make_train_step(graphdef, make_loss_fn(str(config.model.prefix_attention)), optimizer,
                           batch_sharding=distributed.batch_sharding(mesh, rules),
                           ema=EmaConfig.from_config(config.train))  # fmt: skip
    step_fn = jit_train_step(step, shardings, batch_sh)
    device_batch = jax.device_put(host_batch, batch_sh)
    start = time.perf_counter()
    state, metrics = step_fn(state, device_batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step_fn(state, device_batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    frozen = any(p.startswith("vision_tower") for p in config.train.freeze)
    flops = paper_flops(llava, nnx.state(abstract.params), batch, tok.max_length, frozen)
    peak = peak_flops_per_device()
    devices = jax.device_count()
    achieved = flops["per_step"] / step_s
    return {
        "model": "LLaVA-Phi-3-mini (configs/vlm/llava_phi3_mini.py), random weights",
        "device": jax.devices()[0].device_kind,
        "devices": devices,
        "rows": batch,
        "seq_len": tok.max_length,
        "real_tokens_per_step": int(host_batch["input_mask"].sum()),
        "compile_and_first_step_s": round(compile_s, 1),
        "step_ms": round(step_s * 1e3, 1),
        "tokens_per_s": round(batch * tok.max_length / step_s, 1),
        "tokens_per_s_per_device": round(batch * tok.max_length / step_s / devices, 1),
        "model_flops_per_s": achieved,
        "peak_flops_per_device": peak,
        "mfu": round(achieved / (peak * devices), 4) if peak else None,
        "flops": flops,
        "loss": float(metrics["loss"]),
        "dtype": str(config.model.dtype),
        "remat": bool(llava.text.remat),  # as the decoder was built (the config's, through llava_config)
        "remat_policy": llava.text.remat_policy or "",
        "reference": "issue #6 goal: MFU >= 0.40; MaxText Llama2-7B on H100: about 0.50 (published, not this run)",
    }


def time_side(side: str, args) -> dict:
    """Median seconds per step of one side, alone in this process, on its two batches (timed in
    blocks): ours on the padded and on the packed rows; transformers on the padded rows and on
    them cut to the longest example (what its default collator makes)."""
    batch, tok = pipeline_batch(args.batch_size, args.max_length, args.image_size, args.patch_size)
    size = (tok, args.image_size, args.patch_size)
    if side == "ours":
        packed, _ = pipeline_batch(args.batch_size, args.max_length, args.image_size, args.patch_size, args.pack)
        a, b = block_medians(ours(batch, *size, args.logits_at), ours(packed, *size, args.logits_at), args.steps)
        return {"padded": a, "packed": b}
    longest = int(batch["input_mask"].sum(1).max())
    trimmed = {k: (v[:, :longest] if v.ndim == 2 and v.shape[1] == args.max_length else v) for k, v in batch.items()}
    a, b = block_medians(transformers_step(batch, *size), transformers_step(trimmed, *size), args.steps)
    return {"padded": a, "padded_to_longest": b}


def _run_side(side: str, argv: list[str] | None) -> dict:
    """`time_side` in a fresh process of this script (same arguments), its figures back."""
    cmd = [sys.executable, os.path.abspath(__file__), *(sys.argv[1:] if argv is None else argv), "--side", side]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{side} side failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.rsplit("SIDE", 1)[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--patch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--pack", type=int, default=4, help="images per row of the packed variant (ours only)")
    ap.add_argument(
        "--logits-at",
        choices=("answers", "all"),
        default="answers",
        help="ours: LM head at each row's answer tokens only (train.loss_tokens_per_row) or everywhere",
    )
    ap.add_argument("--rounds", type=int, default=3, help="processes per side, alternating (the figures' medians)")
    ap.add_argument("--side", choices=("ours", "transformers"), help=argparse.SUPPRESS)  # a round's child
    ap.add_argument("--paper", action="store_true", help="the paper-size LLaVA on this host's devices (GPU)")
    ap.add_argument("--paper-batch", type=int, default=8, help="rows of 1024 tokens per step (--paper)")
    ap.add_argument("--paper-layers", type=int, default=0, help="decoder and vision layers (--paper; 0: all)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        ap.error(f"--steps and --rounds must be >= 1, got {args.steps} and {args.rounds}")
    if args.paper:
        print(json.dumps({"bench": "vlm_train_paper", **paper(args.paper_batch, args.steps, args.paper_layers),
                          "config": vars(args)}, indent=2))  # fmt: skip
        return 0
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.side:
        print("SIDE" + json.dumps(time_side(args.side, args)))
        return 0
    batch, tok = pipeline_batch(args.batch_size, args.max_length, args.image_size, args.patch_size)
    packed, _ = pipeline_batch(args.batch_size, args.max_length, args.image_size, args.patch_size, args.pack)
    real = int(batch["input_mask"].sum())
    assert int(packed["input_mask"].sum()) == real  # the same examples, fewer rows
    rounds = []
    for r in range(args.rounds):  # each side alone in its own process, in turn
        sides = ("ours", "transformers") if r % 2 == 0 else ("transformers", "ours")
        rounds.append({side: _run_side(side, argv) for side in sides})
        print(f"round {r + 1}/{args.rounds}: " + json.dumps(rounds[-1]), file=sys.stderr, flush=True)

    def med(side, key):
        return statistics.median(x[side][key] for x in rounds)

    def ms(seconds):
        return round(seconds * 1e3, 1)

    t_ours, t_hf = med("ours", "padded"), med("transformers", "padded")
    t_packed, t_hf_longest = med("ours", "packed"), med("transformers", "padded_to_longest")
    # the same-tensor pair once more in this one process, in blocks (bench/timing.py)
    s_ours, s_hf = block_medians(ours(batch, tok, args.image_size, args.patch_size, args.logits_at),
                                 transformers_step(batch, tok, args.image_size, args.patch_size), args.steps)  # fmt: skip
    import torch

    result = {
        "real_tokens_per_batch": real,
        "packed_rows": int(packed["tokens"].shape[0]),
        "longest_example_tokens": int(batch["input_mask"].sum(1).max()),
        "ours_step_ms": ms(t_ours),
        "transformers_step_ms": ms(t_hf),
        "ours_tokens_per_s": round(real / t_ours, 1),
        "transformers_tokens_per_s": round(real / t_hf, 1),
        "speedup": round(t_hf / t_ours, 2),
        "speedup_per_round": [round(x["transformers"]["padded"] / x["ours"]["padded"], 2) for x in rounds],
        "ours_packed_step_ms": ms(t_packed),
        "ours_packed_tokens_per_s": round(real / t_packed, 1),
        "packed_speedup": round(t_hf / t_packed, 2),
        "transformers_padded_to_longest_step_ms": ms(t_hf_longest),
        "packed_vs_padded_to_longest_speedup": round(t_hf_longest / t_packed, 2),
        "same_process": {
            "ours_step_ms": ms(s_ours),
            "transformers_step_ms": ms(s_hf),
            "speedup": round(s_hf / s_ours, 2),
        },
        "rounds_ms": [{side: {k: ms(v) for k, v in times.items()} for side, times in x.items()} for x in rounds],
        "loss_tokens_per_row": [loss_tokens_per_row(b, args.logits_at) for b in (batch, packed)],
        "torch_threads": torch.get_num_threads(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),  # both sides, every process
        "config": vars(args),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    reexec_with_huge_page_malloc()  # XLA's large CPU buffers on huge pages (c2a_jax/host_memory.py)
    sys.exit(main())
