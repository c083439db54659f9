#!/usr/bin/env python
"""Evaluate VLM+Oracle, VLM+DP, flat DP or DP+Oracle in the simulator and write the paper's tables, plots and videos.

    python evaluate.py --config=configs/eval/default.py:vlm_oracle --config.vlm_checkpoint=runs/vlm_tiny \
        [--config.<key>=<value> ...]

`--help` lists the config's keys. The resolved config is written to <workdir>/config.json, every
finished episode is appended to <workdir>/episodes.jsonl (a rerun skips those), videos and the
report (report.md, tables as Markdown/CSV, summary.json, success.png) go to <workdir>/report.
"""

import json
import os
import sys

from c2a_jax.config import parse_command_line, write_resolved_config
from c2a_jax.host_memory import reexec_with_huge_page_malloc

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "eval", "default.py")


def main(argv=None) -> int:
    config, _ = parse_command_line(argv, __doc__, DEFAULT_CONFIG)
    write_resolved_config(config, str(config.workdir))
    from c2a_jax.eval.evaluate import evaluate

    try:
        result = evaluate(config)
    except (FileNotFoundError, ValueError) as e:  # a missing checkpoint, an unknown task: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    reexec_with_huge_page_malloc()  # XLA's large CPU buffers on huge pages (c2a_jax/host_memory.py)
    sys.exit(main())
