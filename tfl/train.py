"""Staged fine-tuning through model.fit: the plan, the callbacks, and everything a run directory holds."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
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
from tfl.checkpoint import Checkpoint, StageTracker, TrainingState
from tfl.config import Stage, TrainConfig, apply_overrides
from tfl.data import ImageData, Split, load_data, make_pipeline
from tfl.errors import TflError
from tfl.evaluate import evaluate_model, plot_confusion_matrix, plot_training_curves, write_metrics
from tfl.features import (cache_key, cached_features, compute_features, feature_dataset, feature_extractor, head_model,
                          load_features)
from tfl.model import build_model, set_trainable_blocks, trainable_params
from tfl.plan import DataStats, auto_plan
from tfl.precision import dtype_policy, resolve_precision
from tfl.runs import (CHECKPOINT_DIR, CONFIG_FILE, DEFAULT_ROOT, LABELS_FILE, MODEL_FILE, atomic_path, atomic_write_text,
                      default_run_name, finish_run_dir, has_checkpoint, prepare_run_dir, read_labels, read_run_config,
                      read_splits, resumable_run, run_lock, write_splits)

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


def format_plan(rows: list[dict], class_weight: dict | None, class_names: list[str],
                reasons: list[str] | None = None) -> str:
    lines = [f"{'stage':<12} {'trains':<16} {'trainable params':>17} {'epochs':>7} {'lr':>9}"]
    for row in rows:
        skipped = "  (skipped)" if row["epochs"] == 0 else ""
        lines.append(f"{row['stage']:<12} {row['trains']:<16} {row['trainable_params']:>17,} {row['epochs']:>7} "
                     f"{row['learning_rate']:>9.1e}{skipped}")
    if reasons:
        lines += ["plan auto, chosen from the data:"] + [f"  {reason}" for reason in reasons]
    if class_weight:
        weights = ", ".join(f"{class_names[i]} {w:.2f}" for i, w in class_weight.items())
        lines.append(f"class weights (auto, imbalanced classes): {weights}")
    else:
        lines.append("class weights: none (classes balanced enough)")
    return "\n".join(lines)


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
                      steps_per_execution: int = 1) -> None:
    """A fresh optimizer with the stage's learning-rate schedule; needed after every trainable change."""
    schedule = learning_rate_schedule(stage, steps_per_epoch)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)


def uses_feature_cache(stage: Stage, config: TrainConfig) -> bool:
    """Head-only stages of 2+ epochs train on cached features; MixUp/CutMix need pixels, so they turn it off."""
    return (config.feature_cache and stage.unfreeze_blocks == 0 and stage.epochs >= 2
            and not (config.mixup or config.cutmix))


def feature_stage_data(model: keras.Model, config: TrainConfig, image_data: ImageData, image_size: int,
                       feature_cache_dir: Path, scratch_dir: Path, echo: Callable[[str], None]):
    """(head model, training batches, validation batches) for a head-only stage on cached backbone features.

    Features are computed once (or loaded) and kept in `feature_cache_dir` for later runs on the same files; tfds
    splits, which have no files to fingerprint, use `scratch_dir` of this run."""
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
                        config.seed, config.precision)
        return cached_features(feature_cache_dir, key, compute)

    train_x, train_y, train_reused = features_of(image_data.train, config.cache_views, "train")
    val_x, val_y, val_reused = features_of(image_data.val, 1, "val")
    how = "reused from" if train_reused and val_reused else "computed into"
    folder = scratch_dir if image_data.train.source is not None else feature_cache_dir
    held = "streamed from disk while training" if isinstance(train_x, np.memmap) else "held in memory"
    echo(f"Feature cache: {len(train_x):,} train ({config.cache_views} view(s) per image) and {len(val_x):,} "
         f"validation feature vectors of {train_x.shape[1]} values, {how} {folder} in {time.time() - start:.1f}s, "
         f"{held}")
    return (head_model(model),
            feature_dataset(train_x, train_y, config.batch_size, shuffle=True, seed=config.seed),
            feature_dataset(val_x, val_y, config.batch_size, shuffle=False, seed=0))


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


