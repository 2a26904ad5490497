"""Staged fine-tuning through model.fit: `Training` holds one run in training, and `Training.fit` is the recipe."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np

from tfl.archs import auto_image_size, get_arch
from tfl.augment import build_augmenter, build_mixer
from tfl.checkpoint import Checkpoint, StageTracker, TrainingState
from tfl.config import Stage, TrainConfig, from_run_record, run_record
from tfl.data import CsvOptions, ImageData, load_data
from tfl.pipeline import DECODER_VERSION, make_pipeline
from tfl.data_service import check_dispatcher
from tfl.distribute import Cluster, connect, disconnect
from tfl.errors import TflError, disk_full_explained, warn
from tfl.checks import CHECKS_CSV_COLUMNS, bounded, photo_rows
from tfl.calibration import calibrating_temperature, calibration_report, fold_temperature, rescaled
from tfl.analysis import Scored, write_analysis
from tfl.html_report import build_report
from tfl.metrics import classification_metrics, evaluate_model, write_metrics
from tfl.multilabel import TASKS, Task, as_binary, choose_thresholds, multilabel_metrics, positive_weights
from tfl.plots import plot_reliability, plot_training_curves
from tfl.features import FEATURE_CACHE_FOLDER, feature_stage_data, uses_feature_cache
from tfl.low_pass import decide as decide_low_pass
from tfl.model import build_model, feature_extractor, get_head, set_trainable_blocks, trainable_params
from tfl.plan import DataStats, auto_plan
from tfl.probe import issue_fields, probe_cached, write_issues_csv
from tfl.precision import dtype_policy, resolve_precision
from tfl.fileio import atomic_path, atomic_write_csv, atomic_write_text
from tfl.report import (closing_line, early_stop_line, probe_line, data_summary, describe_unfreeze, format_plan,
                        stage_header, unknown_line)
from tfl.runs import (DEFAULT_ROOT, THRESHOLDS_FILE, RunFolder, claimed_run_name, finish_run_dir, has_checkpoint,
                      labels_text, portable_path, prepare_run_dir, read_run_config, resumable_run, run_lock,
                      thresholds_text, write_splits)
from tfl.scan import SCAN_CACHE_FOLDER
from tfl.unknown import UNKNOWN_FILE, Validation, as_parts, features_of, fit_for_run, unknown_background
from tfl.version import __version__

IMBALANCE_RATIO = 1.5  # class_weight auto: balance when the largest class is this much bigger than the smallest
def history_columns(score: str) -> list[str]:
    return ["epoch", "stage", "stage_epoch", "loss", score, "val_loss", "val_" + score, "learning_rate"]


def auto_class_weights(counts: list[int], mode: str) -> dict[int, float] | None:
    """Balanced weights (n / (k * n_c)) when `mode` is auto and the classes are clearly imbalanced."""
    if mode == "none" or min(counts) == 0 or max(counts) / min(counts) < IMBALANCE_RATIO:
        return None
    total, k = sum(counts), len(counts)
    return {i: round(total / (k * c), 4) for i, c in enumerate(counts)}


def learning_rate_schedule(stage: Stage, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Cosine decay over the stage, after a linear warmup from 0 over its first `warmup_epochs`: a fresh optimizer
    on newly unfrozen blocks then cannot jolt the pretrained features before its moment estimates settle."""
    warmup_steps = steps_per_epoch * min(stage.warmup_epochs, stage.epochs)
    decay_steps = max(1, steps_per_epoch * stage.epochs - warmup_steps)
    if not warmup_steps:
        return keras.optimizers.schedules.CosineDecay(stage.learning_rate, decay_steps=decay_steps, alpha=0.05)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=decay_steps, alpha=0.05,
                                                  warmup_target=stage.learning_rate, warmup_steps=warmup_steps)


