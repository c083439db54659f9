#!/usr/bin/env python
"""Train the code-conditioned diffusion policy (frozen T5, ResNet-18 per camera, attention pooling,
FiLM UNet, DDPM with EMA weights) on an RLDS dataset, sharded over every device of every process.

    python train_dp.py --config=configs/dp/tiny.py[:flat|oracle][,lowdim] [--config.<key>=<value> ...]
    python train_dp.py --config=configs/dp/paper.py --config.model.t5_checkpoint=/path/to/t5-small

`--help` lists the config's keys. The resolved config is written to <workdir>/config.json; a run
resumes from <workdir>/checkpoints (same step, RNG and data position). Every checkpoint holds the
config, the dataset statistics and the normalisers; load a policy for inference with
`c2a_jax.infer.dp_runner.DiffusionPolicyRunner.from_checkpoint(<workdir>)`. Several hosts: start
the same command on each with --config.distributed.coordinator_address/num_processes/process_id (or
the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables).
"""

import json
import os
import sys

from c2a_jax.config import parse_command_line
from c2a_jax.host_memory import reexec_with_huge_page_malloc
from c2a_jax.train.dp_task import train_dp

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "dp", "tiny.py")


def main(argv=None) -> int:
    config, _ = parse_command_line(argv, __doc__, DEFAULT_CONFIG)
    try:
        result = train_dp(config)
    except FileNotFoundError as e:  # a missing dataset, tokenizer or T5 checkpoint: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, int | float | str | None)}, indent=2))
    return 0 if result.get("stopped") is None else 130


if __name__ == "__main__":
    reexec_with_huge_page_malloc()  # XLA's large CPU buffers on huge pages (c2a_jax/host_memory.py)
    sys.exit(main())