@contextlib.contextmanager
def clear_resource_errors(config: TrainConfig, image_size: int | None):
    """Out of memory is a setting the user can change, not a bug: say which."""
    try:
        yield
    except Exception as exc:
        if type(exc).__name__ == "ResourceExhaustedError" or "RESOURCE_EXHAUSTED" in str(exc):
            raise TflError(f"Training ran out of memory at batch size {config.batch_size} and image size "
                           f"{image_size} px. Pass a smaller --batch-size or --image-size.") from None
        raise


def finetune(config: TrainConfig, data: str | None = None, output: str | Path = DEFAULT_ROOT, name: str | None = None,
             overwrite: bool = False, echo: Callable[[str], None] = print, verbose: int | str = "auto") -> RunResult:
    """Train `config` on `data` (a folder or 'tfds:NAME'; default: config.data) and write a complete run directory."""
    start = time.time()
    spec = get_arch(config.arch)
    name = name or default_run_name(config.arch)
    if not (data or config.data):
        raise TflError("No photos given: pass --data DIR, a folder with one subfolder of images per class.")
    data = absolute_data(data or config.data)
    if config.weights not in ("imagenet", "none"):  # a weights file: saved so that it is found from any directory
        config = dataclasses.replace(config, weights=str(Path(config.weights).expanduser().resolve()))
    with run_lock(output, name):
        final_dir, work_dir = prepare_run_dir(output, name, overwrite)
        with discarded_on_failure(work_dir):
            keras.utils.set_random_seed(config.seed)
            image_data = load_data(data, config.val_split, config.seed, converted_dir=work_dir / "converted")
            echo(data_summary(image_data))
            atomic_write_text(work_dir / "data_report.json", json.dumps(image_data.report, indent=2) + "\n")
            atomic_write_text(work_dir / LABELS_FILE, "\n".join(image_data.class_names) + "\n")
            splits = {k: split_record(s) for k, s in (("train", image_data.train), ("val", image_data.val),
                                                      ("test", image_data.test))}
            write_splits(work_dir, {k: v for k, v in splits.items() if v})
            median_side = image_data.report.get("median_short_side")
            image_size = config.image_size or auto_image_size(spec, median_side)
            reasons = None
            if config.plan == "auto":
                stats = DataStats(len(image_data.train), len(image_data.class_names))
                config, reasons = auto_plan(config, spec, stats)
            new_model = lambda: build_model(spec, len(image_data.class_names), image_size, config.weights,  # noqa: E731
                                            config.alpha, config.dropout)
            policy, why = resolve_precision(config.precision, new_model, image_size)
            atomic_write_text(work_dir / CONFIG_FILE, yaml.safe_dump(
                resolved_config(config, data, image_size, policy) | ({"plan_reasons": reasons} if reasons else {}),
                sort_keys=False))
            size_note = ("" if config.image_size else
                         f" (auto: photos' median short side {median_side} px)" if median_side else " (auto)")
            echo(f"\nModel: {spec.name} at {image_size} px{size_note}, weights {config.weights}, backend "
                 f"{keras.backend.backend()}, precision {policy} ({why})")
            with clear_resource_errors(config, image_size):
                return train_run(dataclasses.replace(config, image_size=image_size, precision=policy), image_data,
                                 work_dir, final_dir, output, echo, verbose, start, reasons)


