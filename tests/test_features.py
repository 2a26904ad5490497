"""The feature cache: the head trained on cached features takes the same update path, and the cache is keyed right."""

import dataclasses
import os

import keras
import numpy as np
import pytest

from click.testing import CliRunner

import tfl.features as features_module
from tests.conftest import make_image, require_mobilenet_weights, write_class_folders
from tfl.archs import get_arch
from tfl.augment import build_augmenter
from tfl.cli import main
from tfl.config import Stage, TrainConfig
from tfl.data import Split, load_image_folder
from tfl.pipeline import make_pipeline
from tfl.features import (cache_key, cached_features, compute_features, feature_dataset, feature_extractor,
                          load_features)
from tfl.model import build_model, set_trainable_blocks
from tfl.train import compile_for_stage
from tfl.model import get_head


def test_head_on_cached_features_matches_training_the_frozen_model():
    weights = require_mobilenet_weights()
    rng = np.random.default_rng(0)
    images = np.stack([np.asarray(make_image((200, 40, 40) if i % 2 else (40, 60, 200), size=64, seed=i))
                       for i in range(16)]).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 3, 16), 3)
    stage = Stage("head", 1, 1e-2, 0)

    def fresh_model():
        keras.utils.set_random_seed(1)
        model = build_model(get_arch("mobilenetv2"), 3, 64, weights=str(weights), alpha=0.35, dropout=0.0)
        set_trainable_blocks(model, get_arch("mobilenetv2"), 0)
        return model

    through_backbone = fresh_model()
    initial = get_head(through_backbone).get_layer("probabilities").get_weights()
    compile_for_stage(through_backbone, stage, steps_per_epoch=2, label_smoothing=0.1)
    through_backbone.fit(images, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)

    on_features = fresh_model()
    features = np.asarray(feature_extractor(on_features).predict(images, verbose=0))
    head = get_head(on_features)
    compile_for_stage(head, stage, steps_per_epoch=2, label_smoothing=0.1)
    head.fit(features, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)

    for expected, got, start in zip(get_head(through_backbone).get_layer("probabilities").get_weights(),
                                    get_head(on_features).get_layer("probabilities").get_weights(), initial):
        assert not np.allclose(start, got), "the head must have trained"
        np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(on_features.predict(images, verbose=0), through_backbone.predict(images, verbose=0),
                               atol=1e-5)


def test_cache_key_changes_with_data_arch_size_and_weights(tiny_folder, tmp_path, monkeypatch):
    paths = sorted(str(p) for p in tiny_folder.rglob("*.jpg"))
    split = Split(paths=paths, labels=[0] * len(paths))
    base = TrainConfig(arch="mobilenetv2", alpha=0.35, weights="imagenet", augment="light", seed=1,
                       precision="float32")

    def key_of(split=split, views=1, image_size=96, **change):
        return cache_key(split, dataclasses.replace(base, **change), image_size, views)
    key = key_of()
    assert key_of() == key
    assert key_of(augment="strong") == key, "augmentation only matters for extra views"
    assert key_of(views=2) != key and key_of(image_size=128) != key
    augmented = key_of(views=2)
    monkeypatch.setattr(features_module, "PRESETS_VERSION", features_module.PRESETS_VERSION + 1)
    assert key_of(views=2) != augmented and key_of() == key, "a preset that changed changes augmented views only"
    for change in ({"arch": "resnet50"}, {"weights": "none"}, {"alpha": 0.5}, {"precision": "mixed_bfloat16"},
                   {"low_pass": False}):
        assert key_of(**change) != key, change
    assert key_of(split=Split(paths=paths[:-1], labels=[0] * (len(paths) - 1))) != key
    make_image((1, 2, 3), seed=123).save(paths[0])  # the same file name, new pixels
    os.utime(paths[0], ns=(1, 1))
    assert key_of() != key
    weights_file = tmp_path / "w.weights.h5"
    weights_file.write_bytes(b"one")
    first = key_of(weights=str(weights_file))
    weights_file.write_bytes(b"other")
    os.utime(weights_file, ns=(2, 2))
    assert key_of(weights=str(weights_file)) != first


def test_cached_features_are_computed_once(tmp_path):
    calls = []

    def compute(folder):
        calls.append(folder)
        np.save(folder / "features.npy", np.ones((4, 3), "float32"))
        np.save(folder / "labels.npy", np.eye(4, 2, dtype="float32"))

    first = cached_features(tmp_path, "k", compute)
    second = cached_features(tmp_path, "k", compute)
    assert len(calls) == 1 and first[2] is False and second[2] is True
    np.testing.assert_array_equal(first[0], second[0])
    assert not list(tmp_path.glob(".*tmp"))


def test_a_failed_computation_leaves_no_cache_entry(tmp_path):
    def compute(folder):
        np.save(folder / "features.npy", np.ones((4, 3), "float32"))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_features(tmp_path, "k", compute)
    assert list(tmp_path.iterdir()) == [], "a half-written cache must never be found by a later run"


