"""Diffusion-policy models: ResNet-18/GroupNorm, the 1-D UNet, the attention pool, the whole policy.

References are PyTorch modules written here from the architectures' descriptions (torchvision's
ResNet-18 with BatchNorm swapped for GroupNorm(C // 16, C), as diffusion_policy does; diffusion_policy's
Conv1dBlock / ConditionalResidualBlock1D / ConditionalUnet1D; robomimic's SpatialSoftmax), built
with torch.manual_seed and perturbed weights, and compared numerically after copying their
weights into ours. torchvision is not installed in this environment, so the ResNet reference is
assembled from torch.nn layers (conv1 7x7/2, max pool 3x3/2, four stages of two BasicBlocks,
global average pool, no fc).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from torch import nn

from c2a_jax.data.normalization import Normalizer
from c2a_jax.models import LOGICAL_AXES
from c2a_jax.models import resnet as R
from c2a_jax.models import unet1d as U
from c2a_jax.models.attention_pool import AttentionPool
from c2a_jax.models.diffusion import DiffusionConfig
from c2a_jax.models.policy import CodePolicy, PolicyConfig, TextTokens, dp_loss

TOL = 1e-4


def _rngs(seed: int = 0) -> nnx.Rngs:
    # rbg keys compile far faster than threefry on XLA:CPU; initialisation is what is timed here
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _perturb(module: nn.Module, seed: int, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.add_(scale * torch.randn(p.shape, generator=gen))


def _fill(ctor, tensors: dict[str, np.ndarray], convert) -> nnx.Module:
    """Build `ctor()` abstractly and set every parameter from `tensors` (torch names), via
    ``convert(our_path, torch_array) -> our_array``; every torch tensor must be used."""
    graphdef, abstract = nnx.split(nnx.eval_shape(ctor))
    flat = list(nnx.to_flat_state(abstract))
    used, filled = set(), []
    for path, var in flat:
        name = (
            ".".join(str(p) for p in path[:-1]) + "." + {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
        )
        assert name in tensors, f"no torch tensor {name} for {path}"
        used.add(name)
        value = np.asarray(convert(path, tensors[name]), np.float32)
        assert value.shape == tuple(var.shape), (path, value.shape, var.shape)
        filled.append((path, var.replace(jnp.asarray(value))))
    assert used == set(tensors), sorted(set(tensors) - used)
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def _jit_call(module, *args):
    return nnx.jit(lambda m, *a: m(*a))(module, *args)


def _torch_state(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _conv_layout(path, w):
    """PyTorch -> ours: Conv2d OIHW -> HWIO, Conv1d OIK -> KIO, ConvTranspose1d IOK -> KIO, Linear -> (in, out)."""
    if path[-1] != "kernel":
        return w
    if w.ndim == 4:
        return w.transpose(2, 3, 1, 0)
    if w.ndim == 3:
        return w.transpose(2, 0, 1) if "resample" in path and "up_modules" in path else w.transpose(2, 1, 0)
    return w.T


# --------------------------------------------------------------------------------------------------
# PyTorch references


class TorchBasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(cout // 16, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(cout // 16, cout)
        self.project = stride != 1 or cin != cout
        if self.project:
            self.downsample_conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.downsample_norm = nn.GroupNorm(cout // 16, cout)

    def forward(self, x):
        y = self.norm2(self.conv2(torch.relu(self.norm1(self.conv1(x)))))
        return torch.relu(y + (self.downsample_norm(self.downsample_conv(x)) if self.project else x))


class TorchResNet18(nn.Module):
    """torchvision's resnet18 topology, GroupNorm(C // 16) for every BatchNorm, fc removed."""

    def __init__(self, widths=(64, 128, 256, 512)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.norm1 = nn.GroupNorm(widths[0] // 16, widths[0])
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(nn.ModuleList([TorchBasicBlock(cin, w, 2 if i else 1), TorchBasicBlock(w, w, 1)]))
            cin = w
        self.stages = nn.ModuleList(stages)

    def feature_map(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.norm1(self.conv1(x))), 3, 2, 1)
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return x

    def forward(self, x):
        return self.feature_map(x).mean(dim=(2, 3))


def _torch_spatial_softmax(features, conv, linear):
    """robomimic's SpatialSoftmax (num_kp maps, temperature 1) then VisualCore's Linear."""
    maps = conv(features)
    b, k, h, w = maps.shape
    pos_x, pos_y = np.meshgrid(np.linspace(-1.0, 1.0, w), np.linspace(-1.0, 1.0, h))
    pos_x = torch.from_numpy(pos_x.reshape(1, h * w)).float()
    pos_y = torch.from_numpy(pos_y.reshape(1, h * w)).float()
    attention = torch.softmax(maps.reshape(-1, h * w), dim=-1)
    xy = torch.cat([(pos_x * attention).sum(1, keepdim=True), (pos_y * attention).sum(1, keepdim=True)], 1)
    return linear(xy.view(b, k * 2))


class TorchConv1dBlock(nn.Module):
    def __init__(self, cin, cout, k, groups=8):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, k, padding=k // 2)
        self.norm = nn.GroupNorm(groups, cout)

    def forward(self, x):
        return nn.functional.mish(self.norm(self.conv(x)))


class TorchResBlock(nn.Module):
    """diffusion_policy's ConditionalResidualBlock1D with cond_predict_scale=True."""

    def __init__(self, cin, cout, cond_dim, k, groups):
        super().__init__()
        self.cout = cout
        self.block0 = TorchConv1dBlock(cin, cout, k, groups)
        self.block1 = TorchConv1dBlock(cout, cout, k, groups)
        self.cond_encoder = nn.Linear(cond_dim, 2 * cout)
        self.residual_conv = nn.Conv1d(cin, cout, 1) if cin != cout else None

    def forward(self, x, cond):
        out = self.block0(x)
        embed = self.cond_encoder(nn.functional.mish(cond)).reshape(x.shape[0], 2, self.cout, 1)
        out = embed[:, 0] * out + embed[:, 1]
        out = self.block1(out)
        return out + (x if self.residual_conv is None else self.residual_conv(x))


class TorchDownsample(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x):
        return self.conv(x)


class TorchLevel(nn.Module):
    def __init__(self, res1, res2, resample):
        super().__init__()
        self.res1, self.res2, self.resample = res1, res2, resample


class TorchStepEncoder(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.d = d
        self.linear1, self.linear2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, t):
        half = self.d // 2
        freqs = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
        args = t.float()[:, None] * freqs[None]
        return self.linear2(nn.functional.mish(self.linear1(torch.cat([args.sin(), args.cos()], -1))))


class TorchUnet(nn.Module):
    """diffusion_policy's ConditionalUnet1D (global conditioning, FiLM scale), channels-first."""

    def __init__(self, input_dim, cond_dim, dsed, down_dims, k, groups):
        super().__init__()
        self.diffusion_step_encoder = TorchStepEncoder(dsed)
        c = dsed + cond_dim
        dims = [input_dim, *down_dims]
        in_out = list(zip(dims[:-1], dims[1:], strict=True))
        self.down_modules = nn.ModuleList(
            TorchLevel(
                TorchResBlock(a, b, c, k, groups),
                TorchResBlock(b, b, c, k, groups),
                TorchDownsample(b) if i < len(in_out) - 1 else None,
            )
            for i, (a, b) in enumerate(in_out)
        )
        self.mid_modules = nn.ModuleList([TorchResBlock(dims[-1], dims[-1], c, k, groups) for _ in range(2)])
        self.up_modules = nn.ModuleList(
            TorchLevel(
                TorchResBlock(2 * b, a, c, k, groups),
                TorchResBlock(a, a, c, k, groups),
                nn.ConvTranspose1d(a, a, 4, 2, 1),
            )
            for a, b in reversed(in_out[1:])
        )
        self.final_block = TorchConv1dBlock(down_dims[0], down_dims[0], k, 8)
        self.final_conv = nn.Conv1d(down_dims[0], input_dim, 1)

    def forward(self, sample, t, cond):
        g = torch.cat([self.diffusion_step_encoder(t), cond], -1)
        x, skips = sample.transpose(1, 2), []
        for level in self.down_modules:
            x = level.res2(level.res1(x, g), g)
            skips.append(x)
            if level.resample is not None:
                x = level.resample(x)
        for block in self.mid_modules:
            x = block(x, g)
        for level in self.up_modules:
            x = level.resample(level.res2(level.res1(torch.cat([x, skips.pop()], 1), g), g))
        return self.final_conv(self.final_block(x)).transpose(1, 2)


# --------------------------------------------------------------------------------------------------
# ResNet-18


def _count(state) -> int:
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(state))


