"""The unknown category (tfl/unknown.py): its score, threshold and layer on features whose answer is known, then in
a trained run, its predictions and every artifact."""

import json

import numpy as np
import pytest

import tfl
from tfl.errors import TflError
from tfl.report import format_predictions
from tfl.unknown import (MAX_SCORE, TAU_CHOICES, Detector, UnknownScores, auroc, class_probabilities, fit_detector,
                         flagged, unknown_name, unknown_statistic)

from .conftest import FLOWERS, cli, tiny_flags, write_class_folders

FEATURES, CLASSES = 48, 3


def clusters(rng, per_class: int, spread: float = 1.0):
    """Three classes of positive 'pooled features' (ReLU6 outputs are >= 0), each around its own centre."""
    centres = rng.uniform(0, 6, (CLASSES, FEATURES))
    labels = np.repeat(np.arange(CLASSES), per_class)
    features = np.abs(centres[labels] + rng.normal(0, spread, (len(labels), FEATURES)))
    return features.astype(np.float32), labels, centres


def softmax_of(features, centres):
    """Class probabilities from the distance to each centre: confident inside a class."""
    logits = -((features[:, None] - centres[None]) ** 2).sum(-1) / FEATURES
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return (exp / exp.sum(1, keepdims=True)).astype(np.float32)


@pytest.fixture
def fitted():
    rng = np.random.default_rng(0)
    train_x, train_y, centres = clusters(rng, 200)
    val_x = np.abs(centres[np.repeat(np.arange(CLASSES), 100)] + rng.normal(0, 1, (300, FEATURES))).astype(np.float32)
    far = rng.uniform(0, 6, (300, FEATURES)).astype(np.float32)  # none of the classes: elsewhere in the space
    detector = fit_detector(train_x, train_y, val_x, softmax_of(val_x, centres), 0.95, ["a", "b", "c"])
    return detector, centres, val_x, far


def test_the_threshold_keeps_the_asked_share_of_validation_photos_and_flags_photos_of_none_of_the_classes(fitted):
    detector, centres, val_x, far = fitted
    val_scores = detector.scores(val_x, softmax_of(val_x, centres))
    far_scores = detector.scores(far, softmax_of(far, centres))
    assert abs(flagged(val_scores).mean() - 0.05) <= 0.01
    assert flagged(far_scores).mean() >= 0.95
    assert auroc(unknown_statistic(val_scores), unknown_statistic(far_scores)) > 0.99
    # a distribution over N + 1 outcomes whose classes' part gives back the probabilities
    assert np.allclose(val_scores.sum(1), 1, atol=1e-5)
    assert np.allclose(class_probabilities(val_scores), softmax_of(val_x, centres), atol=1e-5)
    # the decision is the unknown category winning, exactly where its statistic is above 0
    assert np.array_equal(flagged(far_scores), unknown_statistic(far_scores) > 0)


def test_the_keras_layer_computes_what_the_detector_does(fitted):
    detector, centres, val_x, far = fitted
    features = np.concatenate([val_x[:40], far[:40]])
    probabilities = softmax_of(features, centres)
    layer = UnknownScores(detector)
    computed = np.asarray(layer([features, probabilities]))
    expected = detector.scores(features, probabilities)
    assert computed.shape == (80, CLASSES + 1)
    assert np.allclose(computed, expected, atol=2e-4)
    assert np.array_equal(flagged(computed), flagged(expected))
    assert computed[:, -1].max() <= MAX_SCORE + 1e-7


def head_softmax(features, kernel, bias):
    logits = features.astype(np.float64) @ kernel + bias
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return (exp / exp.sum(1, keepdims=True)).astype(np.float32)


