"""`tfl evaluate`: a run's metrics recomputed on its validation files or on another labelled folder, read with
the same scan, conversion and report as training."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tfl.data import Split, list_class_folders, make_pipeline, scan_class_folders
from tfl.errors import TflError
from tfl.metrics import evaluate_model
from tfl.predict import load_predictor
from tfl.runs import RunFolder, check_reachable


def evaluate_run(run_dir: str | Path | None, data: str | None = None, root: str | Path = "saved_models",
                 batch_size: int = 32) -> tuple[dict, Path]:
    """Recompute a run's metrics on `data` (a class folder), or on its own validation split. On a folder, the files
    it skipped are listed under "skipped" (as in a training run's data_report.json)."""
    found = RunFolder.open(run_dir, root)
    run, class_names = found.path, found.class_names
    with tempfile.TemporaryDirectory(prefix="tfl_converted_") as converted:
        report = {}
        if data is None:
            split = found.splits.get("val")
            if not split:
                raise TflError(f"Run '{run}' has no saved validation file list (trained from tfds?). Pass --data DIR.")
            check_reachable(split.paths, run)
        else:
            split, report = load_labelled_folder(data, class_names, Path(converted))
        predictor = load_predictor(found.model_file)
        dataset = make_pipeline(split, len(class_names), predictor.image_size, batch_size, training=False)
        metrics = evaluate_model(predictor.model, dataset, class_names, found.metrics.get("thresholds"))
    if report:
        metrics |= {"skipped": report["skipped"], "converted": len(report["converted"])}
    return metrics, run


def load_labelled_folder(data: str | Path, class_names: list[str], converted_dir: Path | None) -> tuple[Split, dict]:
    """Every usable image of `data/<class>/`, labelled by the run's class list, and the report of what was skipped
    or converted (TIFFs and other formats TensorFlow cannot decode become PNGs in `converted_dir`)."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise TflError(f"Data folder '{root}' does not exist. Pass a folder with one subfolder of images per class.")
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
