"""Evaluation report: success per task with Wilson 95% intervals, the paper's Table 1 and Table 2
layouts (Markdown, CSV, JSON) with the paper's own numbers beside ours, bar charts, and videos with
the current code line drawn on every frame.

Why one module: every number a user quotes from an evaluation goes through `summarize`, so the
intervals, the level means and the averaging are defined once. Input is the per-episode JSONL that
`evaluate.py` appends to (one record per finished episode, fields below); nothing here runs a policy.

Record fields read: ``task`` (the paper's task name, e.g. "PlaceNextTo"), ``mode`` (oracle,
vlm_oracle, vlm_dp, dp, dp_oracle), ``success`` (bool), optional ``dataset`` (the training-set label of the
low-level policy: "L0", "L1", "L0+L1", ...), ``level`` ("L0", "L1", "L2"), ``queries`` (API calls
issued, Table 2's "average actions"), ``error`` (an episode that could not be run: counted apart,
never as a failure).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from c2a_jax.fileio import atomic_write_text

MODE_TITLES = {
    "oracle": "Oracle (scripted solver)",
    "dp": "Task Prompt Only (DP)",
    "vlm_dp": "VLM+DP",
    "oracle_dp": "Oracle+DP",
    "vlm_oracle": "VLM+Oracle",
    "dp_oracle": "DP+Oracle",
}
MODE_ORDER = tuple(MODE_TITLES)

# The paper's Table 1 (success %, low-level policy trained on L0, L1 or L0+L1): mode -> dataset ->
# task -> value. Its VLM+Oracle column is not in the seed text we have, so it is not repeated here.
PAPER_TABLE1: dict[str, dict[str, dict[str, float]]] = {
    "dp": {
        "L0": {"PlaceNextTo": 21.9, "PlaceOnTop": 14.1, "Topple": 93.0, "Push": 74.2, "SingleStack": 0.0,
               "StackTopple": 0.0, "PushToTarget": 2.3, "Pick": 35.2, "ReverseStack": 0.0, "NovelNoun": 14.8},
        "L1": {"PlaceNextTo": 7.0, "PlaceOnTop": 0.0, "Topple": 9.3, "Push": 2.3, "SingleStack": 14.1,
               "StackTopple": 0.0, "PushToTarget": 30.4, "Pick": 0.0, "ReverseStack": 0.0, "NovelNoun": 0.0},
        "L0+L1": {"PlaceNextTo": 25.8, "PlaceOnTop": 17.2, "Topple": 94.5, "Push": 69.5, "SingleStack": 15.6,
                  "StackTopple": 0.0, "PushToTarget": 8.6, "Pick": 35.9, "ReverseStack": 0.0, "NovelNoun": 14.8},
    },
    "vlm_dp": {
        "L0": {"PlaceNextTo": 55.4, "PlaceOnTop": 29.0, "Topple": 94.5, "Push": 87.4, "SingleStack": 0.0,
               "StackTopple": 0.0, "PushToTarget": 0.8, "Pick": 59.0, "ReverseStack": 0.0, "NovelNoun": 26.5},
        "L1": {"PlaceNextTo": 10.2, "PlaceOnTop": 31.3, "Topple": 9.4, "Push": 0.0, "SingleStack": 22.6,
               "StackTopple": 17.2, "PushToTarget": 82.5, "Pick": 67.1, "ReverseStack": 21.8, "NovelNoun": 26.5},
        "L0+L1": {"PlaceNextTo": 83.1, "PlaceOnTop": 75.0, "Topple": 100.0, "Push": 91.5, "SingleStack": 81.5,
                  "StackTopple": 71.0, "PushToTarget": 75.3, "Pick": 87.0, "ReverseStack": 80.0, "NovelNoun": 63.4},
    },
}  # fmt: skip
TABLE1_TASKS = ("PlaceNextTo", "PlaceOnTop", "Topple", "Push", "SingleStack", "StackTopple", "PushToTarget",
                "Pick", "ReverseStack", "NovelNoun")  # fmt: skip

# The paper's Table 2 (VLM+Oracle over the suite, 100 seeds): task -> (level, success %, average actions).
# Task names are ours where a task has one (README task table), the paper's otherwise.
PAPER_TABLE2: dict[str, tuple[str, float, float]] = {
    "Pick": ("L0", 99, 2), "PlaceOnTop": ("L0", 84, 2.4), "PlaceNextTo": ("L0", 96, 2), "Rotate": ("L0", 83, 3),
    "ThrowAt": ("L0", 71, 3), "ThrowToTopple": ("L0", 91, 3), "Touch": ("L0", 94, 1.9), "Push": ("L0", 93, 2.8),
    "Topple": ("L0", 100, 2.9), "PickPlaceOnTop": ("L1", 79, 5.3), "PickPlaceNextTo": ("L1", 96, 4.2),
    "FollowOrder": ("L1", 83, 5.2), "FollowOrderRestore": ("L1", 55, 8.4), "Neighbour": ("L1", 50, 7.2),
    "NovelAdjective": ("L1", 31, 4.6), "NovelNoun": ("L1", 58, 4.1), "NovelNounAdjective": ("L1", 56, 4.2),
    "RotateRestore": ("L1", 72, 4.9), "RotateSymmetry": ("L1", 58, 5.9), "SingleStack": ("L1", 90, 7.9),
    "ReverseStack": ("L1", 79, 7.5), "Sort2d": ("L1", 41, 8.2), "Swap": ("L1", 84, 11.2), "ThrowOnto": ("L1", 100, 2),
    "BalanceScale": ("L2", 44, 10.8), "SortStack": ("L2", 57, 9.5), "StackTopple": ("L2", 81, 9.9),
    "SwapPush": ("L2", 7, 9.8), "SwapRotate": ("L2", 83, 11.3), "ThrowAndSort": ("L2", 46, 4.5),
}  # fmt: skip


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside [0, {n}]")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclasses.dataclass(frozen=True)
class Cell:
    """Success of one (mode, dataset, task): episodes run, successes, rate and its interval."""

    mode: str
    dataset: str
    task: str
    level: str
    episodes: int
    successes: int
    errors: int
    mean_queries: float | None

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    def as_dict(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {**dataclasses.asdict(self), "success_pct": round(100 * self.rate, 2) if self.episodes else None,
                "ci95_pct": [round(100 * lo, 2), round(100 * hi, 2)]}  # fmt: skip


def read_records(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Records of one or several JSONL files; a truncated last line (a killed writer) is skipped."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    continue  # the writer died mid-line: that episode was not finished
                raise ValueError(f"{path}:{i + 1}: not a JSON record") from None
    return out


def summarize(records: Iterable[Mapping[str, Any]]) -> list[Cell]:
    """One `Cell` per (mode, dataset, task), in mode order then first appearance. Errored episodes are
    counted in ``errors`` only; a (task, seed) recorded twice counts once (the last record)."""
    latest: dict[tuple, Mapping[str, Any]] = {}
    for r in records:
        for key in ("task", "mode"):
            if key not in r:
                raise ValueError(f"evaluation record without {key!r}: {dict(r)}")
        latest[(r["mode"], str(r.get("dataset", "")), r["task"], r.get("seed"), r.get("object_split"))] = r
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for (mode, dataset, task, _, _), r in latest.items():
        groups[(mode, dataset, task)].append(r)
    cells = []
    for (mode, dataset, task), rs in groups.items():
        ran = [r for r in rs if not r.get("error")]
        queries = [float(r["queries"]) for r in ran if r.get("queries") is not None]
        level = next((str(r["level"]) for r in rs if r.get("level")), PAPER_TABLE2.get(task, ("",))[0])
        cells.append(Cell(mode, dataset, task, level, len(ran), sum(bool(r.get("success")) for r in ran),
                          len(rs) - len(ran), float(np.mean(queries)) if queries else None))  # fmt: skip
    order = {m: i for i, m in enumerate(MODE_ORDER)}
    return sorted(cells, key=lambda c: (order.get(c.mode, len(order)), c.dataset))


def level_means(cells: Sequence[Cell]) -> dict[tuple[str, str, str], float]:
    """Mean success (0..1) per (mode, dataset, level) and per (mode, dataset, "all"), tasks weighted equally."""
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for c in cells:
        if c.episodes:
            acc[(c.mode, c.dataset, c.level or "?")].append(c.rate)
            acc[(c.mode, c.dataset, "all")].append(c.rate)
    return {k: float(np.mean(v)) for k, v in acc.items()}


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _cell_text(cell: Cell | None) -> str:
    if cell is None or not cell.episodes:
        return "-"
    lo, hi = cell.interval
    return f"{100 * cell.rate:.1f} [{100 * lo:.0f}, {100 * hi:.0f}] (n={cell.episodes})"


def _columns(cells: Sequence[Cell]) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for c in cells:
        if (c.mode, c.dataset) not in seen:
            seen.append((c.mode, c.dataset))
    return seen


def _task_order(cells: Sequence[Cell], preferred: Sequence[str]) -> list[str]:
    tasks = {c.task for c in cells}
    return [t for t in preferred if t in tasks] + sorted(tasks - set(preferred))


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _title(mode: str, dataset: str) -> str:
    return MODE_TITLES.get(mode, mode) + (f" {dataset}" if dataset else "")


def table1(cells: Sequence[Cell]) -> tuple[list[str], list[list[str]]]:
    """The paper's Table 1 layout: tasks down, (method, training set) across, ours as
    "rate [95% CI] (n)" with the paper's number beside it where the paper has one; an average row."""
    columns = _columns(cells)
    by_key = {(c.mode, c.dataset, c.task): c for c in cells}
    header = ["Task"]
    for mode, dataset in columns:
        header.append(_title(mode, dataset))
        if dataset and PAPER_TABLE1.get(mode, {}).get(dataset):
            header.append(f"paper: {_title(mode, dataset)}")
    rows = []
    for task in _task_order(cells, TABLE1_TASKS):
        row = [task]
        for mode, dataset in columns:
            row.append(_cell_text(by_key.get((mode, dataset, task))))
            paper = PAPER_TABLE1.get(mode, {}).get(dataset)
            if dataset and paper:
                row.append(f"{paper[task]:.1f}" if task in paper else "-")
        rows.append(row)
    means = level_means(cells)
    avg = ["Average"]
    for mode, dataset in columns:
        avg.append(_pct(means.get((mode, dataset, "all"))))
        paper = PAPER_TABLE1.get(mode, {}).get(dataset)
        if dataset and paper:
            shown = [paper[t] for t in _task_order(cells, TABLE1_TASKS) if t in paper]
            avg.append(f"{np.mean(shown):.1f}" if shown else "-")
    rows.append(avg)
    return header, rows


