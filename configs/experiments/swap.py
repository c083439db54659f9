r"""Non-Markovian swapping (paper 5.1, Figure 4 left): DP, VLM+DP, VLM+Oracle and DP+Oracle on Swap,
each trained on a small and a large dataset of Swap demonstrations.

Print, check or run the plan:
    python -m c2a_jax.experiments --config configs/experiments/swap.py --print-commands
    python -m c2a_jax.experiments --config configs/experiments/swap.py:small=1000,large=4000 --check
    python -m c2a_jax.experiments --config configs/experiments/swap.py:scale=tiny --run

`get_config("scale=...,small=N,large=M")`: our copy of the paper has lost the two dataset sizes; the
defaults (1000 and 4000) are our choice. The large dataset is the small one plus ``large - small``
demonstrations from seeds 100000 up (group ``extra``), so it is generated once.

What it contains, per size S in (small, large):
* demos: Swap and SwapMarkovian (the same scenes and oracle; the prompt also states the objects' and
  the free space's positions: the paper's DP+Oracle "oracle function ... inserted into the prompt");
* datasets ``Swap-S`` and ``SwapMarkovian-S``;
* train: ``vlm_swap_S`` (VLM on Swap-S), relabel ``labels_swap_S``, ``dp_hier_swap_S`` (hierarchical,
  VLM labels), ``dp_flat_swap_S`` (task prompt only) and ``dp_markov_swap_S`` (task prompt only,
  trained on the Markovian prompts);
* eval on Swap, seeds 0-63: ``dp_S`` (flat), ``vlm_dp_S``, ``vlm_oracle_S`` and ``dp_oracle_S``
  (mode dp_oracle: evaluate.py runs the Markovian form, `c2a_jax.eval.tasks.MARKOVIAN`); the report.

Sequence (`--print-commands` for every path): generate_demos.py --task Swap / SwapMarkovian (base:
``--num-episodes small --seed 1000``; extra: ``--num-episodes large-small --seed 100000``); view +
build_rlds.py x 4; train_vlm.py x 2; relabel_with_vlm.py x 2; train_dp.py x 6; evaluate.py x 8; report.

Compute (estimates: Swap's demo rate is not measured; ~40 per core-hour from its ~11 API calls per
episode, Table 2): demos ~200 CPU core-hours at the default sizes (both prompt forms); two VLMs
(8x A100, ~6-10 h each, scaled from Appendix F's 48 h for ~20k episodes); six DPs (8x V100, 24 h
each, Appendix F's minimum); 8 x 64 evaluation episodes.
"""

from c2a_jax.experiments import Plan, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, scale="paper", small=1000, large=4000)
    if not 0 < args["small"] < args["large"]:
        raise ValueError(f"need 0 < small < large, got small={args['small']}, large={args['large']}")
    plan = Plan("swap", args["scale"], description="Swap: DP / VLM+DP / VLM+Oracle / DP+Oracle, small and large")
    for task in ("Swap", "SwapMarkovian"):
        base = plan.demo(task, args["small"])
        extra = plan.demo(task, args["large"] - args["small"], group="extra")
        plan.dataset(f"{task}-small", [base])
        plan.dataset(f"{task}-large", [base, extra])
    for size in ("small", "large"):
        plan.train_vlm(f"vlm_swap_{size}", f"Swap-{size}")
        plan.relabel(f"labels_swap_{size}", vlm=f"vlm_swap_{size}", dataset=f"Swap-{size}")
        plan.train_dp(f"dp_hier_swap_{size}", f"Swap-{size}", "hierarchical", instruction_source="vlm_file",
                      labels=f"labels_swap_{size}")  # fmt: skip
        plan.train_dp(f"dp_flat_swap_{size}", f"Swap-{size}", "flat")
        plan.train_dp(f"dp_markov_swap_{size}", f"SwapMarkovian-{size}", "flat")
        label = f"Swap-{size}"
        plan.evaluate(f"dp_{size}", "dp", ["Swap"], dataset_label=label, dp=f"dp_flat_swap_{size}")
        plan.evaluate(f"vlm_dp_{size}", "vlm_dp", ["Swap"], dataset_label=label, vlm=f"vlm_swap_{size}",
                      dp=f"dp_hier_swap_{size}")  # fmt: skip
        plan.evaluate(f"vlm_oracle_{size}", "vlm_oracle", ["Swap"], dataset_label=label, vlm=f"vlm_swap_{size}")
        plan.evaluate(f"dp_oracle_{size}", "dp_oracle", ["Swap"], dataset_label=label, dp=f"dp_markov_swap_{size}")
    return plan.to_config()
