"""The classifier: pixels -> low-pass -> arch preprocessing -> frozen-BN backbone -> pooling -> dropout -> softmax
(or sigmoid); staged trainability."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import keras
import numpy as np

from tfl.archs import BACKBONE_OUTPUT, ArchSpec
from tfl.errors import TflError

BACKBONE_NAME = "backbone"
HEAD_NAME = "head"  # pooled features -> dropout -> softmax: the part a head-only stage trains
BINOMIAL = (0.25, 0.5, 0.25)  # the low-pass filter's taps, each way
# [3, 3, in, out]: each colour channel blurred on its own
LOW_PASS_KERNEL = (np.outer(BINOMIAL, BINOMIAL)[:, :, None, None] * np.eye(3)[None, None]).astype("float32")
MID_GREY = 127.5


@keras.saving.register_keras_serializable(package="tfl")
class LowPass(keras.layers.Layer):
    """A fixed 3x3 binomial blur of the pixels before the backbone; past the edges it sees mid-grey (127.5), as the
    backbone's own convolutions see zeros past theirs.

    ImageNet backbones answer pixel-level noise out of all proportion: on MobileNetV2-0.35, +-1 of noise on 0..255
    moved the pooled features by 10-12% and the classifier's top-1 on 1.5-7% of the photos, and the pixels of another
    JPEG decoder, another resize, float16 or int8 differ by that much. The blur cut that feature change 3.5-4x, with
    the same probe accuracy on cats5 and flowers (benchmarks/README.md, "Low-pass"). It has no weights and exports as
    one 3-channel convolution, the cheapest of the forms measured (a mirror pad, which TFLite runs outside XNNPACK,
    tripled the file's latency); it costs about 0.1 ms per image at 128 px and 0.35 ms at 224 on this CPU."""

    def call(self, pixels):
        ops = keras.ops
        return ops.conv(pixels - MID_GREY, ops.cast(LOW_PASS_KERNEL, pixels.dtype), strides=1, padding="same") \
            + MID_GREY

    def compute_output_shape(self, input_shape):
        return input_shape


def keras_weights_cache() -> str:
    """Where keras.utils.get_file looks for downloaded weights (Keras has no public accessor for it)."""
    from keras.src.backend import config as keras_config

    home = os.path.expanduser(keras_config.keras_home())
    if not os.access(home, os.W_OK):
        home = os.path.join("/tmp", ".keras")
    return os.path.join(home, "models")


def resolve_weights(weights: str) -> str | None:
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise TflError(f"Weights file '{weights}' does not exist. Pass --weights imagenet, --weights none, or the "
                       "path of a no-top backbone weights file (.weights.h5 or .h5).")
    return str(path)


def build_backbone(spec: ArchSpec, image_size: int, weights: str, alpha: float = 1.0) -> keras.Model:
    """The `keras.applications` backbone without its top; clear errors for offline downloads and bad files."""
    kwargs = dict(spec.fixed_kwargs) | ({"alpha": alpha} if "alpha" in spec.constructor_kwargs else {})
    constructor = getattr(keras.applications, spec.keras_constructor)
    resolved = resolve_weights(weights)
    try:
        # Keras warns once per layer it cannot fill (hundreds of lines for a file of another arch): collect them.
        with warnings.catch_warnings(record=True) as skipped:
            warnings.simplefilter("always")
            backbone = constructor(include_top=False, weights=resolved, input_shape=(image_size, image_size, 3),
                                   **kwargs)
        backbone.name = BACKBONE_NAME  # set after: EfficientNetV2's constructor reads its `name` as a model key
        unfilled = [str(w.message) for w in skipped if "Skipping" in str(w.message)]
        if unfilled:
            raise ValueError(f"{len(unfilled)} part(s) of the model found no weights in the file ({unfilled[0]})")
        return backbone
    except Exception as exc:
        message = str(exc)
        if "Collective ops is aborted" in message:  # another worker stopped while the weights were broadcast
            raise
        if resolved == "imagenet" and ("URL fetch failure" in message or "urlopen" in message):
            origin = re.search(r"failure on (\S+):\s", message)
            raise TflError(
                f"Could not download the ImageNet weights for {spec.name}"
                f"{' from ' + origin.group(1) if origin else ''} (is this machine offline?). Keras looks for them "
                f"first in its cache, {keras_weights_cache()}, where they were not found. Connect "
                "to the internet and run again, copy the file into that cache, or pass a local no-top weights file "
                "with --weights PATH (or --weights none to train from scratch)."
            ) from None
        if resolved not in (None, "imagenet"):
            raise TflError(
                f"Could not load the weights file '{weights}' into {spec.name}"
                f"{f' (alpha {alpha})' if 'alpha' in kwargs else ''}; Keras said: {message.splitlines()[0].rstrip(': ')}. "
                "Check that it holds no-top weights for the same architecture (and alpha)."
            ) from None
        raise


def build_model(spec: ArchSpec, num_classes: int, image_size: int, weights: str = "imagenet",
                alpha: float = 1.0, dropout: float = 0.2, activation: str = "softmax",
                low_pass: bool = True) -> keras.Model:
    """Raw RGB pixels 0..255 in, class probabilities (float32) out: softmax over the classes, or (sigmoid) one
    independent score per label. (Eight parameters: each is a part of the model.)"""
    backbone = build_backbone(spec, image_size, weights, alpha)
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    x = LowPass(name="low_pass")(pixels) if low_pass else pixels
    preprocessing = spec.preprocessing()
    x = x if preprocessing is None else preprocessing(x)
    x = backbone(x, training=False)  # BatchNormalization stays in inference mode, even when unfrozen
    features = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(pixels, build_head(features.shape[-1], num_classes, dropout, activation)(features), name=f"tfl_{spec.name}")
    set_trainable_blocks(model, spec, 0)
    return model


def build_head(feature_size: int, num_classes: int, dropout: float, activation: str = "softmax") -> keras.Model:
    features = keras.Input((feature_size,), name="features")
    x = keras.layers.Dropout(dropout, name="dropout")(features)
    probabilities = keras.layers.Dense(num_classes, activation=activation, dtype="float32", name="probabilities")(x)
    return keras.Model(features, probabilities, name=HEAD_NAME)


def get_head(model: keras.Model) -> keras.Model:
    return model.get_layer(HEAD_NAME)


def feature_extractor(model: keras.Model, skip: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> keras.Model:
    """pixels -> everything before the head, in inference mode, sharing the model's layers (the classifier is a
    chain of layers ending in its head); `skip`: names of layers left out (the low-pass, to measure it); `extra`:
    names of backbone layers whose activations, averaged over the image, are outputs too, after the features (the
    unknown category reads them). A name the backbone lacks is a ValueError."""
    head, backbone = get_head(model), get_backbone(model) if extra else None
    inner = backbone if not extra else keras.Model(
        backbone.inputs, [backbone.output, *(backbone.get_layer(name).output for name in extra)],
        name=f"{BACKBONE_NAME}_with_{len(extra)}_more")
    pixels = keras.Input(model.input_shape[1:], name="pixels")
    x, more = pixels, []
    for layer in model.layers[1:model.layers.index(head)]:
        if layer is backbone:
            x = inner(x, training=False)
            x, *more = x if extra else (x,)
        elif layer.name not in skip:
            x = layer(x, training=False)
    pooled = [keras.layers.GlobalAveragePooling2D(name=f"pool_{name}")(y) for name, y in zip(extra, more)]
    return keras.Model(pixels, [x, *pooled] if extra else x, name="feature_extractor")


def get_backbone(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE_NAME)


def first_trainable_index(backbone: keras.Model, spec: ArchSpec, unfreeze_blocks: int | str) -> int:
    """Index in backbone.layers of the first layer that trains when the top `unfreeze_blocks` blocks do."""
    if unfreeze_blocks == "all" or unfreeze_blocks >= spec.num_blocks:
        return 0
    if unfreeze_blocks == 0:
        return len(backbone.layers)
    boundary = spec.block_ends[-unfreeze_blocks - 1]
    names = [layer.name for layer in backbone.layers]
    if boundary == BACKBONE_OUTPUT:
        return len(backbone.layers)
    if boundary not in names:
        raise ValueError(f"{spec.name}: block end '{boundary}' is not a layer of the backbone")
    return names.index(boundary) + 1


def set_trainable_blocks(model: keras.Model, spec: ArchSpec, unfreeze_blocks: int | str) -> None:
    """Freeze the backbone but its top `unfreeze_blocks` blocks; BatchNormalization always stays frozen.

    The model must be compiled again afterwards for the change to take effect.
    """
    backbone = get_backbone(model)
    first = first_trainable_index(backbone, spec, unfreeze_blocks)
    backbone.trainable = first < len(backbone.layers)
    for index, layer in enumerate(backbone.layers):
        layer.trainable = index >= first and type(layer).__name__ not in spec.frozen_layers


def count_params(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def trainable_params(model: keras.Model) -> int:
    return count_params(model.trainable_weights)

