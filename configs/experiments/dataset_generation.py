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
* regenerate ``PPP_vlm_oracle``: a new dataset of Pick, PlaceNextTo and PlaceOnTop (as many episodes
  per task as PPP, on PPP's seeds from 1000), recorded by running VLM+Oracle (vlm_PPP's key-steps
  executed by the oracle solvers, `data_pipelines/regenerate_with_vlm_oracle.py`) and keeping the
  successful episodes with their observations, actions and the VLM's code as per-step labels; built
  with build_rlds.py into ``rlds/PPP_vlm_oracle``; train_dp ``dp_hier_PPP_regen`` on it with
  instruction_source oracle (the labels stored in the episodes, which are the VLM's);
* eval (VLM+DP, seeds 0-63) of each on PlaceNextTo and PlaceOnTop (the tasks the paper discusses),
  dataset labels "oracle", "shifted", "VLM-relabelled", "VLM+Oracle-regenerated"; the report.

Sequence (`--print-commands` for every path): generate_demos.py x 3; view + build_rlds.py (PPP);
train_vlm.py; regenerate_with_vlm_oracle.py x 3 + build_rlds.py (PPP_vlm_oracle); relabel_with_vlm.py;
train_dp.py x 4; evaluate.py:vlm_dp x 4; report.

Compute (estimates): beyond chunk_regeneration.py's shared work, three DPs (8x V100, ~31 h each,
Appendix F by dataset size), the regenerated dataset (the PPP demos' ~26 CPU core-hours divided by
the VLM+Oracle success rate, plus a VLM query per API call: the paper's "more costly") and 4 x 128
evaluation episodes.
"""

import os

from c2a_jax.experiments import Plan, parse_arg, plan_module

chunk = plan_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "chunk_regeneration.py"))
TASKS = ("PlaceNextTo", "PlaceOnTop")


def get_config(arg=None):
    args = parse_arg(arg, scale="paper", shift_k=5)
    plan = chunk.build(Plan("dataset_generation", args["scale"],
                            description="oracle / shifted / VLM-relabelled / VLM+Oracle-regenerated code"))  # fmt: skip
    plan.train_dp("dp_hier_PPP_oracle", "PPP", "hierarchical", instruction_source="oracle")
    plan.train_dp("dp_hier_PPP_shifted", "PPP", "hierarchical", instruction_source="shifted", shift_k=args["shift_k"])
    plan.regenerate("PPP_vlm_oracle", "vlm_PPP", chunk.TASKS, episodes=2000)
    plan.train_dp("dp_hier_PPP_regen", "PPP_vlm_oracle", "hierarchical", instruction_source="oracle")
    for name, dp, label in (("oracle", "dp_hier_PPP_oracle", "oracle"), ("shifted", "dp_hier_PPP_shifted", "shifted"),
                            ("vlm_relabelled", "dp_hier_PPP", "VLM-relabelled"),
                            ("vlm_oracle_regenerated", "dp_hier_PPP_regen", "VLM+Oracle-regenerated")):  # fmt: skip
        plan.evaluate(name, "vlm_dp", TASKS, dataset_label=label, vlm="vlm_PPP", dp=dp)
    return plan.to_config()
