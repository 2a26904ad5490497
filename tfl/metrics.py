"""Metrics of a model on a labelled dataset: accuracy, loss, per-class precision/recall/F1, the confusion matrix (and,
through tfl.multilabel, those of several labels per photo)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tfl.fileio import atomic_write_text


def predict_dataset(model, dataset, multilabel: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, true labels) over a dataset of (pixels, one-hot labels); with several labels per photo, the
    true labels are multi-hot rows."""
    probabilities, labels = [], []
    for images, one_hot in dataset:
        probabilities.append(np.asarray(model.predict_on_batch(np.asarray(images))))
        labels.append(np.asarray(one_hot) if multilabel else np.argmax(np.asarray(one_hot), axis=-1))
    return np.concatenate(probabilities), np.concatenate(labels)


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    num_classes = len(class_names)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    picked = probabilities[np.arange(len(labels)), labels]
    per_class = {}
    for i, name in enumerate(class_names):
        true_positive = confusion[i, i]
        precision = true_positive / max(confusion[:, i].sum(), 1)
        recall = true_positive / max(confusion[i, :].sum(), 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        per_class[name] = {"precision": round(float(precision), 4), "recall": round(float(recall), 4),
                           "f1": round(float(f1), 4), "support": int(confusion[i, :].sum())}
    # As scikit-learn does: a class neither present nor predicted has no F1, rather than an F1 of 0.
    seen = [c["f1"] for i, c in enumerate(per_class.values()) if confusion[i, :].sum() or confusion[:, i].sum()]
    return {
        "accuracy": round(float((predicted == labels).mean()), 4),
        "loss": round(float(-np.log(np.clip(picked, 1e-7, 1.0)).mean()), 4),
        "num_images": int(len(labels)),
        "macro_f1": round(float(np.mean(seen)), 4),
        "per_class": per_class,
        "class_names": list(class_names),
        "confusion_matrix": confusion.tolist(),
    }


def evaluate_model(model, dataset, class_names: list[str], thresholds: list[float] | None = None) -> dict:
    """The metrics of a model on a dataset; given per-label thresholds, those of several labels per photo."""
    if thresholds is not None:
        from tfl.multilabel import multilabel_metrics

        probabilities, truth = predict_dataset(model, dataset, multilabel=True)
        return multilabel_metrics(probabilities, truth, class_names, thresholds)
    probabilities, labels = predict_dataset(model, dataset)
    return classification_metrics(probabilities, labels, class_names)


def write_metrics(metrics: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