def resume(output: str | Path = DEFAULT_ROOT, name: str | None = None, echo: Callable[[str], None] = print,
           verbose: int | str = "auto") -> RunResult:
    """Continue the interrupted run `name` (default: the newest one under `output`) from its last finished epoch,
    with the settings it was started with."""
    start = time.time()
    final_dir, work_dir = resumable_run(output, name)
    with run_lock(output, final_dir.name):
        saved = read_run_config(work_dir)
        config = apply_overrides(TrainConfig(), saved, str(work_dir / CONFIG_FILE))
        if saved.get("backend", keras.backend.backend()) != keras.backend.backend():
            raise TflError(f"Run '{final_dir.name}' was trained on the {saved['backend']} backend; resume it with "
                           f"--backend {saved['backend']}.")
        keras.utils.set_random_seed(config.seed)
        image_data = saved_image_data(work_dir, saved["data"], config)
        state = Checkpoint(work_dir / CHECKPOINT_DIR).load_state()
        echo(f"Resuming run '{final_dir.name}' after epoch {state.epochs_done} (stage {state.stage + 1}, "
             f"{state.stage_epochs} of its epochs done) with its own settings from {work_dir / CONFIG_FILE}")
        echo(data_summary(image_data))
        with clear_resource_errors(config, config.image_size):
            return train_run(config, image_data, work_dir, final_dir, output, echo, verbose, start)


def saved_image_data(work_dir: Path, data: str, config: TrainConfig) -> ImageData:
    """The very splits the run was started with (its splits.json), or tfds' own splits again."""
    if data.startswith("tfds:"):
        return load_data(data, config.val_split, config.seed)
    splits = read_splits(work_dir)
    report = json.loads((work_dir / "data_report.json").read_text())
    missing = [p for s in splits.values() for p in s["paths"] if not os.path.exists(p)]
    if missing:
        raise TflError(f"{len(missing)} training file(s) of this run are gone (the first: '{missing[0]}'). Put the "
                       f"photos back where they were ({data}), or start a new run.")
    parts = {k: Split(paths=v["paths"], labels=v["labels"]) for k, v in splits.items()}
    return ImageData(read_labels(work_dir / LABELS_FILE), parts["train"], parts["val"], parts.get("test"), report)


def train_run(config: TrainConfig, image_data: ImageData, work_dir: Path, final_dir: Path, output: str | Path,
              echo: Callable[[str], None], verbose: int | str, start: float,
              reasons: list[str] | None = None) -> RunResult:
    """Train the plan's stages from the checkpoint in `work_dir` (or from the start), then write the run."""
    spec, image_size, num_classes = get_arch(config.arch), config.image_size, len(image_data.class_names)
    with dtype_policy(config.precision):  # layers take the policy when they are built
        model = build_model(spec, num_classes, image_size, config.weights, config.alpha, config.dropout)
    class_weight = auto_class_weights(list(image_data.report["counts"]["train"].values()), config.class_weight)
    echo(format_plan(plan_rows(model, spec, config.stages), class_weight, image_data.class_names, reasons))

    cache_dir = work_dir / "cache"
    train_ds = make_pipeline(image_data.train, num_classes, image_size, config.batch_size, training=True,
                             augmenter=build_augmenter(config.augment, config.seed),
                             mixer=build_mixer(config.mixup, config.cutmix, config.seed),
                             seed=config.seed, cache_dir=cache_dir)
    val_ds = make_pipeline(image_data.val, num_classes, image_size, config.batch_size, training=False,
                           cache_dir=cache_dir)
    steps_per_epoch = int(np.ceil(len(image_data.train) / config.batch_size))
    checkpoint = Checkpoint(work_dir / CHECKPOINT_DIR)
    state = checkpoint.load_state() or TrainingState()
    active = [s for s in config.stages if s.epochs > 0]
    for index, stage in enumerate(active):
        if index < state.stage:
            continue
        set_trainable_blocks(model, spec, stage.unfreeze_blocks)
        if checkpoint.has_stage(index):
            checkpoint.restore_stage_start(index, model)
        else:
            checkpoint.start_stage(state, index, model)
        on_features = uses_feature_cache(stage, config)
        echo(f"\n── Stage {index + 1}/{len(active)}: {stage.name} · {describe_unfreeze(stage)} · "
             f"{trainable_params(model):,} trainable params · {stage.epochs} epochs · lr {stage.learning_rate:.1e}"
             f"{' · on cached features' if on_features else ''}"
             f"{f' · resumed after epoch {state.stage_epochs}' if state.stage_epochs else ''}")
        trained, train_data, val_data = model, train_ds, val_ds
        if on_features:
            trained, train_data, val_data = feature_stage_data(
                model, config, image_data, image_size, Path(output).expanduser() / FEATURE_CACHE_FOLDER,
                cache_dir / "features", echo)
        # A step on feature vectors takes microseconds: 32 per call halve the epoch time (only epoch callbacks run).
        compile_for_stage(trained, stage, steps_per_epoch, config.label_smoothing,
                          steps_per_execution=32 if on_features else 1)
        if state.stage_epochs:
            checkpoint.restore_latest(state, trained)
        if not state.stage_finished(stage.epochs):
            first_epoch = state.epochs_done - state.stage_epochs
            trained.fit(train_data, validation_data=val_data, shuffle=False,  # the pipelines shuffle
                        initial_epoch=state.epochs_done, epochs=first_epoch + stage.epochs,
                        class_weight=class_weight, verbose=verbose,
                        callbacks=[StageTracker(checkpoint, state, stage.name, stage.patience or config.patience),
                                   keras.callbacks.TensorBoard(log_dir=str(work_dir / "logs"), write_graph=False)])
        checkpoint.restore_epoch(state.stage_best["epoch"], trained)  # each stage ends on its best epoch
    shutil.rmtree(cache_dir, ignore_errors=True)  # a disk cache of decoded images is no part of the run

    best_stage = active[state.best["stage"]]
    checkpoint.restore_stage_start(state.best["stage"], model)
    checkpoint.restore_epoch(state.best["epoch"], head_model(model) if uses_feature_cache(best_stage, config) else model)
    return write_run(model, config, image_data, state, work_dir, final_dir, echo, start)


