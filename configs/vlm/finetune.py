r"""Fine-tuning a code-writing VLM: start from a Hugging Face LLaVA (ours exported, or the
pretrained LLaVA-Phi-3-mini), vision tower frozen; optionally LoRA adapters on the decoder.

Command:
    # full decoder + projector, vision tower frozen (one GPU fits it with FSDP off and remat on)
    python train_vlm.py --config=configs/vlm/finetune.py:base=llava_phi3_mini \
        --config.model.init_from=/models/llava-phi-3-mini-hf --config.data.tokenizer=/models/llava-phi-3-mini-hf \
        --config.data.dataset_dir=/data/my_tasks/panda_vacuum/1.0.0 --config.workdir=runs/vlm_ft
    # LoRA rank 16 on qkv/o/gate_up/down (and the projector): Adam moments for ~30M parameters only
    python train_vlm.py --config=configs/vlm/finetune.py:base=llava_phi3_mini,lora=16 ...

Then fold the adapters in for export and decoding: `c2a_jax.models.lora.merge_lora`.
`get_config` args: ``base`` (tiny or llava_phi3_mini: the architecture and data defaults), ``lora``
(rank, 0: off), ``steps``.
"""

import os

from c2a_jax.config import load_config_file
from c2a_jax.models.lora import LORA_AND_PROJECTOR_FREEZE


def get_config(arg=None):
    args = dict(base="llava_phi3_mini", lora=0, steps=2000)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in args:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(args)}")
        args[key] = type(args[key])(value)
    if args["base"] not in ("tiny", "llava_phi3_mini"):
        raise ValueError(f"base must be 'tiny' or 'llava_phi3_mini', got {args['base']!r}")

    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), args["base"] + ".py"))
    c.workdir = f"runs/vlm_finetune_{args['base']}" + (f"_lora{args['lora']}" if args["lora"] else "")
    c.train.steps = args["steps"]
    c.train.warmup_steps = max(1, args["steps"] * 3 // 100)
    c.train.end_lr_fraction = 0.0
    if args["lora"]:
        c.model.lora_rank = args["lora"]
        c.model.lora_alpha = 2.0 * args["lora"]
        c.train.freeze = (LORA_AND_PROJECTOR_FREEZE,)  # adapters and projector train; tower and decoder fixed
        c.train.learning_rate = 2e-4  # LoRA's usual rate: ten times full fine-tuning's
    else:
        c.train.freeze = ("vision_tower/.*",)
        c.train.learning_rate = 2e-5
    return c
