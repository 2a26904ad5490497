"""The run folder: `RunFolder` names every file in it and reads them; run names, locks, finding runs."""

from __future__ import annotations

import contextlib
import itertools
import csv
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from tfl.errors import TflError, has_control_characters
from tfl.fileio import atomic_write_text
from tfl.formats import FORMATS
from tfl.split import Split

DEFAULT_ROOT = "saved_models"
PARTIAL_SUFFIX = ".partial"
MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"  # also the name of the labels inside a SavedModel's assets and a .tflite
THRESHOLDS_FILE = "thresholds.json"  # several labels per photo: {label: threshold}, beside labels.txt everywhere
# the unknown category's name, in a SavedModel's assets and a .tflite, where its last label is that category
UNKNOWN_NAME_FILE = "unknown.txt"
CONFIG_FILE = "config.yaml"
SPLITS_FILE = "splits.json"
CHECKPOINT_DIR = "checkpoint"  # in <name>.partial/ while training: what --resume continues from
CHECKPOINT_STATE = "state.json"
RUN_MARKER = MODEL_FILE
EXPORT_LOCK = ".export.lock"
REVIEW_LOCK = ".review.lock"


@dataclass(frozen=True)
class RunFolder:
    """A run folder (finished, or <name>.partial while it trains): the one place its file names are spelled, and
    their readers. `tfl.Run` (tfl/api.py) adds what can be done with a finished run."""

    path: Path

    def __post_init__(self):  # tfl.Run("runs/x") as well as tfl.open_run: paths are joined with `/` below
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def open(cls, run: str | Path | None = None, root: str | Path = DEFAULT_ROOT):
        """A finished run: the folder `run`, or the newest run under `root`."""
        return cls(resolve_run(run, root))

    model_file = property(lambda self: self.path / MODEL_FILE)
    labels_file = property(lambda self: self.path / LABELS_FILE)
    config_file = property(lambda self: self.path / CONFIG_FILE)
    splits_file = property(lambda self: self.path / SPLITS_FILE)
    metrics_file = property(lambda self: self.path / "metrics.json")
    history_file = property(lambda self: self.path / "history.csv")
    curves_file = property(lambda self: self.path / "training_curves.png")
    confusion_file = property(lambda self: self.path / "confusion_matrix.png")
    reliability_file = property(lambda self: self.path / "reliability_diagram.png")
    precision_recall_file = property(lambda self: self.path / "precision_recall.png")
    roc_file = property(lambda self: self.path / "roc_curves.png")
    predictions_file = property(lambda self: self.path / "predictions.csv")
    analysis_file = property(lambda self: self.path / "analysis.json")
    mistakes_dir = property(lambda self: self.path / "mistakes")  # the gallery's thumbnails, heatmaps laid over
    report_file = property(lambda self: self.path / "report.html")
    data_report_file = property(lambda self: self.path / "data_report.json")
    checks_file = property(lambda self: self.path / "checks.csv")  # every photo of every data check's list
    label_issues_file = property(lambda self: self.path / "label_issues.csv")  # every label the probe doubts
    export_report_file = property(lambda self: self.path / "export_report.json")
    checkpoint_dir = property(lambda self: self.path / CHECKPOINT_DIR)
    converted_dir = property(lambda self: self.path / "converted")  # photos TensorFlow cannot decode, as PNG
    cache_dir = property(lambda self: self.path / "cache")  # decoded images while training; removed at the end
    logs_dir = property(lambda self: self.path / "logs")  # TensorBoard
    saved_model_dir = property(lambda self: self.artifact("saved_model"))
    onnx_file = property(lambda self: self.artifact("onnx"))

    def tflite_file(self, quantize: str = "none") -> Path:
        return self.artifact("tflite", quantize)

    def artifact(self, format: str, quantize: str = "none") -> Path:
        """Where an exported artifact lives in the run (tfl/formats.py)."""
        return self.path / FORMATS[format].path(quantize)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def class_names(self) -> list[str]:
        return read_labels(self.labels_file)

    @property
    def thresholds(self) -> list[float] | None:
        """Several labels per photo: each label's decision threshold, chosen on validation; None for one label."""
        return read_thresholds(self.path / THRESHOLDS_FILE, self.class_names)

    @property
    def config(self) -> dict[str, Any]:
        return read_run_config(self.path)

    @property
    def metrics(self) -> dict[str, Any]:
        """metrics.json: validation accuracy, loss, per-class figures of the model kept; `test` where there is one."""
        return read_run_file(self.metrics_file, json.loads)

    @property
    def history(self) -> list[dict[str, str]]:
        """history.csv: one row per epoch (epoch, stage, stage_epoch, losses, accuracies, learning_rate), as text."""
        with self.history_file.open(newline="") as rows:
            return list(csv.DictReader(rows))

    @property
    def data_report(self) -> dict[str, Any]:
        return json.loads(self.data_report_file.read_text())

    @property
    def splits(self) -> dict[str, Split]:
        return read_splits(self.path)


