"""The staged plan really freezes what it says, and BatchNormalization never changes."""

import keras
import numpy as np
import pytest

from tfl.archs import ARCHS, get_arch
from tfl.config import Stage
from tfl.model import build_model, get_backbone, get_head, set_trainable_blocks, trainable_params
from tfl.train import compile_for_stage


def batchnorm_layers(model):
    return [layer for layer in get_backbone(model).layers if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_trainable_counts_grow_stage_by_stage_and_bn_stays_frozen(name):
    spec = ARCHS[name]
    model = build_model(spec, 4, max(spec.min_image_size, 32), weights="none", alpha=0.35)
    head = trainable_params(model)
    dense = get_head(model).get_layer("probabilities")
    assert head == int(np.prod(dense.kernel.shape) + np.prod(dense.bias.shape))
    counts = []
    for blocks in (1, 2, spec.num_blocks, "all"):
        set_trainable_blocks(model, spec, blocks)
        counts.append(trainable_params(model))
        assert all(not layer.trainable for layer in batchnorm_layers(model))
        assert not any("moving" in w.path or "gamma" in w.path or "beta" in w.path for w in model.trainable_weights)
    assert head < counts[0] < counts[1] <= counts[2] <= counts[3]
    set_trainable_blocks(model, spec, 0)
    assert trainable_params(model) == head


def test_top_blocks_unfreeze_exactly_the_layers_after_the_boundary():
    spec = get_arch("inceptionv3")
    model = build_model(spec, 2, 75, weights="none")
    set_trainable_blocks(model, spec, 2)  # mixed9 and mixed10, as in the Keras guide
    layers = get_backbone(model).layers
    boundary = [layer.name for layer in layers].index("mixed8")
    assert not any(layer.trainable for layer in layers[: boundary + 1])
    trainable_after = [layer for layer in layers[boundary + 1:] if layer.weights and layer.trainable]
    assert trainable_after and all(not isinstance(l, keras.layers.BatchNormalization) for l in trainable_after)


def weights_by_path(model):
    return {w.path: keras.ops.convert_to_numpy(w).copy() for w in model.weights}


def fit_one_epoch(model, stage):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, 16), 3)
    compile_for_stage(model, stage, steps_per_epoch=2, label_smoothing=0.0)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)


def test_training_moves_only_the_layers_of_its_stage():
    spec = get_arch("mobilenetv2")
    model = build_model(spec, 3, 32, weights="none", alpha=0.35)
    before = weights_by_path(model)
    fit_one_epoch(model, Stage("head", 1, 1e-2, 0))
    after_head = weights_by_path(model)
    changed = {p for p in before if not np.array_equal(before[p], after_head[p])}
    assert changed and all(p.startswith("probabilities/") for p in changed)

    set_trainable_blocks(model, spec, 3)
    fit_one_epoch(model, Stage("top", 1, 1e-2, 3))
    after_top = weights_by_path(model)
    changed = {p for p in before if not np.array_equal(after_head[p], after_top[p])}
    assert any(p.startswith("block_16") for p in changed)
    assert not any(p.startswith("block_1_") or p.startswith("Conv1/") for p in changed)
    bn_paths = {w.path for layer in batchnorm_layers(model) for w in layer.weights}
    assert not changed & bn_paths, "BatchNormalization weights and moving statistics must not change"


def test_low_pass_keeps_flat_areas_and_edges_and_damps_pixel_noise(tmp_path):
    from tfl.model import LowPass

    flat = np.full((1, 8, 8, 3), 200.0, dtype="float32")
    kept = keras.ops.convert_to_numpy(LowPass()(flat))
    np.testing.assert_allclose(kept[:, 1:-1, 1:-1], flat[:, 1:-1, 1:-1], rtol=1e-6)
    np.testing.assert_allclose(kept[0, 0, 3, 0], 200 * 0.75 + 127.5 * 0.25, rtol=1e-6)  # mid-grey past the edge
    ramp = np.broadcast_to(np.arange(8, dtype="float32")[None, None, :, None] * 30, (1, 8, 8, 3))
    blurred = keras.ops.convert_to_numpy(LowPass()(ramp))
    np.testing.assert_allclose(blurred[:, 1:-1, 1:-1], ramp[:, 1:-1, 1:-1], rtol=1e-6)  # a linear ramp stays (inside)
    checker = (np.indices((8, 8)).sum(axis=0) % 2)[None, :, :, None] * np.ones(3) * 255.0
    damped = keras.ops.convert_to_numpy(LowPass()(checker.astype("float32")))
    assert np.ptp(damped[:, 1:-1, 1:-1]) < 0.01 * 255, "the highest frequency (a one-pixel checkerboard) is gone"
    model = build_model(get_arch("mobilenetv2"), 3, 32, weights="none", alpha=0.35)
    assert isinstance(model.get_layer("low_pass"), LowPass) and model.count_params() == \
        build_model(get_arch("mobilenetv2"), 3, 32, weights="none", alpha=0.35, low_pass=False).count_params()
    assert "low_pass" not in [layer.name for layer in build_model(get_arch("mobilenetv2"), 3, 32, weights="none",
                                                                   alpha=0.35, low_pass=False).layers]
    model.save(tmp_path / "m.keras")
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "m.keras").predict(images, verbose=0),
                               model.predict(images, verbose=0), atol=1e-6)