def test_photos_no_class_answers_strongly_are_unknown_though_the_softmax_is_sure(tmp_path):
    """Weak activations in a class's direction (a blank wall, a dark photo): as near a class centre as its photos
    once normalised, and the softmax as sure (the logits' gaps stay wide), but every logit low. The head's largest
    logit flags them; a detector with the softmax's confidence (as saved before) does not. The layer computes the
    same, and a saved detector keeps the head's weights."""
    rng = np.random.default_rng(3)
    block = FEATURES // CLASSES  # each class high on features of its own, as a trained head reads them
    centres = rng.uniform(0, 1, (CLASSES, FEATURES)) + 5 * np.kron(np.eye(CLASSES), np.ones(block))
    photos = lambda labels, scale=1.0: (scale * np.abs(  # noqa: E731
        centres[labels] + rng.normal(0, 1, (len(labels), FEATURES)))).astype(np.float32)
    train_y, labels = np.repeat(np.arange(CLASSES), 200), np.repeat(np.arange(CLASSES), 100)
    train_x, val_x, weak = photos(train_y), photos(labels), photos(labels, 0.25)
    head = (np.kron(np.eye(CLASSES), np.ones(block)).T.astype(np.float32), np.zeros(CLASSES, np.float32))
    val_p, weak_p = head_softmax(val_x, *head), head_softmax(weak, *head)
    assert weak_p.max(axis=1).mean() > 0.99  # the softmax is sure of the weak photos
    logits = fit_detector(train_x, train_y, val_x, val_p, 0.95, list("abc"), head_weights=head)
    softmax = fit_detector(train_x, train_y, val_x, val_p, 0.95, list("abc"))
    assert abs(flagged(logits.scores(val_x, val_p)).mean() - 0.05) <= 0.01
    assert flagged(logits.scores(weak, weak_p)).mean() >= 0.95
    assert flagged(softmax.scores(weak, weak_p)).mean() <= 0.10
    weak_scores = logits.scores(weak, weak_p)
    assert np.array_equal(flagged(weak_scores), logits.statistic(weak, weak_p) > logits.threshold)
    assert np.allclose(class_probabilities(weak_scores), weak_p, atol=1e-5)
    features = np.concatenate([val_x[:40], weak[:40]])
    probabilities = np.concatenate([val_p[:40], weak_p[:40]])
    computed = np.asarray(UnknownScores(logits)([features, probabilities]))
    assert np.allclose(computed, logits.scores(features, probabilities), atol=2e-4)
    assert np.array_equal(flagged(computed), flagged(logits.scores(features, probabilities)))
    logits.save(tmp_path / "unknown.npz")
    loaded = Detector.load(tmp_path / "unknown.npz")
    assert np.array_equal(loaded.logit_kernel, logits.logit_kernel)
    assert np.allclose(loaded.scores(features, probabilities), logits.scores(features, probabilities), atol=1e-6)


def test_a_detector_of_a_head_with_other_classes_is_refused_with_a_clear_error():
    from tfl.archs import get_arch
    from tfl.model import build_model
    from tfl.unknown import Part, open_set_model

    model = build_model(get_arch("mobilenetv2"), 3, 32, weights="none", alpha=0.35)
    features = int(model.get_layer("pool").output.shape[-1])
    part = Part(np.zeros((3, features), np.float32), np.zeros((features, 2), np.float32), np.zeros(2, np.float32), 1.0,
                np.zeros(features, np.float32))
    other = Detector([part], 0.0, 0.95, logit_kernel=np.zeros((features, 4), np.float32),
                     logit_bias=np.zeros(4, np.float32))
    with pytest.raises(TflError, match="head of 4 classes, and its model has 3"):
        open_set_model(model, other)
    same = Detector([part], 0.0, 0.95, logit_kernel=np.zeros((features, 3), np.float32),
                    logit_bias=np.zeros(3, np.float32))
    assert open_set_model(model, same).output_shape == (None, 4)


def test_a_saved_detector_loads_the_same(fitted, tmp_path):
    detector = fitted[0]
    detector.save(tmp_path / "unknown.npz")
    loaded = Detector.load(tmp_path / "unknown.npz")
    assert Detector.load(tmp_path / "missing.npz") is None
    features = fitted[2][:10]
    assert np.allclose(loaded.distances(features), detector.distances(features))
    assert (loaded.threshold, loaded.keep, loaded.name, loaded.tau) == (detector.threshold, 0.95, "unknown", 1.0)


