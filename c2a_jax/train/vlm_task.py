"""What `train_vlm.py` plugs into the shared loop: the LLaVA from the config, the per-process
batch stream from the RLDS dataset, the loss, and the exact-match evaluation.

Why a module: the entry point stays a thin command line, and tests can train the same way
without a dataset (`exact_match` and `llava_config` work on anything).

Config sections read besides the loop's (`c2a_jax.train.loop`): ``data`` (dataset_dir,
code_level, image_size, keystep_request_fraction, grid_question_fraction, shift_k, tokenizer,
template, max_length, images_per_row, shuffle_size) and ``model`` (vision_width, vision_layers,
vision_heads, patch_size, text_width, text_layers, text_heads, text_kv_heads, mlp_ratio, dtype,
remat, prefix_attention; optional: init_from, param_dtype, text_intermediate, vision_intermediate,
vocab_size, vision_feature_layer, lora_rank, lora_alpha, remat_policy; see `llava_config`), ``eval``
(examples, max_new_tokens) and ``train.loss_tokens_per_row`` (optional; `c2a_jax.train.vlm_loss`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from flax import nnx

from c2a_jax.config import config_value
from c2a_jax.data import rlds, vlm
from c2a_jax.data.normalization import load_statistics
from c2a_jax.data.tokenizer import TextTokenizer, load_tokenizer
from c2a_jax.models.clip import ClipVisionConfig
from c2a_jax.models.llava import LlavaConfig, LlavaForConditionalGeneration
from c2a_jax.models.phi3 import Phi3Config
from c2a_jax.train.vlm_loss import check_loss_tokens


def llava_config(model: Any, image_size: int, tokenizer: TextTokenizer) -> LlavaConfig:
    """The LLaVA a ``model`` config section describes, for `tokenizer`'s vocabulary.

    With ``model.init_from`` (a Hugging Face LLaVA directory) the architecture is that checkpoint's
    config.json and only the run-time options (dtype, param_dtype, remat, remat_policy, LoRA) come
    from the section. Otherwise: widths, depths and heads from the section; ``text_intermediate`` /
    ``vision_intermediate`` (0: ``mlp_ratio`` x width), ``vocab_size`` (0: the tokenizer's, rounded
    up to a multiple of 64), ``vision_feature_layer`` (-2, LLaVA's), ``remat_policy`` (a
    ``jax.checkpoint_policies`` name for the decoder's remat; empty: save nothing)."""
    dtype = str(config_value(model, "dtype", "float32"))
    param_dtype = str(config_value(model, "param_dtype", "float32"))
    remat = bool(config_value(model, "remat", False))
    text_options = dict(  # decoder-only run-time options: LoRA, what remat keeps
        lora_rank=int(config_value(model, "lora_rank", 0)), lora_alpha=float(config_value(model, "lora_alpha", 16.0)),
        remat_policy=str(config_value(model, "remat_policy", "") or "") or None,
    )  # fmt: skip
    init_from = str(config_value(model, "init_from", "") or "")
    if init_from:
        config_file = os.path.join(init_from, "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"model.init_from: no Hugging Face LLaVA config at {config_file}")
        with open(config_file, encoding="utf-8") as f:
            hf = json.load(f)
        llava = LlavaConfig.from_hf(hf, dtype=dtype, param_dtype=param_dtype, remat=remat, text_options=text_options)
        if llava.vision.image_size != int(image_size):
            raise ValueError(
                f"data.image_size is {image_size} but {init_from} is a {llava.vision.image_size}-pixel vision tower"
            )
        if tokenizer.image_id != llava.image_token_id:
            raise ValueError(
                f"the tokenizer's image token is {tokenizer.image_id}, {init_from}'s image_token_index "
                f"{llava.image_token_id}: use the checkpoint's own tokenizer (data.tokenizer)"
            )
        if tokenizer.vocab_size > llava.text.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} tokens, {init_from} only {llava.text.vocab_size}"
            )
        return llava
    mlp = int(model.mlp_ratio)
    vision_width, text_width = int(model.vision_width), int(model.text_width)
    vision = ClipVisionConfig(
        hidden_size=vision_width, intermediate_size=int(config_value(model, "vision_intermediate", 0)) or vision_width * mlp,
        num_hidden_layers=int(model.vision_layers), num_attention_heads=int(model.vision_heads),
        image_size=int(image_size), patch_size=int(model.patch_size), dtype=dtype, param_dtype=param_dtype,
        remat=remat,
    )  # fmt: skip
    vocab = (
        int(config_value(model, "vocab_size", 0)) or -(-tokenizer.vocab_size // 64) * 64
    )  # shardable, room for new tokens
    text = Phi3Config(
        vocab_size=vocab, hidden_size=text_width,
        intermediate_size=int(config_value(model, "text_intermediate", 0)) or text_width * mlp,
        num_hidden_layers=int(model.text_layers), num_attention_heads=int(model.text_heads),
        num_key_value_heads=int(model.text_kv_heads), max_position_embeddings=4096,
        original_max_position_embeddings=4096, pad_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id,
        eos_token_id=tokenizer.eos_id, dtype=dtype, param_dtype=param_dtype, remat=remat, **text_options,
    )  # fmt: skip
    return LlavaConfig(
        vision, text, tokenizer.image_id, vision_feature_layer=int(config_value(model, "vision_feature_layer", -2))
    )


def pretrained_params(model: Any, llava: LlavaConfig):
    """``init_params`` for the loop when ``model.init_from`` names a Hugging Face LLaVA: a callable
    reading its safetensors into {parameter path: host array} (adapters left to their init)."""
    init_from = str(config_value(model, "init_from", "") or "")
    if not init_from:
        return None

    def read() -> dict[str, np.ndarray]:
        from c2a_jax.convert.llava import llava_params_from_state_dict
        from c2a_jax.convert.safetensors_io import load_state_dict
        from c2a_jax.train.optimizer import param_path

        base = dataclasses.replace(llava, text=dataclasses.replace(llava.text, lora_rank=0))
        _, values = llava_params_from_state_dict(base, load_state_dict(init_from), source=init_from)
        return {param_path(path): array for path, array in values.items()}

    return read


def vlm_tokenizer(config: Any, llava: LlavaConfig, tokenizer: TextTokenizer) -> vlm.VlmTokenizer:
    return vlm.VlmTokenizer(tokenizer, llava.image_tokens, int(config.data.max_length), str(config.data.template))


def example_config(data: Any) -> vlm.VlmExampleConfig:
    return vlm.VlmExampleConfig(
        level=str(data.code_level),
        keystep_request_fraction=float(data.keystep_request_fraction),
        grid_question_fraction=float(data.grid_question_fraction),
        shift_k=int(config_value(data, "shift_k", 0)),
        rename_objects_fraction=float(config_value(data, "rename_objects_fraction", 0.0)),
        late_keystep_fraction=float(config_value(data, "late_keystep_fraction", 0.0)),
    )


def batch_stream(config: Any, tok: vlm.VlmTokenizer, process_index: int, process_count: int):
    """A factory of this process's batch iterator (deterministic given the seed: resumable)."""
    data = config.data
    global_batch = int(config.train.batch_size)
    if global_batch % process_count:
        raise ValueError(f"train.batch_size {global_batch} does not split over {process_count} processes")
    loss_tokens_per_row = int(config_value(config.train, "loss_tokens_per_row", 0))

    def make() -> Iterator[dict]:
        episodes = rlds.rlds_episodes(
            data.dataset_dir, "train", image_size=int(data.image_size), repeat=True, seed=int(config.seed),
            process_index=process_index, process_count=process_count,
        )  # fmt: skip
        rng = np.random.default_rng([int(config.seed), process_index])
        batches = vlm.vlm_batches(
            episodes, example_config(data), tok, global_batch // process_count, rng,
            images_per_row=int(data.images_per_row), shuffle_size=int(data.shuffle_size),
        )  # fmt: skip
        for batch in batches:
            check_loss_tokens(batch, loss_tokens_per_row)
            yield batch

    return make


def validation_examples(config: Any, n: int) -> list[vlm.VlmExample]:
    """Up to `n` code examples (no grid questions) from the ``val`` split, else from ``train``."""
    data = config.data
    builder = rlds.open_dataset(data.dataset_dir)
    split = "val" if "val" in builder.info.splits else "train"
    cfg = vlm.VlmExampleConfig(level=str(data.code_level), keystep_request_fraction=0.5, grid_question_fraction=0.0)
    rng = np.random.default_rng(int(config.seed) + 1)
    out: list[vlm.VlmExample] = []
    for episode in rlds.rlds_episodes(data.dataset_dir, split, image_size=int(data.image_size), shuffle=False,
                                      process_index=0, process_count=1):  # fmt: skip
        out += vlm.episode_examples(episode, cfg, rng, vlm.default_object_names())
        if len(out) >= n:
            break
    return out[:n]


def exact_match(
    model: LlavaForConditionalGeneration,
    tokenizer: TextTokenizer,
    examples: Sequence[vlm.VlmExample],
    *,
    template: str = "plain",
    prefix_attention: str = "full",
    max_new_tokens: int = 96,
    batch_size: int = 16,
) -> dict[str, float]:
    """Share of code examples whose greedily decoded answer equals the label exactly."""
    from c2a_jax.infer.code_writer import CodeWriter

    writer = CodeWriter(model, tokenizer, template=template, max_new_tokens=max_new_tokens,
                        prefix_attention=prefix_attention)  # fmt: skip
    hits = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        answers = writer.generate_batch(
            np.stack([e.image for e in chunk]), [e.prompt for e in chunk], [list(e.memory) for e in chunk],
            [e.kind == "keystep" for e in chunk],
        )  # fmt: skip
        hits += sum(a == e.answer for a, e in zip(answers, chunk, strict=True))
    return {"exact_match": hits / max(len(examples), 1), "examples": float(len(examples))}


def train_vlm(config: Any) -> dict[str, Any]:
    """Train the VLM described by `config` (see `configs/vlm/`)."""
    import jax

    from c2a_jax.config import write_resolved_config
    from c2a_jax.parallel import initialize
    from c2a_jax.train.loop import train
    from c2a_jax.train.metrics import TransformerFlops, matmul_param_count
    from c2a_jax.train.vlm_loss import batch_counts, make_loss_fn

    initialize(config)  # before any other JAX work
    if jax.process_index() == 0:  # first thing: a failed start still leaves its resolved config
        write_resolved_config(config, str(config.workdir))
    tokenizer = load_tokenizer(str(config.data.tokenizer))
    llava = llava_config(config.model, int(config.data.image_size), tokenizer)
    tok = vlm_tokenizer(config, llava, tokenizer)
    prefix_attention = str(config_value(config.model, "prefix_attention", "full"))
    evaluation = config_value(config, "eval", None)
    n_eval = int(config_value(evaluation, "examples", 0)) if evaluation is not None else 0
    examples = validation_examples(config, n_eval) if n_eval else []

    def model_fn(rngs: nnx.Rngs) -> LlavaForConditionalGeneration:
        return LlavaForConditionalGeneration(llava, rngs=rngs)

    def eval_fn(model, step: int) -> dict[str, float]:
        if not examples:
            return {}
        return exact_match(model, tokenizer, examples, template=str(config.data.template),
                           prefix_attention=prefix_attention,
                           max_new_tokens=int(config_value(evaluation, "max_new_tokens", 96)))  # fmt: skip

    text = llava.text
    abstract = nnx.eval_shape(lambda: model_fn(nnx.Rngs(0)))
    flops = TransformerFlops(
        params=matmul_param_count(nnx.state(abstract, nnx.Param)),  # vision tower and projector included
        layers=text.num_hidden_layers, width=text.hidden_size, seq_len=int(config.data.max_length),
    )  # fmt: skip
    try:
        statistics = load_statistics(rlds.open_dataset(config.data.dataset_dir).data_dir)
    except (FileNotFoundError, ValueError):
        statistics = {}
    return train(
        config,
        workdir=str(config.workdir),
        model_fn=model_fn,
        loss_fn=make_loss_fn(prefix_attention, int(config_value(config.train, "loss_tokens_per_row", 0))),
        make_batches=batch_stream(config, tok, jax.process_index(), jax.process_count()),
        eval_fn=eval_fn if examples else None,
        checkpoint_items={
            "tokenizer": tokenizer.reference(),
            "dataset_statistics": statistics,
        },
        count_fn=batch_counts,
        flops_per_token=flops.per_token,
        init_params=pretrained_params(config.model, llava),
    )


def load_trained_vlm(workdir: str, *, step: int | None = None):
    """``(model, tokenizer, config)`` of a `train_vlm.py` run's checkpoint (default: the latest):
    the architecture and tokenizer come from the checkpoint's own config, the weights are the
    trained parameters (the EMA average where the run kept one)."""
    import ml_collections

    from c2a_jax.train.loop import restore_checkpoint
    from c2a_jax.train.state import model_from_state

    config_file = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{workdir} is not a train_vlm.py work directory (no config.json)")
    with open(config_file, encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    tokenizer = load_tokenizer(str(config.data.tokenizer))
    llava = llava_config(config.model, int(config.data.image_size), tokenizer)
    state, graphdef, items = restore_checkpoint(
        workdir, lambda rngs: LlavaForConditionalGeneration(llava, rngs=rngs), step=step
    )
    return model_from_state(graphdef, state, ema=True), tokenizer, ml_collections.ConfigDict(items["config"])
