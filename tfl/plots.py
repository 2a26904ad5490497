"""The run's pictures, as PNG files: training curves (with each stage's kept epoch), the confusion matrix, the
reliability diagram, and the per-class precision-recall and ROC curves."""

from __future__ import annotations

import warnings
from collections.abc import Collection
from pathlib import Path

import numpy as np

from tfl.checkpoint import beats
from tfl.fileio import atomic_write_bytes


def figure_bytes(figure) -> bytes:
    """The figure as PNG. Class names in a script the font lacks (CJK in DejaVu Sans) are drawn as boxes rather
    than warned about once per glyph, with a path into matplotlib's source."""
    import io

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def plot_confusion_matrix(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, matrix = metrics["class_names"], np.asarray(metrics["confusion_matrix"])
    size = max(4.0, 0.6 * len(names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    axes.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted", ylabel="true",
             title=f"accuracy {metrics['accuracy']:.3f} on {metrics['num_images']} images")
    axes.set_xticklabels(names, rotation=45, ha="right")
    axes.set_yticklabels(names)
    for (row, col), value in np.ndenumerate(matrix):
        axes.text(col, row, str(value), ha="center", va="center",
                  color="white" if value > matrix.max() / 2 else "black")
    atomic_write_bytes(path, figure_bytes(figure))
    plt.close(figure)


def score_of(history: list[dict]) -> str:
    """The metric a history's best epochs were chosen on: accuracy, or map (several labels per photo)."""
    return "map" if any("val_map" in row for row in history) else "accuracy"


def kept_epochs(history: list[dict]) -> dict[str, int]:
    """Each stage's best epoch, the one it ends on and the next stage starts from (tfl.checkpoint.beats)."""
    best: dict[str, dict] = {}
    score = "val_" + score_of(history)
    for row in history:
        if row.get(score) is not None and beats(row[score], row["val_loss"], best.get(row["stage"])):
            best[row["stage"]] = {"value": row[score], "loss": row["val_loss"], "epoch": row["epoch"]}
    return {stage: kept["epoch"] for stage, kept in best.items()}


def plot_training_curves(history: list[dict], path: Path, cached_stages: Collection[str] = ()) -> None:
    """Loss and accuracy per epoch, a line between stages and a star on the epoch each stage kept. Stages in
    `cached_stages` trained on cached features of un-augmented photos, so their training accuracy runs higher
    than that of a later stage on augmented pixels; the label says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [row["epoch"] for row in history]
    kept = kept_epochs(history)
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, score_of(history))):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [row.get(prefix + metric) for row in history]
            if any(v is not None for v in values):
                axes.plot(epochs, values, style, marker="o", markersize=3, label=f"{prefix or 'train_'}{metric}")
        kept_rows = [history[epoch - 1] for epoch in kept.values()]
        axes.plot([row["epoch"] for row in kept_rows], [row["val_" + metric] for row in kept_rows], "*",
                  color="black", markersize=10, label="kept by its stage", linestyle="none")
        for index, row in enumerate(history):
            if index == 0 or row["stage"] != history[index - 1]["stage"]:
                if index:
                    axes.axvline(row["epoch"] - 0.5, color="grey", linewidth=0.8)
                label = row["stage"] + (" (cached features,\nnot augmented)" if row["stage"] in cached_stages else "")
                axes.text(row["epoch"] - 0.4, axes.get_ylim()[1], label, va="top", fontsize=8, color="grey")
        axes.set(xlabel="epoch", title=metric)
        axes.legend(loc="best", fontsize=8)
    atomic_write_bytes(path, figure_bytes(figure))
    plt.close(figure)


def plot_reliability(calibration: dict, path: Path) -> None:
    """Accuracy against confidence per bin, before and after the temperature (the diagonal is perfect calibration);
    the ECE of each in the legend, and what a perfectly calibrated model's would be on as many photos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 5))
    floor = (f" (its ECE on {calibration['measured_on']:,}: about {calibration['ece_if_calibrated']:.3f})"
             if "ece_if_calibrated" in calibration else "")
    axes.plot([0, 1], [0, 1], ":", color="grey", label=f"perfectly calibrated{floor}")
    for key, style in (("before", "o--"), ("after", "s-")):
        rows = calibration[f"reliability_{key}"]
        debiased = f", debiased {calibration[f'debiased_{key}']:.3f}" if f"debiased_{key}" in calibration else ""
        name = key if key == "before" else f"with temperature {calibration['temperature']:.2f}"
        label = f"{name} (ECE {calibration[f'ece_{key}']:.3f}{debiased})"
        axes.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], style, label=label)
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence of the top class", ylabel="accuracy",
             title="reliability on the validation set")
    axes.legend(loc="upper left", fontsize=8)
    atomic_write_bytes(path, figure_bytes(figure))
    plt.close(figure)


def plot_precision_recall(scores_and_truth: tuple[np.ndarray, np.ndarray], path: Path, class_names: list[str],
                          thresholds: bool = True) -> None:
    """Each label's (or class's, against the rest) precision-recall curve on validation with its AP; with
    `thresholds` (several labels per photo), a dot at the label's decision threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tfl.multilabel import average_precision, best_threshold

    scores, truth = scores_and_truth
    figure, axes = plt.subplots(figsize=(6, 5))
    for i, name in enumerate(class_names):
        positives = truth[:, i] > 0
        if not positives.any():
            continue
        order = np.argsort(-scores[:, i], kind="stable")
        hits = np.cumsum(positives[order])
        precision, recall = hits / np.arange(1, len(order) + 1), hits / positives.sum()
        line, = axes.plot(recall, precision, label=f"{name} (AP {average_precision(scores[:, i], positives):.2f})")
        if thresholds:
            threshold = best_threshold(scores[:, i], positives)
            at = max(int(np.sum(scores[:, i] >= threshold)) - 1, 0)
            axes.plot(recall[at], precision[at], "o", color=line.get_color())
    title = ("Validation precision-recall per label (dot: its threshold)" if thresholds else
             "Validation precision-recall per class, against the rest")
    axes.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    axes.legend(loc="lower left", fontsize=8)
    atomic_write_bytes(path, figure_bytes(figure))
    plt.close(figure)


def plot_roc(scores_and_truth: tuple[np.ndarray, np.ndarray], path: Path, class_names: list[str]) -> None:
    """Each class's (or label's) ROC curve on validation, one against the rest, with its area (scikit-learn's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    scores, truth = scores_and_truth
    figure, axes = plt.subplots(figsize=(6, 5))
    axes.plot([0, 1], [0, 1], ":", color="grey")
    for i, name in enumerate(class_names):
        positives = truth[:, i] > 0
        if positives.all() or not positives.any():
            continue  # a curve needs photos of both kinds
        false_positive_rate, true_positive_rate, _ = roc_curve(positives, scores[:, i])
        axes.plot(false_positive_rate, true_positive_rate,
                  label=f"{name} (AUC {roc_auc_score(positives, scores[:, i]):.3f})")
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate", ylabel="true positive rate",
             title="Validation ROC per class, against the rest")
    axes.legend(loc="lower right", fontsize=8)
    atomic_write_bytes(path, figure_bytes(figure))
    plt.close(figure)
