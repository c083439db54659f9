r"""Dataset-generation strategies (paper 5.2, Figure 6): where the low-level policy's code comes from --
the oracle's labels, the oracle's labels with shifted subtask boundaries, the VLM's relabelling of
the oracle demonstrations, or a new dataset recorded by the VLM+Oracle policy.

Print, check or run the plan:
    python -m c2a_jax.experiments --config configs/experiments/dataset_generation.py --print-commands
    python -m c2a_jax.experiments --config configs/experiments/dataset_generation.py:shift_k=5 --check
    python -m c2a_jax.experiments --config configs/experiments/dataset_generation.py:scale=tiny --run

`get_config("scale=...,shift_k=K")`: our copy of the paper has lost the shift bound; K=5 control
steps (a quarter second at 20 Hz) is our default.

What it contains: the PPP demos, dataset, VLM ``vlm_PPP`` and labels ``labels_PPP`` of
configs/experiments/chunk_regeneration.py (shared: done once for both), and
* train_dp ``dp_hier_PPP_oracle`` (instruction_source oracle), ``dp_hier_PPP_shifted``
  (instruction_source shifted, shift_k K, redrawn every time an episode is read) and ``dp_hier_PPP``
  (instruction_source vlm_file: the VLM's relabelling, the paper's choice);
* eval (VLM+DP, seeds 0-63) of each on PlaceNextTo and PlaceOnTop (the tasks the paper discusses),
  dataset labels "oracle", "shifted", "VLM-relabelled"; the report.
* MISSING: the fourth strategy, a dataset recorded by running VLM+Oracle (the VLM's key-steps executed
  by the oracle solvers) and keeping its successful episodes with their observations, actions and the
  VLM's code. evaluate.py's vlm_oracle mode runs such episodes but records only results and optional
  video frames, not episode files; the plan prints the step as a comment and skips it.

Sequence (`--print-commands` for every path): generate_demos.py x 3; view + build_rlds.py (PPP);
train_vlm.py; relabel_with_vlm.py; train_dp.py x 3; evaluate.py:vlm_dp x 3; report.

Compute (estimates): beyond chunk_regeneration.py's shared work, two DPs (8x V100, ~31 h each,
Appendix F by dataset size) and 3 x 128 evaluation episodes.
"""

import os

from c2a_jax.experiments import Plan, parse_arg, plan_module

chunk = plan_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "chunk_regeneration.py"))
TASKS = ("PlaceNextTo", "PlaceOnTop")


def get_config(arg=None):
    args = parse_arg(arg, scale="paper", shift_k=5)
    plan = chunk.build(Plan("dataset_generation", args["scale"], description="oracle / shifted / VLM-relabelled code"))
    plan.train_dp("dp_hier_PPP_oracle", "PPP", "hierarchical", instruction_source="oracle")
    plan.train_dp("dp_hier_PPP_shifted", "PPP", "hierarchical", instruction_source="shifted", shift_k=args["shift_k"])
    for name, dp, label in (("oracle", "dp_hier_PPP_oracle", "oracle"), ("shifted", "dp_hier_PPP_shifted", "shifted"),
                            ("vlm_relabelled", "dp_hier_PPP", "VLM-relabelled")):  # fmt: skip
        plan.evaluate(name, "vlm_dp", TASKS, dataset_label=label, vlm="vlm_PPP", dp=dp)
    plan.missing_step(
        "demos", "vlm_oracle_regenerated",
        "record a new PPP dataset with the VLM+Oracle policy (vlm_PPP's key-steps run by the oracle solvers; "
        "successful episodes kept with observations, actions and the VLM's code), then build it, train a DP "
        "on it (instruction_source oracle: its labels are the VLM's) and evaluate it like the others. Needs an "
        "episode recorder in c2a_jax.eval.vlm_oracle (the VlmOracleWorker records results, not episode files).",
    )  # fmt: skip
    return plan.to_config()