def test_a_second_layer_flags_photos_the_first_maps_among_the_classes_and_the_layer_adds_both(tmp_path):
    """Photos whose last features look in-class but whose earlier activations do not (a fine-tuned backbone maps
    weather photos among flowers): the detector of both layers flags them, the one of the first alone does not."""
    rng = np.random.default_rng(1)
    train_x, train_y, centres = clusters(rng, 200)
    train_mid, _, mids = clusters(np.random.default_rng(2), 200)
    labels = np.repeat(np.arange(CLASSES), 100)
    noise = lambda: rng.normal(0, 1, (300, FEATURES))  # noqa: E731
    val_x, val_mid = (np.abs(c[labels] + noise()).astype(np.float32) for c in (centres, mids))
    odd_x = np.abs(centres[labels] + noise()).astype(np.float32)  # in-class last features...
    odd_mid = rng.uniform(0, 6, (300, FEATURES)).astype(np.float32)  # ...and earlier activations of none
    val_p, odd_p = softmax_of(val_x, centres), softmax_of(odd_x, centres)
    both = fit_detector([train_x, train_mid], train_y, [val_x, val_mid], val_p, 0.95, list("abc"),
                        layers=("block_mid",))
    last = fit_detector(train_x, train_y, val_x, val_p, 0.95, list("abc"))
    assert flagged(both.scores([odd_x, odd_mid], odd_p)).mean() >= 0.95
    assert flagged(last.scores(odd_x, odd_p)).mean() <= 0.10
    assert abs(flagged(both.scores([val_x, val_mid], val_p)).mean() - 0.05) <= 0.01
    computed = np.asarray(UnknownScores(both)([odd_x[:40], odd_mid[:40], odd_p[:40]]))
    assert np.allclose(computed, both.scores([odd_x[:40], odd_mid[:40]], odd_p[:40]), atol=2e-4)
    both.save(tmp_path / "unknown.npz")
    loaded = Detector.load(tmp_path / "unknown.npz")
    assert loaded.layers == ("block_mid",) and len(loaded.parts) == 2
    assert np.allclose(loaded.distances([odd_x, odd_mid]), both.distances([odd_x, odd_mid]))
    # a file saved before parts had an origin: absolute centres, no origin_k; it loads and computes the same scores
    with np.load(tmp_path / "unknown.npz") as saved:
        arrays = {key: saved[key] for key in saved.files if not key.startswith("origin_")}
    for k, part in enumerate(both.parts):
        arrays[f"centres_{k}"] = part.centres + part.origin
    np.savez(tmp_path / "old.npz", **arrays)
    old = Detector.load(tmp_path / "old.npz")
    assert np.allclose(old.distances([odd_x, odd_mid]), both.distances([odd_x, odd_mid]), rtol=1e-4)
    assert np.allclose(np.asarray(UnknownScores(old)([odd_x[:40], odd_mid[:40], odd_p[:40]])), computed, atol=2e-4)


def test_a_detector_saved_by_the_first_unknown_category_still_loads(fitted, tmp_path):
    detector, _, val_x, _ = fitted
    part = detector.parts[0]
    np.savez(tmp_path / "unknown.npz", centres=part.centres + part.origin, basis=part.basis, weights=part.weights,
             numbers=np.array([detector.threshold, part.scale, detector.keep, detector.tau]), name=np.array("unknown"))
    loaded = Detector.load(tmp_path / "unknown.npz")
    assert loaded.layers == () and np.allclose(loaded.distances(val_x[:10]), detector.distances(val_x[:10]))


def test_a_higher_keep_flags_fewer_validation_photos(fitted):
    _, centres, val_x, _ = fitted
    rng = np.random.default_rng(0)
    train_x, train_y, _ = clusters(rng, 200)
    shares = []
    for keep in (0.8, 0.95, 0.99):
        detector = fit_detector(train_x, train_y, val_x, softmax_of(val_x, centres), keep, ["a", "b", "c"])
        shares.append(flagged(detector.scores(val_x, softmax_of(val_x, centres))).mean())
    assert shares[0] > shares[1] > shares[2] and abs(shares[0] - 0.2) < 0.02


def test_background_photos_choose_the_tau_that_flags_most_of_them():
    rng = np.random.default_rng(0)
    train_x, train_y, centres = clusters(rng, 200)
    val_x = np.abs(centres[np.repeat(np.arange(CLASSES), 100)] + rng.normal(0, 1, (300, FEATURES))).astype(np.float32)
    # background between the classes: near every centre in distance, so the softmax is what gives them away
    mixed = (centres[0] + centres[1]) / 2
    background = np.abs(mixed + rng.normal(0, 1, (200, FEATURES))).astype(np.float32)
    outliers = (background, softmax_of(background, centres))
    tuned = fit_detector(train_x, train_y, val_x, softmax_of(val_x, centres), 0.95, list("abc"), outliers)
    plain = fit_detector(train_x, train_y, val_x, softmax_of(val_x, centres), 0.95, list("abc"))
    assert tuned.tau in TAU_CHOICES
    assert flagged(tuned.scores(*outliers)).mean() >= flagged(plain.scores(*outliers)).mean()
    assert abs(flagged(tuned.scores(val_x, softmax_of(val_x, centres))).mean() - 0.05) <= 0.01


def test_the_extra_category_never_takes_a_class_name():
    assert unknown_name(["cat", "dog"]) == "unknown"
    assert unknown_name(["unknown", "dog"]) == "unknown_"
    assert unknown_name(["unknown", "unknown_"]) == "unknown__"


