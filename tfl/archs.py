"""The backbone table: one self-contained entry per `keras.applications` backbone (constructor and its arguments,
input size, preprocessing, blocks, stem, which normalization layers stay frozen). Adding a backbone is one entry;
tests/test_archs.py checks every entry against the model it builds.

Keras is imported inside the preprocessing functions only: the table is read by the config and the CLI before the
Keras backend is chosen."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from tfl.errors import unknown

BACKBONE_OUTPUT = "<output>"  # a last block end standing for the backbone's last layer (when Keras names it anew)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tf_preprocessing():
    """InceptionV3 / MobileNetV2: pixels 0..255 to [-1, 1]."""
    import keras

    return keras.layers.Rescaling(scale=1 / 127.5, offset=-1.0, name="preprocess_tf")


def caffe_preprocessing():
    """ResNet50: RGB to BGR and ImageNet mean subtraction, as one frozen 1x1 convolution.

    A built-in layer rather than a custom one, so model.keras loads anywhere without tfl.
    """
    import keras
    import numpy as np

    rgb_to_bgr = np.zeros((1, 1, 3, 3), dtype="float32")
    for rgb_channel in range(3):
        rgb_to_bgr[0, 0, rgb_channel, 2 - rgb_channel] = 1.0
    return keras.layers.Conv2D(3, 1, name="preprocess_caffe", trainable=False,
                               kernel_initializer=keras.initializers.Constant(rgb_to_bgr),
                               bias_initializer=keras.initializers.Constant(-np.asarray(CAFFE_BGR_MEAN)))


def torch_preprocessing():
    """EfficientNetV2-B*: pixels / 255, then ImageNet mean and standard deviation per channel, as one frozen 1x1
    convolution (Keras' own `include_preprocessing` Normalization layer exports to ONNX as two missing inputs)."""
    import keras
    import numpy as np

    mean, std = np.asarray(TORCH_MEAN), np.asarray(TORCH_STD)
    return keras.layers.Conv2D(3, 1, name="preprocess_torch", trainable=False,
                               kernel_initializer=keras.initializers.Constant(np.diag(1 / (255 * std))[None, None]),
                               bias_initializer=keras.initializers.Constant(-mean / std))


def built_in_preprocessing():
    """Backbones that take pixels 0..255 themselves (`include_preprocessing=True`): nothing to add."""
    return None


@dataclass(frozen=True)
class ArchSpec:
    """Everything tfl needs to know about one `keras.applications` backbone.

    `block_ends` names, bottom to top, the layer that closes each block of the backbone.
    Unfreezing the top N blocks trains every layer after `block_ends[-N - 1]`.
    `stem_blocks` counts the bottom blocks holding a layer that outputs at stride 4 or less (tests/test_archs.py
    checks it against the built backbone). The auto plan keeps them frozen: they are generic edge and colour
    filters, and the costliest to train, since their activations are the largest (MobileNetV2-0.35 trains 1.95x
    faster at 128 px and 1.68x at 224 with them frozen: benchmarks/stem.py).
    """

    name: str
    keras_constructor: str  # attribute of keras.applications
    image_size: int  # the size the ImageNet weights were trained at
    min_image_size: int  # keras.applications rejects anything smaller
    preprocessing: Callable  # a function making the layer that turns pixels 0..255 into the backbone's input, or None
    block_ends: tuple[str, ...]
    stem_blocks: int
    constructor_kwargs: tuple[str, ...] = field(default=())  # config keys passed to the constructor (alpha)
    fixed_kwargs: tuple[tuple[str, object], ...] = field(default=())  # constructor arguments of this entry
    frozen_layers: tuple[str, ...] = ("BatchNormalization",)  # layer classes that never train (running statistics)
    # Backbone layers whose pooled activations the unknown category reads beside the pooled features (tfl/unknown.py):
    # an earlier view of the photo tells apart photos that the fine-tuned last features map among the classes'.
    # Chosen by benchmarks/README.md, "None of these" (MobileNetV2 only; the others read the features alone).
    unknown_layers: tuple[str, ...] = ()
    description: str = ""

    @property
    def num_blocks(self) -> int:
        return len(self.block_ends)

    @property
    def tunable_blocks(self) -> int:
        """The blocks above the stem."""
        return self.num_blocks - self.stem_blocks


def _resnet50_block_ends() -> tuple[str, ...]:
    blocks_per_stage = {2: 3, 3: 4, 4: 6, 5: 3}
    ends = ["pool1_pool"]
    for stage, count in blocks_per_stage.items():
        ends += [f"conv{stage}_block{b}_out" for b in range(1, count + 1)]
    return tuple(ends)


def _mobilenetv3_block_ends(last: int) -> tuple[str, ...]:
    """The stem conv with the first inverted-residual block, each block after it (ending in its Add layer when it
    has a skip connection, else its projection BN), and the top 1x1 conv (whose activation Keras names anew)."""
    ends = []
    for block in range(last + 1):
        prefix = "expanded_conv" if block == 0 else f"expanded_conv_{block}"
        ends.append(prefix + ("_add" if block in _MOBILENETV3_RESIDUAL[last] else "_project_bn"))
    return (*ends, BACKBONE_OUTPUT)


_MOBILENETV3_RESIDUAL = {10: {2, 4, 5, 7, 9, 10}, 14: {0, 2, 4, 5, 7, 8, 9, 11, 13, 14}}
_EFFICIENTNETV2B0_BLOCK_ENDS = (
    "block1a_project_activation",
    *(f"block{stage}{letter}_{'project_bn' if letter == 'a' else 'add'}"
      for stage, count in ((2, 2), (3, 2), (4, 3), (5, 5), (6, 8)) for letter in "abcdefgh"[:count]),
    "top_activation",
)

# Inverted-residual blocks with a skip connection end in an Add layer, the others in their projection BN.
_MOBILENETV2_RESIDUAL_BLOCKS = {2, 4, 5, 7, 8, 9, 11, 12, 14, 15}
_MOBILENETV2_BLOCK_ENDS = (
    ("expanded_conv_project_BN",)
    + tuple(
        f"block_{b}_add" if b in _MOBILENETV2_RESIDUAL_BLOCKS else f"block_{b}_project_BN"
        for b in range(1, 17)
    )
    + ("out_relu",)
)

ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in [
        ArchSpec(
            name="mobilenetv2",
            keras_constructor="MobileNetV2",
            image_size=224,
            min_image_size=32,
            preprocessing=tf_preprocessing,
            block_ends=_MOBILENETV2_BLOCK_ENDS,
            stem_blocks=4,
            constructor_kwargs=("alpha",),
            # the last block's input, and block 6's (at 1/8 of the photo's size, before its stride-2 convolution)
            unknown_layers=("block_16_expand_relu", "block_6_expand_relu"),
            description="MobileNetV2 (alpha 0.35-1.4): small and fast, for phones",
        ),
        ArchSpec(
            name="resnet50",
            keras_constructor="ResNet50",
            image_size=224,
            min_image_size=32,
            preprocessing=caffe_preprocessing,
            block_ends=_resnet50_block_ends(),
            stem_blocks=4,
            description="ResNet50: 23.6M parameters, a strong GPU-server baseline",
        ),
        ArchSpec(
            name="inceptionv3",
            keras_constructor="InceptionV3",
            image_size=299,
            min_image_size=75,
            preprocessing=tf_preprocessing,
            block_ends=tuple(f"mixed{i}" for i in range(11)),
            stem_blocks=1,
            description="InceptionV3: 21.8M parameters, 299 px input",
        ),
        ArchSpec(
            name="mobilenetv3small",
            keras_constructor="MobileNetV3Small",
            image_size=224,
            min_image_size=32,
            preprocessing=built_in_preprocessing,
            block_ends=_mobilenetv3_block_ends(10),
            stem_blocks=2,
            fixed_kwargs=(("include_preprocessing", True),),
            description="MobileNetV3-Small: 0.9M parameters, the smallest, for phones",
        ),
        ArchSpec(
            name="mobilenetv3large",
            keras_constructor="MobileNetV3Large",
            image_size=224,
            min_image_size=32,
            preprocessing=built_in_preprocessing,
            block_ends=_mobilenetv3_block_ends(14),
            stem_blocks=4,
            fixed_kwargs=(("include_preprocessing", True),),
            description="MobileNetV3-Large: 3.0M parameters, for phones",
        ),
        ArchSpec(
            name="efficientnetv2b0",
            keras_constructor="EfficientNetV2B0",
            image_size=224,
            min_image_size=32,
            preprocessing=torch_preprocessing,
            block_ends=_EFFICIENTNETV2B0_BLOCK_ENDS,
            stem_blocks=3,
            fixed_kwargs=(("include_preprocessing", False),),
            description="EfficientNetV2-B0: 5.9M parameters, accurate for its size",
        ),
    ]
}


SMALL_PHOTO_SIDE = 96  # photos smaller than this are enlarged to SMALL_PHOTO_SIZE
SMALL_PHOTO_SIZE = 128


def auto_image_size(spec: ArchSpec, median_short_side: int | None) -> int:
    """The arch's own size, or less when the photos are smaller: upscaling adds compute, not detail. But tiny
    photos (CIFAR's 32 px, MNIST's 28) are enlarged: pretrained filters expect objects at about the scale they
    learned them (Big Transfer enlarges images under 96 px too); 32 px flowers went from 0.58 to 0.73 at 128."""
    if not median_short_side:
        return spec.image_size
    if median_short_side < SMALL_PHOTO_SIDE:
        return max(spec.min_image_size, min(spec.image_size, SMALL_PHOTO_SIZE))
    rounded_up = -(-median_short_side // 32) * 32
    return max(spec.min_image_size, min(spec.image_size, rounded_up))


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError:
        raise unknown("architecture", name, ARCHS) from None