def test_resnet18_groupnorm_parameter_count():
    torch_count = sum(p.numel() for p in TorchResNet18().parameters())
    for head in ("avgpool", "spatial_softmax"):
        config = R.ResNetConfig(head=head)
        ours = _count(nnx.state(nnx.eval_shape(lambda c=config: R.ResNet18(c, rngs=nnx.Rngs(0))), nnx.Param))
        extra = 0 if head == "avgpool" else (512 * 32 + 32) + (64 * 64 + 64)  # 1x1 conv to 32 maps, Linear(64, 64)
        assert ours == torch_count + extra == R.num_params(config)
    # GroupNorm replaces BatchNorm's two affine vectors one for one: torchvision's resnet18 has
    # 11,689,512 parameters of which fc holds 512 * 1000 + 1000
    bn_reference = TorchResNet18()
    assert sum(p.numel() for p in bn_reference.parameters()) + 512 * 1000 + 1000 == 11_689_512


@pytest.fixture(scope="module")
def torch_resnet():
    torch.manual_seed(0)
    model = TorchResNet18(widths=(16, 32, 32, 48)).eval()
    _perturb(model, 1)
    return model


def test_resnet_matches_torch(torch_resnet):
    config = R.ResNetConfig(widths=(16, 32, 32, 48))
    ours = _fill(lambda: R.ResNet18(config, rngs=nnx.Rngs(0)), _torch_state(torch_resnet), _conv_layout)
    images = np.random.default_rng(2).integers(0, 256, (2, 40, 36, 3), dtype=np.uint8)
    x = (images.astype(np.float32) / 255.0 - np.array(R.IMAGENET_MEAN, np.float32)) / np.array(
        R.IMAGENET_STD, np.float32
    )
    with torch.no_grad():
        ref_map = torch_resnet.feature_map(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    feat_map, pooled = jax.jit(lambda m, im: (m.feature_map(im), m(im)))(ours, images)
    np.testing.assert_allclose(np.asarray(feat_map).transpose(0, 3, 1, 2), ref_map.numpy(), atol=TOL, rtol=TOL)
    np.testing.assert_allclose(pooled, ref_map.mean(dim=(2, 3)).numpy(), atol=TOL, rtol=TOL)
    # the keypoint head on the same feature map
    torch.manual_seed(3)
    kp_conv, kp_linear = nn.Conv2d(48, 32, 1), nn.Linear(64, 64)
    with torch.no_grad():
        ref_kp = _torch_spatial_softmax(ref_map, kp_conv, kp_linear)
    head = R.SpatialSoftmax(48, R.ResNetConfig(widths=(16, 32, 32, 48), head="spatial_softmax"), rngs=nnx.Rngs(0))
    head.keypoints.kernel[...] = jnp.asarray(kp_conv.weight.detach().numpy().transpose(2, 3, 1, 0))
    head.keypoints.bias[...] = jnp.asarray(kp_conv.bias.detach().numpy())
    head.kernel[...] = jnp.asarray(kp_linear.weight.detach().numpy().T)
    head.bias[...] = jnp.asarray(kp_linear.bias.detach().numpy())
    np.testing.assert_allclose(_jit_call(head, feat_map), ref_kp.numpy(), atol=TOL, rtol=TOL)


# --------------------------------------------------------------------------------------------------
# 1-D UNet pieces


def test_conv1d_block_and_resampling_match_torch():
    torch.manual_seed(4)
    cfg = U.UNetConfig(input_dim=5, global_cond_dim=0, down_dims=(16, 32))
    x = np.random.default_rng(5).standard_normal((2, 12, 5)).astype(np.float32)
    block_t = TorchConv1dBlock(5, 16, 5, 8)
    _perturb(block_t, 6, 0.2)
    block = _fill(lambda: U.Conv1dBlock(5, 16, 5, 8, cfg, rngs=nnx.Rngs(0)), _torch_state(block_t), _conv_layout)
    with torch.no_grad():
        ref = block_t(torch.from_numpy(x.transpose(0, 2, 1).copy())).numpy().transpose(0, 2, 1)
    np.testing.assert_allclose(_jit_call(block, x), ref, atol=TOL, rtol=TOL)

    h = np.random.default_rng(7).standard_normal((2, 8, 16)).astype(np.float32)
    h_t = torch.from_numpy(h.transpose(0, 2, 1).copy())
    up_t = nn.ConvTranspose1d(16, 16, 4, 2, 1)
    up = U.Upsample1d(16, cfg, rngs=nnx.Rngs(0))
    up.kernel[...] = jnp.asarray(up_t.weight.detach().numpy().transpose(2, 0, 1))
    up.bias[...] = jnp.asarray(up_t.bias.detach().numpy())
    with torch.no_grad():
        ref_up = up_t(h_t).numpy().transpose(0, 2, 1)
    assert ref_up.shape == (2, 16, 16)
    np.testing.assert_allclose(_jit_call(up, h), ref_up, atol=TOL, rtol=TOL)

    down_t = nn.Conv1d(16, 16, 3, 2, 1)
    down = _fill(
        lambda: U.Downsample1d(16, cfg, rngs=nnx.Rngs(0)),
        {f"conv.{k}": v for k, v in _torch_state(down_t).items()},
        _conv_layout,
    )
    with torch.no_grad():
        ref_down = down_t(h_t).numpy().transpose(0, 2, 1)
    assert ref_down.shape == (2, 4, 16)
    np.testing.assert_allclose(_jit_call(down, h), ref_down, atol=TOL, rtol=TOL)

    # the sinusoidal step embedding
    t = np.array([0, 1, 17, 99])
    half = 8
    freqs = np.exp(np.arange(half) * -(math.log(10000) / (half - 1)))
    np.testing.assert_allclose(
        U.sinusoidal_embedding(t, 16),
        np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], -1),
        atol=1e-5,
    )


