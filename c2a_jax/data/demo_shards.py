"""Demonstrations generated on many machines: which seeds each shard runs, where it writes, and how
the dataset builder finds the shards again.

Why: one task's 2000 demonstrations take about 10 core-hours of simulation (README: 160-480
successful demos per core-hour), and the paper's datasets hold ten such tasks. `generate_demos.py
--shard-index i --num-shards n` lets n machines (a SLURM array, a pool of VMs) each run a disjoint
set of seeds into a directory of its own; `build_rlds.py` then reads every shard as one dataset.

Seeds: shard i of n runs the seeds ``first + i, first + i + n, first + i + 2n, ...`` (the
interleaving ClevrSkills' own generator uses across its processes, spec 7.4), at most
``ceil(max_attempts / n)`` of them, and keeps its share of the successes (`shard_quota`). Raising
``--max-attempts`` later only lengthens each shard's own progression, so shards never overlap, and
a rerun of a shard resumes from its manifest. ``--num-shards 1`` is exactly the unsharded run.

Layout (``<out>`` is generate_demos' ``--out``; a shared filesystem or one copied together)::

    <out>/<dataset>/episodes/...                                   unsharded
    <out>/shard-00003-of-00016/<dataset>/episodes/...              shard 3 of 16
    <out>/shard-00003-of-00016/<dataset>/manifest.jsonl            that shard's attempts

An episode's dataset name is the same in every shard, so its RLDS key (``<dataset>/seed_XXXXXX``)
and its train/val split (a hash of dataset and seed) do not depend on how it was sharded.
"""

from __future__ import annotations

import math
import os
import re

SHARD_DIR_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})$")


def shard_dir_name(shard_index: int, num_shards: int) -> str:
    check_shard(shard_index, num_shards)
    return f"shard-{shard_index:05d}-of-{num_shards:05d}"


def check_shard(shard_index: int, num_shards: int) -> None:
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"need num_shards >= 1 and 0 <= shard_index < num_shards, got {shard_index} of {num_shards}")


def shard_quota(num_episodes: int, shard_index: int, num_shards: int) -> int:
    """Successful episodes shard `shard_index` keeps: an even share, the remainder to the first shards."""
    check_shard(shard_index, num_shards)
    return num_episodes // num_shards + (1 if shard_index < num_episodes % num_shards else 0)


def shard_seeds(first_seed: int, max_attempts: int, shard_index: int, num_shards: int) -> range:
    """The seeds shard `shard_index` may try, in order (see the module docstring)."""
    check_shard(shard_index, num_shards)
    per_shard = math.ceil(max_attempts / num_shards)
    start = first_seed + shard_index
    return range(start, start + num_shards * per_shard, num_shards)


def _is_dataset(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "episodes"))


def dataset_dirs(manual_dir: str | os.PathLike) -> list[str]:
    """Dataset directories (those with an ``episodes/`` folder) in `manual_dir` and one level below
    (in shard folders, or the per-group folders of an experiment's dataset view,
    `c2a_jax.experiments.make_view`), or `manual_dir` itself if it is one; sorted, links followed."""
    manual_dir = os.fspath(manual_dir)
    if _is_dataset(manual_dir):
        return [manual_dir]
    out = []
    names = sorted(os.listdir(manual_dir)) if os.path.isdir(manual_dir) else []
    for name in names:
        path = os.path.join(manual_dir, name)
        if _is_dataset(path):
            out.append(path)
        elif os.path.isdir(path):
            out += [os.path.join(path, n) for n in sorted(os.listdir(path)) if _is_dataset(os.path.join(path, n))]
    return out


def missing_shards(manual_dir: str | os.PathLike) -> list[str]:
    """Problems with the shard folders of `manual_dir`: shards absent from a set (``shard-00002-of-00004``
    missing), or shards of different counts mixed; empty when complete (or unsharded)."""
    manual_dir = os.fspath(manual_dir)
    if not os.path.isdir(manual_dir):
        return []
    present: dict[int, set[int]] = {}
    for name in os.listdir(manual_dir):
        match = SHARD_DIR_RE.match(name)
        if match and os.path.isdir(os.path.join(manual_dir, name)):
            present.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    problems = []
    if len(present) > 1:
        problems.append(f"shard folders of different counts mixed in {manual_dir}: of {sorted(present)}")
    for count, indices in sorted(present.items()):
        problems += [f"{shard_dir_name(i, count)} is missing" for i in range(count) if i not in indices]
        problems += [f"shard index {i} >= count {count}" for i in sorted(indices) if i >= count]
    return problems
