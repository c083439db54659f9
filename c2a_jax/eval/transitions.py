"""Subtask transitions written by a code writer, scored against the oracle's: precision and recall.

Why: queried every step, the VLM mostly answers with the commented form of the running call, and
the rare answers that matter are the plain lines that start the next call (a *transition*: the
hierarchy advances only there). Per-step agreement hides them: a VLM that never leaves its first
call agrees with the oracle on every commented step of that call. So transitions are scored on
their own, as events in time:

* reference transitions: the oracle's key-steps after step 0 (step 0 always starts the first call);
* predicted transitions: the plain (key-step) lines the writer wrote after step 0;
* a predicted transition *matches* a reference one when it writes the same line within `within`
  steps of it (either side), each used at most once, earliest first;
* precision = matched / predicted, recall = matched / reference; ``timing_*`` are the same with any
  plain line accepted in the window (did it switch at the right time, whatever it wrote).

Commented steps are scored apart (``commented_agreement``), as is step 0 (``first_call_agreement``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from c2a_jax.codeapi import is_keystep


def keystep_events(codes: Sequence[str]) -> list[tuple[int, str]]:
    """``(step, line)`` of every plain (key-step) line after step 0, lines stripped."""
    return [(t, str(code).strip()) for t, code in enumerate(codes) if t > 0 and is_keystep(str(code))]


def _match(reference: list[tuple[int, str]], predicted: list[tuple[int, str]], within: int, same_line: bool) -> int:
    used = [False] * len(predicted)
    matched = 0
    for t_ref, line_ref in reference:
        for j, (t_pred, line_pred) in enumerate(predicted):
            if used[j] or abs(t_pred - t_ref) > within or (same_line and line_pred != line_ref):
                continue
            used[j] = True
            matched += 1
            break
    return matched


def episode_counts(reference: Sequence[str], predicted: Sequence[str], within: int = 3) -> dict[str, int]:
    """Counts for one episode: `reference` (the oracle's code per step) and `predicted` (the
    writer's), of equal length. Sum them over episodes with `summarise`."""
    if len(reference) != len(predicted):
        raise ValueError(f"reference has {len(reference)} steps, predicted {len(predicted)}")
    if within < 0:
        raise ValueError(f"within must be >= 0, got {within}")
    ref, pred = keystep_events(reference), keystep_events(predicted)
    commented = [t for t in range(1, len(reference)) if not is_keystep(str(reference[t]))]
    return {
        "episodes": 1,
        "steps": len(reference),
        "reference": len(ref),
        "predicted": len(pred),
        "matched": _match(ref, pred, within, same_line=True),
        "timing_matched": _match(ref, pred, within, same_line=False),
        "commented_steps": len(commented),
        "commented_agree": sum(str(predicted[t]).strip() == str(reference[t]).strip() for t in commented),
        "first_call_agree": int(bool(reference) and str(predicted[0]).strip() == str(reference[0]).strip()),
    }


def summarise(counts: Iterable[dict[str, int]], within: int = 3) -> dict[str, Any]:
    """Precision, recall and agreements over the episodes' `episode_counts` (None where undefined)."""
    total: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + int(v)

    def ratio(a: str, b: str) -> float | None:
        return round(total[a] / total[b], 4) if total.get(b) else None

    return {
        "within_steps": within,
        **{k: total.get(k, 0) for k in ("episodes", "steps", "reference", "predicted", "matched", "timing_matched")},
        "precision": ratio("matched", "predicted"),
        "recall": ratio("matched", "reference"),
        "timing_precision": ratio("timing_matched", "predicted"),
        "timing_recall": ratio("timing_matched", "reference"),
        "commented_agreement": ratio("commented_agree", "commented_steps"),
        "first_call_agreement": ratio("first_call_agree", "episodes"),
    }