@pytest.fixture(scope="module")
def unet_pair():
    torch.manual_seed(8)
    ref = TorchUnet(7, 12, 16, (16, 32, 48), 5, 8).eval()
    _perturb(ref, 9, 0.1)
    cfg = U.UNetConfig(input_dim=7, global_cond_dim=12, diffusion_step_embed_dim=16, down_dims=(16, 32, 48))
    ours = _fill(lambda: U.ConditionalUnet1D(cfg, rngs=nnx.Rngs(0)), _torch_state(ref), _conv_layout)
    return ref, ours, cfg


def test_unet_matches_diffusion_policy_structure(unet_pair):
    ref, ours, cfg = unet_pair
    rng = np.random.default_rng(10)
    sample = rng.standard_normal((3, 16, 7)).astype(np.float32)
    t = np.array([0, 42, 99], np.int32)
    cond = rng.standard_normal((3, 12)).astype(np.float32)
    run = jax.jit(lambda m, x, t, c: m(x, t, c))
    out = run(ours, sample, t, cond)
    with torch.no_grad():
        expected = ref(torch.from_numpy(sample), torch.from_numpy(t), torch.from_numpy(cond)).numpy()
    assert out.shape == sample.shape
    np.testing.assert_allclose(out, expected, atol=TOL, rtol=TOL)
    assert _count(nnx.state(ours, nnx.Param)) == sum(p.numel() for p in ref.parameters()) == U.num_params(cfg)
    # FiLM conditioning and the step embedding both move the output
    other_cond = run(ours, sample, t, cond + 1.0)
    other_t = run(ours, sample, t + 1, cond)
    assert float(jnp.abs(other_cond - out).max()) > 1e-2 and float(jnp.abs(other_t - out).max()) > 1e-3
    with pytest.raises(ValueError, match="divisible"):
        ours(sample[:, :14], t, cond)
    with pytest.raises(ValueError, match="global_cond"):
        ours(sample, t, cond[:, :5])


