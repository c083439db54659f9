"""Setup's smoke check: can this machine render a ManiSkill3 camera frame?

ManiSkill3 renders through SAPIEN 3 and Vulkan. On a CPU-only machine that needs Mesa's lavapipe
24 or newer; with stock Debian 12 (Mesa 22.3) SAPIEN finds no supported device, and ManiSkill
silently falls back to disabled rendering. This check builds one small scene, renders one frame
from its camera, prints the Vulkan device, and exits non-zero with what to install when it fails.

    python -m c2a_jax.sim.render_check
"""

from __future__ import annotations

import sys
import time

INSTALL_HINT = (
    "Rendering is unavailable. ManiSkill3 needs a Vulkan device: on a CPU-only machine install Mesa's "
    "lavapipe, Mesa 24 or newer (Debian 12: `apt-get install -t bookworm-backports "
    "mesa-vulkan-drivers libvulkan1`; stock Mesa 22.3 fails with 'Failed to find a supported "
    "physical device'), or an NVIDIA driver with its Vulkan ICD on a GPU machine. "
    "`make setup` does this for you on Debian."
)


def vulkan_device() -> str:
    """The name of the Vulkan device SAPIEN renders with ('' when there is none)."""
    import sapien

    summary = sapien.render.get_device_summary()
    for line in summary.splitlines():
        if line.strip().startswith("GPU:") or line.strip().startswith("CPU:"):
            return line.split(":", 1)[1].strip()
    return ""


def render_one_frame(size: int = 64) -> tuple[str, float, float]:
    """Render one `size` x `size` base-camera frame of ManiSkill3's PickCube-v1.

    Returns (device name, mean pixel value, seconds). Raises RuntimeError when nothing rendered.
    """
    start = time.time()
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401  (registers the environments)

    env = gym.make(
        "PickCube-v1",
        obs_mode="rgb",
        sim_backend="physx_cpu",
        render_backend="cpu",
        sensor_configs=dict(width=size, height=size),
    )
    try:
        obs, _ = env.reset(seed=0)
        rgb = obs["sensor_data"]["base_camera"]["rgb"]
        mean = float(rgb.float().mean())
    finally:
        env.close()
    device = vulkan_device()
    if not device or mean <= 0.0:
        raise RuntimeError(f"no image was rendered (device {device!r}, mean pixel {mean})")
    return device, mean, time.time() - start


def main() -> int:
    try:
        device, mean, seconds = render_one_frame()
    except Exception as e:  # noqa: BLE001 -- any failure here means the same thing to the user
        print(f"render check FAILED: {type(e).__name__}: {e}\n{INSTALL_HINT}", file=sys.stderr)
        return 1
    print(
        f"render check ok: ManiSkill3 rendered a 64x64 frame on Vulkan device '{device}' "
        f"(mean pixel {mean:.1f}, {seconds:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