def compile_for_stage(model: keras.Model, stage: Stage, steps_per_epoch: int, label_smoothing: float,
                      steps_per_execution: int = 1, cluster: Cluster | None = None, task: Task = TASKS["single"],
                      positive_weights: list[float] | None = None) -> None:
    """A fresh optimizer with the stage's learning-rate schedule; needed after every trainable change.

    Distributed batches carry weights (0 for the rows that pad a short validation batch), so accuracy is then a
    weighted metric: Keras' plain `metrics` ignore sample weights."""
    cluster = cluster or Cluster()
    stage = dataclasses.replace(stage, learning_rate=stage.learning_rate * cluster.learning_rate_scale())
    schedule = learning_rate_schedule(stage, steps_per_epoch)
    with cluster.scope():
        score = {"weighted_metrics" if cluster.distributed else "metrics": [task.metric()]}
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=task.loss(label_smoothing, positive_weights),
                      steps_per_execution=steps_per_execution, **score)


def write_history_csv(rows: list[dict], path: Path, score: str = "accuracy") -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=history_columns(score), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def absolute_data(data: str) -> str:
    """Where the photos are, independent of the directory tfl was started from."""
    return data if data.startswith("tfds:") else str(Path(data).expanduser().resolve())


@contextlib.contextmanager
def discarded_on_failure(work_dir: Path):
    """A run that fails before its first epoch is checkpointed leaves nothing behind; after that, it is kept
    for --resume."""
    try:
        yield
    except BaseException:
        if not has_checkpoint(work_dir):
            shutil.rmtree(work_dir, ignore_errors=True)
        raise


def vanished_path(message: str) -> str | None:
    """The file named by TensorFlow's 'PATH; No such file or directory' (after its '{{node ...}}' prefix)."""
    line = next((line for line in message.splitlines() if "; No such file or directory" in line), None)
    return None if line is None else line.split("; No such file or directory")[0].split("}} ")[-1].strip()


def kept_for_resume(work_dir: Path, name: str) -> str:
    """What a failed run leaves, and how to go on."""
    if has_checkpoint(work_dir):
        return (f"The run is kept in '{work_dir}' up to its last finished epoch: continue it with 'tfl finetune "
                f"--resume {name}'.")
    return "Nothing was kept (no epoch had finished): start the run again."


@contextlib.contextmanager
def failures_explained(config: TrainConfig, image_size: int | None, work_dir: Path, name: str):
    """What can go wrong in the middle of training and is the user's to fix (memory, disk space, photos that moved
    away), as a one-paragraph message saying what was kept, instead of a traceback."""
    resume = lambda: kept_for_resume(work_dir, name)  # noqa: E731
    try:
        with disk_full_explained(f"training run '{name}'", lambda: f"Free some space. {resume()}"):
            yield
    except TflError:
        raise
    except Exception as exc:
        if type(exc).__name__ == "ResourceExhaustedError" or "RESOURCE_EXHAUSTED" in str(exc):
            raise TflError(f"Training ran out of memory at batch size {config.batch_size} and image size "
                           f"{image_size} px. Pass a smaller --batch-size or --image-size.") from None
        vanished = vanished_path(str(exc))
        if type(exc).__name__ == "NotFoundError" and vanished:
            raise TflError(f"A photo of the run disappeared during training: '{vanished}' was there when the data "
                           f"was scanned and is gone now. Put it back. {resume()}") from None
        if type(exc).__name__ == "InvalidArgumentError" and "decode" in str(exc).lower():
            raise TflError(f"A photo of the run changed during training and can no longer be decoded "
                           f"({str(exc).splitlines()[0][:200]}). Restore the photos as they were when the run "
                           f"started. {resume()}") from None
        raise


@dataclass
class Caller:
    """What the caller of a training adds: where its lines go, Keras' progress verbosity, an augmenter replacing
    the preset (a function of a float32 pixel batch) and Keras callbacks for every stage's fit."""

    echo: Callable[[str], None] = print
    verbose: int | str = "auto"
    augmenter: Callable | None = None
    callbacks: Sequence[keras.callbacks.Callback] = ()


