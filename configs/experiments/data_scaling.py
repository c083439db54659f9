r"""Data scaling (paper 5.1, Figure 4 right): the L0 dataset with twice the PlaceNextTo and PlaceOnTop
demonstrations, and what it does to the L0 tasks and to stacking, whose demonstrations stay as they were.

Print, check or run the plan:
    python -m c2a_jax.experiments --config configs/experiments/data_scaling.py --print-commands
    python -m c2a_jax.experiments --config configs/experiments/data_scaling.py --check
    python -m c2a_jax.experiments --config configs/experiments/data_scaling.py:scale=tiny --run

What it contains: everything of configs/experiments/table1.py that the two policies need (its
demos, datasets, VLM ``vlm_all`` and ``dp_hier_L0``: the shared root means work done for Table 1 is
reused, not redone) plus
* demos ``extra/PlaceNextTo`` and ``extra/PlaceOnTop``: 2000 more of each, seeds from 100000 (so no
  scene repeats one of ``base``'s);
* dataset ``L0x2`` = L0 + those (12000 demonstrations; build_rlds reads the two groups of one task as
  one dataset);
* relabel ``labels_L0x2`` (vlm_all on L0x2's train split) and ``dp_hier_L0x2`` (hierarchical, VLM labels);
* eval (VLM+DP, seeds 0-63) of ``dp_hier_L0`` and ``dp_hier_L0x2`` on the seven L0 and L1 tasks;
  then the report (its columns: VLM+DP L0, VLM+DP L0x2).

Sequence (`--print-commands` for every path): generate_demos.py for the table 1 tasks and the two
extra groups (``--seed 100000 --out runs/experiments/demos/extra``); view + build_rlds.py for L0, L1,
L0+L1, VLM-all, L0x2; train_vlm.py (vlm_all); relabel_with_vlm.py (labels_L0+L1, labels_L0x2);
train_dp.py (Table 1's six and dp_hier_L0x2); evaluate.py:vlm_dp twice; the report.

Compute (estimates): beyond Table 1, ~16 CPU core-hours of demos (measured rates), ~10 GPU-hours of
relabelling and one DP, 8x V100 for ~62 h (Appendix F, by dataset size); 2 x 448 evaluation episodes.
The paper states no separate VLM for this experiment; vlm_all is Table 1's. The same image-size gap
as Table 1 applies to the VLM+DP evaluations at paper scale.
"""

import os

from c2a_jax.experiments import Plan, parse_arg, plan_module

table1 = plan_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "table1.py"))
EVAL_TASKS = table1.L0 + table1.L1


def get_config(arg=None):
    args = parse_arg(arg, scale="paper")
    plan = table1.build(Plan("data_scaling", args["scale"], description="L0 vs L0 with PlaceNextTo/PlaceOnTop doubled"))
    extra = [plan.demo(task, 2000, group="extra") for task in ("PlaceNextTo", "PlaceOnTop")]
    plan.dataset("L0x2", [f"base/{t}" for t in table1.L0] + extra)
    plan.relabel("labels_L0x2", vlm="vlm_all", dataset="L0x2")
    plan.train_dp("dp_hier_L0x2", "L0x2", "hierarchical", instruction_source="vlm_file", labels="labels_L0x2")
    plan.evaluate("vlm_dp_L0", "vlm_dp", EVAL_TASKS, dataset_label="L0", vlm="vlm_all", dp="dp_hier_L0")
    plan.evaluate("vlm_dp_L0x2", "vlm_dp", EVAL_TASKS, dataset_label="L0x2", vlm="vlm_all", dp="dp_hier_L0x2")
    return plan.to_config()