def test_predictions_say_unknown_in_every_output_format():
    rows = [{"path": "a.jpg", "top": [("cat", 0.9), ("dog", 0.1)], "unknown": False, "unknown_score": 0.01},
            {"path": "b.jpg", "top": [("dog", 0.6), ("cat", 0.4)], "unknown": True, "unknown_score": 0.93}]
    table = format_predictions(rows, "table").splitlines()
    assert table[0] == "a.jpg: cat 0.900, dog 0.100"
    assert table[1].startswith("b.jpg: UNKNOWN (none of the classes, score 0.930); closest: dog 0.600")
    parsed = json.loads(format_predictions(rows, "json"))
    assert [r["unknown"] for r in parsed] == [False, True] and parsed[1]["unknown_score"] == 0.93
    csv_lines = format_predictions(rows, "csv").splitlines()
    assert csv_lines[0].endswith(",unknown") and csv_lines[1].endswith(",no") and csv_lines[3].endswith(",yes")


def test_a_background_option_that_is_no_folder_is_said_before_training(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=4)
    with pytest.raises(TflError, match="--background .* is not a folder"):
        tfl.finetune(data, weights="none", background=str(tmp_path / "nowhere"), output=tmp_path / "runs",
                     echo=lambda s: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TflError, match="holds no files"):
        tfl.finetune(data, weights="none", background=str(tmp_path / "empty"), output=tmp_path / "runs",
                     echo=lambda s: None)
    assert not any((tmp_path / "runs").glob("*/model.keras"))


# --- in a trained run, and its artifacts ------------------------------------------------------------------------

def test_a_run_has_the_unknown_category_in_its_predictions_and_metrics(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["unknown"]["name"] == "unknown" and metrics["unknown"]["keep"] == 0.95
    # MobileNetV2's detector reads the last block's and block 6's expanded inputs beside the pooled features (tfl/archs.py)
    assert Detector.load(tiny_run / "unknown.npz").layers == ("block_16_expand_relu", "block_6_expand_relu")
    assert "block_16_expand_relu" in metrics["unknown"]["method"] and "block_6" in metrics["unknown"]["method"]
    model = tfl.load(tiny_run)
    rows = model.predict(tiny_run.parent.parent / "data" / "red")
    assert rows and all(isinstance(row["unknown"], bool) and 0 <= row["unknown_score"] <= 1 for row in rows)
    noise = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3))
    assert model.predict_pixels(noise).shape == (4, 3)  # the classes' probabilities, as before
    assert model.scores(noise).shape == (4, 4)


@pytest.mark.parametrize("artifact", ["export/saved_model/1", "model_float32.tflite", "model_int8.tflite",
                                      "model.onnx"])
def test_every_artifact_carries_the_unknown_category_and_agrees_with_the_keras_model(exported_run, artifact):
    report = json.loads((exported_run / "export_report.json").read_text())
    if artifact != "model_int8.tflite":  # the tiny model's int8 file, unsearched, may differ (on real photos:
        assert report[artifact]["unknown_agreement"] == 1.0  # test_export.py's int8 test)
    assert 0 <= report[artifact]["unknown_agreement"] <= 1
    loaded = tfl.load(exported_run / artifact)
    assert loaded.unknown == "unknown" and loaded.class_names == ["blue", "green", "red"]
    keras_model = tfl.load(exported_run)
    pixels = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    if artifact != "model_int8.tflite":
        assert np.allclose(loaded.scores(pixels), keras_model.scores(pixels), atol=1e-4)


def test_the_saved_model_says_unknown_from_encoded_images(exported_run):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(exported_run / "export" / "saved_model" / "1"))
    data = tf.io.encode_jpeg(tf.cast(tf.fill([32, 32, 3], 128), tf.uint8))
    outputs = loaded.signatures["classify_images"](images=tf.stack([data]))
    assert outputs["unknown"].dtype == tf.bool and outputs["unknown"].shape == (1,)
    assert 0 <= float(outputs["unknown_score"][0]) <= 1


def test_mediapipe_reads_the_unknown_category_as_the_last_label(exported_run):
    pytest.importorskip("mediapipe")
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(exported_run / "model_float32.tflite")), max_results=4)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        pixels = np.full((32, 32, 3), 128, np.uint8)
        categories = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels)) \
            .classifications[0].categories
    assert sorted(c.category_name for c in categories) == ["blue", "green", "red", "unknown"]


@pytest.mark.integration
def test_no_unknown_leaves_the_artifacts_as_they_were(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=6)
    result = cli("finetune", "--data", data, *tiny_flags(), "--epochs", "1,0", "--no-unknown", "--output",
                 tmp_path / "runs", "--name", "plain")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "plain"
    assert not (run / "unknown.npz").exists()
    assert json.loads((run / "metrics.json").read_text())["unknown"]["method"] == "off (--no-unknown)"
    rows = tfl.load(run).predict(data / "red")
    assert all("unknown" not in row for row in rows)
    result = cli("evaluate", run, "--unknown-data", data / "red")
    assert result.exit_code == 1 and "has none" in result.output


