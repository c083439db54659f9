r"""The paper's code-writing VLM: LLaVA with a CLIP ViT-L/14-336 vision tower, a two-layer MLP
projector and the Phi-3-mini decoder (3.8B parameters), trained on the full dataset.

Weights: convert nothing by hand -- point ``model.init_from`` at a Hugging Face LLaVA-Phi-3-mini
directory (e.g. a local copy of ``xtuner/llava-phi-3-mini-hf``: config.json + safetensors; any 4.x
or 5.x key layout) and ``data.tokenizer`` at the same directory; the checkpoint's config.json sets
the architecture, every parameter is read straight into its FSDP shard, and the run trains the
projector and the decoder with the vision tower frozen (LLaVA's stage-2 recipe). Without
``init_from`` the same architecture starts from random weights (what bench/vlm_train.py --paper
measures).

Command: (one node of 8 A100-80GB, the paper's hardware; about 48 h for the paper's dataset)
    python train_vlm.py --config=configs/vlm/llava_phi3_mini.py \
        --config.model.init_from=/models/llava-phi-3-mini-hf --config.data.tokenizer=/models/llava-phi-3-mini-hf \
        --config.data.dataset_dir=/data/clevrskills_rlds/panda_vacuum/1.0.0 --config.workdir=runs/vlm_paper
Several hosts (TPU VM pod, SLURM): the same command on every host plus
``--config.distributed.auto=true`` (or coordinator_address / num_processes / process_id).

Memory per device with FSDP over n devices: parameters 15.3 GB float32 + Adam moments for the
trainable 3.8B (30 GB) + gradients, divided by n; the activations remat keeps (the dense
projections' outputs, ~0.5 GB per layer at 8 x 1024 tokens) are ~17 GB at batch 8/device and 1024
tokens. ``--config.model.remat_policy=`` (empty) saves nothing, for a smaller GPU. `get_config` args: ``steps=<n>``, ``batch=<global batch>``.
"""

import ml_collections

from c2a_jax.config import placeholder
from c2a_jax.parallel.distributed import config_section


def get_config(arg=None):
    args = dict(steps=20000, batch=128)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in args:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(args)}")
        args[key] = int(value)

    c = ml_collections.ConfigDict()
    c.workdir = "runs/vlm_llava_phi3_mini"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dataset_dir = placeholder(str)
    c.data.code_level = "fine"
    c.data.image_size = 336
    c.data.keystep_request_fraction = 0.5
    c.data.grid_question_fraction = 0.25
    c.data.shift_k = 0
    # share of mid-call code examples asked with the call not yet in memory, answered with its plain
    # line (c2a_jax.data.vlm; not in the paper): queried every step, the VLM writes a call it missed
    c.data.late_keystep_fraction = 0.0
    c.data.tokenizer = placeholder(str)  # the Phi-3 LLaVA tokenizer directory (with its <image> token)
    c.data.template = "phi3"  # Phi-3's chat template, as the pretrained LLaVA saw it
    c.data.max_length = 1024  # 576 image tokens + prompt, memory and code
    c.data.images_per_row = 1
    c.data.shuffle_size = 8192

    c.model = ml_collections.ConfigDict()
    c.model.init_from = ""  # Hugging Face LLaVA-Phi-3-mini directory; empty: random weights
    c.model.vision_width = 1024  # CLIP ViT-L/14-336 (used when init_from is empty)
    c.model.vision_layers = 24
    c.model.vision_heads = 16
    c.model.vision_intermediate = 4096
    c.model.patch_size = 14
    c.model.vision_feature_layer = -2
    c.model.text_width = 3072  # Phi-3-mini
    c.model.text_layers = 32
    c.model.text_heads = 32
    c.model.text_kv_heads = 32
    c.model.text_intermediate = 8192
    c.model.vocab_size = 32064
    c.model.mlp_ratio = 4
    c.model.dtype = "bfloat16"  # compute; parameters and optimizer state stay float32
    c.model.param_dtype = "float32"
    c.model.remat = True
    # remat keeps the dense projections' outputs and recomputes attention and the elementwise work:
    # MFU 41.7% on one H200 at 8 x 1024 tokens, against 37.6% saving nothing (bench/vlm_train.py --paper)
    c.model.remat_policy = "dots_with_no_batch_dims_saveable"
    c.model.prefix_attention = "causal"  # as the pretrained model was trained; 'full' for big_vision's prefix-LM
    c.model.lora_rank = 0
    c.model.lora_alpha = 16.0

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1  # every device
    c.mesh.tensor = 1

    # several hosts (docs/launch.md): coordinator_address / num_processes / process_id, or auto on TPU pods
    c.distributed = config_section()

    c.eval = ml_collections.ConfigDict()
    c.eval.examples = 256
    c.eval.max_new_tokens = 96

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = args["batch"]
    c.train.steps = args["steps"]
    c.train.learning_rate = 2e-5  # LLaVA's fine-tuning rate
    c.train.warmup_steps = max(1, args["steps"] * 3 // 100)
    c.train.weight_decay = 0.0
    c.train.grad_clip = 1.0
    c.train.freeze = ("vision_tower/.*",)
    c.train.accum_steps = 1
    c.train.accum_weight_key = "loss_tokens"  # exact big-batch gradients when accumulating
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    return c
