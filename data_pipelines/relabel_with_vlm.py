#!/usr/bin/env python
"""Relabel a demonstration dataset with the trained VLM's own code (paper 4.3, 5.2 "Dataset Generation").

    python data_pipelines/relabel_with_vlm.py --vlm-checkpoint runs/vlm \
        --dataset runs/rlds/clevrskills_rlds/panda_vacuum/1.0.0 --out runs/vlm_labels.jsonl \
        [--split train] [--batch-size 32] [--early-stop-chars 10] [--shard-index i --num-shards n]

The VLM watches every oracle episode as it would drive the robot: at each step it gets that step's
base-camera image (at its training resolution), the task prompt and its *own* memory of the key-steps
it wrote so far, and writes the code line of the current subtask (`CodeWriter.generate_batch`,
intermediate mode, no key-step request: what `c2a_jax.infer.controller` asks at test time). Its
lines replace the oracle's as the diffusion policy's conditioning, so the policy trains on the timing
of subtask switches it will see from the VLM at test time. The output is the JSONL that
``train_dp.py --config.data.instruction_source=vlm_file --config.data.vlm_labels_file=<out>`` reads
(`c2a_jax.data.dp.load_vlm_labels`): one ``{"episode": <rlds key>, "step": t, "code": ...}`` per step.

Batching: ``--batch-size`` episodes run side by side, one decoding call per step; a finished
episode's slot takes the next episode, and short batches are padded, so one jitted program serves
the whole run. Resuming: a rerun skips every episode whose steps are all in ``--out`` (a torn last
line from a killed run is dropped first). Several machines: ``--shard-index i --num-shards n`` gives
each its ``tfds.split_for_jax_process`` share of the episodes; concatenate the shards' files
(``cat labels.shard-*.jsonl > labels.jsonl``). Relabel ``train`` (what the DP trains on; its
``eval/action_mse`` reads the validation split with the oracle's labels).

Printed at the end (and written to ``<out>.summary.json``), over the episodes labelled by this run:
episodes and steps, the share of steps where the VLM wrote exactly the oracle's line
(``agreement``), and ``transitions`` (`c2a_jax.eval.transitions`): precision and recall of the plain
lines that start a new call, within ``--within`` steps of the oracle's, apart from the commented
steps, which dominate ``agreement`` (a VLM that never leaves its first call still agrees on most
steps).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from c2a_jax.codeapi import MemoryBuffer  # noqa: E402
from c2a_jax.eval.transitions import episode_counts, summarise  # noqa: E402
from c2a_jax.fileio import atomic_write_text  # noqa: E402

# (images (B, S, S, 3) uint8, prompts, memories, keystep_requests) -> B code lines (CodeWriter.generate_batch)
GenerateBatch = Callable[[np.ndarray, Sequence[str], Sequence[Sequence[str]], Sequence[bool]], list[str]]


def relabel_episodes(
    episodes: Iterable[Mapping[str, Any]],
    generate_batch: GenerateBatch,
    batch_size: int,
    *,
    keystep_request: bool = False,
    camera: str = "image",
) -> Iterator[tuple[Mapping[str, Any], list[str]]]:
    """``(episode, one code line per step)`` for each episode, in the order they finish.

    `batch_size` episodes are stepped together; every call gets exactly `batch_size` rows (idle
    slots repeat an active row and their answers are dropped), so a jitted writer compiles once.
    Each episode keeps its own `MemoryBuffer`, fed with its own answers as the controller does."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    source = iter(episodes)
    slots: list[dict[str, Any] | None] = [None] * batch_size
    exhausted = False
    while True:
        for i in range(batch_size):
            if slots[i] is None and not exhausted:
                episode = next(source, None)
                if episode is None:
                    exhausted = True
                elif len(episode[camera]) > 0:
                    slots[i] = {"episode": episode, "t": 0, "memory": MemoryBuffer(), "codes": []}
        active = [i for i in range(batch_size) if slots[i] is not None]
        if not active:
            return
        rows = [active[j % len(active)] for j in range(batch_size)]  # pad with active rows
        images = np.stack([np.asarray(slots[i]["episode"][camera][slots[i]["t"]]) for i in rows])
        prompts = [str(slots[i]["episode"]["language_instruction"]) for i in rows]
        memories = [list(slots[i]["memory"].entries) for i in rows]
        codes = generate_batch(images, prompts, memories, [keystep_request] * batch_size)
        if len(codes) != batch_size:
            raise ValueError(f"the code writer returned {len(codes)} answers for {batch_size} rows")
        for i, code in zip(rows[: len(active)], codes, strict=False):
            slot = slots[i]
            slot["codes"].append(code)
            slot["memory"].update(code)
            slot["t"] += 1
            if slot["t"] == len(slot["episode"][camera]):
                yield slot["episode"], slot["codes"]
                slots[i] = None