# --------------------------------------------------------------------------------------------------
# attention pool


def test_attention_pool_ignores_padded_tokens():
    pool = AttentionPool(16, num_layers=2, num_heads=4, num_queries=2, rngs=_rngs(2))
    rng = np.random.default_rng(11)
    tokens = rng.standard_normal((2, 7, 16)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0, 1, 1], [1, 0, 0, 0, 0, 0, 1]], bool)
    run = jax.jit(lambda p, x, m: p(x, m))
    out = run(pool, tokens, mask)
    assert out.shape == (2, 32)
    garbage = tokens.copy()
    garbage[~mask] = 1e4 * rng.standard_normal(((~mask).sum(), 16))
    np.testing.assert_allclose(run(pool, garbage, mask), out, atol=1e-6)
    # equal to pooling the real tokens alone
    for row in range(2):
        alone = jax.jit(lambda p, x: p(x))(pool, tokens[row : row + 1, mask[row]])
        np.testing.assert_allclose(alone[0], out[row], atol=1e-5)
    # and the mask matters: attending to everything changes the result
    assert float(jnp.abs(run(pool, tokens, np.ones_like(mask)) - out).max()) > 1e-3


# --------------------------------------------------------------------------------------------------
# the whole policy

TINY = dict(
    resnet=R.ResNetConfig(widths=(16, 16, 16, 16)),
    text_width=16,
    width=16,
    pool_heads=2,
    down_dims=(16, 32),
    diffusion_step_embed_dim=16,
    horizon=8,
)


