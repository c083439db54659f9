r"""The demo: the whole idea, end to end, on a 2-core CPU machine (`make demo`).

Command:
    python -m c2a_jax.demo [--config=configs/demo.py] [--config.<key>=<value> ...]

Stages (each resumes; `<workdir>/stages.json` records the finished ones with their wall time):
  demos       oracle demonstrations of two L0 tasks (data_pipelines/generate_demos.py)
  rlds        the RLDS dataset and its statistics (data_pipelines/build_rlds.py)
  vlm         a tiny code-writing VLM (train_vlm.py with configs/vlm/tiny.py + `vlm` below)
  dp          a tiny hierarchical diffusion policy, code-conditioned (train_dp.py, configs/dp/tiny.py)
  dp_flat     a tiny flat diffusion policy, prompt-conditioned (configs/dp/tiny.py:flat)
  eval_*      oracle, VLM+Oracle, VLM+DP and DP on `eval_seeds` held-out seeds per task (evaluate.py)
  report      <workdir>/report.md: the table beside the paper's numbers, the chart, the videos,
              the stage times and VLM+Oracle's success as a fraction of the oracle's

The sections `vlm`, `dp`, `dp_flat` and `eval` are dotted overrides of the configs they name (their
keys mirror those configs), so every knob of those configs can be turned from here, e.g.
`--config.vlm.train.steps=800`.

Expected result (2-core x86_64 CPU; the README's "Results" section has the measured figures): the
whole run in under 30 minutes, and VLM+Oracle at 90% or more of the oracle's own success on the
held-out seeds. VLM+DP and DP are reported as measured: tiny policies trained for minutes on a
few dozen demonstrations are not expected to reach the paper's figures.
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.workdir = "runs/demo"
    c.tasks = ("PlaceNextTo", "Topple")  # paper names (c2a_jax.eval.tasks): two of the paper's L0 tasks
    # Successful oracle demonstrations kept per task (seeds 0, 1, ...). PlaceNextTo's episodes are
    # short (12-35 steps) and its first call names two objects and a direction: the VLM needs many
    # prompts to learn to copy names rather than memorise pairs; Topple's are longer (17-153 steps).
    c.demos = ml_collections.ConfigDict({"PlaceNextTo": 96, "Topple": 24})
    c.image_size = 64
    c.num_workers = 2  # simulator processes
    c.eval_seeds = 16  # per task, from eval_first_seed: never seen in training
    c.eval_first_seed = 100_000
    c.videos_per_task = 1

    c.vlm = ml_collections.ConfigDict()  # overrides of configs/vlm/tiny.py
    c.vlm.train = ml_collections.ConfigDict()
    c.vlm.train.steps = 600
    c.vlm.train.batch_size = 8  # rows of 256 tokens, about 2.5 examples each
    c.vlm.train.warmup_steps = 30
    c.vlm.train.log_every = 100
    c.vlm.train.eval_every = 300
    c.vlm.train.checkpoint_every = 100
    c.vlm.data = ml_collections.ConfigDict()
    c.vlm.data.images_per_row = 4  # packing: 2x the real tokens per second of padding (README)
    c.vlm.data.max_length = 256
    # Half the code examples with the scene's object names swapped (c2a_jax/data/rename.py; not in
    # the paper): the tiny VLM otherwise learns name shortcuts from a few dozen scenes (README, Results).
    c.vlm.data.rename_objects_fraction = 0.5
    c.vlm.eval = ml_collections.ConfigDict()
    c.vlm.eval.examples = 32

    c.dp = ml_collections.ConfigDict()  # overrides of configs/dp/tiny.py (hierarchical)
    c.dp.train = ml_collections.ConfigDict()
    c.dp.train.steps = 300
    c.dp.train.batch_size = 32
    c.dp.train.warmup_steps = 30
    c.dp.train.log_every = 50
    c.dp.train.eval_every = 300
    c.dp.train.checkpoint_every = 100
    c.dp.diffusion = ml_collections.ConfigDict()
    c.dp.diffusion.prediction_type = "sample"  # learns in hundreds of steps where epsilon needs thousands
    # with the unweighted loss: the ELBO weighting in sample space starves the noisy steps DDIM starts
    # from (c2a_jax.models.diffusion); it cost the demo's policies their own training episodes
    c.dp.diffusion.loss_weighting = "mse"
    c.dp.text = ml_collections.ConfigDict()
    c.dp.text.max_length = 96  # PlaceNextTo's first call is about 90 tokens
    c.dp.eval = ml_collections.ConfigDict()
    c.dp.eval.frames = 0  # no DDIM validation (its compile costs a minute); the simulator evaluates
    c.dp_flat = ml_collections.ConfigDict(c.dp.to_dict())  # the same budget for the flat baseline

    c.eval = ml_collections.ConfigDict()  # overrides of configs/eval/default.py
    c.eval.max_steps = 100  # control steps per learned-policy episode (the oracle needs 12-35 on PlaceNextTo,
    # 17-153 on Topple; a policy episode renders both cameras every step, the demo's largest cost)
    c.eval.max_queries = 12  # VLM+Oracle: API calls per episode
    # VLM+Oracle: sample (at this temperature) the query after a refused line, where greedy would write
    # it again; 0 is the paper's greedy decoding. The README has both.
    c.eval.refusal_temperature = 1.0
    return c
