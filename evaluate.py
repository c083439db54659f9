#!/usr/bin/env python
"""Evaluate VLM+Oracle, VLM+DP, flat DP or DP+Oracle in the simulator and write the paper's tables, plots and videos.

    python evaluate.py --config=configs/eval/default.py [--config.<key>=<value> ...]

`--help` lists the config's keys. The resolved config is written to <workdir>/config.json.
"""

import os
import sys

from c2a_jax.config import run_entry_point

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "eval/default.py")


def main(argv=None) -> int:
    return run_entry_point(argv, __doc__, DEFAULT_CONFIG, what="Evaluation", step="step 7 (issue #8)")


if __name__ == "__main__":
    sys.exit(main())
