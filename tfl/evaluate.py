"""`tfl evaluate`: a run's metrics and error analysis recomputed on its validation files or on another labelled
folder, read with the same scan, conversion and report as training."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from tfl.analysis import Scored, write_analysis
from tfl.checks import bounded
from tfl.split import Split
from tfl.data import LABEL_FILE_SUFFIXES, Reader, list_class_folders, photos_below, scan_class_folders
from tfl.pipeline import make_pipeline, readable_batches
from tfl.errors import TflError, warn
from tfl.fileio import atomic_path, atomic_write_text
from tfl.html_report import build_report
from tfl.metrics import classification_metrics, predict_dataset, write_metrics
from tfl.multilabel import multilabel_metrics
from tfl.predict import load_predictor
from tfl.runs import RunFolder, check_reachable, labels_text
from tfl.unknown import auroc, flagged, unknown_statistic


def load_labelled_file(path: Path, class_names: list[str], converted_dir: Path | None,
                       multilabel: bool) -> tuple[Split, dict]:
    """The photos a label file names (as `tfl finetune --data FILE` reads it, every row, its split column aside),
    labelled by the run's class list; labels the run does not know, or several on a photo for a single-label run,
    are an error."""
    from tfl.csv_labels import read_label_file

    files = read_label_file(path)
    unknown = sorted({label for labels in files.labels for label in labels} - set(class_names))
    if unknown:
        raise TflError(f"'{path}' has label(s) {', '.join(unknown[:5])} that the model does not know. Its classes "
                       f"are: {', '.join(class_names)}.")
    if not multilabel and any(len(labels) > 1 for labels in files.labels):
        raise TflError(f"'{path}' gives several labels to some photos, and this run has one label per photo. Give "
                       "each photo one label, or evaluate a run trained with several (--task multilabel).")
    index = {name: i for i, name in enumerate(class_names)}
    report = {"source": str(path), "skipped": [], "converted": [], "label_file": files.report}
    split = Reader(report, converted_dir).candidates(
        [(file, [index[label] for label in labels] if multilabel else index[labels[0]])
         for file, labels in zip(files.paths, files.labels)])
    report.pop("short_sides", None)
    if len(split) == 0:
        raise TflError(f"'{path}' names no usable image. Check its file column and where the images are.")
    return split, report


EVALUATIONS_FOLDER = "evaluations"  # in the run: one folder per evaluated set, named after it


def evaluate_run(run_dir: str | Path | None, data: str | None = None, root: str | Path = "saved_models",
                 batch_size: int = 32, unknown_data: str | None = None) -> tuple[dict, Path]:
    """Recompute a run's metrics on `data` (a class folder), or on its own validation split, and write the error
    analysis of that set (predictions.csv, the mistakes with heatmaps, curves, report.html) into
    RUN/evaluations/<set>/, whose path is the metrics' "analysis". On a folder, the files it skipped are listed
    under "skipped" (as in a training run's data_report.json). With the unknown category, the share of the set's
    photos it takes; and with `unknown_data` (a folder of photos of none of the classes) the share of those it
    takes, and how well its score tells the two apart (AUROC)."""
    found = RunFolder.open(run_dir, root)
    run, class_names = found.path, found.class_names
    thresholds = found.metrics.get("thresholds")
    with tempfile.TemporaryDirectory(prefix="tfl_converted_") as converted:
        report = {}
        if data is None:
            split = found.splits.get("val")
            if not split:
                raise TflError(f"Run '{run}' has no saved validation file list (trained from tfds?). Pass --data DIR.")
            check_reachable(split.paths, run)
        else:
            split, report = load_labelled_folder(data, class_names, Path(converted), thresholds is not None)
        predictor = load_predictor(found.model_file)
        if unknown_data is not None and not predictor.unknown:
            raise TflError(f"--unknown-data measures the unknown category, and run '{run}' has none (trained with "
                           "--no-unknown, with several labels per photo, or before tfl had it). Leave the option out.")
        dataset = make_pipeline(split, len(class_names), predictor.image_size, batch_size, training=False)
        originals = {row["to"]: row["path"] for row in report.get("converted", [])}  # not the temporary PNGs
        scores, labels = predict_dataset(predictor.scoring, dataset, thresholds is not None)
        probabilities = predictor.probabilities_of(scores)
        scored = Scored([originals.get(path, path) for path in split.paths], probabilities, labels, class_names)
        metrics = (classification_metrics(scored.scores, scored.labels, class_names) if thresholds is None else
                   multilabel_metrics(scored.scores, scored.labels, class_names, thresholds))
        if predictor.unknown:
            metrics["unknown"] = unknown_metrics(scores, predictor, unknown_data, batch_size)
        if report:
            kept = bounded(report)  # the first REPORTED skipped files, and how many there were
            metrics |= {"skipped": kept["skipped"], "skipped_found": kept["skipped_found"],
                        "converted": len(report["converted"])}
        folder = run / EVALUATIONS_FOLDER / evaluation_name(data)
        where = "its validation split" if data is None else f"'{data}'"
        try:
            write_evaluation(folder, scored, predictor, metrics | {"analysis": str(folder)},
                             report | {"layout": f"{len(split):,} photos: {where}"},
                             f"run '{run.name}' evaluated on {where}")
            metrics["analysis"] = str(folder)
        except OSError as error:  # a run on read-only media still evaluates
            warn(f"The error analysis could not be written into '{folder}' ({error.strerror or error}); the "
                 "metrics above are complete.")
    return metrics, run


def unknown_metrics(scores: np.ndarray, predictor, unknown_data: str | None, batch_size: int) -> dict:
    """The share of the evaluated photos the unknown category takes; with photos of none of the classes, the share
    of those it takes and the AUROC of its statistic (the unknown score over the best class's) between the two."""
    result = {"name": predictor.unknown, "flagged": round(float(flagged(scores).mean()), 4) if len(scores) else None}
    if unknown_data is None:
        return result
    paths, rows = [], []
    for names, pixels in readable_batches(photos_below(unknown_data, "--unknown-data"), predictor.image_size,
                                          batch_size):
        paths += names
        rows.append(predictor.scores(pixels))
    if not rows:
        raise TflError(f"--unknown-data '{unknown_data}' holds no image tfl can read. Pass a folder of photos of "
                       "none of the classes.")
    outside = np.concatenate(rows)
    result["unknown_data"] = {"source": str(unknown_data), "photos": int(len(outside)),
                              "flagged": round(float(flagged(outside).mean()), 4),
                              "auroc": round(float(auroc(unknown_statistic(scores), unknown_statistic(outside))), 4),
                              "examples": [path for path, hit in zip(paths, flagged(outside)) if hit][:8]}
    return result


def evaluation_name(data: str | Path | None) -> str:
    """The folder of an evaluation in RUN/evaluations/: `val` for the run's own validation split, else the data
    folder's name (`<parent>-val` for a folder named val, which would otherwise replace the run's own)."""
    if data is None:
        return "val"
    folder = Path(data).expanduser().resolve()
    if folder.is_file():  # a label file: its name without the suffix
        return folder.stem
    return f"{folder.parent.name}-val" if folder.name == "val" else folder.name


def write_evaluation(folder: Path, scored: Scored, predictor, metrics: dict, report: dict, title: str) -> None:
    """The evaluation's folder, replaced whole: its metrics, error analysis and report.html."""
    with atomic_path(folder, force=True) as tmp:
        tmp.mkdir(parents=True)
        written = RunFolder(tmp)
        write_metrics(metrics, written.metrics_file)
        atomic_write_text(written.labels_file, labels_text(scored.class_names))
        atomic_write_text(written.data_report_file, json.dumps(bounded(report), indent=2) + "\n")
        write_analysis(scored, written, predictor.model, predictor.image_size, metrics)
        build_report(tmp, title)


def load_labelled_folder(data: str | Path, class_names: list[str], converted_dir: Path | None,
                         multilabel: bool = False) -> tuple[Split, dict]:
    """Every usable image of `data/<class>/` (or named by the label file `data`), labelled by the run's class list,
    and the report of what was skipped or converted (TIFFs and other formats TensorFlow cannot decode become PNGs in
    `converted_dir`)."""
    root = Path(data).expanduser()
    if root.is_file() and root.suffix.lower() in LABEL_FILE_SUFFIXES:
        return load_labelled_file(root, class_names, converted_dir, multilabel)
    if not root.is_dir():
        raise TflError(f"Data folder '{root}' does not exist. Pass a folder with one subfolder of images per class, "
                       f"or a label file ({', '.join(LABEL_FILE_SUFFIXES)}).")
    folders = [p.name for p in list_class_folders(root)]
    unknown = sorted(set(folders) - set(class_names))
    if unknown:
        raise TflError(f"'{root}' has class folder(s) {', '.join(unknown)} that the model does not know. "
                       f"Its classes are: {', '.join(class_names)}.")
    report = {"source": str(root), "skipped": [], "converted": []}
    split = scan_class_folders(root, class_names, report, converted_dir)
    report.pop("short_sides", None)
    if len(split) == 0:
        raise TflError(f"'{root}' holds no usable image in folders named after the model's classes "
                       f"({', '.join(class_names)}).")
    return split, report
