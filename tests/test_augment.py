"""The fused random affine transform: each component does what the Keras layer of that name would do; pixel noise."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfl.augment import PixelNoise, RandomAffine, apply_affine, build_augmenter

IMAGES = tf.constant(np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32"))


def params(**values):
    fixed = {"flip": [1.0, 1.0], "angle": [0.0, 0.0], "zoom": [1.0, 1.0], "shift": [[0.0, 0.0], [0.0, 0.0]]}
    return {name: tf.constant(values.get(name, default), tf.float32) for name, default in fixed.items()}


def test_identity_parameters_leave_images_unchanged():
    np.testing.assert_array_equal(apply_affine(IMAGES, params()), IMAGES)


def test_flip_mirrors_left_right():
    np.testing.assert_array_equal(apply_affine(IMAGES, params(flip=[-1.0, -1.0])), tf.image.flip_left_right(IMAGES))


def test_quarter_turn_is_rot90():
    turned = apply_affine(IMAGES, params(angle=[math.pi / 2] * 2))
    np.testing.assert_allclose(turned, tf.image.rot90(IMAGES), atol=1e-3)


def test_shift_moves_pixels_by_that_fraction_of_the_side():
    shifted = apply_affine(IMAGES, params(shift=[[2 / 8, 0.0]] * 2))  # output x samples input x + 2
    np.testing.assert_array_equal(shifted[:, :, :6], IMAGES[:, :, 2:])


def test_zooming_in_by_two_keeps_the_centre_and_magnifies():
    zoomed = apply_affine(tf.reshape(tf.range(64.0), [1, 8, 8, 1]), params(zoom=[0.5], flip=[1.0], angle=[0.0],
                                                                           shift=[[0.0, 0.0]]))
    row = zoomed[0, 4, :, 0].numpy()  # input row 3.75 (between rows 3 and 4): its values step by half a pixel
    np.testing.assert_allclose(np.diff(row), 0.5, atol=1e-4)


def test_sampled_parameters_stay_in_range_and_flip_about_half():
    sampled = RandomAffine(rotation=0.05, zoom=(-0.15, 0.1), translation=0.1, seed=3).sample(2000)
    assert np.abs(sampled["angle"]).max() <= 2 * math.pi * 0.05
    assert 0.85 <= np.min(sampled["zoom"]) and np.max(sampled["zoom"]) <= 1.1
    assert np.abs(sampled["shift"]).max() <= 0.1
    assert 0.4 < np.mean(sampled["flip"] < 0) < 0.6
    assert np.std(sampled["angle"]) > 0.1 and np.std(sampled["zoom"]) > 0.05


def test_light_preset_changes_images_but_not_their_shape_or_range():
    augmented = build_augmenter("light", seed=0)(IMAGES)
    assert augmented.shape == IMAGES.shape and augmented.dtype == tf.float32
    assert not np.allclose(augmented, IMAGES)
    assert float(tf.reduce_min(augmented)) >= 0 and float(tf.reduce_max(augmented)) <= 255


def test_inference_mode_is_the_identity():
    np.testing.assert_array_equal(RandomAffine()(IMAGES, training=False), IMAGES)


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_presets_run_inside_tf_data(preset):
    augmenter = build_augmenter(preset, seed=0)
    dataset = tf.data.Dataset.from_tensors(IMAGES).repeat(3).map(augmenter, num_parallel_calls=2)
    batches = [batch.numpy() for batch in dataset]
    assert len(batches) == 3 and not np.allclose(batches[0], batches[1]), "each batch draws new parameters"


def test_pixel_noise_has_a_random_strength_per_image_up_to_its_maximum():
    grey = tf.fill([64, 16, 16, 3], 128.0)
    noisy = PixelNoise(max_stddev=6.0, seed=0)(grey).numpy()
    stddevs = (noisy - 128.0).reshape(64, -1).std(axis=1)
    assert stddevs.max() < 6.6 and stddevs.min() < 1.5 and stddevs.max() > 4.5, stddevs
    assert float(np.abs(noisy.reshape(64, -1).mean(axis=1) - 128).max()) < 0.6, "noise, not a brightness change"
    assert noisy.min() >= 0 and noisy.max() <= 255 and PixelNoise()(tf.fill([1, 4, 4, 3], 255.0)).numpy().max() <= 255
    np.testing.assert_array_equal(PixelNoise()(IMAGES, training=False), IMAGES)