def finetune(config: TrainConfig, data: str | None = None, output: str | Path = DEFAULT_ROOT, name: str | None = None,
             overwrite: bool = False, caller: Caller | None = None) -> RunFolder | None:
    """Train `config` on `data` (a folder or 'tfds:NAME'; default: config.data) and write a complete run directory.
    With `config.distribute` multiworker, the chief returns the run and the other workers None, having trained in
    a temporary folder."""
    caller, start = caller or Caller(), time.time()
    cluster = connect(config.distribute)  # first: TensorFlow's multi-worker setup must precede any TensorFlow op
    with contextlib.ExitStack() as stack:
        stack.enter_context(cluster.peers_explained())
        if not cluster.is_chief:  # only the chief writes the run; a worker's files live and die with this folder
            output = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"tfl_worker{cluster.worker_index}_"))
            overwrite = False
        with Training.new(config, data, output, name, overwrite, cluster, caller) as training:
            training.start = start
            run = training.fit()
        cluster.wait_for_all("tfl: run written")
    if not cluster.is_chief:
        caller.echo(f"Worker {cluster.worker_index} of {cluster.workers} done; the chief (worker 0) wrote the run.")
    return run


def resume(output: str | Path = DEFAULT_ROOT, name: str | None = None, caller: Caller | None = None) -> RunFolder:
    """Continue the interrupted run `name` (default: the newest one under `output`) from its last finished epoch,
    with the settings it was started with."""
    with Training.resume(output, name, caller or Caller()) as training:
        return training.fit()


