"""The evaluation report: Wilson intervals against scipy, summaries (duplicates, errors, level means),
the paper's Table 1 / Table 2 layouts with the paper's numbers beside ours, the chart, and videos
with the code line drawn on each frame."""

import json

import imageio.v2 as imageio
import numpy as np
import pytest
from scipy.stats import binomtest

from c2a_jax.eval import report


@pytest.mark.parametrize("k,n", [(0, 1), (3, 10), (7, 10), (10, 10), (41, 64), (1, 100)])
def test_wilson_interval_matches_scipy(k, n):
    expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert report.wilson_interval(k, n) == pytest.approx((expected.low, expected.high), abs=1e-6)
    with pytest.raises(ValueError):
        report.wilson_interval(n + 1, n)


def _records():
    rng = np.random.default_rng(0)
    out = []
    for mode, dataset, task, p in [
        ("vlm_oracle", "", "PlaceNextTo", 0.9),
        ("vlm_oracle", "", "SingleStack", 0.5),
        ("vlm_dp", "L0+L1", "PlaceNextTo", 0.7),
        ("dp", "L0+L1", "PlaceNextTo", 0.2),
    ]:
        for seed in range(16):
            out.append(
                {
                    "mode": mode,
                    "dataset": dataset,
                    "task": task,
                    "seed": seed,
                    "success": bool(rng.random() < p),
                    "queries": 2 + seed % 3,
                }
            )
    return out


def test_summary_counts_each_episode_once_and_errors_apart():
    records = _records()
    duplicate = dict(records[0], success=not records[0]["success"])  # a rerun of (task, seed): the last one counts
    records += [
        duplicate,
        {"mode": "vlm_oracle", "dataset": "", "task": "PlaceNextTo", "seed": 99, "error": "worker died"},
    ]
    cells = {(c.mode, c.dataset, c.task): c for c in report.summarize(records)}
    c = cells[("vlm_oracle", "", "PlaceNextTo")]
    firsts = [r for r in _records() if r["mode"] == "vlm_oracle" and r["task"] == "PlaceNextTo"]
    expected = sum(r["success"] for r in firsts[1:]) + duplicate["success"]
    assert (c.episodes, c.successes, c.errors) == (16, expected, 1)
    assert c.level == "L0" and cells[("vlm_oracle", "", "SingleStack")].level == "L1"  # from the paper's table
    assert c.mean_queries == pytest.approx(np.mean([2 + s % 3 for s in range(16)]))
    means = report.level_means(list(cells.values()))
    both = [cells[("vlm_oracle", "", t)].rate for t in ("PlaceNextTo", "SingleStack")]
    assert means[("vlm_oracle", "", "all")] == pytest.approx(np.mean(both))
    with pytest.raises(ValueError, match="mode"):
        report.summarize([{"task": "Pick", "success": True}])


def test_tables_put_the_papers_numbers_beside_ours():
    cells = report.summarize(_records())
    header, rows = report.table1(cells)
    assert "VLM+DP L0+L1" in header and "paper: VLM+DP L0+L1" in header
    row = next(r for r in rows if r[0] == "PlaceNextTo")
    assert (
        row[header.index("paper: VLM+DP L0+L1")] == "83.1"
        and row[header.index("paper: Task Prompt Only (DP) L0+L1")] == "25.8"
    )
    c = next(c for c in cells if c.mode == "vlm_dp" and c.task == "PlaceNextTo")
    assert row[header.index("VLM+DP L0+L1")].startswith(f"{100 * c.rate:.1f} [")
    assert rows[-1][0] == "Average"
    header2, rows2 = report.table2(cells, "vlm_oracle")
    stack = next(r for r in rows2 if r[0] == "SingleStack")
    assert stack[1] == "L1" and stack[header2.index("paper: success %")] == "90"
    assert [r[0] for r in rows2[-3:]] == ["mean (L0)", "mean (L1)", "mean (all)"]


def test_write_report_chart_and_video(tmp_path):
    path = tmp_path / "episodes.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _records()) + '\n{"mode": "vlm_or')  # a killed writer's last line
    records = report.read_records(path)
    assert len(records) == 64
    frames = [np.full((32, 48, 3), 40 * i, np.uint8) for i in range(5)]
    captions = [f"pick(actor=get_actor('red cube'))  # step {i}" for i in range(5)]
    captions[3] = "pose_dict['red cube target'] = free_space_next_to(actor=get_actor('red cube'), " * 3  # wraps
    (tmp_path / "out" / "videos").mkdir(parents=True)
    video = report.write_video(frames, captions, tmp_path / "out" / "videos" / "PlaceNextTo_0.mp4", fps=5)
    back = imageio.mimread(video)
    # 48 px wide frames are scaled 8x to reach 384 px; a band of three caption lines below
    assert len(back) == 5 and back[0].shape == (8 * 32 + 44, 8 * 48, 3)
    assert back[2][8 * 32 :, :, :].max() > 128  # the caption band carries (white) text
    assert back[2][8 * 32 + 18 :, :, :].max() < 100  # a short caption takes one line
    assert back[3][8 * 32 + 30 :, :, :].max() > 128  # a long one is wrapped onto the third line
    paths = report.write_report(records, tmp_path / "out", title="test")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Table 1 layout" in text and "paper: VLM+DP L0+L1" in text and "videos/PlaceNextTo_0.mp4" in text
    assert (tmp_path / "out" / "success.png").stat().st_size > 5000
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {c["task"] for c in summary["cells"]} == {"PlaceNextTo", "SingleStack"} and paths["chart"].endswith(".png")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"mode": 1\n{"mode": "dp", "task": "Pick", "success": true}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        report.read_records(bad)
