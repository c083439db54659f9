"""Small models, batches and configs for the training-core tests (imported by test processes and
by the subprocesses they start; importing this module does not import JAX devices eagerly)."""

from __future__ import annotations

import numpy as np

VOCAB = 64
IMAGE_TOKEN = 3
IMAGE_SIZE = 16
PATCH = 8
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2  # "default" feature selection drops the class token
SEQ = 24


def tiny_llava(rngs, text_layers: int = 1):
    """A LLaVA smaller than configs/vlm/tiny.py (built the way bench/data.py's tiny_llava is),
    with widths divisible by 8 so every mesh of 8 devices can split them."""
    from c2a_jax.models.clip import ClipVisionConfig
    from c2a_jax.models.llava import LlavaConfig, LlavaForConditionalGeneration
    from c2a_jax.models.phi3 import Phi3Config

    vision = ClipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=IMAGE_SIZE, patch_size=PATCH)  # fmt: skip
    text = Phi3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=text_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      original_max_position_embeddings=256)  # fmt: skip
    return LlavaForConditionalGeneration(LlavaConfig(vision, text, IMAGE_TOKEN), rngs=rngs)


def vlm_batch(rows: int, seed: int) -> dict[str, np.ndarray]:
    """A batch shaped like the VLM pipeline's (c2a_jax.data.vlm): prefix (bos, image tokens,
    question) with full attention, an answer with loss, right padding; answer lengths vary per
    row so the number of loss tokens differs between rows."""
    from c2a_jax.data.vlm import TokenizedExample, pack_rows, stack_rows

    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(rows):
        question = rng.integers(4, VOCAB, rng.integers(3, 7)).tolist()
        answer = rng.integers(4, VOCAB, rng.integers(2, 8)).tolist() + [2]
        prefix = [1] + [IMAGE_TOKEN] * NUM_IMAGE_TOKENS + question
        tokens = np.asarray(prefix + answer, np.int32)
        mask_ar = np.r_[np.zeros(len(prefix), bool), np.ones(len(answer), bool)]
        image = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        examples.append(TokenizedExample(tokens, mask_ar, mask_ar.copy(), image))
    return stack_rows(list(pack_rows(examples, SEQ, 1, 0)))


def vlm_loss_fn(model, batch, rng):
    from c2a_jax.train.vlm_loss import make_loss_fn

    return make_loss_fn("full")(model, batch, rng)


def vlm_train_config(**train):
    """A config for the loop with the tiny LLaVA; `train` overrides train.* keys."""
    import ml_collections

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    c.sharding = ml_collections.ConfigDict({"min_fsdp_bytes": 0})
    # eps well above float32 noise in tiny gradients: Adam's first step is ~lr*sign(g), which would
    # turn reduction-order noise in near-zero gradients into update differences above 1e-5.
    c.train = ml_collections.ConfigDict(
        dict(steps=3, learning_rate=1e-2, warmup_steps=1, eps=1e-3, weight_decay=0.01, grad_clip=1.0, log_every=1,
             checkpoint_every=100, keep_checkpoints=2, tensorboard=False, progress=False)
    )  # fmt: skip
    c.train.update(train)
    return c


def mlp(rngs):
    """A two-layer MLP with logical axes, for loop tests that need speed more than realism."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    class _MLP(nnx.Module):
        def __init__(self, rngs):
            def param(shape, axes, scale=0.3):
                value = scale * jax.random.normal(rngs.params(), shape) if scale else jnp.zeros(shape)
                return nnx.Param(value, out_sharding=axes, eager_sharding=False)

            self.w1 = param((8, 32), ("embed", "mlp"))
            self.b1 = param((32,), ("mlp",), 0)
            self.w2 = param((32, 2), ("mlp", "embed"))

        def __call__(self, x):
            return jnp.tanh(x @ self.w1[...] + self.b1[...]) @ self.w2[...]

    return _MLP(rngs)


def mlp_loss_fn(model, batch, rng):
    """Squared error with input noise drawn from the step's key: a resumed run only matches an
    uninterrupted one if the RNG continues exactly."""
    import jax
    import jax.numpy as jnp

    x = batch["x"] + 0.1 * jax.random.normal(rng, batch["x"].shape)
    loss = jnp.mean((model(x) - batch["y"]) ** 2)
    return loss, {"mse": loss}


def mlp_batches(rows: int = 8, seed: int = 0, block_at: int | None = None, marker: str | None = None):
    """A deterministic factory's iterator; each batch carries its index (``batch_id``). With
    `block_at`, asking for batch `block_at` writes `marker` and then hangs (for kill tests)."""
    import time

    rng = np.random.default_rng(seed)
    i = 0
    while True:
        if block_at is not None and i == block_at:
            with open(marker, "w") as f:
                f.write(str(i))
            while True:
                time.sleep(1)
        x = rng.normal(size=(rows, 8)).astype(np.float32)
        y = np.stack([np.sin(x.sum(1)), np.cos(x[:, 0])], 1).astype(np.float32)
        yield {"x": x, "y": y, "batch_id": np.full((rows,), i, np.int32)}
        i += 1
