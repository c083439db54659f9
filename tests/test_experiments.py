"""Experiment plans (configs/experiments), sharded demo generation, dataset views and VLM relabelling:
every printed command names existing configs and valid override keys, shards never share a seed,
the builder finds every shard and view, and the relabeller feeds the VLM its own memory."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from c2a_jax import experiments
from c2a_jax.config import load_config_file
from c2a_jax.data import demo_shards
from c2a_jax.data.dp import DpFrameConfig, InstructionSource
from c2a_jax.data.synthetic import make_episode
from c2a_jax.eval.tasks import resolve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLANS = sorted(glob.glob(os.path.join(ROOT, "configs", "experiments", "*.py")))


def _plan(path, scale):
    return load_config_file(f"{path}:scale={scale}")


@pytest.fixture(autouse=True)
def _in_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # plans name config files relative to the repository


def test_every_experiment_of_the_brief_has_a_plan():
    names = {os.path.basename(p)[:-3] for p in PLANS}
    assert {"table1", "swap", "data_scaling", "chunk_regeneration", "dataset_generation"} <= names


@pytest.mark.parametrize("scale", ["paper", "tiny"])
def test_plans_are_valid_and_consistent(scale):
    from c2a_jax.sim.tasks import task_names

    registry = set(task_names())
    plans = [_plan(p, scale) for p in PLANS]
    for path, plan in zip(PLANS, plans, strict=True):
        # every config exists, every override is a key of it and converts, no required value unset,
        # every task resolves, every referenced run / dataset / label is made by the plan
        assert experiments.check_plan(plan, path) == [], path
        for d in plan["demos"]:
            assert d["registry"] in registry, d
        for c in experiments.commands(plan, path):
            if c.argv:
                assert os.path.isfile(c.argv[1]) or c.argv[1] == "-m", c.argv
    assert experiments.check_consistent(plans) == []


def test_check_plan_catches_bad_overrides_tasks_and_references():
    plan = _plan(os.path.join(ROOT, "configs", "experiments", "chunk_regeneration.py"), "tiny")
    plan = plan.to_dict()
    plan["train"][-1]["overrides"]["data.horizn"] = "8"
    plan["evals"][0]["tasks"] = ["Pick", "Juggle"]
    plan["evals"][1]["dp"] = "dp_nowhere"
    plan["evals"][2]["dataset_label"] = plan["evals"][0]["dataset_label"]
    problems = "\n".join(experiments.check_plan(plan))
    assert "data.horizn" in problems and "did you mean data.horizon" in problems
    assert "Juggle" in problems and "dp_nowhere" in problems and "share mode and dataset label" in problems
    other = plan | {"name": "other", "train": [dict(plan["train"][0], config="configs/vlm/llava_phi3_mini.py")]}
    assert "defined differently" in "\n".join(experiments.check_consistent([plan, other]))


def test_table1_plan_matches_the_paper():
    plan = _plan(os.path.join(ROOT, "configs", "experiments", "table1.py"), "paper")
    demos = {d["task"]: d for d in plan["demos"]}
    assert len(demos) == 10 and {d["episodes"] for d in demos.values()} == {2000}  # Appendix E.1
    assert min(d["seed"] for d in demos.values()) >= 64  # the test seeds 0-63 are never trained on
    assert {resolve(t)["level"] for t in ("PlaceNextTo", "PlaceOnTop", "Topple", "Push")} == {"L0"}
    datasets = {d["label"]: {s.split("/")[1] for s in d["sources"]} for d in plan["datasets"]}
    assert datasets["L0"] == {"PlaceNextTo", "PlaceOnTop", "Topple", "Push"}
    assert datasets["L1"] == {"SingleStack", "StackTopple", "PushToTarget"}
    assert datasets["L0+L1"] == datasets["L0"] | datasets["L1"]
    cols = {(e["mode"], e["dataset_label"]) for e in plan["evals"]}
    assert cols == {(m, d) for m in ("dp", "vlm_dp") for d in ("L0", "L1", "L0+L1")} | {("vlm_oracle", "")}
    cmds = experiments.commands(plan, "configs/experiments/table1.py")
    stages = [c.stage for c in cmds]
    assert stages == sorted(stages, key=experiments.STAGES.index)
    hier = next(c for c in cmds if c.name == "dp_hier_L0")
    assert hier.overrides["data.instruction_source"] == "vlm_file"
    assert hier.overrides["data.vlm_labels_file"].endswith("labels/labels_L0+L1.jsonl")
    ev = next(c for c in cmds if c.name == "vlm_dp_L0")
    assert ev.overrides["num_seeds"] == "64" and ev.overrides["first_seed"] == "0"  # Appendix E.4
    text = experiments.render(plan, "configs/experiments/table1.py")
    assert "--config.model.init_from=${LLAVA_PHI3}" in text and "Estimated compute" in text


def test_dataset_generation_plans_all_four_strategies():
    plan = _plan(os.path.join(ROOT, "configs", "experiments", "dataset_generation.py"), "paper")
    sources = {e["overrides"].get("data.instruction_source") for e in plan["train"]}
    assert {"oracle", "shifted", "vlm_file"} <= sources
    assert {e["dataset_label"] for e in plan["evals"]} == {"oracle", "shifted", "VLM-relabelled",
                                                           "VLM+Oracle-regenerated"}  # fmt: skip
    cmds = experiments.commands(plan, "configs/experiments/dataset_generation.py")
    assert not any(c.missing for c in cmds) and "MISSING" not in experiments.render(plan, "x")
    stages = [c.stage for c in cmds]
    assert stages == sorted(stages, key=experiments.STAGES.index)
    assert stages.index("train_vlm") < stages.index("regenerate") < stages.index("train_dp")
    regen = [c for c in cmds if c.stage == "regenerate"]
    assert [c.argv[1] for c in regen] == ["data_pipelines/regenerate_with_vlm_oracle.py"] * 3 + [
        "data_pipelines/build_rlds.py"
    ]
    for c in regen[:3]:  # the VLM that is trained, the PPP seeds and size, into the folder that is built
        args = dict(zip(c.argv[2::2], c.argv[3::2], strict=False))
        assert args["--vlm-checkpoint"] == "runs/experiments/train/vlm_PPP"
        assert args["--seed"] == "1000" and args["--num-episodes"] == "2000" and args["--image-size"] == "336"
        assert args["--out"] == "runs/experiments/regen/PPP_vlm_oracle"
    assert regen[3].argv[3:] == [
        "runs/experiments/regen/PPP_vlm_oracle",
        "--out",
        "runs/experiments/rlds/PPP_vlm_oracle",
    ]
    dp = next(c for c in cmds if c.name == "dp_hier_PPP_regen")
    assert dp.overrides["data.dataset_dir"] == "runs/experiments/rlds/PPP_vlm_oracle"
    assert dp.overrides["data.instruction_source"] == "oracle"  # the labels in the episodes: the VLM's
    ev = next(c for c in cmds if c.name == "vlm_oracle_regenerated")
    assert ev.overrides["dp_checkpoint"].endswith("train/dp_hier_PPP_regen")
    broken = plan.to_dict()
    broken["regens"][0]["vlm"] = "vlm_nowhere"
    assert "regenerate PPP_vlm_oracle: needs run vlm_nowhere" in experiments.check_plan(broken)


# ---------------------------------------------------------------------------------------------
# Sharded demo generation


@pytest.mark.parametrize("episodes,attempts,n", [(2000, 4010, 16), (10, 30, 3), (7, 7, 7)])
def test_shards_split_seeds_and_episodes_disjointly(episodes, attempts, n):
    seeds = [set(demo_shards.shard_seeds(1000, attempts, i, n)) for i in range(n)]
    assert sum(len(s) for s in seeds) == len(set().union(*seeds)) >= attempts  # disjoint, nothing lost
    assert set().union(*seeds) >= set(range(1000, 1000 + attempts))
    assert sum(demo_shards.shard_quota(episodes, i, n) for i in range(n)) == episodes
    # more attempts later only extend each shard's own progression
    more = [set(demo_shards.shard_seeds(1000, 2 * attempts, i, n)) for i in range(n)]
    assert all(a <= b for a, b in zip(seeds, more, strict=True))
    assert sum(len(s) for s in more) == len(set().union(*more))
    assert list(demo_shards.shard_seeds(5, 4, 0, 1)) == [5, 6, 7, 8]  # one shard: the unsharded run


def test_generate_demos_shard_arguments():
    import sys

    sys.path.insert(0, ROOT)
    from data_pipelines import generate_demos

    args = generate_demos.parse_args(
        ["--task", "Pick", "--num-episodes", "10", "--out", "o", "--shard-index", "2", "--num-shards", "4"]
    )
    plan = generate_demos.shard_plan(args)
    assert plan["directory"] == os.path.join("o", "shard-00002-of-00004", "Pick")
    assert plan["num_episodes"] == 2 and list(plan["seeds"])[:3] == [2, 6, 10]
    single = generate_demos.shard_plan(generate_demos.parse_args(["--task", "Pick", "--out", "o"]))
    assert single["directory"] == os.path.join("o", "Pick") and single["seeds"] == range(0, 30)
    for bad in (["--shard-index", "4", "--num-shards", "4"], ["--num-shards", "0"], ["--num-shards", "11"]):
        with pytest.raises(SystemExit):
            generate_demos.parse_args(["--task", "Pick", "--num-episodes", "10", "--out", "o", *bad])


def _episode_files(directory, seeds):
    os.makedirs(os.path.join(directory, "episodes"), exist_ok=True)
    for s in seeds:
        for ext in (".json", ".npz"):
            open(os.path.join(directory, "episodes", f"seed_{s:06d}{ext}"), "w").close()


def test_builder_finds_every_shard_and_reports_missing_ones(tmp_path):
    for i in range(3):
        _episode_files(tmp_path / demo_shards.shard_dir_name(i, 3) / "Pick", range(i, 9, 3))
    dirs = demo_shards.dataset_dirs(tmp_path)
    assert [os.path.basename(d) for d in dirs] == ["Pick"] * 3
    assert demo_shards.missing_shards(tmp_path) == []
    os.rename(tmp_path / "shard-00001-of-00003", tmp_path / "elsewhere")
    assert demo_shards.missing_shards(tmp_path) == ["shard-00001-of-00003 is missing"]


def test_plan_view_links_shards_and_groups(tmp_path):
    plan = _plan(os.path.join(ROOT, "configs", "experiments", "data_scaling.py"), "tiny").to_dict()
    plan["root"] = str(tmp_path)
    name = "PlaceNextTo-spawn_at_gripper=True"
    for i in range(2):  # base PlaceNextTo generated on two machines
        _episode_files(tmp_path / "demos" / "base" / demo_shards.shard_dir_name(i, 2) / name, [1000 + i])
    _episode_files(tmp_path / "demos" / "extra" / name, [100000])
    for task in ("PlaceOnTop-spawn_at_gripper=True", "Touch-topple=True", "Touch-push=True"):
        _episode_files(tmp_path / "demos" / "base" / task, [1000])
    _episode_files(tmp_path / "demos" / "extra" / "PlaceOnTop-spawn_at_gripper=True", [100000])
    view = experiments.make_view(plan, "L0x2")
    dirs = demo_shards.dataset_dirs(view)
    assert sorted(os.path.basename(d) for d in dirs).count(name) == 3 and len(dirs) == 7
    stems = {(os.path.basename(d), s) for d in dirs for s in os.listdir(os.path.join(d, "episodes"))}
    assert len(stems) == 14  # 7 dataset dirs x (json + npz), no episode twice
    os.rename(tmp_path / "demos" / "base" / "shard-00001-of-00002", tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="shard-00001-of-00002 is missing"):
        experiments.make_view(plan, "L0x2")


# ---------------------------------------------------------------------------------------------
# Relabelling with the VLM


def test_relabel_batches_episodes_with_their_own_memory(tmp_path):
    import sys

    sys.path.insert(0, ROOT)
    from data_pipelines import relabel_with_vlm

    a = make_episode(key="ds/seed_000001")
    b = make_episode(segments=((0, 2, "pick(actor=get_actor('red cube'))"), (2, 5, "done()")), key="ds/seed_000002")
    c = make_episode(key="ds/seed_000003")
    calls = []

    def fake_writer(images, prompts, memories, requests):
        calls.append(len(images))
        # a key-step at the first step of the episode and at step 4, else the commented last key-step
        out = []
        for image, memory in zip(images, memories, strict=True):
            t = int(image[0, 0, 0])
            if t in (0, 4):
                out.append(f"move3d(target_actor=get_actor('step {t} after {len(memory)}'))")
            else:
                out.append("# " + memory[-1])
        return out

    results = dict((e["key"], codes) for e, codes in relabel_with_vlm.relabel_episodes([a, b, c], fake_writer, 2))
    assert set(calls) == {2}  # always full batches: one compiled program
    assert len(results["ds/seed_000001"]) == len(a["image"]) and len(results["ds/seed_000002"]) == len(b["image"])
    codes = results["ds/seed_000001"]
    assert codes[0] == "move3d(target_actor=get_actor('step 0 after 0'))"
    assert codes[4] == "move3d(target_actor=get_actor('step 4 after 1'))"  # its own memory had one key-step
    assert codes[5] == "# " + codes[4]
    out = tmp_path / "labels.jsonl"
    out.write_text("".join(relabel_with_vlm.label_records(e, results[e["key"]]) for e in (a, b, c)) + '{"epi')
    done = relabel_with_vlm.read_done(str(out))  # the torn last line is dropped
    assert done["ds/seed_000002"] == set(range(len(b["image"])))
    source = InstructionSource(DpFrameConfig(instruction_source="vlm_file", vlm_labels_file=str(out)))
    got, caches = source(a, np.random.default_rng(0))
    assert got == codes and len(caches) == len(codes)
    with pytest.raises(ValueError, match="batch_size"):
        next(relabel_with_vlm.relabel_episodes([a], fake_writer, 0))


def test_training_configs_take_distributed_overrides():
    from c2a_jax.config import apply_override

    for spec in ("configs/vlm/tiny.py", "configs/vlm/llava_phi3_mini.py", "configs/dp/tiny.py", "configs/dp/paper.py"):
        config = load_config_file(spec)
        apply_override(config, "distributed.auto", "true")
        apply_override(config, "distributed.process_id", "3")
        assert config.distributed.auto is True and config.distributed.process_id == 3, spec
    assert json.loads(json.dumps(load_config_file("configs/vlm/finetune.py:base=tiny").distributed.to_dict()))


# ---------------------------------------------------------------------------------------------
# Launch recipes (docs/launch.md): the scripts' environment, with stand-ins for srun and scontrol


def _fake_bin(tmp_path):
    import stat

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        # srun: drop its options, run the command once per node with that node's SLURM_PROCID
        "srun": '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
        'for i in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_PROCID=$i "$@"; done\n',
        "scontrol": "#!/bin/bash\nprintf 'gpu-a17\\ngpu-a18\\n'\n",
        "python": '#!/bin/bash\necho "$JAX_COORDINATOR_ADDRESS|$JAX_NUM_PROCESSES|$JAX_PROCESS_ID|'
        '$JAX_LOCAL_DEVICE_IDS|$*"\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    return bin_dir


def test_slurm_train_script_sets_one_process_per_node(tmp_path):
    import subprocess

    bin_dir = _fake_bin(tmp_path)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu-a[17-18]",
           "SLURM_SUBMIT_DIR": ROOT, "PYTHON": str(bin_dir / "python"), "GPUS_PER_NODE": "4"}  # fmt: skip
    out = subprocess.run(["bash", "tools/launch/slurm_train.sbatch", "train_dp.py", "--config=configs/dp/paper.py"],
                         env=env, capture_output=True, text=True, check=True, cwd=ROOT).stdout  # fmt: skip
    assert out.splitlines() == [
        "gpu-a17:12355|2|0|0,1,2,3|train_dp.py --config=configs/dp/paper.py",
        "gpu-a17:12355|2|1|0,1,2,3|train_dp.py --config=configs/dp/paper.py",
    ]
    env["SLURM_NNODES"] = "1"  # one node: a plain single-process run
    out = subprocess.run(["bash", "tools/launch/slurm_train.sbatch", "train_vlm.py"], env=env, capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout  # fmt: skip
    assert out.splitlines() == ["||0||train_vlm.py"]


def test_demo_array_script_passes_the_shard(tmp_path):
    import subprocess

    bin_dir = _fake_bin(tmp_path)
    env = {"PATH": os.environ["PATH"], "SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "0",
           "SLURM_ARRAY_TASK_MAX": "31", "SLURM_CPUS_PER_TASK": "16", "SLURM_SUBMIT_DIR": ROOT,
           "PYTHON": str(bin_dir / "python")}  # fmt: skip
    argv = ["bash", "tools/launch/demos_array.sbatch", "--task", "Pick", "--num-episodes", "2000", "--out", "o"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip().endswith(
        "data_pipelines/generate_demos.py --task Pick --num-episodes 2000 --out o --shard-index 5 --num-shards 32 "
        "--num-workers 16"
    )
    env["SLURM_ARRAY_TASK_MIN"] = "3"
    assert subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT).returncode == 2


def test_distributed_initialize_from_the_launch_environment(monkeypatch):
    import jax

    from c2a_jax.parallel import distributed

    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.config, "update", lambda *a: None)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "gpu-a17:12355")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert distributed.initialize(None) == {"process_index": 1, "process_count": 2}
    assert calls[-1] == {"coordinator_address": "gpu-a17:12355", "num_processes": 2, "process_id": 1,
                         "initialization_timeout": 300}  # fmt: skip
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(key)
    config = load_config_file("configs/vlm/tiny.py")
    config.distributed.auto = True  # tpu_pod.sh: --config.distributed.auto=true
    distributed.initialize(config)
    assert calls[-1] == {"initialization_timeout": 300}  # JAX detects the pod itself
