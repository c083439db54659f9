"""Per-step training labels of one oracle episode, and the subtask-boundary shift augmentation.

An episode's stored labels (``meta["labels"]``, written by `c2a_jax.sim.rollout`) say, for every
step, which API call is running at two granularities (``fine``, the paper's choice, and
``level1``, ClevrSkills' converter) and whether the step is the call's first (its *key-step*).
Both models need more than that at every step t:

* ``code``: what the VLM learns to write: the call on its key-step, the commented call after it.
* ``memory``: the VLM's memory buffer when it answers at step t: the key-step lines of the steps
  strictly before t (paper section 4.2). The memory at a key-step does not yet hold that key-step;
  ``past_actions`` is the same memory as the prompt shows it (``"; "``-joined, spec 6.6).
* ``cache_info``: what the diffusion policy conditions on while executing step t: the
  ``pose_dict`` writes (`extract_memory_info`, paper Appendix E.3) of the memory *after* step t's
  code has been offered to it, i.e. including step t's own key-step. This is the order of the
  hierarchical controller at inference: the VLM answers, a key-step enters the memory, and only
  then is the cache info extracted for the low-level policy, so the step that computes a pose
  (PlaceNextTo's ``pose_dict['A target'] = free_space_next_to(...)``) already sees it in its cache.
  Consequence: the cache info is constant over a segment (a call and its commented steps).
* ``done()`` from the first successful step on (the first step whose action leads to success,
  spec 6.2), enforced from the recorded success flags when they are given.

An episode is a sequence of *segments* (one call each: its key-step and the steps after it); the
labels are a pure function of the segments, so the augmentation of paper section 5.2 ("randomly
shifting the start and end times of subtasks by up to k steps") moves segment boundaries and
recomputes everything else with the same function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from c2a_jax.codeapi import MemoryBuffer, comment, is_keystep, render, uncomment
from c2a_jax.codeapi.trace import DONE

# Label granularities stored per step by the recorder (clevrskills_spec.md, decision 3).
LEVELS = ("fine", "level1")
# The success label (spec 6.4 "Success point").
DONE_CODE = render(DONE)


@dataclasses.dataclass(frozen=True)
class Segment:
    """One call of an episode: steps ``start`` (its key-step) to ``end`` (exclusive)."""

    start: int
    end: int
    code: str

    def __post_init__(self):
        if not 0 <= self.start < self.end:
            raise ValueError(f"segment must hold at least one step, got [{self.start}, {self.end})")
        if not is_keystep(self.code):
            raise ValueError(f"segment code must be plain, non-blank code, got {self.code!r}")


@dataclasses.dataclass(frozen=True)
class StepLabel:
    """Training labels of one step (see the module docstring for the meaning of each field)."""

    step: int
    segment: int  # index of the call (segment) this step belongs to
    instruction: str  # the plain code of the running call
    code: str  # `instruction` on the key-step, its commented form on every later step
    is_keystep: bool
    memory: tuple[str, ...]  # key-step lines of the steps strictly before `step`
    past_actions: str  # `memory` as the VLM prompt shows it: "; ".join(memory)
    cache_info: str  # extract_memory_info(memory + this step's key-step, if it is one)


def _stored_segments(meta: Mapping[str, Any], level: str) -> list[Segment]:
    """The segments of an episode's stored labels at `level`, checked for consistency."""
    if level not in LEVELS:
        raise ValueError(f"unknown label level {level!r}; expected one of {LEVELS}")
    stored = meta.get("labels")
    if not stored:
        raise ValueError("episode metadata has no per-step labels")
    starts: list[tuple[int, str]] = []
    for t, entry in enumerate(stored):
        if entry is None:
            raise ValueError(f"step {t} has no label")
        code, key = entry[level], bool(entry[f"{level}_keystep"])
        if key:
            starts.append((t, code))
        elif not starts:
            raise ValueError(f"step 0 must be a {level} key-step, got a continuation of {code!r}")
        elif code != starts[-1][1]:
            raise ValueError(f"step {t}: {level} label {code!r} continues a different call ({starts[-1][1]!r})")
    ends = [s for s, _ in starts[1:]] + [len(stored)]
    return [Segment(s, e, c) for (s, c), e in zip(starts, ends, strict=True)]


def _first_success(success: Sequence[bool] | np.ndarray) -> int | None:
    hits = np.flatnonzero(np.asarray(success, dtype=bool))
    return int(hits[0]) if hits.size else None


def _enforce_done(segments: list[Segment], first_success: int) -> list[Segment]:
    """Segments relabelled so that ``done()`` holds from `first_success` to the end, with its
    key-step there (a done() segment that already starts earlier is kept)."""
    total = segments[-1].end
    kept = [s for s in segments if s.start < first_success]
    if kept and kept[-1].code == DONE_CODE:
        return [*kept[:-1], Segment(kept[-1].start, total, DONE_CODE)]
    if kept:
        kept[-1] = Segment(kept[-1].start, first_success, kept[-1].code)
    return [*kept, Segment(first_success, total, DONE_CODE)]


def labels_from_segments(segments: Sequence[Segment]) -> list[StepLabel]:
    """Per-step labels of contiguous segments covering steps ``0 .. segments[-1].end - 1``.

    Memory and cache info come from a `MemoryBuffer` fed step by step exactly as the
    hierarchical controller feeds it at inference time.
    """
    if not segments:
        raise ValueError("an episode needs at least one segment")
    if segments[0].start != 0:
        raise ValueError(f"the first segment must start at step 0, got {segments[0].start}")
    for a, b in zip(segments, segments[1:], strict=False):
        if a.end != b.start:
            raise ValueError(f"segments must be contiguous: [{a.start}, {a.end}) then [{b.start}, {b.end})")
    buffer = MemoryBuffer()
    out: list[StepLabel] = []
    for index, seg in enumerate(segments):
        for t in range(seg.start, seg.end):
            key = t == seg.start
            code = seg.code if key else comment(seg.code)
            memory = tuple(buffer.entries)
            buffer.update(code)
            out.append(StepLabel(t, index, seg.code, code, key, memory, "; ".join(memory), buffer.cache_info()))
    return out