def thresholds_text(class_names: list[str], thresholds: list[float]) -> str:
    return json.dumps(dict(zip(class_names, thresholds)), indent=2) + "\n"


def parse_thresholds(text: str, class_names: list[str]) -> list[float]:
    values = json.loads(text)
    return [float(values[name]) for name in class_names]


def read_thresholds(path: Path, class_names: list[str]) -> list[float] | None:
    return parse_thresholds(path.read_text(), class_names) if path.is_file() else None


def unknown_text(name: str) -> str:
    return f"{name}\n"


def read_unknown_text(text: str) -> str | None:
    return text.strip() or None


def read_unknown_name(path: Path) -> str | None:
    return read_unknown_text(path.read_text()) if path.is_file() else None


def default_run_name(arch: str) -> str:
    return f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"


class LockBusy(TflError):
    """Another tfl process holds the lock."""


def _lock(lock_file: Path, busy: str, unwritable: str, advice: str = "Pass --output with a folder you can write to."):
    lock = FileLock(lock_file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise LockBusy(busy) from None
    except OSError as exc:
        raise TflError(f"{unwritable}: {exc.strerror or exc}. {advice}") from None
    return lock


@contextlib.contextmanager
def run_lock(root: str | Path, name: str):
    """Hold an OS file lock on run `name` (released by the kernel if the process dies) while it trains."""
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TflError(f"Cannot write the run to '{root}': {exc.strerror or exc}. Pass --output with a folder "
                       "you can write to.") from None
    lock = _lock(root / f".{name}.lock",
                 f"Run '{name}' in '{root}' is being trained by another tfl process right now. Wait for it to "
                 "finish, or choose another --name.", f"Cannot write the run to '{root}'")
    try:
        yield
    finally:
        lock.release()


def check_run_name(name: str) -> str:
    """A run's name is one plain folder name, so that the run stays inside --output (and --overwrite can only ever
    replace a run there)."""
    if (not name or name.startswith(".") or name.endswith(PARTIAL_SUFFIX) or any(c in name for c in "/\\")
            or has_control_characters(name)):
        raise TflError(f"Run name {name!r} is not a plain folder name: a run's name may not be empty, start with '.', "
                       f"end in '{PARTIAL_SUFFIX}', or hold '/', '\\' or control characters, so that the run stays "
                       "inside --output. Pass another --name.")
    return name


@contextlib.contextmanager
def claimed_run_name(root: str | Path, name: str | None, arch: str):
    """The run's name, locked while the block runs: `name` (checked), or else the first of ARCH-TIME, ARCH-TIME-2, ...
    that no run, interrupted run or other tfl process has (two runs started in one second get two names)."""
    if name is not None:
        with run_lock(root, check_run_name(name)):
            yield name
        return
    base, root = default_run_name(arch), Path(root).expanduser()
    for n in itertools.count(1):
        candidate = base if n == 1 else f"{base}-{n}"
        if (root / candidate).exists() or (root / f"{candidate}{PARTIAL_SUFFIX}").exists():
            continue
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(run_lock(root, candidate))
            except LockBusy:
                continue  # another process took this name a moment ago
            yield candidate
            return


@contextlib.contextmanager
def export_lock(run: Path):
    """One export of a run at a time: a second one stops at once with a message (the lock dies with its process)."""
    lock = _lock(run / EXPORT_LOCK, f"Run '{run}' is being exported by another tfl process right now. Wait for it "
                 "to finish, then run this export again (what it finished will be kept).",
                 f"Cannot write the exports of '{run}'", UNWRITABLE_RUN)
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def review_lock(run: Path):
    """One review server per run (each rewrites its review.csv whole): a second one stops at once with a message."""
    lock = _lock(run / REVIEW_LOCK, f"Another tfl review is serving run '{run}' right now: use its page (its terminal "
                 "prints the URL), or stop it first.", f"Cannot review '{run}'", UNWRITABLE_RUN)
    try:
        yield
    finally:
        lock.release()


def has_checkpoint(partial: Path) -> bool:
    return (partial / CHECKPOINT_DIR / CHECKPOINT_STATE).is_file()


def prepare_run_dir(root: str | Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Return (final run path, partial path to train into); refuse to overwrite silently."""
    root = Path(root).expanduser().resolve()
    final = root / check_run_name(name)
    if final.exists() and not overwrite:
        raise TflError(f"A run named '{name}' already exists in '{root}'. Choose another --name, or pass "
                       "--overwrite to replace it.")
    partial = root / f"{name}{PARTIAL_SUFFIX}"
    if has_checkpoint(partial) and not overwrite:
        raise TflError(f"An interrupted run named '{name}' is in '{partial}'. Continue it with 'tfl finetune "
                       f"--resume {name}', or pass --overwrite to start it anew.")
    for folder, ours in ((final, is_run_dir), (partial, is_partial_run)):
        if folder.exists() and not ours(folder):
            raise TflError(f"'{folder}' is not a tfl run (it lacks {MODEL_FILE} and {LABELS_FILE}, or a "
                           f"{CHECKPOINT_DIR}/ and {CONFIG_FILE}), and --overwrite replaces only runs: nothing was "
                           "changed. Choose another --name or --output.")
    try:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir()
        probe = partial / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise TflError(f"Cannot write the run to '{root}': {exc.strerror or exc}. Pass --output with a folder "
                       "you can write to.") from None
    return final, partial


def resumable_run(root: str | Path, name: str | None) -> tuple[Path, Path]:
    """(final path, partial path) of the interrupted run `name`, or of the newest one when `name` is None."""
    root = Path(root).expanduser().resolve()
    if name is None:
        partials = [p for p in root.glob(f"*{PARTIAL_SUFFIX}") if has_checkpoint(p)] if root.is_dir() else []
        if not partials:
            raise TflError(f"No interrupted run to resume in '{root}' (none has a checkpoint). Start one with "
                           "'tfl finetune --data DIR', or pass --output with the folder that holds it.")
        partial = max(partials, key=lambda p: (p / CHECKPOINT_DIR / CHECKPOINT_STATE).stat().st_mtime)
        return root / partial.name.removesuffix(PARTIAL_SUFFIX), partial
    partial = root / f"{name}{PARTIAL_SUFFIX}"
    if has_checkpoint(partial):
        return root / name, partial
    if is_run_dir(root / name):
        raise TflError(f"Run '{name}' in '{root}' has already finished; there is nothing to resume.")
    reason = ("it stopped before its first epoch ended, so there is nothing to continue"
              if partial.is_dir() else "no such run was started there")
    raise TflError(f"Cannot resume run '{name}' in '{root}': {reason}. Start it again with 'tfl finetune --data "
                   "DIR'.")


def finish_run_dir(partial: Path, final: Path) -> Path:
    """Move a completed run into place (replacing an old one only when the caller allowed it)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, final)
    return final


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / RUN_MARKER).is_file() and (path / LABELS_FILE).is_file()


