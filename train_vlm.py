#!/usr/bin/env python
"""Train the code-writing VLM (LLaVA: CLIP ViT vision tower, MLP projector, Phi-3 decoder) by next-token
prediction on code labels and grid questions.

    python train_vlm.py --config=configs/vlm/tiny.py [--config.<key>=<value> ...]

`--help` lists the config's keys. The resolved config is written to <workdir>/config.json.
"""

import os
import sys

from c2a_jax.config import run_entry_point

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "vlm/tiny.py")


def main(argv=None) -> int:
    return run_entry_point(argv, __doc__, DEFAULT_CONFIG, what="VLM training", step="step 5 (issue #6)")


if __name__ == "__main__":
    sys.exit(main())