@dataclass
class Training:
    """One run in training: its settings, photos, folder, cluster, model and checkpoint. `Training.new` (a fresh run)
    and `Training.resume` (an interrupted one) hold the run's lock while it lives; `fit` is the recipe."""

    config: TrainConfig  # resolved: image size, precision and stages as used
    data: ImageData
    folder: RunFolder  # <name>.partial while it trains
    final_dir: Path
    output: Path
    cluster: Cluster
    caller: Caller
    reasons: list[str] | None = None  # the auto plan's, printed with the plan
    start: float = field(default_factory=time.time)

    def __post_init__(self):
        self.spec = get_arch(self.config.arch)
        self.stages = [stage for stage in self.config.stages if stage.epochs > 0]
        self.checkpoint = Checkpoint(self.folder.checkpoint_dir)
        self.state = self.checkpoint.load_state() or TrainingState()
        self.task = TASKS["multilabel" if self.data.multilabel else "single"]
        counts = list(self.data.report["counts"]["train"].values())
        self.class_weight = None if self.task.multilabel else auto_class_weights(counts, self.config.class_weight)
        self.positive_weights = (positive_weights(self.data.train.labels, len(self.data.class_names))
                                 if self.task.multilabel and self.config.class_weight == "auto" else None)
        self.augmenter = self.caller.augmenter or build_augmenter(self.config.augment, self.config.seed)
        with self.cluster.scope(), dtype_policy(self.config.precision):  # layers take both when built
            self.model = self.new_model()

    def fit(self) -> RunFolder | None:
        """The recipe, stage by stage: freeze, stage data, compile, fit (a checkpoint every epoch), end on the
        stage's best epoch; then keep the run's best epoch and write the run."""
        self.caller.echo(format_plan(self.plan_rows(), self.class_weight, self.data.class_names, self.reasons))
        if self.served and not all(self.on_features(stage) for stage in self.stages):
            self.caller.echo(f"Input: the stages on pixels read them from the tf.data service at "
                             f"{self.config.data_service}, whose workers decode and augment the photos")
        for index, stage in enumerate(self.stages):
            if index < self.state.stage:
                continue  # finished before the run was interrupted
            self.freeze(index, stage)
            trained, train_data, val_data, class_weight = self.stage_data(stage)
            self.compile(trained, stage)
            if self.state.stage_epochs:
                self.checkpoint.restore_latest(self.state, trained)
            if not self.state.stage_finished(stage.epochs):
                self.fit_stage(trained, stage, train_data, val_data, class_weight)
                if self.state.stopped and self.state.stage_epochs < stage.epochs:
                    self.caller.echo(early_stop_line(stage, self.state, self.stages))
            self.checkpoint.restore_epoch(self.state.stage_best["epoch"], trained)
        shutil.rmtree(self.folder.cache_dir, ignore_errors=True)  # decoded images are no part of the run
        return self.finish()

    # --- the steps of the recipe ----------------------------------------------------------------------------------

    def freeze(self, index: int, stage: Stage) -> None:
        """Train the stage's blocks only; a stage starts from the weights kept at its start (saved on first entry)."""
        set_trainable_blocks(self.model, self.spec, stage.unfreeze_blocks)
        if self.checkpoint.has_stage(index):
            self.checkpoint.restore_stage_start(index, self.model)
        else:
            self.checkpoint.start_stage(self.state, index, self.model)
        self.caller.echo(stage_header(index, len(self.stages), stage, trainable_params(self.model),
                                      self.on_features(stage), self.state.stage_epochs))

    def stage_data(self, stage: Stage):
        """(model to fit, training data, validation data, class weights for fit): the head on cached features for
        a head-only stage, else the whole classifier on augmented pixels."""
        if self.on_features(stage):
            *fit_data, features = feature_stage_data(
                self.model, self.config, self.data, self.config.image_size, self.augmenter,
                self.output / FEATURE_CACHE_FOLDER, self.folder.cache_dir / "features", self.caller.echo,
                self.caller.augmenter is not None, self.cluster, self.class_weight)
            self.probe_labels(*features)
            return fit_data
        return (self.model, *self.pixel_data)

    def probe_labels(self, train_features, val_features) -> None:
        """Once per run, on the features just cached: the photos whose label a linear probe doubts (tfl/probe.py),
        counted on screen, the likeliest listed in data_report.json, all of them in label_issues.csv."""
        checks = self.data.report.get("checks")
        if checks is None or "label_issues" in checks or self.cluster.distributed:
            return
        start = time.time()
        issues = probe_cached(train_features, val_features, self.data)
        write_issues_csv(self.folder.label_issues_file, issues)
        found = issue_fields(issues, time.time() - start)
        checks.update(found)
        saved = json.loads(self.folder.data_report_file.read_text())
        saved["checks"].update(found)
        atomic_write_text(self.folder.data_report_file, json.dumps(saved, indent=2) + "\n")
        self.caller.echo(probe_line(found))

    def compile(self, trained: keras.Model, stage: Stage) -> None:
        # A step on feature vectors takes microseconds: 32 per call halve the epoch time (only epoch callbacks run).
        many = self.on_features(stage) and not self.cluster.distributed
        compile_for_stage(trained, stage, self.steps_per_epoch, self.config.label_smoothing,
                          steps_per_execution=32 if many else 1, cluster=self.cluster, task=self.task,
                          positive_weights=self.positive_weights)

    def fit_stage(self, trained: keras.Model, stage: Stage, train_data, val_data, class_weight) -> None:
        first_epoch = self.state.epochs_done - self.state.stage_epochs
        counted = self.cluster.distributed or (self.served and not self.on_features(stage))  # endless streams
        trained.fit(train_data, validation_data=val_data, shuffle=False,  # the pipelines shuffle
                    initial_epoch=self.state.epochs_done, epochs=first_epoch + stage.epochs,
                    steps_per_epoch=self.steps_per_epoch if counted else None,
                    validation_steps=self.cluster.validation_steps(len(self.data.val), self.config.batch_size),
                    class_weight=class_weight, verbose=self.caller.verbose,
                    callbacks=[StageTracker(self.checkpoint, self.state, stage.name, stage.patience or
                                            self.config.patience, self.task.score),
                               keras.callbacks.TensorBoard(log_dir=str(self.folder.logs_dir), write_graph=False),
                               *self.caller.callbacks])

    def finish(self) -> RunFolder | None:
        """The run's best epoch into the classifier, then the finished run's files (on the chief)."""
        best_stage = self.stages[self.state.best["stage"]]
        self.checkpoint.restore_stage_start(self.state.best["stage"], self.model)
        self.checkpoint.restore_epoch(self.state.best["epoch"], get_head(self.model) if self.on_features(best_stage)
                                      else self.model)
        model = self.plain_copy() if self.cluster.distributed else self.model
        return None if model is None else self.write_run(model)

    # --- what the steps use ---------------------------------------------------------------------------------------

    def new_model(self, weights: str | None = None) -> keras.Model:
        config = self.config
        return build_model(self.spec, len(self.data.class_names), config.image_size, weights or config.weights,
                           config.alpha, config.dropout, self.task.activation, config.low_pass)

    def on_features(self, stage: Stage) -> bool:
        return uses_feature_cache(stage, self.config)

    @property
    def served(self) -> bool:
        """Whether training's pixels come from a tf.data service (one endless stream per stage: see
        tfl/data_service.py)."""
        return self.config.data_service is not None

    @property
    def steps_per_epoch(self) -> int:
        return self.cluster.steps_per_epoch(len(self.data.train), self.config.batch_size)

    @functools.cached_property
    def pixel_data(self):
        """(training, validation, class weights for fit) of decoded, augmented pixels, built once per run."""
        config, classes, cache = self.config, len(self.data.class_names), self.folder.cache_dir
        mixer, train_files = build_mixer(config.mixup, config.cutmix, config.seed), self.cluster.shard(self.data.train)
        return self.cluster.fit_data(
            lambda batch, repeat: make_pipeline(train_files, classes, config.image_size, batch, training=True,
                                                augmenter=self.augmenter, mixer=mixer, seed=config.seed,
                                                cache_dir=cache, repeat=repeat or self.served,
                                                service=config.data_service),
            lambda batch: make_pipeline(self.data.val, classes, config.image_size, batch, training=False,
                                        cache_dir=cache),
            config.batch_size, self.class_weight)

    def plan_rows(self) -> list[dict]:
        rows = []
        for stage in self.config.stages:
            set_trainable_blocks(self.model, self.spec, stage.unfreeze_blocks)
            rows.append({"stage": stage.name, "trains": describe_unfreeze(stage.unfreeze_blocks),
                         "trainable_params": trainable_params(self.model), "epochs": stage.epochs,
                         "learning_rate": stage.learning_rate})
        set_trainable_blocks(self.model, self.spec, 0)
        return rows

    def plain_copy(self) -> keras.Model | None:
        """On the chief, the trained weights in a model of one device, to save and evaluate alone; None elsewhere."""
        weights = self.model.get_weights()  # on every worker: reading JAX's multi-process arrays is a collective step
        if not self.cluster.is_chief:
            return None
        disconnect(self.cluster)
        with dtype_policy(self.config.precision):
            copy = self.new_model(weights="none")
        copy.set_weights(weights)
        return copy

    def write_run(self, model: keras.Model) -> RunFolder:
        """The finished run's files: model (its scores calibrated), metrics (validation and test), history, plots;
        then it takes its name."""
        config, data, run = self.config, self.data, self.folder
        extractor = feature_extractor(model, extra=self.unknown_layers)
        val_features, val_labels = features_of(extractor, data.val, len(data.class_names), config.image_size,
                                               config.batch_size)  # once, for the calibration and the unknown
        metrics = self.calibrate(model, as_parts(val_features)[0], val_labels)
        with atomic_path(run.model_file, force=True) as tmp:
            model.save(tmp)
        metrics["unknown"] = self.fit_unknown(extractor, get_head(model), val_features)
        if self.task.multilabel:
            atomic_write_text(run.path / THRESHOLDS_FILE, thresholds_text(data.class_names, metrics["thresholds"]))
        if data.test is not None and len(data.test):
            pipeline = make_pipeline(data.test, len(data.class_names), config.image_size, config.batch_size,
                                     training=False)
            metrics["test"] = evaluate_model(model, pipeline, data.class_names, metrics.get("thresholds"))
        best = self.state.best
        metrics["best_epoch"] = {"epoch": best["epoch"], "stage": self.state.rows[best["epoch"] - 1]["stage"]}
        metrics["wall_seconds"] = round(time.time() - self.start, 1)
        write_metrics(metrics, run.metrics_file)
        write_history_csv(self.state.rows, run.history_file, self.task.score)
        cached = {stage.name for stage in config.stages if self.on_features(stage)}
        plot_training_curves(self.state.rows, run.curves_file, cached)
        plot_reliability(metrics["calibration"], run.reliability_file)
        if data.val.paths:
            write_analysis(Scored(data.val.paths, *self.validation_scores, data.class_names), run, model,
                           config.image_size, metrics)
        build_report(run.path, self.final_dir.name)
        shutil.rmtree(run.checkpoint_dir)  # the run is complete: nothing left to resume
        run_dir = finish_run_dir(run.path, self.final_dir)
        self.caller.echo(closing_line(metrics, time.time() - self.start, run_dir))
        return RunFolder(run_dir)

    def calibrate(self, model: keras.Model, val_features, val_labels) -> dict:
        """Validation metrics of the model with one temperature, fitted on the validation set (its photos' pooled
        features and label rows), folded into its softmax layer (unless the config turns calibration off), and the
        calibration error before and after."""
        data = self.data
        probabilities = (np.asarray(get_head(model).predict_on_batch(val_features)) if len(val_features) else
                         np.zeros((0, len(data.class_names)), np.float32))
        labels = val_labels if self.task.multilabel else val_labels.argmax(axis=1)
        # several labels: each (photo, label) pair is a two-class problem, calibrated as such
        pairs = as_binary(probabilities, labels) if self.task.multilabel else (probabilities, labels)
        temperature, *tested = calibrating_temperature(*pairs) if self.config.calibrate else (1.0, None, None)
        fold_temperature(get_head(model).get_layer("probabilities"), temperature)
        calibration = {"calibration": calibration_report(*pairs, temperature, *tested)}
        if not self.task.multilabel:
            self.validation_scores = (rescaled(probabilities, temperature), labels)
            return classification_metrics(self.validation_scores[0], labels, data.class_names) | calibration
        calibrated = rescaled(pairs[0], temperature)[:, 1].reshape(probabilities.shape)
        self.validation_scores = (calibrated, labels)
        thresholds = choose_thresholds(calibrated, labels)  # the F1-best per label, on the calibrated scores
        return multilabel_metrics(calibrated, labels, data.class_names, thresholds) | calibration

    @property
    def unknown_layers(self) -> tuple[str, ...]:
        """The backbone layers the unknown category reads beside the pooled features, when the run has one."""
        config = self.config
        return self.spec.unknown_layers if config.unknown and not self.task.multilabel and len(self.data.val) else ()

    def fit_unknown(self, extractor: keras.Model, head: keras.Model, val_features) -> dict:
        """The 'unknown' category (tfl/unknown.py): fitted on the finished model's features, saved beside it, and
        what it measured; or why there is none."""
        config, data = self.config, self.data
        if self.task.multilabel:
            if config.background:
                warn("--background is not used with several labels per photo: a photo with no label over its "
                     "threshold is already of none of them.")
            return {"method": "none needed: a photo with no label over its threshold is of none of the labels"}
        if not config.unknown:
            return {"method": "off (--no-unknown)"}
        if not len(data.val):
            return {"method": "off: no validation photos to choose its threshold on"}
        try:
            background = unknown_background(config.background)
        except TflError as error:  # a resumed run whose background folder has gone: fit without it, and say so
            warn(f"{error} The unknown category is fitted without background photos.")
            background = None
        validation = Validation(val_features, *self.validation_scores[::-1], data.val.paths)
        detector, report = fit_for_run(extractor, head, data.train, validation, config.unknown_keep,
                                       data.class_names, config.image_size, config.batch_size, config.seed, background,
                                       self.unknown_layers)
        detector.save(self.folder.path / UNKNOWN_FILE)
        self.caller.echo(unknown_line(report))
        return report

    # --- the two ways in ------------------------------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def new(cls, config: TrainConfig, data: str | None, output: str | Path, name: str | None, overwrite: bool,
            cluster: Cluster, caller: Caller):
        """A fresh run: the photos scanned and split, the plan chosen, the run folder made and its files written;
        the run locked while the block runs (seven parameters: the command's options, each once)."""
        if not (data or config.data):
            raise TflError("No photos given: pass --data DIR (data= in Python), a folder with one subfolder of "
                           "images per class.")
        data = absolute_data(data or config.data)
        if config.weights not in ("imagenet", "none"):  # a weights file: saved so that it is found from anywhere
            config = dataclasses.replace(config, weights=str(Path(config.weights).expanduser().resolve()))
        for key in ("images", "exclude", "corrections", "background"):  # like the data, found from anywhere
            if getattr(config, key):
                config = dataclasses.replace(config, **{key: str(Path(getattr(config, key)).expanduser().resolve())})
        unknown_background(config.background, check_only=True)  # a wrong folder is said before training, not after
        if config.data_service:
            if data.startswith("tfds:"):
                raise TflError("--data-service sends photo files to the service's workers; a tensorflow-datasets set "
                               "has none. Pass --data a folder of photos or a label file, or leave --data-service out.")
            check_dispatcher(config.data_service)
        if config.background and not config.unknown:
            warn("--background tunes the unknown category, which --no-unknown leaves out: it is not used.")
        output = Path(output).expanduser()
        with claimed_run_name(output, name, config.arch) as name:
            final_dir, work_dir = prepare_run_dir(output, name, overwrite)
            folder = RunFolder(work_dir)
            with discarded_on_failure(work_dir):
                keras.utils.set_random_seed(config.seed)
                image_data = load_data(data, config.val_split, config.seed, converted_dir=folder.converted_dir,
                                       scan_cache_dir=output / SCAN_CACHE_FOLDER, csv=CsvOptions.of(config),
                                       exclude=config.exclude, corrections=config.corrections)
                caller.echo(data_summary(image_data.class_names, image_data.report))
                write_data_files(folder, image_data)
                config, reasons = resolve_plan(config, image_data, cluster, caller.echo)
                if config.low_pass == "auto":
                    keep, why = decide_low_pass(config, image_data, output / FEATURE_CACHE_FOLDER,
                                                cluster.distributed)
                    config, reasons = dataclasses.replace(config, low_pass=keep), [*(reasons or []), why]
                atomic_write_text(folder.config_file, run_record(
                    config, data, config.image_size, config.precision, keras.backend.backend(),
                    {"tfl": __version__, "keras": keras.__version__, "decoder": DECODER_VERSION}, reasons))
                with failures_explained(config, config.image_size, work_dir, name):
                    yield cls(config, image_data, folder, final_dir, output, cluster, caller, reasons)

    @classmethod
    @contextlib.contextmanager
    def resume(cls, output: str | Path, name: str | None, caller: Caller):
        """An interrupted run with its own settings and files, from its last checkpoint; locked while it lives."""
        final_dir, work_dir = resumable_run(output, name)
        with run_lock(output, final_dir.name):
            folder = RunFolder(work_dir)
            saved = read_run_config(work_dir)
            config = from_run_record(saved, str(folder.config_file))
            if config.distribute == "multiworker":
                raise TflError(f"Run '{final_dir.name}' trained on several machines, and only its chief kept a "
                               "checkpoint: such a run cannot be resumed yet. Start it again.")
            cluster = connect(config.distribute)
            if config.data_service:
                check_dispatcher(config.data_service, f"or set data_service in {folder.config_file} to another "
                                                      "dispatcher's address, or to null to read the photos here")
            if saved.get("backend", keras.backend.backend()) != keras.backend.backend():
                raise TflError(f"Run '{final_dir.name}' was trained on the {saved['backend']} backend; resume it "
                               f"with --backend {saved['backend']}.")
            keras.utils.set_random_seed(config.seed)
            image_data = saved_image_data(work_dir, saved["data"], config)
            state = Checkpoint(folder.checkpoint_dir).load_state()
            caller.echo(f"Resuming run '{final_dir.name}' after epoch {state.epochs_done} (stage {state.stage + 1}, "
                        f"{state.stage_epochs} of its epochs done) with its own settings from {folder.config_file}")
            caller.echo(data_summary(image_data.class_names, image_data.report))
            with failures_explained(config, config.image_size, work_dir, final_dir.name):
                yield cls(config, image_data, folder, final_dir, Path(output).expanduser(), cluster, caller)


