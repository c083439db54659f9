"""Text tokenizers for the VLM: a Hugging Face tokenizer from a local directory, or our tiny one.

Why: the paper-scale VLM reads Phi-3's tokenizer (LLaVA-Phi-3), which users hold on disk (no
downloads at run time). Tiny CPU configs would waste most of their parameters on Phi-3's 32k-row
embedding, so the project ships a small byte-level BPE tokenizer trained on our own prompts, code
labels and grid questions (`c2a_jax/data/assets/c2a_tiny/`). Byte-level means any text encodes
(unseen words fall back to bytes); training is reproducible: `python -m c2a_jax.data.tokenizer
train` rebuilds the shipped ``tokenizer.json`` byte for byte from the shipped ``corpus.txt``, and
``python -m c2a_jax.data.tokenizer corpus`` regenerates that corpus from simulator episodes.

Both kinds are wrapped in `TextTokenizer`, which names the ids the pipelines need (pad, bos, eos,
image) and encodes without adding special tokens: the pipeline places them itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

TINY = "c2a-tiny"
"""Name of the shipped tokenizer in configs (``data.tokenizer = "c2a-tiny"``)."""

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "c2a_tiny")
TINY_FILE = os.path.join(ASSETS, "tokenizer.json")
CORPUS_FILE = os.path.join(ASSETS, "corpus.txt")
TINY_VOCAB_SIZE = 1024
# Special tokens of the tiny tokenizer, in id order (ids 0..3).
TINY_SPECIALS = ("<pad>", "<s>", "</s>", "<image>")
IMAGE_TOKEN = "<image>"


@dataclasses.dataclass
class TextTokenizer:
    """A fast Hugging Face tokenizer and the special ids the VLM pipelines use."""

    hf: object  # transformers.PreTrainedTokenizerFast
    name: str
    pad_id: int
    bos_id: int | None
    eos_id: int
    image_id: int

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""
        return list(self.hf.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of many texts at once (the Rust tokenizer's batch path: much faster)."""
        if not texts:
            return []
        return [list(ids) for ids in self.hf(list(texts), add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def reference(self) -> dict:
        """What a checkpoint records to find this tokenizer again."""
        return {"name": self.name, "vocab_size": self.vocab_size, "pad_id": self.pad_id, "bos_id": self.bos_id,
                "eos_id": self.eos_id, "image_id": self.image_id}  # fmt: skip


def _special_id(hf, token: str | None) -> int | None:
    if token is None:
        return None
    ids = hf.convert_tokens_to_ids([token])
    return None if ids[0] is None or ids[0] == hf.unk_token_id and token != hf.unk_token else int(ids[0])


def load_tokenizer(spec: str, image_token: str = IMAGE_TOKEN) -> TextTokenizer:
    """`spec` is ``"c2a-tiny"`` (the shipped tokenizer) or a local directory holding a Hugging
    Face tokenizer (``tokenizer.json`` / ``tokenizer.model`` + config), e.g. LLaVA-Phi-3's.

    A tokenizer without `image_token` gets it added (the LLaVA processors do the same); one
    without a pad token pads with its EOS token.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if spec == TINY:
        if not os.path.exists(TINY_FILE):
            raise FileNotFoundError(
                f"the shipped tokenizer {TINY_FILE} is missing (python -m c2a_jax.data.tokenizer train)"
            )
        hf = PreTrainedTokenizerFast(tokenizer_file=TINY_FILE, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    else:
        if not os.path.isdir(spec):
            raise FileNotFoundError(
                f"tokenizer {spec!r}: expected {TINY!r} or a local directory with a Hugging Face tokenizer "
                "(weights and tokenizers are never downloaded at run time)"
            )
        try:
            hf = AutoTokenizer.from_pretrained(spec, local_files_only=True, use_fast=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load a tokenizer from {spec}: {e}") from e
    if _special_id(hf, image_token) is None:
        hf.add_special_tokens({"additional_special_tokens": [image_token]})
    eos = hf.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {spec} has no EOS token")
    pad = hf.pad_token_id if hf.pad_token_id is not None else eos
    return TextTokenizer(hf, spec, int(pad), hf.bos_token_id, int(eos), int(_special_id(hf, image_token)))


# ----------------------------------------------------------------------------------------------
# Training the tiny tokenizer


def train_tiny(corpus_file: str = CORPUS_FILE, vocab_size: int = TINY_VOCAB_SIZE) -> str:
    """A byte-level BPE tokenizer trained on `corpus_file` (one text per line); returns its JSON.

    Deterministic: the corpus is read in file order and the trainer is single-threaded here.
    """
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    with open(corpus_file, encoding="utf-8") as f:
        lines = [line.rstrip("\n").replace("\\n", "\n") for line in f if line.strip()]
    if not lines:
        raise ValueError(f"tokenizer corpus {corpus_file} is empty")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TINY_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    return tok.to_str(pretty=True)


# Episodes the corpus is made of: every task we simulate, several seeds each (labels only, no images).
CORPUS_TASKS = (
    ("Pick", {}),
    ("PlaceOnTop", {"spawn_at_gripper": True}),
    ("PlaceOnTop", {}),
    ("PlaceNextTo", {"spawn_at_gripper": True}),
    ("PlaceNextTo", {}),
    ("Touch", {}),
    ("Touch", {"topple": True}),
    ("Touch", {"push": True}),
    ("Rotate", {"num_actors": 3}),
    ("Push", {}),
)


def corpus_lines(seeds: Sequence[int] = range(6), progress: bool = True) -> list[str]:
    """Prompts, code labels (both levels), memory strings, cache infos and grid questions of oracle
    episodes of `CORPUS_TASKS`, deduplicated, in a stable order. Needs the simulator."""
    import gymnasium as gym
    import numpy as np

    import c2a_jax.sim.env  # noqa: F401  (registers ClevrSkills-v0)
    from c2a_jax.data.grid import grid_questions
    from c2a_jax.data.labels import LEVELS, step_labels
    from c2a_jax.data.vlm import code_question, default_object_names
    from c2a_jax.sim.rollout import record_oracle_episode

    names = default_object_names()
    seen: dict[str, None] = {}
    jobs = [(task, args, seed) for task, args in CORPUS_TASKS for seed in seeds]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="corpus episodes", unit="ep")
    envs: dict[str, object] = {}
    rng = np.random.default_rng(0)
    for task, args, seed in jobs:
        key = json.dumps([task, args], sort_keys=True)
        if key not in envs:
            envs[key] = gym.make("ClevrSkills-v0", task=task, task_args=args, image_size=32).unwrapped
        episode = record_oracle_episode(envs[key], seed, max_steps=600, images=False)
        meta = episode["meta"]
        for text in meta["natural_prompts"]:
            seen.setdefault(text)
        for level in LEVELS:
            for label in step_labels(meta, level):
                seen.setdefault(label.code)
                if label.is_keystep:  # whole questions: the template's words get their own tokens
                    prompt = meta["natural_prompts"][label.step % len(meta["natural_prompts"])]
                    seen.setdefault(code_question(prompt, label.memory, keystep_request=label.step % 2 == 1))
                if label.past_actions:
                    seen.setdefault(label.past_actions)
                seen.setdefault(label.cache_info)
        actors = [a["name"] for a in meta["actors"]]
        objects = [(n, (int(rng.integers(10)), int(rng.integers(10)))) for n in actors]
        for q in grid_questions(objects, names, rng, image_token=None):
            seen.setdefault(q.question)
            seen.setdefault(q.answer)
    for env in envs.values():
        env.close()
    return list(seen)


def write_corpus(lines: Sequence[str], path: str = CORPUS_FILE) -> None:
    """One text per line; newlines inside a text are stored as the two characters backslash-n."""
    from c2a_jax.fileio import atomic_write_text

    atomic_write_text(path, "".join(line.replace("\n", "\\n") + "\n" for line in lines))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m c2a_jax.data.tokenizer", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("corpus", help="regenerate corpus.txt from simulator episodes")
    c.add_argument("--seeds", type=int, default=6)
    c.add_argument("--out", default=CORPUS_FILE)
    t = sub.add_parser("train", help="train the tiny tokenizer from corpus.txt")
    t.add_argument("--corpus", default=CORPUS_FILE)
    t.add_argument("--out", default=TINY_FILE)
    t.add_argument("--vocab-size", type=int, default=TINY_VOCAB_SIZE)
    args = ap.parse_args(argv)
    from c2a_jax.fileio import atomic_write_text

    if args.command == "corpus":
        lines = corpus_lines(range(args.seeds))
        write_corpus(lines, args.out)
        print(f"{len(lines)} lines -> {args.out}")
    else:
        atomic_write_text(args.out, train_tiny(args.corpus, args.vocab_size))
        print(f"tokenizer -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