def is_partial_run(path: Path) -> bool:
    """A run's folder while it trains (or left by one that stopped): empty, or holding tfl's first files."""
    return path.is_dir() and (not any(path.iterdir()) or (path / CHECKPOINT_DIR).is_dir()
                              or (path / CONFIG_FILE).is_file() or (path / SPLITS_FILE).is_file())


def latest_run(root: str | Path = DEFAULT_ROOT) -> Path:
    root = Path(root).expanduser()
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
            and not p.name.endswith(PARTIAL_SUFFIX) and is_run_dir(p)] if root.is_dir() else []
    if not runs:
        raise TflError(f"No finished run found in '{root}'. Train one with 'tfl finetune', or name a run directory.")
    return max(runs, key=lambda p: (p / RUN_MARKER).stat().st_mtime)


def resolve_run(run: str | Path | None, root: str | Path = DEFAULT_ROOT) -> Path:
    if run is None:
        return latest_run(root)
    path = Path(run).expanduser()
    if not path.exists():
        raise TflError(f"Run directory '{path}' does not exist. Pass a folder written by 'tfl finetune'.")
    if not is_run_dir(path):
        raise TflError(f"'{path}' is not a finished tfl run (it lacks {MODEL_FILE} or {LABELS_FILE}).")
    return path