def table2(cells: Sequence[Cell], mode: str = "vlm_oracle") -> tuple[list[str], list[list[str]]]:
    """The paper's Table 2 layout for one mode (VLM+Oracle by default): task, level, success with
    its 95% interval, average actions, and the paper's success and actions; level means last."""
    chosen = [c for c in cells if c.mode == mode]
    header = ["Task", "Level", "Success % [95% CI]", "Episodes", "Avg. #actions", "paper: success %",
              "paper: avg. #actions"]  # fmt: skip
    table = PAPER_TABLE2 if mode == "vlm_oracle" else {}  # the paper's Table 2 is VLM+Oracle's alone
    rows = []
    for task in _task_order(chosen, list(PAPER_TABLE2)):
        for c in (c for c in chosen if c.task == task):
            paper = table.get(task)
            rows.append([task + (f" ({c.dataset})" if c.dataset else ""), c.level or "-", _cell_text(c).split(" (n=")[0],
                         str(c.episodes), "-" if c.mean_queries is None else f"{c.mean_queries:.1f}",
                         f"{paper[1]:g}" if paper else "-", f"{paper[2]:g}" if paper else "-"])  # fmt: skip
    means = level_means(chosen)
    for level in ("L0", "L1", "L2", "all"):
        values = [v for (m, d, lv), v in means.items() if lv == level]
        if not values:
            continue
        paper = [p[1] for t, p in table.items() if (level == "all" or p[0] == level)
                 and any(c.task == t for c in chosen)]  # fmt: skip
        rows.append([f"mean ({level})", level if level != "all" else "-", _pct(float(np.mean(values))), "", "",
                     f"{np.mean(paper):.1f}" if paper else "-", ""])  # fmt: skip
    return header, rows


