"""Training-time augmentation presets: one fused random affine transform, Keras 3 core preprocessing layers, pixel
noise, MixUp/CutMix.

Keras and TensorFlow are imported inside the functions: the preset names (PRESETS) are read by the config and the
CLI before the Keras backend is chosen, and importing Keras would fix it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tfl.errors import unknown

if TYPE_CHECKING:
    import tensorflow as tf


class RandomAffine:
    """Random horizontal flip, rotation, zoom and translation of a float32 image batch in ONE resampling.

    Keras 3 has each of these as its own layer (RandomFlip, RandomRotation, RandomZoom, RandomTranslation), and
    chaining them resamples the batch four times: 790 img/s at 128 px on 2 cores, slower than the model it feeds.
    Composing the four into one matrix per image costs one resampling (2.4k vs 0.8k img/s on synthetic batches;
    a whole default run 143 s vs 199 s in benchmarks/augment.py) and blurs the image once instead of three times. Ranges follow the Keras layers':
    rotation as a fraction of a full turn, zoom as (in, out) fractions (negative zooms in), translation as a
    fraction of the image side.
    """

    def __init__(self, rotation: float = 0.05, zoom: tuple[float, float] = (-0.15, 0.1), translation: float = 0.1,
                 flip: bool = True, fill_mode: str = "reflect", seed: int = 42):
        self.rotation, self.zoom, self.translation, self.flip = rotation, zoom, translation, flip
        self.fill_mode, self.seed = fill_mode.upper(), seed

    def sample(self, batch: tf.Tensor) -> dict[str, tf.Tensor]:
        """Per-image parameters: flip sign, angle (radians), zoom factor, shift (fractions of width and height)."""
        import tensorflow as tf

        def uniform(low, high, offset, shape=(batch,)):
            return tf.random.uniform(shape, low, high, seed=self.seed + offset)
        flip = tf.where(uniform(0.0, 1.0, 0) < 0.5, -1.0, 1.0) if self.flip else tf.ones([batch])
        turn = 2 * math.pi * self.rotation
        return {"flip": flip, "angle": uniform(-turn, turn, 1), "zoom": uniform(1 + self.zoom[0], 1 + self.zoom[1], 2),
                "shift": uniform(-self.translation, self.translation, 3, shape=(batch, 2))}

    def __call__(self, images: tf.Tensor, training: bool = True) -> tf.Tensor:
        import tensorflow as tf

        if not training:
            return images
        return apply_affine(images, self.sample(tf.shape(images)[0]), self.fill_mode)


def affine_transforms(params: dict[str, tf.Tensor], height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """[batch, 8] projective transforms mapping each output pixel to the input pixel it samples.

    input = center + R(angle) @ diag(flip * zoom, zoom) @ (output - center) + shift * (width, height)
    """
    import tensorflow as tf

    cos, sin = tf.cos(params["angle"]), tf.sin(params["angle"])
    zoom_x, zoom_y = params["flip"] * params["zoom"], params["zoom"]
    a0, a1, b0, b1 = cos * zoom_x, -sin * zoom_y, sin * zoom_x, cos * zoom_y
    center_x, center_y = (tf.cast(width, tf.float32) - 1) / 2, (tf.cast(height, tf.float32) - 1) / 2
    a2 = center_x - a0 * center_x - a1 * center_y + params["shift"][:, 0] * tf.cast(width, tf.float32)
    b2 = center_y - b0 * center_x - b1 * center_y + params["shift"][:, 1] * tf.cast(height, tf.float32)
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def apply_affine(images: tf.Tensor, params: dict[str, tf.Tensor], fill_mode: str = "REFLECT") -> tf.Tensor:
    import tensorflow as tf

    height, width = tf.shape(images)[1], tf.shape(images)[2]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=affine_transforms(params, height, width), output_shape=tf.stack([height, width]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode=fill_mode)


class PixelNoise:
    """Gaussian noise of a random strength per image (standard deviation 0 to `max_stddev` on 0..255), clipped.

    The pixels an app feeds differ from tfl's by a few levels (another JPEG decoder, another resize, float16 or int8
    arithmetic inside the file); trained with this, cats5's fine-tuned model moved its top-1 on 0% of the photos under
    +-1 of noise instead of 2%, and MediaPipe's float32 file agreed with it on 98% instead of 97% (benchmarks/README.md,
    "Low-pass and pixel noise"). Not keras.layers.GaussianNoise: its strength is one fixed value, and as a Keras
    layer it would run on the Keras backend (JAX) inside tf.data."""

    def __init__(self, max_stddev: float = 6.0, seed: int = 42):
        self.max_stddev, self.seed = max_stddev, seed

    def __call__(self, images: tf.Tensor, training: bool = True) -> tf.Tensor:
        import tensorflow as tf

        if not training:
            return images
        shape = tf.shape(images)
        stddev = tf.random.uniform([shape[0], 1, 1, 1], 0.0, self.max_stddev, seed=self.seed)
        return tf.clip_by_value(images + stddev * tf.random.normal(shape, seed=self.seed + 1), 0.0, 255.0)


def light_layers(seed: int) -> list:
    import keras

    return [RandomAffine(seed=seed), keras.layers.RandomContrast(0.15, value_range=(0, 255), seed=seed + 4),
            PixelNoise(seed=seed + 6)]


def rand_augment(seed: int):
    import keras

    return keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5, seed=seed)


PRESETS_VERSION = 2  # changes whenever a preset transforms images otherwise (2: pixel noise); part of cache keys
PRESETS = {
    "none": lambda seed: [],
    "light": light_layers,
    "strong": lambda seed: light_layers(seed) + [rand_augment(seed + 5)],
}


def build_augmenter(preset: str, seed: int = 42):
    """A tf.data map function randomly transforming float32 pixel batches in 0..255, or None for 'none'.

    The layers are applied one by one rather than wrapped in keras.Sequential: each Keras preprocessing layer
    switches to TensorFlow ops inside tf.data, but a Sequential would run them on the Keras backend (JAX).
    """
    if preset not in PRESETS:
        raise unknown("augment preset", preset, PRESETS)
    layers = PRESETS[preset](seed)
    return apply_in_turn(layers) if layers else None


def apply_in_turn(layers: list):
    """A function of a pixel batch applying each augmentation layer in training mode, one after the other."""
    def augment(images):
        for layer in layers:
            images = layer(images, training=True)
        return images

    return augment


def build_mixer(mixup_alpha: float, cutmix_alpha: float, seed: int = 42):
    """A tf.data map function mixing images and one-hot labels of a batch; each batch gets one of the two."""
    import keras

    import tensorflow as tf
    mixers = []
    if mixup_alpha > 0:
        mixers.append(keras.layers.MixUp(alpha=mixup_alpha, seed=seed))
    if cutmix_alpha > 0:
        mixers.append(keras.layers.CutMix(factor=cutmix_alpha, seed=seed + 1))
    if not mixers:
        return None

    def apply(layer, images, labels):
        mixed = layer({"images": images, "labels": labels}, training=True)
        return mixed["images"], mixed["labels"]

    def mix(images, labels):
        if len(mixers) == 1:
            return apply(mixers[0], images, labels)
        return tf.cond(tf.random.uniform([]) < 0.5,
                       lambda: apply(mixers[0], images, labels),
                       lambda: apply(mixers[1], images, labels))

    return mix
