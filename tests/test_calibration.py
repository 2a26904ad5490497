"""Calibrated scores: the temperature fit, the calibration error, folding the temperature into the model, and a
run's metrics and reliability diagram."""

import json

import numpy as np
import pytest

from tfl.calibration import (expected_calibration_error, fit_temperature, fold_temperature, negative_log_likelihood,
                             rescaled)


def softmax(logits):
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture
def overconfident():
    """Scores twice as sharp as the truth: labels drawn from softmax(z / 2), scores softmax(z)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (6000, 5))
    truth = softmax(logits / 2.0)
    labels = np.array([rng.choice(5, p=row) for row in truth])
    return softmax(logits), labels


def test_the_fitted_temperature_recovers_the_true_one_and_lowers_the_error(overconfident):
    probabilities, labels = overconfident
    temperature = fit_temperature(probabilities, labels)
    assert temperature == pytest.approx(2.0, abs=0.15)
    calibrated = rescaled(probabilities, temperature)
    assert expected_calibration_error(calibrated, labels) < expected_calibration_error(probabilities, labels) / 3
    assert negative_log_likelihood(calibrated, labels) < negative_log_likelihood(probabilities, labels)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), probabilities.argmax(axis=1)), "top-1 never changes"


def test_a_perfect_validation_set_stops_the_temperature_at_its_lower_bound():
    """With no error the likelihood keeps rising as T falls: the search stops at the range's bound, and says so."""
    from tfl.calibration import TEMPERATURE_RANGE, calibration_report

    probabilities = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]] * 20)
    labels = np.array([0, 1, 2] * 20)
    temperature = fit_temperature(probabilities, labels)
    assert temperature == pytest.approx(TEMPERATURE_RANGE[0], rel=0.01)
    assert calibration_report(probabilities, labels, temperature)["at_bound"] is True


def test_the_calibration_error_of_known_cases():
    labels = np.array([0, 0, 1, 1])
    assert expected_calibration_error(np.array([[1.0, 0], [1, 0], [0, 1], [0, 1]]), labels) == 0.0
    assert expected_calibration_error(np.array([[0.9, 0.1]] * 4), labels) == pytest.approx(0.4)


def test_the_error_a_perfectly_calibrated_model_would_measure_matches_one_and_shrinks_with_more_photos():
    """ECE is biased upwards on few photos; the floor tfl reports is what calibrated scores measure on as many."""
    from tfl.calibration import ece_if_calibrated
    from tfl.report import calibration_line

    rng = np.random.default_rng(3)
    scores = softmax(rng.normal(0, 1.5, (200, 5)))
    measured = [expected_calibration_error(scores, np.array([rng.choice(5, p=row) for row in scores]))
                for _ in range(40)]  # labels drawn from the scores: perfectly calibrated by construction
    floor = ece_if_calibrated(scores)
    assert floor == pytest.approx(np.mean(measured), rel=0.2) and floor > 0.04
    assert ece_if_calibrated(np.tile(scores, (25, 1))) < floor / 3, "more photos, less noise"
    line = calibration_line({"temperature": 0.97, "ece_before": 0.043, "ece_after": 0.047,
                             "ece_if_calibrated": floor, "measured_on": 200})
    assert "temperature of 0.97" in line and "differ by chance" in line and f"{floor:.3f}" in line
    line = calibration_line({"temperature": 0.33, "ece_before": 0.11, "ece_after": 0.009,
                             "ece_if_calibrated": 0.014, "measured_on": 219})
    assert "0.110 before, 0.009 after" in line and "chance" not in line and "debiased" not in line
    line = calibration_line({"temperature": 0.96, "ece_before": 0.087, "ece_after": 0.102, "ece_if_calibrated": 0.077,
                             "debiased_before": 0.0, "debiased_after": 0.0, "measured_on": 200})
    assert "(debiased, equal-mass bins): 0.000 before, 0.000 after" in line


