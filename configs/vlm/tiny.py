r"""A tiny code-writing VLM that trains on a 2-core CPU in minutes (the demo's and the tests' size).

Command:
    python train_vlm.py --config=configs/vlm/tiny.py --config.workdir=runs/vlm_tiny

`get_config(arg)` takes an optional comma-separated `key=value` list for the common sweeps,
e.g. `configs/vlm/tiny.py:level=level1,image_size=128`.

Expected result: the loss falls and eval/exact_match rises on the demo dataset (numbers in the README
once measured); checkpoints in <workdir>/checkpoints, metrics in <workdir>/metrics.jsonl.
"""

import ml_collections

from c2a_jax.parallel.distributed import config_section


def get_config(arg=None):
    args = dict(level="fine", image_size=64)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in args:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(args)}")
        args[key] = type(args[key])(value)

    c = ml_collections.ConfigDict()
    c.workdir = "runs/vlm_tiny"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dataset_dir = "runs/demo/rlds"
    c.data.code_level = args["level"]  # 'fine' (the paper's) or 'level1' (ClevrSkills' converter)
    c.data.image_size = args["image_size"]
    c.data.keystep_request_fraction = 0.5  # share of examples asking "Please give a keystep reply"
    c.data.grid_question_fraction = 0.25  # share of bounding-box grid questions (auxiliary loss)
    c.data.shift_k = 0  # paper 5.2: shift subtask boundaries by up to k steps
    # share of code examples with the scene's object names swapped in prompt, memory and answer
    # (c2a_jax/data/rename.py; not in the paper: it teaches a small model to copy names)
    c.data.rename_objects_fraction = 0.0
    # share of mid-call code examples asked with the call not yet in memory, answered with its plain
    # line (c2a_jax.data.vlm; not in the paper): queried every step, the VLM writes a call it missed
    c.data.late_keystep_fraction = 0.0
    c.data.tokenizer = "c2a-tiny"  # or a local Hugging Face tokenizer directory (Phi-3's)
    c.data.template = "plain"  # chat template: 'plain' or 'phi3' (c2a_jax.data.vlm.TEMPLATES)
    c.data.max_length = 256  # tokens per row, image tokens included
    c.data.images_per_row = 1  # 1: padding, one example per row; > 1: packing
    c.data.shuffle_size = 2048  # examples in the shuffle buffer

    c.model = ml_collections.ConfigDict()
    c.model.vision_width = 64
    c.model.vision_layers = 2
    c.model.vision_heads = 2
    c.model.patch_size = 16
    c.model.text_width = 128
    c.model.text_layers = 2
    c.model.text_heads = 4
    c.model.text_kv_heads = 2
    c.model.mlp_ratio = 4
    c.model.dtype = "float32"  # compute dtype
    c.model.param_dtype = "float32"
    c.model.remat = False
    c.model.init_from = ""  # a Hugging Face LLaVA directory to start from (its architecture wins)
    c.model.lora_rank = 0  # > 0: LoRA adapters on the decoder projections (see configs/vlm/finetune.py)
    c.model.lora_alpha = 16.0
    c.model.prefix_attention = "full"  # big_vision prefix-LM; 'causal' for models meant for transformers

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1  # every device: FSDP over parameters and batch
    c.mesh.tensor = 1

    # several hosts (docs/launch.md): coordinator_address / num_processes / process_id, or auto on TPU pods
    c.distributed = config_section()

    c.eval = ml_collections.ConfigDict()
    c.eval.examples = 32  # validation code examples decoded greedily for exact match (0: off)
    c.eval.max_new_tokens = 96

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 16
    c.train.steps = 2000
    c.train.learning_rate = 1e-3
    # > 0: LM head and loss at each row's first N answer tokens only (same loss; a batch row with
    # more raises); 0: at every position
    c.train.loss_tokens_per_row = 0
    c.train.warmup_steps = 100
    c.train.weight_decay = 0.0
    c.train.grad_clip = 1.0
    c.train.freeze = ()  # parameter-path regexes kept fixed, e.g. ("vision_tower/.*",)
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    return c
