import keras
import numpy as np
import pytest

from tfl.archs import ARCHS, BACKBONE_OUTPUT, get_arch
from tfl.errors import TflError
from tfl.model import build_model, first_trainable_index, get_backbone
from tfl.model import get_head


def small_size(spec):
    return max(spec.min_image_size, 32)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_block_ends_are_backbone_layers_in_order(name):
    spec = ARCHS[name]
    model = build_model(spec, 3, small_size(spec), weights="none", alpha=0.35)
    names = [layer.name for layer in get_backbone(model).layers]
    ends = [names[-1] if block == BACKBONE_OUTPUT else block for block in spec.block_ends]
    positions = [names.index(block) for block in ends]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert names[-1] == ends[-1], "the last block must end at the backbone's output"


def output_side(layer) -> int | None:
    """The spatial side of a layer's output; None for layers that compute nothing per pixel (padding, pooling
    to a vector)."""
    shape = layer.output.shape
    return shape[1] if len(shape) == 4 and not isinstance(layer, keras.layers.ZeroPadding2D) else None


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_stem_blocks_are_exactly_the_blocks_with_a_layer_at_stride_4_or_less(name):
    spec = ARCHS[name]
    size = spec.image_size
    backbone = get_backbone(build_model(spec, 3, size, weights="none", alpha=0.35))
    layers = backbone.layers
    above_stem = first_trainable_index(backbone, spec, spec.tunable_blocks)
    with_top_stem_block = first_trainable_index(backbone, spec, spec.tunable_blocks + 1)
    sides = [output_side(layer) for layer in layers]
    assert all(side is None or side <= size / 8 for side in sides[above_stem:])
    assert any(side and side > size / 8 for side in sides[with_top_stem_block:above_stem])


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_every_arch_trains_one_step_on_tensorflow(name):
    spec = ARCHS[name]
    size = small_size(spec)
    model = build_model(spec, 3, size, weights="none", alpha=0.35)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical([0, 2], 3)
    before = [w.copy() for w in get_head(model).get_layer("probabilities").get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    after = get_head(model).get_layer("probabilities").get_weights()
    assert any(not np.allclose(b, a) for b, a in zip(before, after)), "one step must move the head"
    probabilities = model.predict_on_batch(x)
    assert probabilities.shape == (2, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_tf_preprocessing_is_built_in_scaling_to_minus_one_one():
    model = build_model(get_arch("mobilenetv2"), 2, 32, weights="none", alpha=0.35)
    layer = model.get_layer("preprocess_tf")
    out = np.asarray(layer(np.array([[[[0.0, 127.5, 255.0]]]], dtype="float32")))
    np.testing.assert_allclose(out.ravel(), [-1.0, 0.0, 1.0], atol=1e-6)


def test_caffe_preprocessing_matches_keras_resnet50_preprocess_input():
    model = build_model(get_arch("resnet50"), 2, 32, weights="none")
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    ours = np.asarray(model.get_layer("preprocess_caffe")(pixels))
    reference = keras.applications.resnet50.preprocess_input(pixels.copy())
    np.testing.assert_allclose(ours, reference, atol=1e-3)
    assert not model.get_layer("preprocess_caffe").trainable


def test_torch_preprocessing_matches_efficientnetv2s_own_layers():
    keras_own = keras.applications.EfficientNetV2B0(include_top=False, weights=None, input_shape=(32, 32, 3))
    normalized = keras.Model(keras_own.input, keras_own.get_layer("stem_conv").input)
    model = build_model(get_arch("efficientnetv2b0"), 2, 32, weights="none")
    pixels = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(model.get_layer("preprocess_torch")(pixels)),
                               np.asarray(normalized(pixels)), atol=1e-4)


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(TflError, match="Unknown architecture 'vgg'.*mobilenetv2"):
        get_arch("vgg")


@pytest.mark.parametrize("name, median_side, expected", [("mobilenetv2", 128, 128), ("mobilenetv2", 129, 160),
                                                         ("mobilenetv2", 3000, 224), ("inceptionv3", 40, 128),
                                                         ("inceptionv3", 100, 128), ("resnet50", None, 224)])
def test_auto_image_size_follows_the_photos_but_enlarges_tiny_ones(name, median_side, expected):
    from tfl.archs import auto_image_size

    assert auto_image_size(ARCHS[name], median_side) == expected


# added as table entries only; the default suite trains the smallest, `-m extended` the others
NEW_ENTRIES = ["mobilenetv3small", pytest.param("mobilenetv3large", marks=pytest.mark.extended),
               pytest.param("efficientnetv2b0", marks=pytest.mark.extended)]


@pytest.mark.integration
@pytest.mark.parametrize("name", NEW_ENTRIES)
def test_a_backbone_added_as_one_entry_trains_exports_every_format_and_predicts(name, tmp_path):
    import json

    import tfl
    from tests.conftest import write_class_folders

    data = write_class_folders(tmp_path / "data", per_class=6)
    run = tfl.finetune(data, arch=name, weights="none", image_size=32, batch_size=8, epochs=(2, 1),
                       output=tmp_path / "runs", name=name, echo=lambda s: None, verbose=0)
    assert run.config["arch"] == name and run.metrics["num_images"] == 3
    run.export("all", verify_images=6, echo=lambda s: None)
    report = json.loads(run.export_report_file.read_text())
    assert {"export/saved_model/1", "model_float32.tflite", "model.onnx"} <= set(report)
    for row in report.values():
        assert row.get("top1_agreement", 1.0) == 1.0, row
    photo = next((data / "red").glob("*.jpg"))
    tops = {kind: tfl.load(run.path / report_file).predict([photo], top_k=1)[0]["top"][0][0]
            for kind, report_file in (("keras", "model.keras"), ("saved_model", "export/saved_model/1"),
                                      ("tflite", "model_float32.tflite"), ("onnx", "model.onnx"))}
    assert len(set(tops.values())) == 1, tops
