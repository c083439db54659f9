r"""A tiny code-conditioned diffusion policy for a 2-core CPU (the demo's and the tests' size).

Command:
    python train_dp.py --config=configs/dp/tiny.py --config.workdir=runs/dp_tiny

`get_config(arg)`: a comma-separated list of one conditioning mode -- `hierarchical` (default;
code + cache info), `flat` (the task prompt only, the paper's DP baseline) or `oracle` (code, cache
info and the episodes' oracle text, DP+Oracle) -- and optionally `lowdim` (a state + actor-grid
vector in place of the two cameras, for quick CPU runs), e.g. `configs/dp/tiny.py:flat,lowdim`.

The text encoder is a random frozen T5 of width 64 over the shipped `c2a-tiny` tokenizer (set
`model.t5_checkpoint` to a Hugging Face T5 directory and `model.text_width` to its width for a real
one). What to watch: the training loss and `eval/action_mse` (DDIM samples against the validation
chunks, normalised units; below the spread of the chunks means the policy reads its inputs) --
not yet measured on the demo dataset at this size. Checkpoints (EMA weights, normalisers, config)
in <workdir>/checkpoints, metrics in <workdir>/metrics.jsonl. Use the policy with
`c2a_jax.infer.dp_runner.DiffusionPolicyRunner.from_checkpoint(workdir)`.
"""

import ml_collections

from c2a_jax.parallel.distributed import config_section

MODES = ("hierarchical", "flat", "oracle")


def get_config(arg=None):
    items = [a.strip() for a in (arg or "").split(",") if a.strip()]
    unknown = [a for a in items if a not in (*MODES, "lowdim")]
    modes = [a for a in items if a in MODES]
    if unknown or len(modes) > 1:
        raise ValueError(f"configs/dp/tiny.py takes one of {MODES} and optionally 'lowdim', got {arg!r}")
    mode = modes[0] if modes else "hierarchical"
    lowdim = "lowdim" in items

    c = ml_collections.ConfigDict()
    c.workdir = f"runs/dp_tiny_{mode}" + ("_lowdim" if lowdim else "")
    c.seed = 0
    c.conditioning = mode  # 'hierarchical', 'flat' or 'oracle'

    c.data = ml_collections.ConfigDict()
    c.data.dataset_dir = "runs/demo/rlds"
    c.data.code_level = "fine"
    c.data.image_size = 64
    c.data.horizon = 16  # Tp, the predicted action chunk
    c.data.n_action_steps = 8  # Ta, executed before replanning (and eval/action_mse_executed's span)
    c.data.crop_size = 58  # shared random crop of both cameras (centre crop at evaluation); 0: none
    c.data.instruction_source = "oracle"  # 'oracle', 'shifted' (shift_k) or 'vlm_file' (vlm_labels_file)
    c.data.shift_k = 0
    c.data.vlm_labels_file = ""
    c.data.normalization = "min_max"  # or 'p01_p99' (bounds from dataset_statistics.json)
    c.data.normalize_gripper = False  # the vacuum command stays binary
    c.data.shuffle_size = 4096  # frames in the shuffle buffer
    c.data.lowdim_actors = 4  # actors in the lowdim vector (model.observation='lowdim')

    # c2a_jax.models.policy.PolicyConfig.from_config reads this section (paper scale: configs/dp/paper.py).
    c.model = ml_collections.ConfigDict()
    c.model.observation = "lowdim" if lowdim else "image"  # 'lowdim': state + actor-grid vector instead of cameras
    c.model.lowdim_dim = 9 + 3 * c.data.lowdim_actors if lowdim else 0
    c.model.cameras = ("image", "wrist_image")  # one ResNet-18 each
    c.model.resnet_widths = (16, 32, 64, 128)  # ResNet-18 topology at a quarter of its width
    c.model.image_head = "avgpool"  # or 'spatial_softmax' (robomimic keypoints)
    c.model.text_width = 64  # T5 d_model; must match t5_checkpoint's (512 t5-small, 768 flan-t5-base)
    c.model.t5_checkpoint = ""  # Hugging Face T5 directory; empty: a random frozen T5 of text_width
    c.model.down_dims = (32, 64, 128)
    c.model.kernel_size = 5
    c.model.n_groups = 8
    c.model.diffusion_step_embed_dim = 64
    c.model.cond_predict_scale = True  # FiLM scale and bias (diffusion_policy's image configs)
    c.model.film_identity_init = True  # FiLM scale starts at 1
    c.model.pool_width = 64
    c.model.pool_layers = 2
    c.model.pool_heads = 4
    c.model.pool_queries = 1

    # The frozen text encoder and its embedding cache (c2a_jax.train.dp_task).
    c.text = ml_collections.ConfigDict()
    c.text.tokenizer = ""  # empty: t5_checkpoint's tokenizer, or 'c2a-tiny' for the random T5
    c.text.max_length = 64  # tokens per text stream (longer text is cut, and a warning says so)
    c.text.allow_random = True  # t5_checkpoint empty: a random frozen T5 (False: an error)
    c.text.random_layers = 2  # the random T5 (t5_checkpoint empty)
    c.text.random_heads = 4
    c.text.random_seed = 0
    c.text.batch_size = 64  # new strings per T5 call
    c.text.cache_size = 100_000  # distinct strings kept

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.num_train_timesteps = 100
    c.diffusion.beta_schedule = "squaredcos_cap_v2"
    c.diffusion.clip_sample = True
    c.diffusion.prediction_type = "epsilon"
    c.diffusion.loss_weighting = "elbo"  # or 'mse'
    c.diffusion.num_inference_steps = 10  # DDIM

    c.eval = ml_collections.ConfigDict()
    c.eval.frames = 32  # validation frames sampled with DDIM at every eval (0: no evaluation)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1  # every device: FSDP over parameters and batch
    c.mesh.tensor = 1

    # several hosts (docs/launch.md): coordinator_address / num_processes / process_id, or auto on TPU pods
    c.distributed = config_section()

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32
    c.train.steps = 2000
    c.train.learning_rate = 1e-4
    c.train.b1 = 0.95
    c.train.b2 = 0.999
    c.train.eps = 1e-8
    c.train.weight_decay = 1e-6
    c.train.warmup_steps = 100  # linear warmup, then cosine decay to 0 at train.steps
    c.train.end_lr_fraction = 0.0
    c.train.grad_clip = 1.0
    c.train.ema_power = 0.75  # diffusion_policy's EMA (0: off)
    c.train.ema_max_decay = 0.9999
    c.train.ema_min_decay = 0.0
    c.train.ema_update_after_step = 0
    c.train.ema_inv_gamma = 1.0
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.progress = True  # a progress bar on the terminal
    c.train.tensorboard = True  # TensorBoard events beside metrics.jsonl
    return c
