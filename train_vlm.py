#!/usr/bin/env python
"""Train the code-writing VLM (LLaVA: CLIP ViT vision tower, MLP projector, Phi-3 decoder) by next-token
prediction on code labels and grid questions, sharded over every device of every process.

    python train_vlm.py --config=configs/vlm/tiny.py [--config.<key>=<value> ...]

`--help` lists the config's keys. The resolved config is written to <workdir>/config.json; a run
resumes from <workdir>/checkpoints (same step, RNG and data position). Several hosts: start the same
command on each with --config.distributed.coordinator_address/num_processes/process_id (or the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables).
"""

import json
import os
import sys

from c2a_jax.config import parse_command_line
from c2a_jax.host_memory import reexec_with_huge_page_malloc
from c2a_jax.train.vlm_task import train_vlm

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "vlm", "tiny.py")


def main(argv=None) -> int:
    config, _ = parse_command_line(argv, __doc__, DEFAULT_CONFIG)
    try:
        result = train_vlm(config)
    except FileNotFoundError as e:  # a missing dataset or tokenizer: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, int | float | str | None)}, indent=2))
    return 0 if result.get("stopped") is None else 130


if __name__ == "__main__":
    reexec_with_huge_page_malloc()  # XLA's large CPU buffers on huge pages (c2a_jax/host_memory.py)
    sys.exit(main())
