"""Calibrated scores: one temperature fitted on the validation set (Guo et al. 2017, "On Calibration of Modern Neural
Networks") and folded into the classifier layer, so that every artifact made from the model gives calibrated
probabilities; and the expected calibration error (ECE) that says how far scores are from accuracies."""

from __future__ import annotations

import math

import numpy as np

ECE_BINS = 15
# Where the temperature is searched. With no error on the validation set the likelihood keeps rising as T falls to
# 0 (every score towards 1): the lower bound stops that at logits 4x sharper. Fitted on the shared sets with errors:
# 0.89 (flowers, label-smoothed, so a little underconfident) and 0.41 (weather4); Guo et al. report up to about 3
# for overconfident networks.
TEMPERATURE_RANGE = (0.25, 10.0)
# The fitted temperature is folded in only when the validation set shows miscalibration beyond chance: the likelihood
# ratio test of T against 1 (2 n (NLL(1) - NLL(T)) against chi-squared with one degree of freedom) at this level. On
# the fourth apps run cats5's T = 0.96 gave p = 0.62 (its 15-bin ECE rose 0.087 -> 0.102 by chance); weather4,
# potato_leaf3 and flowers gave p < 0.0001.
SIGNIFICANCE = 0.05


def rescaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): the probabilities a model gives once its logits are divided by T (softmax ignores the
    constant that log(p) differs from the logits by)."""
    logits = np.log(np.clip(probabilities.astype(np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the validation negative log-likelihood (a golden-section search over log T: the
    loss is convex in 1/T)."""
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    loss = lambda log_t: negative_log_likelihood(rescaled(probabilities, math.exp(log_t)), labels)  # noqa: E731
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(40):
        if loss_a < loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return round(math.exp((low + high) / 2), 4)


def temperature_p_value(probabilities: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """The chance of a likelihood gain as large as T's over T = 1 on a model already calibrated (the likelihood
    ratio test: its statistic is chi-squared with one degree of freedom, whose tail is erfc(sqrt(x / 2)))."""
    gain = (negative_log_likelihood(probabilities, labels)
            - negative_log_likelihood(rescaled(probabilities, temperature), labels))
    return round(math.erfc(math.sqrt(max(2 * len(labels) * gain, 0.0) / 2)), 6)


def calibrating_temperature(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """The temperature to fold in (1 unless the fitted one is significant), the fitted one, and its p-value."""
    fitted = fit_temperature(probabilities, labels)
    p_value = temperature_p_value(probabilities, labels, fitted)
    return (fitted if p_value < SIGNIFICANCE else 1.0), fitted, p_value


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per confidence bin: mean confidence of the top class, its accuracy, and how many images fall in it."""
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for lower, upper in zip(edges[:-1], edges[1:]):
        inside = (confidence > lower) & (confidence <= upper)
        if inside.any():
            rows.append({"confidence": float(confidence[inside].mean()),
                         "accuracy": float((predicted[inside] == labels[inside]).mean()), "count": int(inside.sum())})
    return rows


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """The gap between confidence and accuracy, averaged over confidence bins weighted by their images."""
    rows = reliability(probabilities, labels, bins)
    return round(sum(r["count"] * abs(r["confidence"] - r["accuracy"]) for r in rows) / max(1, len(labels)), 4)


def debiased_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """The top-label L2 calibration error over equal-mass bins, less its sampling noise (Kumar et al. 2019, "Verified
    Uncertainty Calibration", as in their `calibration` package): each bin's squared gap between mean confidence
    and accuracy, minus the variance its accuracy has by chance. Plain ECE on 200 photos measures about 0.08 for a
    perfectly calibrated model; this estimate is near 0 for one, so a change of temperature can be told from noise."""
    confidence = probabilities.max(axis=1).astype(np.float64)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    total = 0.0
    for inside in np.array_split(np.argsort(confidence, kind="stable"), max(1, min(bins, len(labels) // 2))):
        accuracy = correct[inside].mean()
        total += len(inside) * ((confidence[inside].mean() - accuracy) ** 2
                                - accuracy * (1 - accuracy) / max(1, len(inside) - 1))
    return round(math.sqrt(max(total / max(1, len(labels)), 0.0)), 4)


def ece_if_calibrated(probabilities: np.ndarray, bins: int = ECE_BINS, draws: int = 100) -> float:
    """The ECE a perfectly calibrated model with these scores would measure on as many photos (labels drawn from the
    scores themselves). ECE runs high on few photos: on cats5's 200 validation photos this is about 0.08, more than
    the ECE measured before or after its temperature, so there the two differ by chance."""
    rng = np.random.default_rng(0)
    cumulative = np.cumsum(probabilities.astype(np.float64), axis=1)
    cumulative /= cumulative[:, -1:]
    drawn = [(rng.random((len(probabilities), 1)) > cumulative).sum(axis=1) for _ in range(draws)]
    return round(float(np.mean([expected_calibration_error(probabilities, labels, bins) for labels in drawn])), 4)


def fold_temperature(classifier_layer, temperature: float) -> None:
    """Divide the softmax layer's kernel and bias by T: its logits become z / T, with no layer added (so every
    export carries it and model.keras loads anywhere)."""
    kernel, bias = classifier_layer.get_weights()
    classifier_layer.set_weights([kernel / temperature, bias / temperature])


def calibration_report(probabilities: np.ndarray, labels: np.ndarray, temperature: float,
                       fitted: float | None = None, p_value: float | None = None) -> dict:
    """metrics.json's "calibration": the temperature folded in (and whether the search stopped at a bound of its
    range; the fitted one and its p-value when it was tested), the ECE, the debiased calibration error and the NLL on
    validation before and after it, and the ECE a perfectly calibrated model would measure there."""
    after = rescaled(probabilities, temperature)
    at_bound = any(abs(math.log(temperature / bound)) < 0.01 for bound in TEMPERATURE_RANGE)
    tested = {} if fitted is None else {"fitted_temperature": fitted, "p_value": p_value}
    return {"temperature": temperature, "at_bound": at_bound, **tested, "bins": ECE_BINS,
            "ece_before": expected_calibration_error(probabilities, labels),
            "ece_after": expected_calibration_error(after, labels),
            "ece_if_calibrated": ece_if_calibrated(after), "measured_on": len(labels),
            "debiased_before": debiased_calibration_error(probabilities, labels),
            "debiased_after": debiased_calibration_error(after, labels),
            "nll_before": round(negative_log_likelihood(probabilities, labels), 4),
            "nll_after": round(negative_log_likelihood(after, labels), 4),
            "reliability_before": reliability(probabilities, labels), "reliability_after": reliability(after, labels)}
