r"""The paper's code-conditioned diffusion policy at full size (section 4.3, Appendix E).

Command:
    python train_dp.py --config=configs/dp/paper.py --config.workdir=runs/dp_paper \
        --config.data.dataset_dir=runs/rlds --config.model.t5_checkpoint=/path/to/t5-small

A Hugging Face t5-small directory (config.json, safetensors, tokenizer) is required: nothing is
downloaded at run time, and this config refuses the random stand-in encoder of the tiny one.

`get_config(arg)` takes the conditioning mode as configs/dp/tiny.py does: `hierarchical` (default),
`flat` (task prompt only: the DP baseline) or `oracle` (DP+Oracle).

Sizes: diffusion_policy's image-policy architecture (anchors.md section 3) -- one ResNet-18 with
GroupNorm per camera at torchvision's widths (64, 128, 256, 512) and global average pooling, a
ConditionalUnet1D with down dims (256, 512, 1024), kernel 5, 8 groups, FiLM scale and bias, a
128-d diffusion-step embedding -- conditioned through a 2-layer attention pool of width 256 on the
frozen t5-small (width 512) embeddings of the code line and the cache info, one camera token each
and one proprioception token; horizon 16, 8 actions executed. Diffusion: DDPM with 100 steps,
squaredcos_cap_v2, epsilon prediction, clipped samples, ELBO-weighted loss, DDIM at test time
(Appendix E.2, E.4; our copy of E.4 has lost the DDIM step count: 10, diffusion_policy's paper).
Optimiser (Appendix E.2, following diffusion_policy): AdamW, lr 1e-4, betas (0.95, 0.999), eps
1e-8, weight decay 1e-6, 500 warmup steps then cosine to 0, no gradient clipping (diffusion_policy
has none); EMA power 0.75, max decay 0.9999.

Not stated in the paper, chosen here: camera resolution 128 (ClevrSkills renders 256; the policy
sees 128, randomly cropped to 116 as robomimic crops 84 -> 76), global batch 256 (32 per GPU on
the paper's 8-GPU node) and 500k steps -- the paper trains its largest dataset for 250 epochs;
at ~1.2M frames (5 tasks x 2000 demonstrations of ~120 steps) that is ~1.2M steps at batch 256,
so set train.steps from your dataset: epochs x frames / batch.

Compute: 91.0M trainable parameters (2 x 11.2M ResNet-18, 66.7M UNet, 1.6M attention pool and
projections) plus the frozen 35.3M-parameter t5-small encoder, which runs once per distinct
string (the embedding cache), never in the train step. The paper reports 24-72 hours on 8 V100s;
`python bench/dp.py` measures our train step and DDIM latency at this size. Expected result:
eval/action_mse (DDIM samples against validation chunks, normalised units) falls steadily;
success rates come from the simulator evaluation (evaluate.py).
"""

import ml_collections

from c2a_jax.parallel.distributed import config_section

MODES = ("hierarchical", "flat", "oracle")


def get_config(arg=None):
    mode = (arg or "hierarchical").strip()
    if mode not in MODES:
        raise ValueError(f"configs/dp/paper.py takes one of {MODES}, got {arg!r}")

    c = ml_collections.ConfigDict()
    c.workdir = f"runs/dp_paper_{mode}"
    c.seed = 0
    c.conditioning = mode

    c.data = ml_collections.ConfigDict()
    c.data.dataset_dir = "runs/rlds"
    c.data.code_level = "fine"
    c.data.image_size = 128
    c.data.horizon = 16
    c.data.n_action_steps = 8
    c.data.crop_size = 116
    # The paper's best policy trains on VLM-relabelled code (section 4.3, 5.2): instruction_source
    # 'vlm_file' with vlm_labels_file from the data_pipelines relabelling; 'shifted' (shift_k) is the
    # cheaper augmentation of the oracle's labels.
    c.data.instruction_source = "oracle"
    c.data.shift_k = 0
    c.data.vlm_labels_file = ""
    c.data.normalization = "min_max"
    c.data.normalize_gripper = False
    c.data.shuffle_size = 50_000
    c.data.lowdim_actors = 4

    c.model = ml_collections.ConfigDict()
    c.model.observation = "image"
    c.model.lowdim_dim = 0
    c.model.cameras = ("image", "wrist_image")
    c.model.resnet_widths = (64, 128, 256, 512)
    c.model.image_head = "avgpool"
    c.model.text_width = 512  # t5-small
    c.model.t5_checkpoint = ""  # a Hugging Face t5-small directory (required: text.allow_random is False)
    c.model.down_dims = (256, 512, 1024)
    c.model.kernel_size = 5
    c.model.n_groups = 8
    c.model.diffusion_step_embed_dim = 128
    c.model.cond_predict_scale = True
    c.model.film_identity_init = True
    c.model.pool_width = 256
    c.model.pool_layers = 2
    c.model.pool_heads = 4
    c.model.pool_queries = 1

    c.text = ml_collections.ConfigDict()
    c.text.tokenizer = ""  # the t5_checkpoint directory's tokenizer
    c.text.max_length = 128
    c.text.allow_random = False  # no random T5 stand-in at this size: t5_checkpoint must be set
    c.text.random_layers = 2
    c.text.random_heads = 8
    c.text.random_seed = 0
    c.text.batch_size = 256
    c.text.cache_size = 200_000

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.num_train_timesteps = 100
    c.diffusion.beta_schedule = "squaredcos_cap_v2"
    c.diffusion.clip_sample = True
    c.diffusion.prediction_type = "epsilon"
    c.diffusion.loss_weighting = "elbo"
    c.diffusion.num_inference_steps = 10

    c.eval = ml_collections.ConfigDict()
    c.eval.frames = 256

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1

    # several hosts (docs/launch.md): coordinator_address / num_processes / process_id, or auto on TPU pods
    c.distributed = config_section()

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 256
    c.train.steps = 500_000
    c.train.learning_rate = 1e-4
    c.train.b1 = 0.95
    c.train.b2 = 0.999
    c.train.eps = 1e-8
    c.train.weight_decay = 1e-6
    c.train.warmup_steps = 500
    c.train.end_lr_fraction = 0.0
    c.train.grad_clip = 0.0
    c.train.ema_power = 0.75
    c.train.ema_max_decay = 0.9999
    c.train.ema_min_decay = 0.0
    c.train.ema_update_after_step = 0
    c.train.ema_inv_gamma = 1.0
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.checkpoint_every = 5000
    c.train.progress = True
    c.train.tensorboard = True
    return c
