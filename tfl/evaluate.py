"""Metrics of a model on a labelled dataset (accuracy, loss, per-class P/R/F1, confusion matrix) and their plots."""

from __future__ import annotations

import json
import warnings
from collections.abc import Collection
from pathlib import Path

import numpy as np

from tfl.fileio import atomic_write_bytes, atomic_write_text


def predict_dataset(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, true labels) over a dataset of (pixels, one-hot labels)."""
    probabilities, labels = [], []
    for images, one_hot in dataset:
        probabilities.append(np.asarray(model.predict_on_batch(np.asarray(images))))
        labels.append(np.argmax(np.asarray(one_hot), axis=-1))
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


def evaluate_model(model, dataset, class_names: list[str]) -> dict:
    probabilities, labels = predict_dataset(model, dataset)
    return classification_metrics(probabilities, labels, class_names)


def write_metrics(metrics: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")


def _figure_bytes(figure) -> bytes:
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
    atomic_write_bytes(path, _figure_bytes(figure))
    plt.close(figure)


def kept_epochs(history: list[dict]) -> dict[str, int]:
    """Each stage's best epoch, the one it ends on and the next stage starts from (tfl.checkpoint.beats)."""
    from tfl.checkpoint import beats

    best: dict[str, dict] = {}
    for row in history:
        if row.get("val_accuracy") is not None and beats(row["val_accuracy"], row["val_loss"], best.get(row["stage"])):
            best[row["stage"]] = {"value": row["val_accuracy"], "loss": row["val_loss"], "epoch": row["epoch"]}
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
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
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
    atomic_write_bytes(path, _figure_bytes(figure))
    plt.close(figure)


def evaluate_run(run_dir: str | Path | None, data: str | None = None, root: str | Path = "saved_models",
                 batch_size: int = 32) -> tuple[dict, Path]:
    """Recompute a run's metrics on `data` (a class folder), or on its own validation split."""
    from tfl.data import Split, make_pipeline
    from tfl.errors import TflError
    from tfl.predict import load_predictor
    from tfl.runs import RunFolder, check_reachable

    found = RunFolder.open(run_dir, root)
    run, class_names = found.path, found.class_names
    if data is None:
        saved = found.splits.get("val")
        if not saved:
            raise TflError(f"Run '{run}' has no saved validation file list (trained from tfds?). Pass --data DIR.")
        check_reachable(saved["paths"], run)
        split = Split(paths=saved["paths"], labels=saved["labels"])
    else:
        split = load_labelled_folder(data, class_names)
    predictor = load_predictor(found.model_file)
    model, image_size = predictor.model, predictor.image_size
    dataset = make_pipeline(split, len(class_names), image_size, batch_size, training=False)
    metrics = evaluate_model(model, dataset, class_names)
    return metrics, run


def load_labelled_folder(data: str, class_names: list[str]):
    """Every usable image of `data/<class>/`, labelled by the run's class list."""
    from tfl.data import list_class_folders, scan_class_folders
    from tfl.errors import TflError

    root = Path(data).expanduser()
    if not root.is_dir():
        raise TflError(f"Data folder '{root}' does not exist. Pass a folder with one subfolder of images per class.")
    folders = [p.name for p in list_class_folders(root)]
    unknown = sorted(set(folders) - set(class_names))
    if unknown:
        raise TflError(f"'{root}' has class folder(s) {', '.join(unknown)} that the model does not know. "
                       f"Its classes are: {', '.join(class_names)}.")
    report = {"skipped": [], "converted": []}
    split = scan_class_folders(root, class_names, report, converted_dir=None)
    if len(split) == 0:
        raise TflError(f"'{root}' holds no usable image in folders named after the model's classes ({', '.join(class_names)}).")
    return split
