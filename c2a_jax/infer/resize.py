"""Camera frames resized to a model's input size, the way training resized them.

Why: the VLM and the DP of one evaluation may be trained at different image sizes (the paper's
LLaVA reads 336 px, its DP 128 px). The simulator then renders once, at the larger size, and each
model receives its own. Training resized the RLDS frames with ``tf.image.resize(bilinear,
antialias=True)`` and rounded to uint8 (`c2a_jax.data.rlds`); ``jax.image.resize`` with method
``linear`` and antialiasing is the same scale-and-translate kernel, so inference needs no
TensorFlow (checked against it in tests/test_infer_resize.py).
"""

from __future__ import annotations

import jax
import numpy as np


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 frames (..., H, W, C) as (..., size, size, C); returned unchanged when already that size."""
    images = np.asarray(images)
    if images.ndim < 3:
        raise ValueError(f"expected frames (..., H, W, C), got shape {images.shape}")
    if images.shape[-3:-1] == (size, size):
        return images
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {images.dtype}")
    lead, (h, w, c) = images.shape[:-3], images.shape[-3:]
    flat = images.reshape(-1, h, w, c).astype(np.float32)
    out = jax.image.resize(flat, (flat.shape[0], size, size, c), method="linear", antialias=True)
    out = np.clip(np.round(np.asarray(out)), 0, 255).astype(np.uint8)
    return out.reshape(*lead, size, size, c)