def resolve_plan(config: TrainConfig, data: ImageData, cluster: Cluster,
                 echo: Callable[[str], None]) -> tuple[TrainConfig, list[str] | None]:
    """The config with what `auto` leaves open chosen from the data: image size, stages (with their reasons) and
    precision; the choice printed."""
    spec = get_arch(config.arch)
    median_side = data.report.get("median_short_side")
    image_size = config.image_size or auto_image_size(spec, median_side)
    reasons = None
    if config.plan == "auto":
        config, reasons = auto_plan(config, spec, DataStats(len(data.train), len(data.class_names)),
                                    cluster.global_batch(config.batch_size))
    policy, why = resolve_precision(config.precision)
    size_note = ("" if config.image_size else
                 f" (auto: photos' median short side {median_side} px)" if median_side else " (auto)")
    echo(f"\nModel: {spec.name} at {image_size} px{size_note}, weights {config.weights}, backend "
         f"{keras.backend.backend()}, precision {policy} ({why})")
    distributed = cluster.describe(config.batch_size)
    if distributed:
        echo(distributed)
    return dataclasses.replace(config, image_size=image_size, precision=policy), reasons


def write_data_files(run: RunFolder, image_data: ImageData) -> None:
    converted = [{"path": item["path"], "to": portable_path(run.path, item["to"])}
                 for item in image_data.report["converted"]]
    report = image_data.report | {"converted": converted}
    atomic_write_text(run.data_report_file, json.dumps(bounded(report), indent=2) + "\n")
    atomic_write_csv(run.checks_file, CHECKS_CSV_COLUMNS, photo_rows(report), lineterminator="\n")
    atomic_write_text(run.labels_file, labels_text(image_data.class_names))
    write_splits(run.path, {"train": image_data.train, "val": image_data.val, "test": image_data.test})


def saved_image_data(work_dir: Path, data: str, config: TrainConfig) -> ImageData:
    """The very splits the run was started with (its splits.json), or tfds' own splits again."""
    if data.startswith("tfds:"):
        return load_data(data, config.val_split, config.seed)
    run = RunFolder(work_dir)
    splits, report = run.splits, run.data_report
    missing = [p for s in splits.values() for p in s.paths if not os.path.exists(p)]
    if missing:
        raise TflError(f"{len(missing)} training file(s) of this run are gone (the first: '{missing[0]}'). Put the "
                       f"photos back where they were ({data}), or start a new run.")
    return ImageData(run.class_names, splits["train"], splits["val"], splits.get("test"), report,
                     report.get("task") == "multilabel")
