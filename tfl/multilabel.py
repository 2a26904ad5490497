"""Several labels per photo: the split that keeps every label in validation, the loss with per-label positive
weights, the score the best epoch is chosen on (mean average precision), the decision threshold per label, and the
metrics (mAP, micro and macro F1, exact match, per-label precision, recall, F1 and AP).

Single-label runs use none of this: `Task` says which of the two a run is, and what differs between them."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

IMBALANCE_RATIO = 1.5  # per-label positive weights when the rarest label is this much rarer than the commonest
MAX_POSITIVE_WEIGHT = 10.0


@dataclass(frozen=True)
class Task:
    """What differs between one label per photo and several."""

    name: str  # "single" or "multilabel"
    activation: str  # of the classifier layer
    score: str  # the Keras metric the best epoch is chosen on ("val_" + score in the logs)

    @property
    def multilabel(self) -> bool:
        return self.name == "multilabel"

    def metric(self):
        if self.multilabel:  # Keras' area under the precision-recall curve, per label then averaged: mAP
            return keras.metrics.AUC(curve="PR", multi_label=True, num_thresholds=200, name=self.score)
        return "accuracy"

    def loss(self, label_smoothing: float, positive_weights: list[float] | None = None) -> keras.losses.Loss:
        if not self.multilabel:
            return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        if positive_weights:
            return WeightedBinaryCrossentropy(positive_weights, label_smoothing)
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)


TASKS = {"single": Task("single", "softmax", "accuracy"), "multilabel": Task("multilabel", "sigmoid", "map")}


@keras.saving.register_keras_serializable(package="tfl")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy with each label's positive term weighted (rare labels count more when present)."""

    def __init__(self, positive_weights, label_smoothing: float = 0.0, name: str = "weighted_binary_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.positive_weights, self.label_smoothing = list(positive_weights), float(label_smoothing)

    def call(self, y_true, y_pred):
        ops = keras.ops
        y_true = ops.cast(y_true, y_pred.dtype)
        y_true = y_true * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        y_pred = ops.clip(y_pred, 1e-7, 1 - 1e-7)
        weights = ops.convert_to_tensor(self.positive_weights, dtype=y_pred.dtype)
        terms = weights * y_true * ops.log(y_pred) + (1 - y_true) * ops.log(1 - y_pred)
        return -ops.mean(terms, axis=-1)

    def get_config(self):
        return {"positive_weights": self.positive_weights, "label_smoothing": self.label_smoothing, "name": self.name}


def multi_hot(labels: list[list[int]], num_classes: int) -> np.ndarray:
    matrix = np.zeros((len(labels), num_classes), np.float32)
    for row, present in enumerate(labels):
        matrix[row, present] = 1
    return matrix


def positive_weights(labels: list[list[int]], num_classes: int) -> list[float] | None:
    """negatives / positives per label (capped), when the labels are clearly imbalanced; else None."""
    positives = multi_hot(labels, num_classes).sum(axis=0)
    if positives.min() == 0 or positives.max() / positives.min() < IMBALANCE_RATIO:
        return None
    negatives = len(labels) - positives
    return [round(float(min(MAX_POSITIVE_WEIGHT, max(1.0, n / p))), 4) for n, p in zip(negatives, positives)]


def iterative_split(labels: list[list[int]], num_classes: int, val_fraction: float, seed: int,
                    groups: list[int] | None = None) -> np.ndarray:
    """A boolean mask of the photos held out for validation, by iterative stratification (Sechidis, Tsoumakas and
    Vlahavas 2011): the rarest label's photos are placed first, each into the side that still wants most of it, so
    that every label keeps close to its share on both sides (and a label with two photos or more is in both).
    With `groups` (a group id per photo: copies of one photo share one), each group is placed whole, as one unit
    carrying all its photos' labels."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    _, unit_of = np.unique(np.arange(n) if groups is None else np.asarray(groups), return_inverse=True)
    photos = multi_hot(labels, num_classes).astype(int)
    matrix = np.zeros((unit_of.max() + 1 if n else 0, num_classes), int)  # [unit, label]: its photos with the label
    np.add.at(matrix, unit_of, photos)
    sizes = np.bincount(unit_of, minlength=len(matrix))
    fractions = np.array([1 - val_fraction, val_fraction])
    wanted_total = fractions * n
    wanted = np.outer(fractions, photos.sum(axis=0)).astype(float)  # [side, label]
    side = np.full(len(matrix), -1)
    left = np.ones(len(matrix), bool)
    while left.any() and matrix[left].any():
        counts = matrix[left].sum(axis=0).astype(float)
        counts[counts == 0] = np.inf
        label = int(np.argmin(counts))  # the rarest label among the photos not yet placed
        for unit in rng.permutation(np.flatnonzero(left & (matrix[:, label] > 0))):
            wants = wanted[:, label]
            best = np.flatnonzero(wants == wants.max())
            if len(best) > 1:
                best = best[wanted_total[best] == wanted_total[best].max()]
            chosen = int(rng.choice(best))
            side[unit], left[unit] = chosen, False
            wanted[chosen] -= matrix[unit]
            wanted_total[chosen] -= sizes[unit]
    for unit in rng.permutation(np.flatnonzero(left)):  # photos without labels, if any
        chosen = int(np.argmax(wanted_total))
        side[unit] = chosen
        wanted_total[chosen] -= sizes[unit]
    return side[unit_of] == 1 if n else np.zeros(0, bool)


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """Area under the precision-recall curve as scikit-learn's average_precision_score computes it (the mean of
    the precision at each positive, ties broken towards the lower rank); None when the label has no positive."""
    positives = int(truth.sum())
    if positives == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], truth[order].astype(float)
    # the precision at a score counts every photo scored that high, so ties share one threshold
    cumulative = np.cumsum(hits)
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    thresholds = np.flatnonzero(last_of_tie)
    true_positives, predicted = cumulative[thresholds], thresholds + 1
    precision = true_positives / predicted
    recall_steps = np.diff(np.r_[0, true_positives]) / positives
    return float(np.sum(recall_steps * precision))


def best_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The score threshold that maximises the label's F1 on validation (0.5 when the label has no positive): half way
    between the lowest score it takes and the highest it leaves out, so that neither rounding nor an artifact's
    float error moves a validation photo across it (rounded to 4 places, a label on every photo got 0.3619 against a
    lowest score of 0.361894, and recall 0.857 instead of 1)."""
    if truth.sum() == 0:
        return 0.5
    candidates = np.unique(scores.astype(np.float64))
    f1 = [f1_score(scores >= t, truth) for t in candidates]
    chosen = int(np.argmax(f1))
    below = candidates[chosen - 1] if chosen > 0 else 0.0
    return float((candidates[chosen] + below) / 2)


