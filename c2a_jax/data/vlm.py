"""The VLM's training examples: LLaVA-style (image, question) -> answer, tokenised and masked.

Why (paper section 4.2): the code-writing VLM answers, at every step, "which robot-API call is
running?" given the base-camera image, the task prompt and its memory of past key-steps, and
optionally the request "Please give a keystep reply" (then the answer is the running call's plain
key-step line even on a step where the oracle label is its commented form). A configured share of
examples are the grid questions of the auxiliary detection loss (`c2a_jax.data.grid`).

Text layout (spec 6.6, our `<image>` first as in the converter's JSON)::

    question = "<image>\\n<prompt>\\nPast actions:\\n<memory joined with '; '>[\\nPlease give a keystep reply]"
    answer   = "<code>"

Tokens follow big_vision's prefix-LM scheme: ``[bos] image-tokens question-tokens | answer-tokens eos``
with ``mask_ar`` 0 on the prefix (full attention among prefix tokens) and 1 on the suffix
(causal), and the loss on the suffix only. The ``<image>`` placeholder is expanded into
``num_image_tokens`` copies of the image token id, which the LLaVA model replaces with projected
vision features (the transformers 5 convention). Batches are fixed-length: padded, one example
per row, or packed, several examples per row with ``segment_ids`` and per-segment ``positions``
(attention never crosses segments). Next-token targets are precomputed: ``targets[i] =
tokens[i + 1]`` with ``target_mask[i]`` true where token i + 1 is a loss token of the same
example, so a train step never shifts anything itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from c2a_jax.data.grid import MISSING, sample_grid_questions
from c2a_jax.data.iterators import batched, shuffle_buffer
from c2a_jax.data.labels import episode_labels, shift_labels
from c2a_jax.data.rename import rename_map, substitute, train_pool
from c2a_jax.data.tokenizer import TextTokenizer

KEYSTEP_REQUEST = "Please give a keystep reply"
IMAGE_PLACEHOLDER = "<image>"
PAST_ACTIONS = "Past actions:"

# Chat templates around the question and the answer: (before the question, between question and
# answer, after the answer before EOS). "plain" suits the tiny tokenizer; "phi3" is LLaVA-Phi-3's.
TEMPLATES: dict[str, tuple[str, str, str]] = {
    "plain": ("", "\n", ""),
    "phi3": ("<|user|>\n", "<|end|>\n<|assistant|>\n", "<|end|>"),
}


def code_question(prompt: str, memory: Sequence[str], keystep_request: bool = False) -> str:
    """The question of a code example (and of inference): image, prompt, memory, optional request."""
    text = f"{IMAGE_PLACEHOLDER}\n{prompt}\n{PAST_ACTIONS}\n{'; '.join(memory)}"
    return f"{text}\n{KEYSTEP_REQUEST}" if keystep_request else text


@dataclasses.dataclass(frozen=True)
class VlmExample:
    """One training example before tokenisation. `memory` is kept as a list so that a too-long
    example can drop its oldest entries; `prompt` is None for grid questions (`question` is final)."""

    image: np.ndarray  # (S, S, 3) uint8, the base camera
    answer: str
    kind: str  # "code", "keystep" or a grid question kind
    prompt: str | None = None
    memory: tuple[str, ...] = ()
    question: str | None = None
    source: str = ""  # "<episode key>#<step>", for error messages and debugging

    def text(self, drop_memory: int = 0) -> str:
        if self.prompt is None:
            return f"{IMAGE_PLACEHOLDER}\n{self.question}"
        return code_question(self.prompt, self.memory[drop_memory:], self.kind == "keystep")


def _grid_objects(episode: dict[str, Any], t: int) -> list[tuple[str, tuple[int, int] | None]]:
    names = episode["actor_names"]
    grid = episode["actor_grid_positions"][t]
    out = []
    for name, pos in zip(names, grid, strict=False):
        p = (int(pos[0]), int(pos[1]))
        out.append((name, None if p == MISSING else p))
    return out


@dataclasses.dataclass(frozen=True)
class VlmExampleConfig:
    """How examples are drawn from an episode (see `configs/vlm/*.py`, ``data``)."""

    level: str = "fine"
    keystep_request_fraction: float = 0.5
    grid_question_fraction: float = 0.25
    shift_k: int = 0  # paper 5.2: shift subtask boundaries by up to k steps (0 = off)
    steps_per_episode: int | None = None  # None: every step once; else a random subset of this size
    rename_objects_fraction: float = 0.0  # share of code examples with object names swapped (`rename`)
    late_keystep_fraction: float = 0.0  # share of mid-call code examples asked with the call not yet in memory


def episode_examples(
    episode: dict[str, Any], config: VlmExampleConfig, rng: np.random.Generator, object_names: Sequence[str]
) -> list[VlmExample]:
    """Examples from one episode: per chosen step, a grid question with probability
    ``grid_question_fraction`` (when the step has one), else a code example whose prompt variant is
    drawn uniformly and which asks for the key-step with probability ``keystep_request_fraction``.

    A key-step request is always asked at a key-step of the episode (the chosen step when it is one,
    else a key-step drawn uniformly): the memory then holds the calls before it and the answer is
    the call that starts there, as in ClevrSkills' conversation points (spec 6.2). Asked in the
    middle of a call, the request would have two answers for one memory (the running call, or the
    next one once the image shows it finished), and VLM+Oracle, which asks right after a call
    finished, would learn to repeat the call it just ran.

    With ``late_keystep_fraction`` > 0 (not in the paper), that share of the code examples drawn at a
    step after a call's key-step is asked with the memory from *before* the call (the call not yet
    in it), and answers with the call's plain line: a late key-step. Queried every step, a VLM that
    missed the exact step a call began (the images around a subtask boundary look alike, and the
    boundary step is one in ten) otherwise meets a memory it never saw with that image, answers
    with the commented previous call, and never advances. This removes that dead end; whether the
    VLM then writes the call at the right step depends on what it can see (at the demo's scale it
    cannot: docs/dp_investigation.md), so the configs leave it at 0.

    With ``rename_objects_fraction`` > 0, that share of code examples has the episode's object
    names swapped in the prompt, memory and answer (`c2a_jax.data.rename`; not in the paper)."""
    labels = episode_labels(episode, config.level)
    if config.shift_k:
        labels = shift_labels(labels, config.shift_k, rng)
    keysteps = [i for i, label in enumerate(labels) if label.is_keystep]
    steps = np.arange(len(labels))
    if config.steps_per_episode is not None and config.steps_per_episode < len(steps):
        steps = np.sort(rng.choice(steps, size=config.steps_per_episode, replace=False))
    prompts = episode["prompts"] or [episode["language_instruction"]]
    out: list[VlmExample] = []
    for t in steps:
        t = int(t)
        if rng.random() < config.grid_question_fraction:
            qs = sample_grid_questions(_grid_objects(episode, t), object_names, rng, 1, image_token=None)
            if qs:
                out.append(VlmExample(episode["image"][t], qs[0].answer, qs[0].kind, question=qs[0].question,
                                      source=f"{episode.get('key', '?')}#{t}"))  # fmt: skip
                continue
        request = rng.random() < config.keystep_request_fraction
        if request and not labels[t].is_keystep and keysteps:
            t = keysteps[int(rng.integers(len(keysteps)))]
        image, label = episode["image"][t], labels[t]
        source = f"{episode.get('key', '?')}#{t}"
        answer = label.instruction if request else label.code
        prompt = prompts[int(rng.integers(len(prompts)))]
        kind = "keystep" if request else "code"
        memory = label.memory
        if not request and not label.is_keystep and config.late_keystep_fraction:
            if rng.random() < config.late_keystep_fraction:
                memory, answer = labels[keysteps[label.segment]].memory, label.instruction
        if config.rename_objects_fraction and rng.random() < config.rename_objects_fraction:
            mapping = rename_map(episode.get("actor_names") or [], train_pool(), rng)
            prompt, answer = substitute(prompt, mapping), substitute(answer, mapping)
            memory = tuple(substitute(m, mapping) for m in memory)
        out.append(VlmExample(image, answer, kind, prompt=prompt, memory=memory, source=source))
    return out


# ----------------------------------------------------------------------------------------------
# Tokenisation and masks


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    tokens: np.ndarray  # (n,) int32
    mask_ar: np.ndarray  # (n,) bool: False on the prefix, True on the suffix
    mask_loss: np.ndarray  # (n,) bool: True on answer tokens and EOS
    image: np.ndarray
    dropped_memory: int = 0


class ExampleTooLong(ValueError):
    """An example does not fit `max_length` even with its whole memory dropped."""


class VlmTokenizer:
    """Turns `VlmExample`s into token arrays with big_vision's masks (see the module docstring)."""

    def __init__(self, tokenizer: TextTokenizer, num_image_tokens: int, max_length: int, template: str = "plain"):
        if template not in TEMPLATES:
            raise ValueError(f"unknown chat template {template!r}; expected one of {sorted(TEMPLATES)}")
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
        self.tok = tokenizer
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.template = TEMPLATES[template]

    def prefix_ids(self, question: str) -> list[int]:
        """Token ids of a question (as `code_question` writes it), image placeholder expanded."""
        before, between, _ = self.template
        text = before + question + between
        if IMAGE_PLACEHOLDER not in text:
            raise ValueError(f"question has no {IMAGE_PLACEHOLDER} placeholder: {question[:80]!r}")
        head, tail = text.split(IMAGE_PLACEHOLDER, 1)
        if IMAGE_PLACEHOLDER in tail:
            raise ValueError("a question holds one image")
        ids = [] if self.tok.bos_id is None else [self.tok.bos_id]
        ids += self.tok.encode(head) + [self.tok.image_id] * self.num_image_tokens + self.tok.encode(tail)
        return ids

    def suffix_ids(self, answer: str) -> list[int]:
        return self.tok.encode(answer + self.template[2]) + [self.tok.eos_id]

    def __call__(self, example: VlmExample) -> TokenizedExample:
        suffix = self.suffix_ids(example.answer)
        for drop in range(len(example.memory) + 1):
            prefix = self.prefix_ids(example.text(drop))
            if len(prefix) + len(suffix) <= self.max_length:
                n, m = len(prefix), len(suffix)
                tokens = np.asarray(prefix + suffix, np.int32)
                mask_ar = np.r_[np.zeros(n, bool), np.ones(m, bool)]
                return TokenizedExample(tokens, mask_ar, mask_ar.copy(), example.image, drop)
        raise ExampleTooLong(
            f"{example.source}: {len(prefix) + len(suffix)} tokens without memory > max_length {self.max_length}"
        )