def segments_of(labels: Sequence[StepLabel]) -> list[Segment]:
    """The segments that `labels` (a whole episode, in step order) were made from."""
    segments: list[Segment] = []
    start, code = 0, None
    for t, label in enumerate(labels):
        if label.step != t:
            raise ValueError(f"labels must cover steps 0..{len(labels) - 1} in order; position {t} is {label.step}")
        if label.is_keystep:
            if code is not None:
                segments.append(Segment(start, t, code))
            start, code = t, label.instruction
        elif code is None or label.instruction != code:
            raise ValueError(f"step {t} continues {label.instruction!r} without its key-step")
    if code is None:
        raise ValueError("no labels")
    segments.append(Segment(start, len(labels), code))
    return segments


def step_labels(
    meta: Mapping[str, Any], level: str = "fine", success: Sequence[bool] | np.ndarray | None = None
) -> list[StepLabel]:
    """Training labels for every step of an episode (its JSON metadata) at `level`.

    `success` (the recorded per-step flags, ``npz["success"]``) makes sure ``done()`` holds from
    the first successful step on; without it the stored labels are trusted to say so already.
    Raises ValueError on labels that do not form key-step-led calls.
    """
    segments = _stored_segments(meta, level)
    if success is not None:
        if len(success) != segments[-1].end:
            raise ValueError(f"{len(success)} success flags for {segments[-1].end} labelled steps")
        first = _first_success(success)
        if first is not None:
            segments = _enforce_done(segments, first)
    return labels_from_segments(segments)


def _draw_shifts(rng: Any, k: int, n: int) -> np.ndarray:
    """n uniform integers in [-k, k] from a numpy Generator (or a legacy RandomState)."""
    if hasattr(rng, "integers"):
        return np.asarray(rng.integers(-k, k + 1, size=n), dtype=np.int64)
    return np.asarray(rng.randint(-k, k + 1, size=n), dtype=np.int64)


def _place_boundaries(starts: Sequence[int], deltas: Sequence[int], fixed: Sequence[bool], total: int) -> list[int]:
    """Shifted boundaries: each movable one at ``start + delta``, clipped so that boundaries stay
    strictly increasing inside ``(0, total)`` and fixed ones stay put. Clipping never moves a
    boundary further than its own delta would, so every boundary moves by at most max|delta|."""
    new = list(starts)
    anchor, i, m = 0, 0, len(starts)
    while i < m:
        j = i
        while j < m and not fixed[j]:
            j += 1
        limit = starts[j] if j < m else total
        count, prev = j - i, anchor
        for r in range(count):
            b = i + r
            new[b] = min(max(starts[b] + int(deltas[b]), prev + 1), limit - (count - r))
            prev = new[b]
        if j < m:
            anchor = starts[j]
        i = j + 1
    return new


def shift_labels(labels: Sequence[StepLabel], k: int, rng: Any, fix_done: bool = True) -> list[StepLabel]:
    """The paper's augmentation (section 5.2): every subtask start moves by a uniform random
    integer in [-k, k] steps, which moves the previous subtask's end with it.

    Segment order is kept and no segment vanishes (each keeps at least one step; shifts that
    would break this are clipped); the key-step moves to the new first step of its segment and
    memory, past actions and cache info are recomputed. With `fix_done` (default) the start of
    ``done()`` stays at the first successful step: it is a fact of the environment, not of the
    oracle's timing. Exactly one number per boundary is drawn from `rng` (a numpy Generator), so
    the result is a deterministic function of the labels and the rng state.
    """
    if k < 0:
        raise ValueError(f"shift k must be >= 0, got {k}")
    segments = segments_of(labels)
    starts = [s.start for s in segments[1:]]
    deltas = _draw_shifts(rng, k, len(starts))
    fixed = [fix_done and s.code == DONE_CODE for s in segments[1:]]
    new_starts = _place_boundaries(starts, deltas, fixed, segments[-1].end)
    bounds = [0, *new_starts, segments[-1].end]
    return labels_from_segments([Segment(bounds[i], bounds[i + 1], s.code) for i, s in enumerate(segments)])


def episode_labels(episode: dict[str, Any], level: str) -> list[StepLabel]:
    """The step labels of an RLDS `Episode` at `level`, rebuilt from its code and key-step fields
    (memory and cache info recomputed, so they can be shifted consistently)."""
    if level not in LEVELS:
        raise ValueError(f"unknown code level {level!r}; expected one of {LEVELS}")
    codes, keys = episode[f"code_{level}"], episode[f"is_keystep_{level}"]
    segments: list[Segment] = []
    for t, (code, key) in enumerate(zip(codes, keys, strict=True)):
        if key:
            if segments:
                segments[-1] = Segment(segments[-1].start, t, segments[-1].code)
            segments.append(Segment(t, t + 1, code))
        elif not segments or uncomment(code) != segments[-1].code:
            raise ValueError(f"episode {episode.get('key')}: step {t} {level} code {code!r} continues no key-step")
    if not segments:
        raise ValueError(f"episode {episode.get('key')} has no steps")
    segments[-1] = Segment(segments[-1].start, len(codes), segments[-1].code)
    return labels_from_segments(segments)