def write_run(model: keras.Model, config: TrainConfig, image_data: ImageData, state: TrainingState, work_dir: Path,
              final_dir: Path, echo: Callable[[str], None], start: float) -> RunResult:
    """The finished run's files: model, metrics (validation and test), history, plots; then it takes its name."""
    num_classes = len(image_data.class_names)
    with atomic_path(work_dir / MODEL_FILE, force=True) as tmp:
        model.save(tmp)
    val_ds = make_pipeline(image_data.val, num_classes, config.image_size, config.batch_size, training=False)
    metrics = evaluate_model(model, val_ds, image_data.class_names)
    if image_data.test is not None and len(image_data.test):
        test_ds = make_pipeline(image_data.test, num_classes, config.image_size, config.batch_size, training=False)
        metrics["test"] = evaluate_model(model, test_ds, image_data.class_names)
    best = state.best
    metrics["best_epoch"] = {"epoch": best["epoch"], "stage": state.rows[best["epoch"] - 1]["stage"]}
    metrics["wall_seconds"] = round(time.time() - start, 1)
    write_metrics(metrics, work_dir / "metrics.json")
    write_history_csv(state.rows, work_dir / "history.csv")
    plot_training_curves(state.rows, work_dir / "training_curves.png")
    plot_confusion_matrix(metrics, work_dir / "confusion_matrix.png")
    shutil.rmtree(work_dir / CHECKPOINT_DIR)  # the run is complete: nothing left to resume
    run_dir = finish_run_dir(work_dir, final_dir)
    wall = time.time() - start
    test = f" · test accuracy {metrics['test']['accuracy']:.4f}" if "test" in metrics else ""
    echo(f"\nBest validation accuracy {metrics['accuracy']:.4f} (stage {metrics['best_epoch']['stage']}, epoch "
         f"{best['epoch']}; chosen on this validation set, so optimistic){test} · wall time "
         f"{format_duration(wall)} · run {run_dir}")
    return RunResult(run_dir, metrics["accuracy"], wall, metrics)


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"
