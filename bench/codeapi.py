"""Parsing speed of generated code: our whitelisted parser against plain `ast.parse` (its floor).

The controller parses the VLM's line at every control step (20 Hz in the simulator), so parsing
must cost microseconds. The peer is CPython's own parser on the same text: the ratio is what the
whitelist walk, the type checks and the structured result cost on top of parsing at all.

    .venv/bin/python bench/codeapi.py [--repeats 2000]

Prints one JSON object.
"""

import argparse
import ast
import json
import platform
import time

from c2a_jax.codeapi import parse

LINES = [
    "pick_move3d_place(actor=get_actor('red cube'), target_actor=get_actor('green hexagon'))",
    "target_pose = free_space_next_to(actor=get_actor('red cube', actor_pos=(3, 5)), "
    "next_to_actor=get_actor('blue cube', (6, 4)), direction=[0.0, 1.0, 0.0], description=\"left of\")\n"
    "pick_move3d_place(actor=get_actor('red cube', actor_pos=(3, 5)), target_pose=target_pose)",
    "pose_dict['yellow cube'] = get_pose(actor=get_actor('yellow cube'))\n"
    "pose_dict['blue hexagon'] = get_pose(actor=get_actor('blue hexagon'))\n"
    "pick_move3d_place(actor=get_actor('yellow cube'), target_pose=free_space(actor=get_actor('yellow cube')))",
    "target_pose = rotate_z(Pose(pose_dict['yellow cube'].p, pose_dict['blue hexagon'].q), -90)\n"
    "pick_move3d_place(actor=get_actor('blue hexagon'), target_pose=target_pose, match_ori=True)",
    "touch(actor=get_actor('red cube'), topple=True)",
    "done()",
]


def lines_per_second(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            for line in LINES:
                fn(line)
        best = min(best, time.perf_counter() - start)
    return repeats * len(LINES) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2000)
    args = ap.parse_args()
    ours = lines_per_second(parse, args.repeats)
    peer = lines_per_second(ast.parse, args.repeats)
    print(
        json.dumps(
            {
                "bench": "codeapi.parse",
                "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}",
                "lines": len(LINES),
                "ours_lines_per_s": round(ours),
                "peer": "ast.parse (CPython parser alone, no whitelist)",
                "peer_lines_per_s": round(peer),
                "ratio_ours_to_peer": round(ours / peer, 3),
                "ours_us_per_line": round(1e6 / ours, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
