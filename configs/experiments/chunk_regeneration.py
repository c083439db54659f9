r"""Action-chunk regeneration (paper 5.2, Figure 5): VLM+DP with and without a new chunk at every new
key-step, and with the prediction horizon halved (without regeneration), on Pick, PlaceNextTo and
PlaceOnTop.

Print, check or run the plan:
    python -m c2a_jax.experiments --config configs/experiments/chunk_regeneration.py --print-commands
    python -m c2a_jax.experiments --config configs/experiments/chunk_regeneration.py --check
    python -m c2a_jax.experiments --config configs/experiments/chunk_regeneration.py:scale=tiny --run

What it contains:
* demos base/Pick, base/PlaceNextTo, base/PlaceOnTop (2000 each, seeds from 1000; the same as
  Table 1's, so generated once) and their dataset ``PPP``;
* train: ``vlm_PPP`` (VLM on PPP), relabel ``labels_PPP``, ``dp_hier_PPP`` (horizon 16, 8 actions
  executed) and ``dp_hier_PPP_h8`` (horizon 8, 4 executed: "halving the prediction horizon"; we halve
  the executed actions with it, our reading);
* eval (VLM+DP on the three tasks, seeds 0-63): ``regen`` (regenerate_chunk_on_keystep=true, the
  paper's method), ``no_regen`` (false: every chunk runs its 8 actions to the end), ``half_no_regen``
  (the h8 policy, false); the report, one column per variant (the dataset label names it).

Sequence (`--print-commands` for every path): generate_demos.py x 3; view + build_rlds.py (PPP);
train_vlm.py (vlm_PPP); relabel_with_vlm.py (labels_PPP); train_dp.py x 2 (the second with
``--config.data.horizon=8 --config.data.n_action_steps=4``); evaluate.py:vlm_dp x 3
(``--config.regenerate_chunk_on_keystep=true|false``); report.

Compute (estimates): demos ~26 CPU core-hours (measured rates); VLM 8x A100 ~14 h (Appendix F's 48 h
scaled to 6000 episodes); relabelling ~6-12 GPU-hours; two DPs 8x V100 ~31 h each; 3 x 192 episodes.
The VLM+DP image-size gap of Table 1 applies at paper scale.
"""

from c2a_jax.experiments import Plan, parse_arg

TASKS = ("Pick", "PlaceNextTo", "PlaceOnTop")


def build(plan: Plan) -> Plan:
    """The PPP dataset, its VLM and labels (dataset_generation.py shares them)."""
    plan.dataset("PPP", [plan.demo(task, 2000) for task in TASKS])
    plan.train_vlm("vlm_PPP", "PPP")
    plan.relabel("labels_PPP", vlm="vlm_PPP", dataset="PPP")
    plan.train_dp("dp_hier_PPP", "PPP", "hierarchical", instruction_source="vlm_file", labels="labels_PPP")
    return plan


def get_config(arg=None):
    args = parse_arg(arg, scale="paper")
    plan = build(Plan("chunk_regeneration", args["scale"], description="VLM+DP with and without chunk regeneration"))
    plan.train_dp("dp_hier_PPP_h8", "PPP", "hierarchical", instruction_source="vlm_file", labels="labels_PPP",
                  data__horizon=8, data__n_action_steps=4)  # fmt: skip
    plan.evaluate("regen", "vlm_dp", TASKS, dataset_label="PPP regenerate", vlm="vlm_PPP", dp="dp_hier_PPP",
                  regenerate_chunk_on_keystep="true")  # fmt: skip
    plan.evaluate("no_regen", "vlm_dp", TASKS, dataset_label="PPP full chunk", vlm="vlm_PPP", dp="dp_hier_PPP",
                  regenerate_chunk_on_keystep="false")  # fmt: skip
    plan.evaluate("half_no_regen", "vlm_dp", TASKS, dataset_label="PPP half horizon", vlm="vlm_PPP",
                  dp="dp_hier_PPP_h8", regenerate_chunk_on_keystep="false")  # fmt: skip
    return plan.to_config()
