r"""Table 1 (paper 5.1): flat DP, VLM+DP and VLM+Oracle, the low-level policy trained on L0, L1 or L0+L1.

Print, check or run the plan (every command below comes from it; `c2a_jax.experiments`):
    python -m c2a_jax.experiments --config configs/experiments/table1.py --print-commands
    python -m c2a_jax.experiments --config configs/experiments/table1.py --check
    python -m c2a_jax.experiments --config configs/experiments/table1.py:scale=tiny --run   # the chain on a CPU

What it contains (`get_config("scale=paper|tiny")`):
* demos (group base, seeds from 1000, 2000 successful demonstrations per task, Appendix E.1):
  L0 = PlaceNextTo, PlaceOnTop, Topple, Push; L1 = SingleStack, StackTopple, PushToTarget; and
  Pick, ReverseStack, NovelNoun, which only the VLM sees (the "Unseen in L0+L1" rows).
* datasets: L0, L1, L0+L1 (the DPs'), VLM-all (all ten tasks, the VLM's).
* train_vlm ``vlm_all`` on VLM-all (configs/vlm/llava_phi3_mini.py); relabel ``labels_L0+L1``: that
  VLM writes the code of every step of L0+L1's train split (the paper trains its DPs on generated
  code, section 4.3; L0 and L1 are subsets, their episode keys are the same);
* train_dp: ``dp_hier_{L0,L1,L0+L1}`` (configs/dp/paper.py:hierarchical, instruction_source vlm_file)
  and ``dp_flat_{L0,L1,L0+L1}`` (configs/dp/paper.py:flat, the task prompt only);
* eval on the ten tasks, seeds 0-63 (Appendix E.4): ``dp_<D>`` (mode dp), ``vlm_dp_<D>`` (mode vlm_dp)
  for each dataset D, and ``vlm_oracle`` once (it has no low-level policy); then one report in the
  Table 1 layout with the paper's numbers beside ours.

The command sequence (paper scale; `--print-commands` prints it in full, with every path):
    python data_pipelines/generate_demos.py --task PlaceNextTo --task-args '{"spawn_at_gripper": true}' \
        --num-episodes 2000 --seed 1000 --out runs/experiments/demos/base --image-size 336 --num-workers 16
    ... (one per task; shard over machines with --shard-index/--num-shards, docs/launch.md)
    python -m c2a_jax.experiments view --config configs/experiments/table1.py --dataset L0
    python data_pipelines/build_rlds.py --demos runs/experiments/views/L0 --out runs/experiments/rlds/L0
    ... (L1, L0+L1, VLM-all)
    python train_vlm.py --config=configs/vlm/llava_phi3_mini.py --config.workdir=runs/experiments/train/vlm_all \
        --config.data.dataset_dir=runs/experiments/rlds/VLM-all --config.model.init_from=${LLAVA_PHI3} \
        --config.data.tokenizer=${LLAVA_PHI3}
    python data_pipelines/relabel_with_vlm.py --vlm-checkpoint runs/experiments/train/vlm_all \
        --dataset runs/experiments/rlds/L0+L1 --out runs/experiments/labels/labels_L0+L1.jsonl --split train
    python train_dp.py --config=configs/dp/paper.py:hierarchical --config.workdir=runs/experiments/train/dp_hier_L0 \
        --config.data.dataset_dir=runs/experiments/rlds/L0 --config.model.t5_checkpoint=${T5_SMALL} \
        --config.data.instruction_source=vlm_file --config.data.vlm_labels_file=runs/experiments/labels/labels_L0+L1.jsonl
    python train_dp.py --config=configs/dp/paper.py:flat ... (dp_flat_L0; and both for L1, L0+L1)
    python evaluate.py --config=configs/eval/default.py:vlm_dp --config.workdir=runs/experiments/eval/table1/vlm_dp_L0 \
        --config.tasks=PlaceNextTo,...,NovelNoun --config.num_seeds=64 --config.first_seed=0 --config.dataset=L0 \
        --config.vlm_checkpoint=runs/experiments/train/vlm_all --config.dp_checkpoint=runs/experiments/train/dp_hier_L0
    ... (dp_<D>, vlm_dp_<D>, vlm_oracle)
    python -m c2a_jax.experiments report --config configs/experiments/table1.py

Compute (estimates; `--print-commands` prints one per step and the totals): demos ~190 CPU
core-hours for the ten tasks x 2000 (README rates of 160-480 demos per core-hour for the L0 tasks,
measured at 128 px, where rendering cost barely depends on size; ~50 for the stacking tasks,
estimated), about 3 h on 64 cores; the VLM 8x A100-80GB for ~48 h (Appendix F); relabelling ~14k
episodes, <= 2 GPU-hours per 1000 (estimate from the README's batch-1 decode rate; batching lowers
it); six DPs, 8x V100 each for 31-72 h (Appendix F: 24-72 h by dataset size; ~2.3k GPU-hours in
all); evaluation 7 runs x 640 episodes (an A100 and 8 simulator workers per run; a few hours each).

Image sizes: the demos are rendered at 336 px (the VLM's input); the DP trains at 128 px (the RLDS
reader resizes), and VLM+DP evaluation renders at 336 and resizes per model the same way
(`c2a_jax.infer.resize`). The tiny scale trains both at 64.
"""

from c2a_jax.experiments import Plan, parse_arg

L0 = ("PlaceNextTo", "PlaceOnTop", "Topple", "Push")
L1 = ("SingleStack", "StackTopple", "PushToTarget")
UNSEEN = ("Pick", "ReverseStack", "NovelNoun")  # the VLM's data only
TASKS = L0 + L1 + UNSEEN  # Table 1's rows


def build(plan: Plan) -> Plan:
    """Table 1's demos, datasets and runs (data_scaling.py builds on them)."""
    for task in TASKS:
        plan.demo(task, 2000)
    plan.dataset("L0", [f"base/{t}" for t in L0])
    plan.dataset("L1", [f"base/{t}" for t in L1])
    plan.dataset("L0+L1", [f"base/{t}" for t in L0 + L1])
    plan.dataset("VLM-all", [f"base/{t}" for t in TASKS])
    plan.train_vlm("vlm_all", "VLM-all")
    plan.relabel("labels_L0+L1", vlm="vlm_all", dataset="L0+L1")
    for d in ("L0", "L1", "L0+L1"):
        plan.train_dp(f"dp_hier_{d}", d, "hierarchical", instruction_source="vlm_file", labels="labels_L0+L1")
        plan.train_dp(f"dp_flat_{d}", d, "flat")
    return plan


def get_config(arg=None):
    args = parse_arg(arg, scale="paper")
    plan = build(Plan("table1", args["scale"], description="Table 1: DP / VLM+DP / VLM+Oracle x L0, L1, L0+L1"))
    for d in ("L0", "L1", "L0+L1"):
        plan.evaluate(f"dp_{d}", "dp", TASKS, dataset_label=d, dp=f"dp_flat_{d}")
        plan.evaluate(f"vlm_dp_{d}", "vlm_dp", TASKS, dataset_label=d, vlm="vlm_all", dp=f"dp_hier_{d}")
    plan.evaluate("vlm_oracle", "vlm_oracle", TASKS, vlm="vlm_all")
    return plan.to_config()
