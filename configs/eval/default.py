r"""Evaluate policies in the simulator, as the paper does (Appendix E.4: 64 seeds per task).

Command:
    python evaluate.py --config=configs/eval/default.py:vlm_oracle --config.workdir=runs/eval

`get_config(arg)`: the mode, one of oracle (the scripted solver alone, the upper bound), vlm_oracle,
vlm_dp, oracle_dp (the code-conditioned DP with the solver writing its code: the low level alone),
dp, dp_oracle.

Expected result: <workdir>/episodes.jsonl (one record per episode; a rerun resumes), and
<workdir>/report/ with report.md (the paper's Table 1 / Table 2 layouts, ours with Wilson 95%
intervals beside the paper's numbers), table CSVs, summary.json, success.png and videos/*.mp4.
"""

import ml_collections

MODES = ("oracle", "vlm_oracle", "vlm_dp", "oracle_dp", "dp", "dp_oracle")


def get_config(arg=None):
    mode = arg or "vlm_oracle"
    if mode not in MODES:
        raise ValueError(f"configs/eval/default.py takes one of {MODES}, got {mode!r}")

    c = ml_collections.ConfigDict()
    c.workdir = f"runs/eval_{mode}"
    c.mode = mode
    c.tasks = ("PlaceNextTo", "PlaceOnTop", "Topple", "Push", "SingleStack", "StackTopple", "PushToTarget")
    c.num_seeds = 64
    c.first_seed = 0
    c.seeds = ()  # explicit seeds instead of first_seed .. first_seed + num_seeds - 1 (e.g. a DP's training seeds)
    c.object_split = "train"  # or 'test' (held-out colour-shape pairs)
    c.num_workers = 2
    c.vlm_checkpoint = ""
    c.dp_checkpoint = ""
    c.early_stop_chars = 10  # the paper's k
    c.regenerate_chunk_on_keystep = True
    c.videos_per_task = 2
    c.dataset = ""  # a label for the report: the DP's training set (L0, L1, L0+L1)
    c.max_steps = 0  # control steps per episode (0: the environment's limit, 1000)
    c.max_queries = 25  # VLM+Oracle: API calls per episode
    # VLM+Oracle: 0 decodes greedily (the paper); > 0 samples the query after a line that did not run
    # (refused, unparsable) at this temperature, since greedy would write the same line again.
    c.refusal_temperature = 0.0
    c.n_action_steps = 0  # actions executed per chunk (0: the DP's own data.n_action_steps)
    c.image_size = 0  # camera size where no checkpoint fixes it (a stand-in code writer); else the checkpoints'
    return c
