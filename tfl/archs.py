"""The architecture registry: one entry per backbone, with its size, preprocessing and unfreeze blocks."""

from __future__ import annotations

from dataclasses import dataclass, field

from tfl.errors import TflError


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
    preprocessing: str  # key of tfl.model.PREPROCESSING: "tf" ([-1, 1]) or "caffe" (BGR, mean-subtracted)
    block_ends: tuple[str, ...]
    stem_blocks: int
    constructor_kwargs: tuple[str, ...] = field(default=())  # extra config keys passed through (alpha)
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
            preprocessing="tf",
            block_ends=_MOBILENETV2_BLOCK_ENDS,
            stem_blocks=4,
            constructor_kwargs=("alpha",),
            description="MobileNetV2 (alpha 0.35-1.4): small and fast, for phones",
        ),
        ArchSpec(
            name="resnet50",
            keras_constructor="ResNet50",
            image_size=224,
            min_image_size=32,
            preprocessing="caffe",
            block_ends=_resnet50_block_ends(),
            stem_blocks=4,
            description="ResNet50: 23.6M parameters, a strong GPU-server baseline",
        ),
        ArchSpec(
            name="inceptionv3",
            keras_constructor="InceptionV3",
            image_size=299,
            min_image_size=75,
            preprocessing="tf",
            block_ends=tuple(f"mixed{i}" for i in range(11)),
            stem_blocks=1,
            description="InceptionV3: 21.8M parameters, 299 px input",
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
        raise TflError(
            f"Unknown architecture '{name}'. Choose one of: {', '.join(ARCHS)}."
        ) from None