def bar_chart(cells: Sequence[Cell], path: str | os.PathLike) -> str:
    """Grouped bars: success per task for every (method, training set), Wilson intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = _columns(cells)
    tasks = _task_order(cells, TABLE1_TASKS)
    by_key = {(c.mode, c.dataset, c.task): c for c in cells}
    width = 0.8 / max(len(columns), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(tasks) * max(1, len(columns)) * 0.5 + 2), 4))
    x = np.arange(len(tasks))
    for i, (mode, dataset) in enumerate(columns):
        rates, lows, highs = [], [], []
        for task in tasks:
            c = by_key.get((mode, dataset, task))
            if c is None or not c.episodes:
                rates.append(0.0), lows.append(0.0), highs.append(0.0)
                continue
            lo, hi = c.interval
            # max(0, ...): at 0/n or n/n the interval's end equals the rate only up to rounding
            (
                rates.append(100 * c.rate),
                lows.append(100 * max(0.0, c.rate - lo)),
                highs.append(100 * max(0.0, hi - c.rate)),
            )
        ax.bar(x + (i - (len(columns) - 1) / 2) * width, rates, width, yerr=[lows, highs], capsize=2,
               label=_title(mode, dataset))  # fmt: skip
    ax.set_xticks(x, tasks, rotation=30, ha="right")
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title("Success per task (95% Wilson intervals)")
    fig.tight_layout()
    path = os.fspath(path)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def annotate_frames(
    frames: Sequence[np.ndarray],
    captions: Sequence[str],
    scale: int | None = None,
    min_width: int = 384,
    lines: int = 3,
) -> list[np.ndarray]:
    """Frames (H, W, 3) uint8 upscaled (by `scale`, default enough for `min_width` pixels) with their
    caption (the current code line) wrapped over up to `lines` lines in a band under the image, so
    that a video shows what the policy was told at every step."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    if len(frames) != len(captions):
        raise ValueError(f"{len(frames)} frames but {len(captions)} captions")
    font = ImageFont.load_default()
    out = []
    for frame, caption in zip(frames, captions, strict=True):
        k = scale or max(2, -(-min_width // frame.shape[1]))
        image = Image.fromarray(np.asarray(frame, np.uint8)).resize(
            (frame.shape[1] * k, frame.shape[0] * k), Image.NEAREST
        )
        per_line = max(image.width // 6 - 1, 4)
        wrapped = textwrap.wrap(caption.replace("\n", " // "), per_line, break_long_words=True) or [""]
        if len(wrapped) > lines:
            wrapped = wrapped[: lines - 1] + [wrapped[lines - 1][: per_line - 3] + "..."]
        band = 12 * lines + 8
        canvas = Image.new("RGB", (image.width, image.height + band), (0, 0, 0))
        canvas.paste(image, (0, 0))
        draw = ImageDraw.Draw(canvas)
        for i, text in enumerate(wrapped):
            draw.text((4, image.height + 4 + 12 * i), text, fill=(255, 255, 255), font=font)
        out.append(np.asarray(canvas))
    return out


def write_video(frames: Sequence[np.ndarray], captions: Sequence[str], path: str | os.PathLike, fps: int = 10) -> str:
    """An mp4 (H.264 through imageio's ffmpeg) of `frames` with their captions; written atomically."""
    import imageio.v2 as imageio

    annotated = annotate_frames(frames, captions)
    path = os.fspath(path)
    tmp = path + ".tmp.mp4"
    with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, quality=7) as writer:
        for frame in annotated:
            writer.append_data(frame)
    os.replace(tmp, path)
    return path


def write_report(
    records: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike, title: str = "Evaluation", preamble: str = ""
) -> dict:
    """report.md, table1.{md,csv}, table2.{md,csv}, summary.json and success.png in `out_dir`;
    returns the paths. Videos are written by the runner (`write_video`) and linked if present.
    `preamble` (Markdown) goes between the title and the tables."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    cells = summarize(records)
    if not cells:
        raise ValueError("no evaluation records to report")
    paths: dict[str, str] = {}
    h1, r1 = table1(cells)
    md1 = _markdown(h1, r1)
    atomic_write_text(os.path.join(out_dir, "table1.md"), md1 + "\n")
    atomic_write_text(os.path.join(out_dir, "table1.csv"), _csv(h1, r1))
    sections = [f"# {title}", "", *([preamble, ""] if preamble else []), "## Success per task (the paper's Table 1 layout)", "",
                "Ours: success % [Wilson 95% interval] (episodes); the paper's numbers are labelled `paper:`.",
                "", md1, ""]  # fmt: skip
    for mode in dict.fromkeys(c.mode for c in cells):
        h2, r2 = table2(cells, mode)
        md2 = _markdown(h2, r2)
        atomic_write_text(os.path.join(out_dir, f"table2_{mode}.md"), md2 + "\n")
        atomic_write_text(os.path.join(out_dir, f"table2_{mode}.csv"), _csv(h2, r2))
        sections += [f"## {MODE_TITLES.get(mode, mode)} over the suite (the paper's Table 2 layout)", "", md2, ""]
    paths["chart"] = bar_chart(cells, os.path.join(out_dir, "success.png"))
    sections += ["## Chart", "", "![success per task](success.png)", ""]
    videos = sorted(f for f in os.listdir(out_dir) if f.endswith(".mp4")) if os.path.isdir(out_dir) else []
    videos += sorted(os.path.join("videos", f) for f in os.listdir(os.path.join(out_dir, "videos"))
                     if f.endswith(".mp4")) if os.path.isdir(os.path.join(out_dir, "videos")) else []  # fmt: skip
    if videos:
        sections += ["## Videos", ""] + [f"- [{v}]({v})" for v in videos] + [""]
    summary = {"cells": [c.as_dict() for c in cells],
               "level_means": {"/".join(k): v for k, v in level_means(cells).items()}}  # fmt: skip
    atomic_write_text(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    atomic_write_text(os.path.join(out_dir, "report.md"), "\n".join(sections))
    paths.update(report=os.path.join(out_dir, "report.md"), summary=os.path.join(out_dir, "summary.json"))
    return paths