def labels_text(class_names: list[str]) -> str:
    """labels.txt's content, as every artifact carries it: one class name per line, in the model's output order."""
    return "\n".join(class_names) + "\n"


def parse_labels(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def read_labels(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise TflError(f"'{path}' is missing: the model's class names cannot be known without it. Copy the "
                       f"{LABELS_FILE} of the run that trained the model there.")
    return parse_labels(path.read_text())


UNWRITABLE_RUN = ("Exports and reports are written inside the run: copy the run folder somewhere you can write to "
                  "(cp -r) and run the command on the copy.")


def read_run_file(path: Path, parse):
    """`parse(text)` of one of a run's files; a damaged one (cut short, edited) is a message, not a traceback."""
    try:
        return parse(path.read_text())
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TflError(f"'{path}' is damaged ({first}): it cannot be read. Restore it from a copy of the run, or "
                       "train the run again.") from None


def read_run_config(run_dir: Path) -> dict:
    config = read_run_file(run_dir / CONFIG_FILE, yaml.safe_load)
    if not isinstance(config, dict):
        raise TflError(f"'{run_dir / CONFIG_FILE}' is damaged (it holds no settings). Restore it from a copy of the "
                       "run, or train the run again.")
    return config


def portable_path(run_dir: Path, path: str) -> str:
    """`path` relative to the run when the run holds it (so it survives the run's rename or move), else absolute."""
    absolute = Path(path).resolve()
    return str(absolute.relative_to(run_dir.resolve())) if absolute.is_relative_to(run_dir.resolve()) else str(absolute)


def write_splits(run_dir: Path, splits: dict[str, Split]) -> None:
    """Save the file lists as splits.json ({split: {paths, labels}}): absolute paths, or relative ones for files the
    run holds (converted images), so a finished or moved run folder still finds them. Splits without files (tfds)
    are left out."""
    saved = {name: {"paths": [portable_path(run_dir, p) for p in split.paths], "labels": split.labels}
             for name, split in splits.items() if split is not None and split.source is None}
    atomic_write_text(run_dir / SPLITS_FILE, json.dumps(saved) + "\n")


def read_splits(run_dir: Path) -> dict[str, Split]:
    """The file lists of a run ({split: Split}), with paths resolved; {} when it saved none (tfds)."""
    path = run_dir / SPLITS_FILE
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    return {name: Split([str(run_dir / p) if not os.path.isabs(p) else p for p in split["paths"]], split["labels"])
            for name, split in saved.items()}


def check_reachable(paths: list[str], run: Path) -> None:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise TflError(f"{len(missing)} of the {len(paths)} validation photos of run '{run}' are not where it was "
                       f"trained from (the first: '{missing[0]}'). Put them back, or evaluate on another folder "
                       "with --data.")
