"""Staged fine-tuning through model.fit: the plan, the callbacks, and everything a run directory holds."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import yaml

from tfl import __version__
from tfl.archs import ArchSpec, auto_image_size, get_arch
from tfl.augment import build_augmenter, build_mixer
from tfl.config import Stage, TrainConfig
from tfl.data import ImageData, Split, load_data, make_pipeline
from tfl.evaluate import evaluate_model, plot_confusion_matrix, plot_training_curves, write_metrics
from tfl.features import (cache_key, cached_features, compute_features, feature_dataset, feature_extractor, head_model,
                          load_features)
from tfl.model import build_model, set_trainable_blocks, trainable_params
from tfl.precision import dtype_policy, resolve_precision
from tfl.runs import DEFAULT_ROOT, atomic_path, atomic_write_text, default_run_name, finish_run_dir, prepare_run_dir

FEATURE_CACHE_FOLDER = ".feature_cache"  # under the runs root, shared by runs on the same data and backbone
IMBALANCE_RATIO = 1.5  # class_weight auto: balance when the largest class is this much bigger than the smallest
HISTORY_COLUMNS = ["epoch", "stage", "stage_epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]


@dataclass
class RunResult:
    run_dir: Path
    best_val_accuracy: float
    wall_seconds: float
    metrics: dict


def auto_class_weights(counts: list[int], mode: str) -> dict[int, float] | None:
    """Balanced weights (n / (k * n_c)) when `mode` is auto and the classes are clearly imbalanced."""
    if mode == "none" or min(counts) == 0 or max(counts) / min(counts) < IMBALANCE_RATIO:
        return None
    total, k = sum(counts), len(counts)
    return {i: round(total / (k * c), 4) for i, c in enumerate(counts)}


def describe_unfreeze(stage: Stage) -> str:
    if stage.unfreeze_blocks == "all":
        return "whole backbone"
    if stage.unfreeze_blocks == 0:
        return "head only"
    return f"top {stage.unfreeze_blocks} blocks"


def plan_rows(model: keras.Model, spec: ArchSpec, stages: list[Stage]) -> list[dict]:
    rows = []
    for stage in stages:
        set_trainable_blocks(model, spec, stage.unfreeze_blocks)
        rows.append({"stage": stage.name, "trains": describe_unfreeze(stage), "trainable_params": trainable_params(model),
                     "epochs": stage.epochs, "learning_rate": stage.learning_rate})
    set_trainable_blocks(model, spec, 0)
    return rows


def format_plan(rows: list[dict], class_weight: dict | None, class_names: list[str]) -> str:
    lines = [f"{'stage':<12} {'trains':<16} {'trainable params':>17} {'epochs':>7} {'lr':>9}"]
    for row in rows:
        skipped = "  (skipped)" if row["epochs"] == 0 else ""
        lines.append(f"{row['stage']:<12} {row['trains']:<16} {row['trainable_params']:>17,} {row['epochs']:>7} "
                     f"{row['learning_rate']:>9.1e}{skipped}")
    if class_weight:
        weights = ", ".join(f"{class_names[i]} {w:.2f}" for i, w in class_weight.items())
        lines.append(f"class weights (auto, imbalanced classes): {weights}")
    else:
        lines.append("class weights: none (classes balanced enough)")
    return "\n".join(lines)


def compile_for_stage(model: keras.Model, stage: Stage, steps_per_epoch: int, label_smoothing: float,
                      steps_per_execution: int = 1) -> None:
    """A fresh optimizer with a cosine-decayed learning rate over the stage; needed after every trainable change."""
    schedule = keras.optimizers.schedules.CosineDecay(
        stage.learning_rate, decay_steps=max(1, steps_per_epoch * stage.epochs), alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)


class BestWeights(keras.callbacks.Callback):
    """Remember the full classifier's weights whenever val_accuracy beats the best so far, across stages and also
    while only its head trains on cached features. Kept in memory: saving model.keras at every improvement cost
    more than a whole epoch on cached features. The run writes it once, at the end."""

    def __init__(self, classifier: keras.Model):
        super().__init__()
        self.classifier, self.best, self.weights = classifier, None, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_accuracy")
        if value is not None and (self.best is None or value > self.best):
            self.best, self.weights = value, [np.copy(w) for w in self.classifier.get_weights()]

    def restore(self) -> None:
        if self.weights is not None:
            self.classifier.set_weights(self.weights)


def stage_callbacks(work_dir: Path, patience: int, best_weights: BestWeights) -> list:
    return [
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=patience,
                                      restore_best_weights=True),
        best_weights,
        keras.callbacks.TensorBoard(log_dir=str(work_dir / "logs"), write_graph=False),
    ]


def uses_feature_cache(stage: Stage, config: TrainConfig) -> bool:
    """Head-only stages of 2+ epochs train on cached features; MixUp/CutMix need pixels, so they turn it off."""
    return (config.feature_cache and stage.unfreeze_blocks == 0 and stage.epochs >= 2
            and not (config.mixup or config.cutmix))


def fit_head_on_features(model: keras.Model, stage: Stage, config: TrainConfig, image_data: ImageData,
                         image_size: int, feature_cache_dir: Path, scratch_dir: Path, echo: Callable[[str], None],
                         **fit_args):
    """Compute (or load) the frozen backbone's features once, then fit only the head on them.

    Features are kept in `feature_cache_dir` for later runs on the same files; tfds splits, which have no files to
    fingerprint, use `scratch_dir` of this run."""
    start = time.time()
    extractor = feature_extractor(model)
    augmenter = build_augmenter(config.augment, config.seed)
    num_classes = len(image_data.class_names)

    def features_of(split: Split, views: int, name: str):
        compute = lambda folder: compute_features(extractor, split, num_classes, image_size,  # noqa: E731
                                                  config.batch_size, folder, views, augmenter)
        if split.source is not None:  # tfds: no files to fingerprint, so the features stay with this run only
            compute(scratch_dir / name)
            return (*load_features(scratch_dir / name), False)
        key = cache_key(split, config.arch, config.alpha, image_size, config.weights, views, config.augment,
                        config.seed, keras.config.dtype_policy().name)
        return cached_features(feature_cache_dir, key, compute)

    train_x, train_y, train_reused = features_of(image_data.train, config.cache_views, "train")
    val_x, val_y, val_reused = features_of(image_data.val, 1, "val")
    how = "reused from" if train_reused and val_reused else "computed into"
    folder = scratch_dir if image_data.train.source is not None else feature_cache_dir
    held = "streamed from disk while training" if isinstance(train_x, np.memmap) else "held in memory"
    echo(f"Feature cache: {len(train_x):,} train ({config.cache_views} view(s) per image) and {len(val_x):,} "
         f"validation feature vectors of {train_x.shape[1]} values, {how} {folder} in {time.time() - start:.1f}s, "
         f"{held}")
    head = head_model(model)
    # A step on feature vectors takes microseconds: running 32 per call halves the epoch time (only epoch-level
    # callbacks are used).
    compile_for_stage(head, stage, int(np.ceil(len(train_x) / config.batch_size)), config.label_smoothing,
                      steps_per_execution=32)
    return head.fit(feature_dataset(train_x, train_y, config.batch_size, shuffle=True, seed=config.seed),
                    validation_data=feature_dataset(val_x, val_y, config.batch_size, shuffle=False, seed=0),
                    shuffle=False,  # feature_dataset shuffles
                    **fit_args)


def history_rows(history: keras.callbacks.History, stage: Stage, epoch_offset: int) -> list[dict]:
    rows = []
    for i, epoch in enumerate(history.epoch):
        row = {"epoch": epoch + 1, "stage": stage.name, "stage_epoch": epoch - epoch_offset + 1,
               "learning_rate": stage.learning_rate}
        for key, values in history.history.items():
            if key in HISTORY_COLUMNS:
                row[key] = round(float(values[i]), 5)
        rows.append(row)
    return rows


def write_history_csv(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def data_summary(data: ImageData) -> str:
    counts = data.report["counts"]
    sizes = " / ".join(f"{sum(c.values()):,} {name}" for name, c in counts.items())
    lines = [f"Data: {len(data.class_names)} classes, {sizes} images ({data.report['layout']})"]
    skipped = data.report["skipped"]
    if skipped:
        lines.append(f"Skipped {len(skipped)} unusable file(s) (listed in data_report.json):")
        lines += [f"  {item['path']}: {item['reason']}" for item in skipped[:5]]
        if len(skipped) > 5:
            lines.append(f"  ... and {len(skipped) - 5} more")
    if data.report["converted"]:
        lines.append(f"Converted {len(data.report['converted'])} file(s) TensorFlow cannot decode to PNG.")
    return "\n".join(lines)


def split_record(split: Split | None) -> dict | None:
    if split is None or split.source is not None:
        return None
    return {"paths": split.paths, "labels": split.labels}


def resolved_config(config: TrainConfig, data: str, image_size: int, policy: str) -> dict:
    values = config.to_dict()
    values["image_size"] = image_size
    values["precision"] = policy
    values["backend"] = keras.backend.backend()
    values["data"] = data
    values["versions"] = {"tfl": __version__, "keras": keras.__version__}
    return values


def finetune(config: TrainConfig, data: str, output: str | Path = DEFAULT_ROOT, name: str | None = None,
             overwrite: bool = False, echo: Callable[[str], None] = print, verbose: int | str = "auto") -> RunResult:
    """Train `config` on `data` (a folder or 'tfds:NAME') and write a complete run directory."""
    start = time.time()
    spec = get_arch(config.arch)
    final_dir, work_dir = prepare_run_dir(output, name or default_run_name(config.arch), overwrite)
    keras.utils.set_random_seed(config.seed)

    image_data = load_data(data, config.val_split, config.seed, converted_dir=work_dir / "converted")
    echo(data_summary(image_data))
    atomic_write_text(work_dir / "data_report.json", json.dumps(image_data.report, indent=2) + "\n")
    atomic_write_text(work_dir / "labels.txt", "\n".join(image_data.class_names) + "\n")
    splits = {k: split_record(s) for k, s in (("train", image_data.train), ("val", image_data.val), ("test", image_data.test))}
    atomic_write_text(work_dir / "splits.json", json.dumps({k: v for k, v in splits.items() if v}) + "\n")
    median_side = image_data.report.get("median_short_side")
    image_size = config.image_size or auto_image_size(spec, median_side)

    num_classes = len(image_data.class_names)
    new_model = lambda: build_model(spec, num_classes, image_size, config.weights, config.alpha, config.dropout)  # noqa: E731
    policy, why = resolve_precision(config.precision, new_model, image_size)
    atomic_write_text(work_dir / "config.yaml",
                      yaml.safe_dump(resolved_config(config, data, image_size, policy), sort_keys=False))
    with dtype_policy(policy):  # layers take the policy when they are built
        model = new_model()
    class_weight = auto_class_weights(list(image_data.report["counts"]["train"].values()), config.class_weight)
    size_note = "" if config.image_size else f" (auto: photos' median short side {median_side} px)" if median_side else " (auto)"
    echo(f"\nModel: {spec.name} at {image_size} px{size_note}, weights {config.weights}, backend "
         f"{keras.backend.backend()}, precision {policy} ({why})")
    echo(format_plan(plan_rows(model, spec, config.stages), class_weight, image_data.class_names))

    cache_dir = work_dir / "cache"
    train_ds = make_pipeline(image_data.train, num_classes, image_size, config.batch_size, training=True,
                             augmenter=build_augmenter(config.augment, config.seed),
                             mixer=build_mixer(config.mixup, config.cutmix, config.seed),
                             seed=config.seed, cache_dir=cache_dir)
    val_ds = make_pipeline(image_data.val, num_classes, image_size, config.batch_size, training=False,
                           cache_dir=cache_dir)
    steps_per_epoch = int(np.ceil(len(image_data.train) / config.batch_size))

    rows: list[dict] = []
    best_weights = BestWeights(model)
    active = [s for s in config.stages if s.epochs > 0]
    for number, stage in enumerate(active, start=1):
        set_trainable_blocks(model, spec, stage.unfreeze_blocks)
        compile_for_stage(model, stage, steps_per_epoch, config.label_smoothing)
        echo(f"\n── Stage {number}/{len(active)}: {stage.name} · {describe_unfreeze(stage)} · "
             f"{trainable_params(model):,} trainable params · {stage.epochs} epochs · lr {stage.learning_rate:.1e}"
             f"{' · on cached features' if uses_feature_cache(stage, config) else ''}")
        offset = len(rows)
        fit_args = dict(initial_epoch=offset, epochs=offset + stage.epochs, class_weight=class_weight,
                        callbacks=stage_callbacks(work_dir, config.patience, best_weights), verbose=verbose)
        if uses_feature_cache(stage, config):
            history = fit_head_on_features(model, stage, config, image_data, image_size,
                                           Path(output).expanduser() / FEATURE_CACHE_FOLDER, cache_dir / "features", echo,
                                           **fit_args)
        else:
            history = model.fit(train_ds, validation_data=val_ds, shuffle=False, **fit_args)
        rows += history_rows(history, stage, offset)
    shutil.rmtree(cache_dir, ignore_errors=True)  # a disk cache of decoded images is no part of the run

    best_weights.restore()
    with atomic_path(work_dir / "model.keras", force=True) as tmp:
        model.save(tmp)
    metrics = evaluate_model(model, val_ds, image_data.class_names)
    if image_data.test is not None and len(image_data.test):
        test_ds = make_pipeline(image_data.test, num_classes, image_size, config.batch_size, training=False)
        metrics["test"] = evaluate_model(model, test_ds, image_data.class_names)
    best = max(rows, key=lambda r: r["val_accuracy"])
    metrics["best_epoch"] = {"epoch": best["epoch"], "stage": best["stage"]}
    metrics["wall_seconds"] = round(time.time() - start, 1)
    write_metrics(metrics, work_dir / "metrics.json")
    write_history_csv(rows, work_dir / "history.csv")
    plot_training_curves(rows, work_dir / "training_curves.png")
    plot_confusion_matrix(metrics, work_dir / "confusion_matrix.png")
    run_dir = finish_run_dir(work_dir, final_dir)
    wall = time.time() - start
    echo(f"\nBest validation accuracy {metrics['accuracy']:.4f} (stage {best['stage']}, epoch {best['epoch']}) · "
         f"wall time {format_duration(wall)} · run {run_dir}")
    return RunResult(run_dir, metrics["accuracy"], wall, metrics)


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"