def _batch(config: PolicyConfig, batch: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """One synthetic chunk repeated `batch` times, with padded code/cache tokens and a padded tail."""
    rng = np.random.default_rng(seed)
    one = {
        "image": rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8),
        "lowdim": rng.standard_normal((1, max(config.lowdim_dim, 1))).astype(np.float32),
        "state": rng.uniform(-1, 1, (1, 9)).astype(np.float32),
        "action": np.clip(np.cumsum(rng.normal(0, 0.3, (1, config.horizon, 7)), axis=1), -1, 1).astype(np.float32),
        "action_mask": (np.arange(config.horizon) < config.horizon - 2)[None],
    }
    for stream, length, real in (("code", 6, 4), ("cache_info", 5, 2), ("prompt", 6, 6), ("oracle", 3, 3)):
        one[f"{stream}_tokens"] = rng.standard_normal((1, length, config.text_width)).astype(np.float32)
        one[f"{stream}_mask"] = (np.arange(length) < real)[None]
    return {k: np.repeat(v, batch, axis=0) for k, v in one.items()}


OVERFIT = dict(
    TINY,
    conditioning="code_oracle",
    down_dims=(64,),
    diffusion_step_embed_dim=32,
    diffusion=DiffusionConfig(loss_weighting="mse"),
)
OVERFIT_STEPS = 120


