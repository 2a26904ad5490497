"""What a model gets wrong on labelled photos (a run's validation split, or `tfl evaluate`'s): a per-photo predictions
CSV, the most confident mistakes (with Grad-CAM heatmaps), the most confused class pairs, per-class ROC AUC and
average precision, and their plots; the files report.html shows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfl.fileio import atomic_path, atomic_write_csv, atomic_write_text
from tfl.runs import RunFolder

MISTAKES = 12  # the most confident mistakes kept for the gallery
PAIRS = 5  # the most confused class pairs


@dataclass
class Scored:
    """Labelled photos and a model's (calibrated) scores for them: class indices as labels, or multi-hot rows when
    a photo has several labels."""

    paths: list[str]
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim > 1

    @property
    def truth(self) -> np.ndarray:
        """One row of 0/1 per photo."""
        return self.labels if self.multilabel else np.eye(len(self.class_names))[self.labels]


def write_analysis(scored: Scored, folder: RunFolder, model, image_size: int, metrics: dict) -> None:
    """The analysis files of `folder` (a run, or an evaluation's folder): precision-recall and ROC curves; with one
    label per photo also the confusion matrix, predictions.csv, analysis.json and the gallery of the most confident
    mistakes with Grad-CAM heatmaps."""
    from PIL import Image

    from tfl.pipeline import load_image_for_predict
    from tfl.plots import plot_confusion_matrix, plot_precision_recall, plot_roc

    names = scored.class_names
    plot_precision_recall((scored.scores, scored.truth), folder.precision_recall_file, names,
                          thresholds=scored.multilabel)
    plot_roc((scored.scores, scored.truth), folder.roc_file, names)
    if scored.multilabel:
        thresholds = np.array([metrics["per_class"][name]["threshold"] for name in names])
        multilabel_predictions_csv(scored, thresholds, folder.predictions_file)
        return
    plot_confusion_matrix(metrics, folder.confusion_file)
    predictions_csv(scored.paths, scored.scores, scored.labels, names, folder.predictions_file)
    found = error_analysis(scored.paths, scored.scores, scored.labels, names)
    heat = None
    if found["mistakes"]:
        pixels = np.stack([load_image_for_predict(m["path"], image_size) for m in found["mistakes"]])
        heat = grad_cam(model, pixels, [names.index(m["predicted"]) for m in found["mistakes"]])
        folder.mistakes_dir.mkdir(exist_ok=True)
        for index, image in enumerate(pixels):
            picture = Image.fromarray(overlaid(image, None if heat is None else heat[index])).resize((180, 180))
            with atomic_path(folder.mistakes_dir / f"{index}.jpg", force=True) as tmp:
                picture.save(tmp, format="JPEG", quality=85)
    atomic_write_text(folder.analysis_file, json.dumps(found | {"grad_cam": heat is not None}, indent=2))


def predictions_csv(paths: list[str], probabilities: np.ndarray, labels: np.ndarray, class_names: list[str],
                    path: Path) -> None:
    """One row per photo: its label, the prediction, the confidence and every class's probability."""
    def row(file, scores, label):
        best = int(scores.argmax())
        return [file, class_names[label], class_names[best], f"{scores[best]:.5f}", int(best == label),
                *(f"{s:.5f}" for s in scores)]

    atomic_write_csv(path, ["path", "label", "predicted", "confidence", "correct", *class_names],
                     (row(*photo) for photo in zip(paths, probabilities, labels)))


def multilabel_predictions_csv(scored: Scored, thresholds: np.ndarray, path: Path) -> None:
    """Several labels per photo: one row per photo, its labels, those over their thresholds, whether the two are the
    same, and every label's score."""
    names = scored.class_names

    def row(file, scores, truth):
        given = ";".join(names[i] for i in np.flatnonzero(truth))
        predicted = ";".join(names[i] for i in np.flatnonzero(scores >= thresholds))
        return [file, given, predicted, int(given == predicted), *(f"{s:.5f}" for s in scores)]

    atomic_write_csv(path, ["path", "labels", "predicted", "exact_match", *names],
                     (row(*photo) for photo in zip(scored.paths, scored.scores, scored.labels)))


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """Area under the ROC curve (scikit-learn's); None without photos of both kinds."""
    from sklearn.metrics import roc_auc_score

    truth = np.asarray(truth) > 0
    return float(roc_auc_score(truth, scores)) if 0 < truth.sum() < len(truth) else None


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