def read_done(path: str) -> dict[str, set[int]]:
    """Steps already labelled per episode in `path`; a torn last line (a killed run) is cut off the file."""
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        data = f.read()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(path, "wb") as f:
            f.write(data)
    done: dict[str, set[int]] = {}
    for n, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            done.setdefault(str(record["episode"]), set()).add(int(record["step"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a label record ({e})") from e
    return done


def label_records(episode: Mapping[str, Any], codes: Sequence[str]) -> str:
    """The JSONL lines of one relabelled episode."""
    key = str(episode["key"])
    return "".join(json.dumps({"episode": key, "step": t, "code": code}) + "\n" for t, code in enumerate(codes))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vlm-checkpoint", required=True, help="a train_vlm.py work directory")
    ap.add_argument("--dataset", required=True, help="the built RLDS dataset (build_rlds.py)")
    ap.add_argument("--out", required=True, help="JSONL file of VLM labels (appended to; a rerun resumes)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--batch-size", type=int, default=32, help="episodes decoded side by side")
    ap.add_argument("--early-stop-chars", type=int, default=10, help="the paper's k (0: off)")
    ap.add_argument(
        "--keystep-request", action="store_true", help="ask for key-step replies (default: as at test time)"
    )
    ap.add_argument("--max-episodes", type=int, default=0, help="stop after this many new episodes (0: all)")
    ap.add_argument("--within", type=int, default=3, help="steps either side a transition may be off by")
    ap.add_argument("--shard-index", type=int, default=0)
    ap.add_argument("--num-shards", type=int, default=1)
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        ap.error("--batch-size must be >= 1")
    if args.within < 0:
        ap.error("--within must be >= 0")
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        ap.error(f"need 0 <= --shard-index < --num-shards, got {args.shard_index} of {args.num_shards}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ml_collections

    from c2a_jax.data.rlds import rlds_episodes
    from c2a_jax.eval.evaluate import _code_writer

    try:
        writer, vlm_config = _code_writer(
            ml_collections.ConfigDict(
                {"mode": "relabel", "vlm_checkpoint": args.vlm_checkpoint, "early_stop_chars": args.early_stop_chars}
            )
        )
        source = rlds_episodes(
            args.dataset, args.split, image_size=int(vlm_config.data.image_size), shuffle=False,
            process_index=args.shard_index, process_count=args.num_shards,
        )  # fmt: skip
        done = read_done(args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    level = str(vlm_config.data.code_level)
    skipped = 0

    def todo():
        nonlocal skipped
        new = 0
        for episode in source:
            if done.get(str(episode["key"])) == set(range(len(episode["image"]))):
                skipped += 1
                continue
            if args.max_episodes and new >= args.max_episodes:
                return
            new += 1
            yield episode

    start, episodes, steps, agree, counts = time.time(), 0, 0, 0, []
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as f:
        for episode, codes in relabel_episodes(
            todo(), writer.generate_batch, args.batch_size, keystep_request=args.keystep_request
        ):
            f.write(label_records(episode, codes))
            f.flush()
            episodes += 1
            steps += len(codes)
            reference = [str(c) for c in episode.get(f"code_{level}", [])]
            agree += sum(a == b for a, b in zip(codes, reference, strict=False))
            if len(reference) == len(codes):
                counts.append(episode_counts(reference, codes, args.within))
            if episodes % 50 == 0:
                print(f"{episodes} episodes, {steps / max(time.time() - start, 1e-6):.1f} steps/s", file=sys.stderr)
    summary = {
        "out": args.out, "split": args.split, "episodes": episodes, "skipped_done": skipped, "steps": steps,
        "agreement": round(agree / steps, 4) if steps else None, "seconds": round(time.time() - start, 1),
        "shard": f"{args.shard_index}/{args.num_shards}",
        "transitions": summarise(counts, args.within),
    }  # fmt: skip
    atomic_write_text(args.out + ".summary.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
