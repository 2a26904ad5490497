"""Training-time augmentation presets built from Keras 3 core preprocessing layers, plus MixUp/CutMix."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfl.errors import TflError


def light_layers(seed: int) -> list:
    return [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.05, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomZoom((-0.15, 0.1), fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 3),
        keras.layers.RandomContrast(0.15, value_range=(0, 255), seed=seed + 4),
    ]


PRESETS = {
    "none": lambda seed: [],
    "light": light_layers,
    "strong": lambda seed: light_layers(seed) + [keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5, seed=seed + 5)],
}


def build_augmenter(preset: str, seed: int = 42):
    """A tf.data map function randomly transforming float32 pixel batches in 0..255, or None for 'none'.

    The layers are applied one by one rather than wrapped in keras.Sequential: each Keras preprocessing layer
    switches to TensorFlow ops inside tf.data, but a Sequential would run them on the Keras backend (JAX).
    """
    if preset not in PRESETS:
        raise TflError(f"Unknown augment preset '{preset}'. Choose one of: {', '.join(PRESETS)}.")
    layers = PRESETS[preset](seed)
    if not layers:
        return None

    def augment(images):
        for layer in layers:
            images = layer(images, training=True)
        return images

    return augment


def build_mixer(mixup_alpha: float, cutmix_alpha: float, seed: int = 42):
    """A tf.data map function mixing images and one-hot labels of a batch; each batch gets one of the two."""
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