def test_compute_features_writes_every_view_of_every_image(tiny_folder, tmp_path):
    data = load_image_folder(tiny_folder, seed=0)
    model = build_model(get_arch("mobilenetv2"), 3, 32, weights="none", alpha=0.35)
    extractor = feature_extractor(model)
    compute_features(extractor, data.train, 3, 32, 4, tmp_path, views=2, augmenter=build_augmenter("light", 0))
    features, labels = load_features(tmp_path)
    n = len(data.train)
    assert features.shape == (2 * n, extractor.output_shape[-1]) and labels.shape == (2 * n, 3)
    images, one_hot = (np.concatenate(parts) for parts in
                       zip(*make_pipeline(data.train, 3, 32, 4, training=False).as_numpy_iterator()))
    scale = np.abs(features[:n]).max()  # untrained weights give tiny features: compare relative to their size
    assert scale > 0
    np.testing.assert_allclose(features[:n], extractor.predict(images, verbose=0), atol=1e-3 * scale)  # float16
    np.testing.assert_array_equal(labels[:n], one_hot)
    np.testing.assert_array_equal(labels[n:], one_hot)
    assert np.abs(features[n:] - features[:n]).max() > 1e-2 * scale, "the second view is augmented"


def test_features_over_the_memory_limit_stream_from_disk(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "features.npy", rng.normal(size=(50, 7)).astype("float32"))
    np.save(tmp_path / "labels.npy", np.eye(5, dtype="float32")[rng.integers(0, 5, 50)])
    in_memory = load_features(tmp_path)
    monkeypatch.setattr(features_module, "FEATURE_MEMORY_LIMIT_BYTES", 100)
    streamed = load_features(tmp_path)
    assert not isinstance(in_memory[0], np.memmap) and isinstance(streamed[0], np.memmap)

    def batches(arrays, shuffle):
        return [tuple(np.asarray(t) for t in batch) for batch in feature_dataset(*arrays, 16, shuffle, seed=0)]

    for (x1, y1), (x2, y2) in zip(batches(in_memory, False), batches(streamed, False), strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    dataset = feature_dataset(*streamed, 16, shuffle=True, seed=0)
    epochs = [np.concatenate([np.asarray(x) for x, _ in dataset]) for _ in range(2)]
    for epoch in epochs:  # every row exactly once per epoch
        np.testing.assert_array_equal(np.sort(epoch, axis=0), np.sort(in_memory[0], axis=0))
    assert not np.array_equal(epochs[0], epochs[1]), "each epoch draws a new order"


@pytest.mark.integration
def test_finetune_trains_the_head_on_streamed_features(tmp_path, monkeypatch):
    monkeypatch.setattr(features_module, "FEATURE_MEMORY_LIMIT_BYTES", 0)
    data = write_class_folders(tmp_path / "data", per_class=8)
    result = CliRunner().invoke(main, ["finetune", "--data", str(data), "--weights", "none", "--alpha", "0.35",
                                       "--image-size", "32", "--batch-size", "8", "--epochs", "3,0",
                                       "--output", str(tmp_path / "runs"), "--name", "s"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "streamed from disk while training" in result.output
    history = (tmp_path / "runs" / "s" / "history.csv").read_text().strip().splitlines()
    assert len(history) == 4, "three head epochs on streamed features"


@pytest.mark.integration
def test_finetune_uses_and_reuses_the_cache(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=8)
    args = ["finetune", "--data", str(data), "--weights", "none", "--alpha", "0.35", "--image-size", "32",
            "--batch-size", "8", "--epochs", "2,0", "--output", str(tmp_path / "runs")]
    first = CliRunner().invoke(main, args + ["--name", "a"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "on cached features" in first.output and "computed into" in first.output
    assert len(list((tmp_path / "runs" / ".feature_cache").iterdir())) == 2  # train and val
    second = CliRunner().invoke(main, args + ["--name", "b"], catch_exceptions=False)
    assert "reused from" in second.output
    third = CliRunner().invoke(main, args + ["--name", "c", "--no-feature-cache"], catch_exceptions=False)
    assert third.exit_code == 0 and "Feature cache" not in third.output
    assert (tmp_path / "runs" / "c" / "model.keras").is_file()


@pytest.mark.integration
def test_mixup_turns_the_feature_cache_off(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=6)
    result = CliRunner().invoke(main, ["finetune", "--data", str(data), "--weights", "none", "--alpha", "0.35",
                                       "--image-size", "32", "--epochs", "2,0", "--mixup", "0.2",
                                       "--output", str(tmp_path / "runs"), "--name", "m"], catch_exceptions=False)
    assert result.exit_code == 0 and "Feature cache" not in result.output


def test_features_are_stored_as_float16_where_that_keeps_them():
    """A pretrained backbone's features (0.01-10) are stored as float16; a random backbone's (1e-8), which float16
    would flush to zero, as float32."""
    from tfl.features import stored_dtype

    rng = np.random.default_rng(0)
    typical = np.abs(rng.normal(0, 1, (8, 1280))).astype(np.float32)
    assert stored_dtype(typical) == "float16"
    assert np.abs(typical.astype(np.float16).astype(np.float32) - typical).max() <= 5e-4 * typical.max()
    assert stored_dtype(typical * 1e-8) == "float32" and stored_dtype(np.zeros((2, 3))) == "float32"
    assert stored_dtype(typical * 1000) == "float32"  # near float16's largest value: no room for later photos
