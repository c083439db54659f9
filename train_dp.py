#!/usr/bin/env python
"""Train the code-conditioned diffusion policy (frozen T5, ResNet-18 per camera, attention pooling, FiLM UNet, DDPM).

    python train_dp.py --config=configs/dp/tiny.py [--config.<key>=<value> ...]

`--help` lists the config's keys. The resolved config is written to <workdir>/config.json.
"""

import os
import sys

from c2a_jax.config import run_entry_point

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "dp/tiny.py")


def main(argv=None) -> int:
    return run_entry_point(argv, __doc__, DEFAULT_CONFIG, what="diffusion-policy training", step="step 6 (issue #7)")


if __name__ == "__main__":
    sys.exit(main())