def attention_mask(input_mask, mask_ar, segment_ids=None, xp=np):
    """(B, L, L) boolean: query i may attend key j (big_vision's ``make_attn_mask``, with segments).

    ``mask_ar`` 0 marks tokens that attend everything up to the next autoregressive token (the
    prefix), 1 marks causal tokens. `xp` is numpy or jax.numpy.
    """
    cumsum = xp.cumsum(mask_ar.astype(xp.int32), axis=-1)
    allowed = cumsum[:, None, :] <= cumsum[:, :, None]
    valid = input_mask[:, None, :] & input_mask[:, :, None]
    mask = allowed & valid
    if segment_ids is not None:
        mask = mask & (segment_ids[:, None, :] == segment_ids[:, :, None])
    return mask


def _row(examples: Sequence[TokenizedExample], length: int, images_per_row: int, pad_id: int) -> dict[str, np.ndarray]:
    tokens = np.full(length, pad_id, np.int32)
    mask_ar = np.zeros(length, bool)
    mask_loss = np.zeros(length, bool)
    segment_ids = np.zeros(length, np.int32)
    positions = np.zeros(length, np.int32)
    image = examples[0].image
    images = np.zeros((images_per_row, *image.shape), image.dtype)
    at = 0
    for k, ex in enumerate(examples):
        n = len(ex.tokens)
        tokens[at : at + n] = ex.tokens
        mask_ar[at : at + n] = ex.mask_ar
        mask_loss[at : at + n] = ex.mask_loss
        segment_ids[at : at + n] = k + 1
        positions[at : at + n] = np.arange(n)
        images[k] = ex.image
        at += n
    targets = np.r_[tokens[1:], pad_id].astype(np.int32)
    same = np.r_[segment_ids[1:] == segment_ids[:-1], False]
    target_mask = np.r_[mask_loss[1:], False] & same & (segment_ids > 0)
    return {
        "tokens": tokens,
        "input_mask": segment_ids > 0,
        "mask_ar": mask_ar,
        "mask_loss": mask_loss,
        "segment_ids": segment_ids,
        "positions": positions,
        "targets": targets,
        "target_mask": target_mask,
        "images": images,
        "num_images": np.int32(len(examples)),
    }


