r"""A tiny code-conditioned diffusion policy for a 2-core CPU (the demo's and the tests' size).

Command:
    python train_dp.py --config=configs/dp/tiny.py --config.workdir=runs/dp_tiny

`get_config(arg)`: `hierarchical` (default; conditioned on code and cache info) or `flat`
(conditioned on the task prompt only, the paper's DP baseline).

Expected result: arrives with step 6 (issue #7); until then the entry point checks and writes the
resolved config and says what is missing.
"""

import ml_collections


def get_config(arg=None):
    mode = arg or "hierarchical"
    if mode not in ("hierarchical", "flat"):
        raise ValueError(f"configs/dp/tiny.py takes 'hierarchical' or 'flat', got {mode!r}")

    c = ml_collections.ConfigDict()
    c.workdir = f"runs/dp_tiny_{mode}"
    c.seed = 0
    c.conditioning = mode

    c.data = ml_collections.ConfigDict()
    c.data.dataset_dir = "runs/demo/rlds"
    c.data.code_level = "fine"
    c.data.image_size = 64
    c.data.horizon = 16  # Tp, the predicted action chunk
    c.data.n_action_steps = 8  # Ta, executed before replanning
    c.data.crop_size = 58  # shared random crop of both cameras (centre crop at evaluation)
    c.data.instruction_source = "oracle"  # 'oracle', 'shifted' (shift_k) or 'vlm_file' (vlm_labels_file)
    c.data.shift_k = 0
    c.data.vlm_labels_file = ""
    c.data.normalization = "min_max"  # or 'p01_p99' (bounds from dataset_statistics.json)
    c.data.normalize_gripper = False  # the vacuum command stays binary
    c.data.shuffle_size = 4096  # frames in the shuffle buffer

    # c2a_jax.models.policy.PolicyConfig.from_config reads this section (paper scale: down_dims
    # (256, 512, 1024), diffusion_step_embed_dim 128, resnet_widths (64, 128, 256, 512), T5 width).
    c.model = ml_collections.ConfigDict()
    c.model.observation = "image"  # or 'lowdim' (object + robot state vector instead of cameras)
    c.model.lowdim_dim = 0  # width of the lowdim observation vector (observation='lowdim')
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

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.num_train_timesteps = 100
    c.diffusion.beta_schedule = "squaredcos_cap_v2"
    c.diffusion.clip_sample = True
    c.diffusion.prediction_type = "epsilon"
    c.diffusion.loss_weighting = "elbo"  # or 'mse'
    c.diffusion.num_inference_steps = 10  # DDIM

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32
    c.train.steps = 2000
    c.train.learning_rate = 1e-4
    c.train.betas = (0.95, 0.999)
    c.train.weight_decay = 1e-6
    c.train.warmup_steps = 500
    c.train.ema_power = 0.75
    c.train.ema_max_decay = 0.9999
    return c
