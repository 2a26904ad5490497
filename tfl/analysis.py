"""What a model gets wrong, on the validation photos: a per-photo predictions CSV, the most confident mistakes (with
Grad-CAM heatmaps), the most confused class pairs, and per-class ROC AUC and average precision."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from tfl.fileio import atomic_write_text

MISTAKES = 12  # the most confident mistakes kept for the gallery
PAIRS = 5  # the most confused class pairs


def predictions_csv(paths: list[str], probabilities: np.ndarray, labels: np.ndarray, class_names: list[str],
                    path: Path) -> None:
    """One row per photo: its label, the prediction, the confidence and every class's probability."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "predicted", "confidence", "correct", *class_names])
    for file, scores, label in zip(paths, probabilities, labels):
        best = int(scores.argmax())
        writer.writerow([file, class_names[label], class_names[best], f"{scores[best]:.5f}", int(best == label),
                         *(f"{s:.5f}" for s in scores)])
    atomic_write_text(path, buffer.getvalue())


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); None without both kinds."""
    positives, negatives = scores[truth > 0], scores[truth == 0]
    if not len(positives) or not len(negatives):
        return None
    order = np.argsort(np.concatenate([positives, negatives]), kind="stable")
    ranks = np.empty(len(order))
    values = np.concatenate([positives, negatives])[order]
    ranks[order] = np.arange(1, len(order) + 1)
    for value in np.unique(values[np.r_[values[1:] == values[:-1], False]]):  # average ranks of ties
        tied = np.concatenate([positives, negatives]) == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[:len(positives)].sum() - len(positives) * (len(positives) + 1) / 2)
                 / (len(positives) * len(negatives)))


def error_analysis(paths: list[str], probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """The mistakes ranked by confidence, the confused pairs, and per-class AUC and AP (one class against the rest)."""
    from tfl.multilabel import average_precision

    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")]
    confusion = np.zeros((len(class_names),) * 2, int)
    np.add.at(confusion, (labels, predicted), 1)
    off_diagonal = [(int(confusion[i, j] + confusion[j, i]), i, j) for i in range(len(class_names))
                    for j in range(i + 1, len(class_names)) if confusion[i, j] + confusion[j, i]]
    per_class = {}
    for i, name in enumerate(class_names):
        truth = (labels == i).astype(int)
        auc, ap = roc_auc(probabilities[:, i], truth), average_precision(probabilities[:, i], truth)
        per_class[name] = {"roc_auc": None if auc is None else round(auc, 4), "ap": None if ap is None else round(ap, 4)}
    return {
        "mistakes": [{"path": paths[i], "label": class_names[labels[i]], "predicted": class_names[predicted[i]],
                      "confidence": round(float(probabilities[i, predicted[i]]), 4)} for i in wrong[:MISTAKES]],
        "mistakes_total": int(len(wrong)),
        "confused_pairs": [{"classes": [class_names[i], class_names[j]], "mistakes": count,
                            "as": {f"{class_names[i]} -> {class_names[j]}": int(confusion[i, j]),
                                   f"{class_names[j]} -> {class_names[i]}": int(confusion[j, i])}}
                           for count, i, j in sorted(off_diagonal, reverse=True)[:PAIRS]],
        "per_class": per_class,
    }


def grad_cam(model, pixels: np.ndarray, classes: list[int]) -> np.ndarray | None:
    """Grad-CAM heatmaps (0..1, the backbone's output grid) of `classes` for a batch of pixels: the gradient of each
    class's probability with respect to the backbone's last feature map, averaged per channel, weighs the map (Keras'
    GradientTape recipe). None under a backend other than TensorFlow."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    from tfl.model import BACKBONE_NAME, HEAD_NAME

    names = [layer.name for layer in model.layers]
    backbone_at, head_at = names.index(BACKBONE_NAME), names.index(HEAD_NAME)
    x = tf.convert_to_tensor(pixels, tf.float32)
    for layer in model.layers[1:backbone_at]:
        x = layer(x, training=False)
    with tf.GradientTape() as tape:
        feature_map = model.layers[backbone_at](x, training=False)
        tape.watch(feature_map)
        y = feature_map
        for layer in model.layers[backbone_at + 1:head_at + 1]:
            y = layer(y, training=False)
        chosen = tf.gather(y, classes, axis=1, batch_dims=1)
    gradients = tape.gradient(chosen, feature_map)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    heat = tf.nn.relu(tf.reduce_sum(weights * feature_map, axis=-1)).numpy()
    return heat / np.maximum(heat.max(axis=(1, 2), keepdims=True), 1e-12)


def overlaid(pixels: np.ndarray, heat: np.ndarray | None) -> np.ndarray:
    """The photo with its heatmap laid over in red (uint8 RGB), or the photo alone."""
    if heat is None:
        return pixels.astype(np.uint8)
    from PIL import Image

    size = pixels.shape[0]
    upscaled = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
                          np.float32)[..., None] / 255
    red = np.zeros_like(pixels, dtype=np.float32)
    red[..., 0] = 255
    return np.clip(pixels * (1 - 0.5 * upscaled) + red * 0.5 * upscaled, 0, 255).astype(np.uint8)