PACK_OPEN_ROWS = 8  # rows that first-fit packing keeps open (1: greedy in arrival order)


def pack_rows(
    examples: Iterable[TokenizedExample],
    length: int,
    images_per_row: int,
    pad_id: int,
    open_rows: int = PACK_OPEN_ROWS,
) -> Iterator[dict[str, np.ndarray]]:
    """Rows of `length` tokens (no example is split), packed first-fit: each example goes into the
    first of up to `open_rows` open rows with room for its tokens and its image. A row is emitted
    as soon as it holds `images_per_row` examples, or, when an example fits no open row and
    `open_rows` are open, the fullest one goes. With ``images_per_row == 1`` this is plain padding,
    one example per row in arrival order; ``open_rows=1`` is greedy packing in arrival order (on
    the benchmark's 16 examples first fit needs 7 rows of 256 where greedy needs 8)."""
    if open_rows < 1:
        raise ValueError(f"open_rows must be >= 1, got {open_rows}")
    rows: list[list[TokenizedExample]] = []
    used: list[int] = []
    for ex in examples:
        n = len(ex.tokens)
        if n > length:
            raise ExampleTooLong(f"example of {n} tokens > row length {length}")
        i = next((i for i in range(len(rows)) if used[i] + n <= length), None)
        if i is None:
            if len(rows) == open_rows:
                full = max(range(len(rows)), key=used.__getitem__)
                yield _row(rows.pop(full), length, images_per_row, pad_id)
                used.pop(full)
            rows.append([])
            used.append(0)
            i = len(rows) - 1
        rows[i].append(ex)
        used[i] += n
        if len(rows[i]) == images_per_row:
            yield _row(rows.pop(i), length, images_per_row, pad_id)
            used.pop(i)
    for row in rows:
        yield _row(row, length, images_per_row, pad_id)