def f1_score(predicted: np.ndarray, truth: np.ndarray) -> float:
    true_positives = float(np.sum(predicted & (truth > 0)))
    return 2 * true_positives / max(float(predicted.sum() + truth.sum()), 1e-12)


def choose_thresholds(probabilities: np.ndarray, truth: np.ndarray) -> list[float]:
    return [best_threshold(probabilities[:, i], truth[:, i]) for i in range(truth.shape[1])]


def multilabel_metrics(probabilities: np.ndarray, truth: np.ndarray, class_names: list[str],
                       thresholds: list[float]) -> dict:
    """Mean average precision, micro and macro F1 and the exact-match ratio at the thresholds, and per label."""
    predicted = probabilities >= np.asarray(thresholds)
    truth = truth > 0
    per_label, precisions = {}, []
    for i, name in enumerate(class_names):
        hits = float(np.sum(predicted[:, i] & truth[:, i]))
        precision, recall = hits / max(predicted[:, i].sum(), 1), hits / max(truth[:, i].sum(), 1)
        ap = average_precision(probabilities[:, i], truth[:, i])
        per_label[name] = {"precision": round(precision, 4), "recall": round(recall, 4),
                           "f1": round(f1_score(predicted[:, i], truth[:, i]), 4),
                           "ap": None if ap is None else round(ap, 4), "support": int(truth[:, i].sum()),
                           "threshold": thresholds[i]}
        precisions.append(ap)
    present = [ap for ap in precisions if ap is not None]
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    loss = -np.mean(truth * np.log(clipped) + (1 - truth) * np.log(1 - clipped))
    return {
        "task": "multilabel",
        "map": round(float(np.mean(present)), 4) if present else None,
        "micro_f1": round(f1_score(predicted.ravel(), truth.ravel()), 4),
        "macro_f1": round(float(np.mean([row["f1"] for row in per_label.values() if row["support"]])), 4),
        "exact_match": round(float(np.mean(np.all(predicted == truth, axis=1))), 4),
        "loss": round(float(loss), 4),
        "num_images": int(len(truth)),
        "per_class": per_label,
        "class_names": list(class_names),
        "thresholds": list(thresholds),
    }


def as_binary(probabilities: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (photo, label) pair as a two-class problem: ([1 - p, p] rows, 0/1 labels). Softmax temperature scaling
    of these rows is sigmoid temperature scaling of the label's logit, so tfl.calibration serves both tasks."""
    scores = probabilities.reshape(-1).astype(np.float64)
    return np.stack([1 - scores, scores], axis=1), (truth.reshape(-1) > 0).astype(int)