@pytest.fixture(scope="module")
def trained():
    """A tiny two-camera image policy (all three text streams) trained with Adam on one synthetic
    chunk (8 copies, each step drawing fresh diffusion steps and noise). The later policy tests
    reuse it, so the image path is compiled once. MSE weighting: the paper's ELBO weights span 0.25
    to 28 over t, so a short run's loss mostly says which t were drawn; the weighting itself is
    tested in tests/test_diffusion.py. The UNet has one level of 64 channels (its full structure is
    checked against diffusion_policy's above): TINY's 2-channel GroupNorm groups learn epsilon too
    slowly for a short test, and each extra level adds much compile time on XLA:CPU."""
    config = PolicyConfig(**OVERFIT)
    model = CodePolicy(config, rngs=_rngs(0))
    batch = _batch(config, batch=8)
    graphdef, params = nnx.split(model)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key):
        (loss, metrics), grads = jax.value_and_grad(
            lambda p: dp_loss(nnx.merge(graphdef, p), batch, key), has_aux=True
        )(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, metrics["mse"], optax.global_norm(grads)

    losses, grad_norms = [], []
    for i in range(OVERFIT_STEPS):
        params, opt_state, mse, grad_norm = step(params, opt_state, jax.random.key(i, impl="rbg"))
        losses.append(float(mse))
        grad_norms.append(float(grad_norm))
    return config, nnx.merge(graphdef, params), batch, np.array(losses), np.array(grad_norms)


def test_policy_overfits_one_chunk(trained):
    _, _, _, losses, grad_norms = trained
    assert np.all(np.isfinite(losses)) and np.all(np.isfinite(grad_norms)) and grad_norms[0] > 0
    first, last = losses[:20].mean(), losses[-20:].mean()
    # epsilon prediction starts near the noise variance (~1); 120 steps on one chunk go far below
    assert first > 0.5, first
    assert last < 0.3 and last < 0.4 * first, (first, last)


def _obs_text(config, batch, rows=2):
    obs = {k: batch[k][:rows] for k in ("image", "wrist_image", "state", "lowdim")}
    text = {s: TextTokens(batch[f"{s}_tokens"][:rows], batch[f"{s}_mask"][:rows]) for s in config.streams}
    return obs, text


def test_ddim_sampling_is_deterministic_given_the_rng(trained):
    config, model, batch, *_ = trained
    obs, text = _obs_text(config, batch)
    sample = nnx.jit(lambda m, o, t, key: m.sample(o, t, key))
    a = sample(model, obs, text, jax.random.key(5))
    b = sample(model, obs, text, jax.random.key(5))
    c = sample(model, obs, text, jax.random.key(6))
    assert a.shape == (2, config.horizon, 7)
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - c).max()) > 1e-4
    assert float(jnp.abs(a).max()) <= 1.0  # the last DDIM step returns the clipped x0
    # unnormalize hook: the dataset's normaliser maps [-1, 1] back to robot units
    norm = Normalizer(np.linspace(-0.5, 0.0, 7), np.linspace(0.5, 2.0, 7), skip=(6,))
    robot = CodePolicy.unnormalize(a, norm)
    a = np.asarray(a)
    np.testing.assert_allclose(
        robot[..., :6], (a[..., :6] + 1) / 2 * (norm.high - norm.low)[:6] + norm.low[:6], atol=1e-6
    )
    np.testing.assert_array_equal(robot[..., 6], a[..., 6])


def test_text_masks_cameras_and_conditioning_modes(trained):
    config, model, batch, *_ = trained
    obs, text = _obs_text(config, batch)
    assert config.streams == ("code", "cache_info", "oracle")
    encode = nnx.jit(lambda m, o, t: m.encode(o, t))
    cond = encode(model, obs, text)
    assert cond.shape == (2, 16)

    def moved(new):
        return float(jnp.abs(new - cond).max())

    # padded T5 tokens do not reach the condition; real ones do
    code = text["code"]
    garbage = np.where(code.mask[..., None], code.embeddings, 100.0).astype(np.float32)
    np.testing.assert_allclose(encode(model, obs, {**text, "code": TextTokens(garbage, code.mask)}), cond, atol=1e-5)
    shifted = np.where(code.mask[..., None], code.embeddings + 1.0, code.embeddings).astype(np.float32)
    assert moved(encode(model, obs, {**text, "code": TextTokens(shifted, code.mask)})) > 1e-4
    # both cameras and the proprioception token reach it
    for key in ("image", "wrist_image"):
        assert moved(encode(model, {**obs, key: 255 - obs[key]}, text)) > 1e-4, key
    assert moved(encode(model, {**obs, "state": -obs["state"]}, text)) > 1e-4
    # the oracle hook matters when present and is optional (traced abstractly: no recompile)
    oracle = text["oracle"]
    assert moved(encode(model, obs, {**text, "oracle": TextTokens(oracle.embeddings + 1.0, oracle.mask)})) > 1e-4
    without = nnx.eval_shape(lambda m: m.encode(obs, {k: v for k, v in text.items() if k != "oracle"}), model)
    assert without.shape == cond.shape
    with pytest.raises(KeyError, match="cache_info"):
        model.encode(obs, {"code": code})
    with pytest.raises(KeyError, match="wrist_image"):
        model.encode({k: v for k, v in obs.items() if k != "wrist_image"}, text)
    # the flat baseline reads the task prompt and nothing else
    prompt_config = PolicyConfig(**TINY, conditioning="prompt")
    assert prompt_config.streams == ("prompt",)
    assert prompt_config.token_kinds == ("prompt", "image", "wrist_image", "proprio")
    abstract = nnx.eval_shape(lambda: CodePolicy(prompt_config, rngs=nnx.Rngs(0)))
    with pytest.raises(KeyError, match="prompt"):
        abstract.encode(obs, {"code": code})
    assert PolicyConfig(**TINY).token_kinds == ("code", "cache_info", "image", "wrist_image", "proprio")