def test_evaluate_measures_the_unknown_category_on_photos_of_none_of_the_classes(real_copy):
    """A flower model shown sunny skies: most of them are unknown, and the report shows some."""
    sunny = FLOWERS.parent / "weather4" / "shine"
    if not sunny.is_dir():
        pytest.skip(f"real photos not found at {sunny} (the shared datasets folder is absent)")
    result = cli("evaluate", real_copy, "--unknown-data", sunny)
    assert result.exit_code == 0, result.output
    assert "Unknown: it takes" in result.output
    metrics = json.loads((real_copy / "evaluations" / "val" / "metrics.json").read_text())["unknown"]
    print(metrics)
    assert metrics["flagged"] < 0.15  # of the flowers: about the 5% its threshold leaves
    outside = metrics["unknown_data"]
    assert outside["photos"] == 250 and outside["flagged"] > 0.5 and outside["auroc"] > 0.85
    page = (real_copy / "evaluations" / "val" / "report.html").read_text()
    assert "None of these" in page and page.count("taken as unknown") == min(8, round(outside["flagged"] * 250))


def test_a_quantized_file_must_keep_the_unknown_decisions_too(monkeypatch):
    """int8's target is 97% top-1 agreement; the unknown category's decisions must agree on 99% besides."""
    from tfl import quantize

    rng = np.random.default_rng(0)
    reference = rng.dirichlet(np.ones(4), 100).astype(np.float32)  # three classes and the unknown category
    reference[:10, 3] = 0.99  # ten photos of none of the classes
    moved = reference.copy()
    moved[:2, 3] = 0.0  # int8 rounding took two of them back to a class: 98% of the decisions kept
    monkeypatch.setattr(quantize, "probabilities", lambda content, images: moved)
    images = np.zeros((100, 8, 8, 3), np.uint8)
    with_unknown = quantize.Goal(images, reference, unknown=True).measure(b"", "int8")
    assert with_unknown["unknown_agreement"] == 0.98 and with_unknown["agreement"] == 0.98
    assert not with_unknown["met"]
    assert quantize.Goal(images, reference).measure(b"", "int8")["met"]  # top-1 alone would have kept it
    assert "unknown decisions >= 99%" in quantize.target("int8", quantize.Goal(images, reference, unknown=True))


def test_a_class_without_training_photos_gets_no_centre_and_the_rest_still_works():
    rng = np.random.default_rng(3)
    train_x, train_y, centres = clusters(rng, 100)
    kept = train_y != 2  # the third class has no training photo (a split column, an exclusion list)
    val_x = np.abs(centres[np.repeat([0, 1], 100)] + rng.normal(0, 1, (200, FEATURES))).astype(np.float32)
    far = rng.uniform(0, 6, (300, FEATURES)).astype(np.float32)
    detector = fit_detector(train_x[kept], train_y[kept], val_x, softmax_of(val_x, centres), 0.95, list("abc"))
    assert detector.parts[0].centres.shape[0] == 2
    assert flagged(detector.scores(far, softmax_of(far, centres))).mean() > 0.9


def test_a_detector_of_another_model_is_a_clear_error(fitted):
    import keras

    from tfl.unknown import open_set_model

    pixels = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(pixels)  # 3 features, not the detector's 48
    head = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="softmax")], name="head")
    model = keras.Model(pixels, head(pooled))
    with pytest.raises(TflError, match="fitted on 48 features, and its model gives 3"):
        open_set_model(model, fitted[0])


def test_a_background_folder_without_images_is_said_before_training(tmp_path):
    from tfl.unknown import unknown_background

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not a photo")
    with pytest.raises(TflError, match="none of its first 1 files is an image"):
        unknown_background(str(tmp_path / "notes"), check_only=True)
    write_class_folders(tmp_path / "photos", per_class=1)
    assert unknown_background(str(tmp_path / "photos"), check_only=True) is None
    assert len(unknown_background(str(tmp_path / "photos"))) == 3


def test_a_subset_of_a_tfds_split_takes_those_elements():
    import tensorflow as tf

    from tfl.split import Split

    source = tf.data.Dataset.from_tensor_slices((tf.range(10), tf.range(10) % 3))
    split = Split([], [int(v) for v in np.arange(10) % 3], source)
    picked = split.subset([7, 2, 5])
    assert picked.labels == [2, 2, 1] and [int(x) for x, _ in picked.source] == [2, 5, 7]
