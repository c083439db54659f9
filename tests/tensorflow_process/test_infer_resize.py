"""Inference resizes camera frames as training's TensorFlow pipeline did (c2a_jax/infer/resize.py
against tf.image.resize(bilinear, antialias) + round, the RLDS reader's resize)."""

import numpy as np
import pytest
import tensorflow as tf

from c2a_jax.infer.resize import resize_images


@pytest.mark.parametrize("source,size", [(336, 128), (128, 64), (64, 128), (100, 37), (48, 48)])
def test_resize_matches_the_training_pipeline(source, size):
    frames = np.random.default_rng(source + size).integers(0, 256, (3, source, source, 3), dtype=np.uint8)
    expected = tf.image.resize(frames, (size, size), method="bilinear", antialias=True)
    expected = tf.cast(tf.clip_by_value(tf.round(expected), 0, 255), tf.uint8).numpy()
    got = resize_images(frames, size)
    assert got.shape == expected.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float rounding at .5 only


def test_resize_refuses_what_is_not_a_uint8_frame():
    with pytest.raises(ValueError, match="uint8"):
        resize_images(np.zeros((8, 8, 3), np.float32), 4)
    with pytest.raises(ValueError, match="H, W, C"):
        resize_images(np.zeros((8, 8), np.uint8), 4)