def stack_rows(rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


# ----------------------------------------------------------------------------------------------
# The pipeline


def default_object_names() -> list[str]:
    """Every object name our scenes can hold (colour x shape): the pool of absent objects that
    the grid questions ask about."""
    from c2a_jax.sim.objects import ALL_SHAPES, COLOURS

    return sorted(f"{colour} {shape}" for colour in COLOURS for shape in ALL_SHAPES)


@dataclasses.dataclass
class PipelineCounters:
    examples: int = 0
    too_long: int = 0  # dropped: did not fit even without memory
    memory_dropped: int = 0  # fitted after dropping some oldest memory entries
    rows: int = 0


def vlm_batches(
    episodes: Iterable[dict[str, Any]],
    config: VlmExampleConfig,
    tokenizer: VlmTokenizer,
    batch_size: int,
    rng: np.random.Generator,
    *,
    images_per_row: int = 1,
    shuffle_size: int = 1024,
    object_names: Sequence[str] | None = None,
    counters: PipelineCounters | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `batch_size` rows of ``tokenizer.max_length`` tokens from a stream of episodes
    (`c2a_jax.data.rlds.rlds_episodes`): examples are mixed in a shuffle buffer, tokenised, then
    padded (``images_per_row=1``) or packed (> 1). Examples too long even without memory are
    counted in `counters` and dropped."""
    names = list(object_names) if object_names is not None else default_object_names()
    counters = counters if counters is not None else PipelineCounters()

    def examples():
        for episode in episodes:
            yield from episode_examples(episode, config, rng, names)

    def tokenized():
        for example in shuffle_buffer(examples(), shuffle_size, rng):
            try:
                out = tokenizer(example)
            except ExampleTooLong:
                counters.too_long += 1
                continue
            counters.examples += 1
            counters.memory_dropped += out.dropped_memory > 0
            yield out

    def counted(rows):
        for row in rows:
            counters.rows += 1
            yield row

    rows = pack_rows(tokenized(), tokenizer.max_length, images_per_row, tokenizer.tok.pad_id)
    return batched(counted(rows), batch_size, stack_rows)