def test_the_debiased_error_is_near_zero_for_calibrated_scores_and_falls_with_the_temperature(overconfident):
    """Where ECE on 200 photos cannot tell a calibrated model from chance (0.08 either way), the debiased estimate
    (Kumar et al. 2019) reads near 0 for calibrated scores and still sees a miscalibrated model's error."""
    from tfl.calibration import debiased_calibration_error

    rng = np.random.default_rng(5)
    scores = softmax(rng.normal(0, 1.5, (200, 5)))
    draws = [np.array([rng.choice(5, p=row) for row in scores]) for _ in range(40)]
    plain = np.mean([expected_calibration_error(scores, labels) for labels in draws])
    debiased = np.mean([debiased_calibration_error(scores, labels) for labels in draws])
    assert plain > 0.05 and debiased < plain / 2, (plain, debiased)
    probabilities, labels = overconfident
    before = debiased_calibration_error(probabilities[:200], labels[:200])
    after = debiased_calibration_error(rescaled(probabilities[:200], fit_temperature(probabilities, labels)),
                                       labels[:200])
    assert before > 0.1 and after < before / 2, (before, after)
    # two photos per bin at least; known case: confidence 0.9, accuracy 0.5 in one bin of four
    assert debiased_calibration_error(np.array([[0.9, 0.1]] * 4), np.array([0, 0, 1, 1]), bins=1) == pytest.approx(
        np.sqrt(0.4 ** 2 - 0.25 / 3), abs=1e-4)


def test_a_temperature_is_folded_in_only_when_the_likelihood_gain_is_beyond_chance(overconfident):
    """On 200 photos of calibrated scores the fitted T is noise (cats5's 0.96 made its ECE rise): kept at 1 in about
    the test's 5% of draws at most; on overconfident scores it is folded in."""
    from tfl.calibration import SIGNIFICANCE, calibrating_temperature, calibration_report
    from tfl.report import calibration_line

    probabilities, labels = overconfident
    temperature, fitted, p_value = calibrating_temperature(probabilities[:200], labels[:200])
    assert p_value < SIGNIFICANCE and temperature == fitted == pytest.approx(2.0, abs=0.5)

    rng = np.random.default_rng(5)
    calibrated = softmax(rng.normal(0, 2, (200, 5)))
    cumulative = np.cumsum(calibrated, axis=1)
    applied, p_values = 0, []
    for _ in range(40):
        drawn = (rng.random((200, 1)) > cumulative).sum(axis=1)
        temperature, fitted, p_value = calibrating_temperature(calibrated, drawn)
        applied += temperature != 1.0
        p_values.append(p_value)
        assert temperature in (1.0, fitted) and (temperature == 1.0) == (p_value >= SIGNIFICANCE)
    assert applied <= 6 and np.median(p_values) > 0.2

    report = calibration_report(calibrated, drawn, 1.0, 0.96, 0.62)
    assert report["temperature"] == 1.0 and report["ece_after"] == report["ece_before"]
    line = calibration_line(report)
    assert "did not better the likelihood beyond chance: p = 0.62" in line and "0.96" in line


def test_folding_the_temperature_into_the_softmax_layer_rescales_its_scores():
    import keras

    layer = keras.layers.Dense(4, activation="softmax")
    features = np.random.default_rng(1).normal(size=(8, 6)).astype("float32")
    before = np.asarray(layer(features))
    fold_temperature(layer, 2.5)
    np.testing.assert_allclose(np.asarray(layer(features)), rescaled(before, 2.5), atol=1e-5)


def test_a_run_reports_its_calibration_and_can_turn_it_off(tiny_run, tiny_folder, tmp_path):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert calibration["temperature"] > 0 and {"ece_before", "ece_after", "nll_before", "nll_after",
                                               "ece_if_calibrated", "debiased_before", "debiased_after",
                                               "fitted_temperature", "p_value", "measured_on"} <= set(calibration)
    assert calibration["temperature"] in (1.0, calibration["fitted_temperature"])
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-4, "the temperature minimises validation NLL"
    assert metrics["loss"] == pytest.approx(calibration["nll_after"], abs=2e-3), "the model kept is the calibrated one"
    assert (tiny_run / "reliability_diagram.png").stat().st_size > 1000
    import tfl

    run = tfl.finetune(tiny_folder, arch="mobilenetv2", weights="none", image_size=32, alpha=0.35, batch_size=8,
                       epochs=(2, 0), calibrate=False, output=tmp_path / "runs", name="plain", echo=lambda s: None,
                       verbose=0)
    assert run.metrics["calibration"]["temperature"] == 1.0
    assert run.metrics["calibration"]["ece_after"] == run.metrics["calibration"]["ece_before"]