def test_unet_film_identity_init(trained):
    config = trained[0]
    twins = [CodePolicy(dataclasses.replace(config, film_identity_init=f), rngs=_rngs(0)) for f in (True, False)]
    c = twins[0].unet.config
    bound = 1 / np.sqrt(c.diffusion_step_embed_dim + c.global_cond_dim)  # PyTorch's Linear init
    for name in ("mid_modules", "down_modules"):
        ours, plain = (getattr(m.unet, name)[0] for m in twins)
        if name == "down_modules":
            ours, plain = ours.res1, plain.res1
        width = ours.out_channels
        bias, plain_bias = np.asarray(ours.cond_encoder.bias[...]), np.asarray(plain.cond_encoder.bias[...])
        np.testing.assert_allclose(bias, plain_bias + np.r_[np.ones(width), np.zeros(width)], atol=1e-6)
        assert np.all(np.abs(plain_bias) <= bound) and np.all(np.abs(bias[:width] - 1) <= bound)


def test_lowdim_variant():
    """The state-vector variant: same conditioning, no cameras (traced abstractly: no compile)."""
    config = PolicyConfig(**TINY, observation="lowdim", lowdim_dim=3)
    assert config.token_kinds == ("code", "cache_info", "lowdim", "proprio")
    batch = _batch(config, batch=2)

    def run():
        model = CodePolicy(config, rngs=nnx.Rngs(0))
        assert model.camera_encoders is None and model.lowdim_proj is not None
        obs, text = _obs_text(config, batch)
        return (
            dp_loss(model, batch, jax.random.key(0)),
            model.tokens(obs, text)[0],
            model.sample(obs, text, jax.random.key(1)),
        )

    (loss, metrics), tokens, actions = nnx.eval_shape(run)
    assert loss.shape == () and set(metrics) == {"mse", "valid_fraction"}
    assert tokens.shape == (2, 6 + 5 + 1 + 1, 16)  # code, cache info, the state vector, proprioception
    assert actions.shape == (2, config.horizon, 7)
    with pytest.raises(KeyError, match="lowdim"):
        nnx.eval_shape(
            lambda: CodePolicy(config, rngs=nnx.Rngs(0)).encode({"state": batch["state"]}, _obs_text(config, batch)[1])
        )


def test_policy_config_from_tiny_config():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "configs", "dp", "tiny.py")
    spec = importlib.util.spec_from_file_location("dp_tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for arg, mode in (("hierarchical", "code"), ("flat", "prompt")):
        c = module.get_config(arg)
        pc = PolicyConfig.from_config(c)
        assert pc.conditioning == mode and pc.horizon == c.data.horizon and pc.width == c.model.pool_width
        assert pc.down_dims == tuple(c.model.down_dims) and pc.resnet.widths == tuple(c.model.resnet_widths)
        assert pc.diffusion == DiffusionConfig.from_config(c.diffusion)
    c.model.unknown_key = 1
    with pytest.raises(ValueError, match="unknown_key"):
        PolicyConfig.from_config(c)
    with pytest.raises(ValueError, match="horizon"):
        PolicyConfig(**{**TINY, "horizon": 10, "down_dims": (16, 32, 64)})


@pytest.mark.parametrize("observation", ["image", "lowdim"])
def test_every_param_has_logical_axes(observation):
    head = "spatial_softmax" if observation == "image" else "avgpool"
    config = PolicyConfig(
        **{**TINY, "resnet": R.ResNetConfig(widths=(16, 16, 16, 16), head=head)},
        observation=observation,
        lowdim_dim=5,
        cond_predict_scale=observation == "image",
    )
    model = nnx.eval_shape(lambda: CodePolicy(config, rngs=nnx.Rngs(0)))
    leaves = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert len(leaves) > 20
    for path, var in leaves:
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == len(var.shape), (path, axes, var.shape)
        assert set(axes) <= set(LOGICAL_AXES), (path, axes)
