"""The code writer: image + task prompt + memory (+ key-step request) -> one line of robot-API code.

Why (paper 4.2): at inference the VLM is asked at every control step which call is running; its
memory buffer holds the key-step lines it wrote so far and is updated *only* by key-steps
(uncommented code), and the early stop cuts generation short when the answer is evidently the
commented last key-step ("# <line>"), which is what most steps are. `generate_code` is the one
call a controller needs; `CodeWriter.step` also keeps the memory for an episode.

Prompts are built exactly as the training pipeline builds them (`c2a_jax.data.vlm`), left-padded
to a bucket of 32 tokens (few recompilations), with full attention inside the prompt when the
model was trained prefix-LM style (big_vision; ``prefix_attention="full"``) or causal attention
for a model trained or imported causally (transformers' LLaVA checkpoints).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from c2a_jax.codeapi import MemoryBuffer, comment
from c2a_jax.data.tokenizer import TextTokenizer
from c2a_jax.data.vlm import TEMPLATES, VlmTokenizer, code_question
from c2a_jax.infer.decode import DecodeResult, generate, token_tables
from c2a_jax.infer.resize import resize_images
from c2a_jax.models.phi3 import decode_step

BUCKET = 32


def llava_prompt_forward(model, tokens, images, mask, cache):
    """Prefill of a LLaVA model: the prompt with its image through the language model's cache."""
    return model(tokens, images, attention_mask=mask, cache=cache)


def llava_decode_step(model, token, cache):
    return decode_step(model.language_model, cache, token)


def prompt_mask(real: np.ndarray, total: int, prefix_attention: str) -> np.ndarray:
    """The prefill mask for left-padded prompts: (B, T) padding flags for causal attention, or a
    (B, T, total) visibility mask over cache slots with full attention among real prompt tokens."""
    if prefix_attention == "causal":
        return real
    if prefix_attention != "full":
        raise ValueError(f"prefix_attention must be 'full' or 'causal', got {prefix_attention!r}")
    b, t = real.shape
    mask = np.zeros((b, t, total), bool)
    mask[:, :, :t] = real[:, :, None] & real[:, None, :]
    return mask


class CodeWriter:
    """Batched code generation with a LLaVA model (see the module docstring)."""

    def __init__(
        self,
        model,
        tokenizer: TextTokenizer,
        *,
        template: str = "plain",
        max_new_tokens: int = 128,
        early_stop_k: int = 0,
        stop_at_newline: bool = False,
        prefix_attention: str = "full",
    ):
        self.config = model.config
        self.graphdef, self.state = nnx.split(model)
        self.tok = tokenizer
        self.vt = VlmTokenizer(tokenizer, model.config.image_tokens, max_length=1 << 30, template=template)
        self.template_end = TEMPLATES[template][2]
        self.max_new_tokens = max_new_tokens
        self.early_stop_k = early_stop_k
        self.prefix_attention = prefix_attention
        self.stop_at_newline = stop_at_newline
        self.stop_table, self.char_table = token_tables(tokenizer, stop_at_newline)
        self.last_result: DecodeResult | None = None

    def _prompts(self, prompts, memories, requests) -> tuple[np.ndarray, np.ndarray]:
        ids = [self.vt.prefix_ids(code_question(p, m, r)) for p, m, r in zip(prompts, memories, requests, strict=True)]
        t = -(-max(len(i) for i in ids) // BUCKET) * BUCKET
        tokens = np.full((len(ids), t), self.tok.pad_id, np.int32)
        real = np.zeros((len(ids), t), bool)
        for row, seq in enumerate(ids):
            tokens[row, t - len(seq) :] = seq
            real[row, t - len(seq) :] = True
        return tokens, real

    def _targets(self, memories) -> tuple[np.ndarray, np.ndarray]:
        lasts = [comment(m[-1]) if m else "" for m in memories]
        ids = [self.tok.encode(text) if text else [] for text in lasts]
        # Bucketed like the prompt: the decoding program is compiled once per width, not once per
        # length of the last key-step (which changes with every new call in VLM+DP).
        width = -(-max(1, max(len(i) for i in ids)) // BUCKET) * BUCKET
        target = np.full((len(ids), width), -1, np.int32)
        for row, seq in enumerate(ids):
            target[row, : len(seq)] = seq
        return target, np.array([len(text) for text in lasts], np.int32)

    def generate_batch(
        self,
        images: np.ndarray,
        prompts: Sequence[str],
        memories: Sequence[Sequence[str]],
        keystep_requests: Sequence[bool] | None = None,
        temperature: float | Sequence[float] = 0.0,
        seeds: int | Sequence[int] | None = None,
    ) -> list[str]:
        """One code answer per row: `images` uint8 (B, H, W, 3) (resized to the model's size as training
        resized them), a prompt and a memory per row. Greedy (the paper's decoding) unless a row's
        `temperature` is above 0: that row samples, reproducibly for its `seeds` entry."""
        images = resize_images(images, self.config.vision.image_size)
        requests = list(keystep_requests) if keystep_requests is not None else [False] * len(prompts)
        tokens, real = self._prompts(prompts, memories, requests)
        total = tokens.shape[1] + self.max_new_tokens
        mask = prompt_mask(real, total, self.prefix_attention)
        target, target_chars = self._targets(memories)
        result = generate(
            self.graphdef, self.state, tokens, forward=llava_prompt_forward, step=llava_decode_step,
            images=jnp.asarray(images, jnp.uint8), mask=jnp.asarray(mask), stop_table=self.stop_table,
            char_table=self.char_table, max_new_tokens=self.max_new_tokens, pad_id=self.tok.pad_id, target=target,
            target_chars=target_chars, early_k=self.early_stop_k, temperature=temperature, seeds=seeds,
        )  # fmt: skip
        self.last_result = result
        out = []
        for row, memory in enumerate(memories):
            if result.early[row]:
                out.append(comment(memory[-1]))
                continue
            text = self.tok.decode(result.tokens[row, : result.lengths[row]])
            if self.template_end and self.template_end in text:
                text = text.split(self.template_end, 1)[0]
            if self.stop_at_newline:
                text = text.split("\n", 1)[0]
            out.append(text)
        return out

    def generate_code(
        self,
        image: np.ndarray,
        prompt: str,
        memory: Sequence[str],
        keystep_request: bool = False,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> str:
        """The code for one image (H, W, 3) uint8, task prompt and memory of past key-steps (sampled
        with `seed` when `temperature` > 0)."""
        batch = np.asarray(image)[None], [prompt], [list(memory)], [keystep_request]
        return self.generate_batch(*batch, temperature=temperature, seeds=[seed])[0]

    def session(self, prompt: str) -> CodeWriterSession:
        return CodeWriterSession(self, prompt)


class CodeWriterSession:
    """One episode: the prompt and the memory buffer, updated by key-steps only."""

    def __init__(self, writer: CodeWriter, prompt: str):
        self.writer = writer
        self.prompt = prompt
        self.memory = MemoryBuffer()

    def step(self, image: np.ndarray, keystep_request: bool = False) -> str:
        code = self.writer.generate_code(image, self.prompt, self.memory.entries, keystep_request)
        self.memory.update(code)
        return code

    @property
    def cache_info(self) -> str:
        """What the low-level policy conditions on besides the code (paper Appendix E.3)."""
        return self.memory.cache_info()
