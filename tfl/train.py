"""Staged fine-tuning through model.fit: the plan, the callbacks, and everything a run directory holds."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import keras

from tfl import __version__
from tfl.archs import ArchSpec, auto_image_size, get_arch
from tfl.augment import build_augmenter, build_mixer
from tfl.checkpoint import Checkpoint, StageTracker, TrainingState
from tfl.config import Stage, TrainConfig, from_run_record, run_record
from tfl.data import ImageData, Split, load_data, make_pipeline
from tfl.distribute import Cluster, connect, disconnect
from tfl.errors import TflError, disk_full_explained
from tfl.evaluate import evaluate_model, plot_confusion_matrix, plot_training_curves, write_metrics
from tfl.features import FEATURE_CACHE_FOLDER, feature_stage_data, uses_feature_cache
from tfl.model import build_model, get_head, set_trainable_blocks, trainable_params
from tfl.plan import DataStats, auto_plan
from tfl.precision import dtype_policy, resolve_precision
from tfl.fileio import atomic_path, atomic_write_text
from tfl.runs import (DEFAULT_ROOT, RunFolder, default_run_name, finish_run_dir, has_checkpoint, labels_text,
                      portable_path, prepare_run_dir, read_run_config, resumable_run, run_lock, write_splits)
from tfl.scan import SCAN_CACHE_FOLDER

IMBALANCE_RATIO = 1.5  # class_weight auto: balance when the largest class is this much bigger than the smallest
HISTORY_COLUMNS = ["epoch", "stage", "stage_epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]


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
                      steps_per_execution: int = 1, cluster: Cluster | None = None) -> None:
    """A fresh optimizer with the stage's learning-rate schedule; needed after every trainable change.

    Distributed batches carry weights (0 for the rows that pad a short validation batch), so accuracy is then a
    weighted metric: Keras' plain `metrics` ignore sample weights."""
    cluster = cluster or Cluster()
    stage = dataclasses.replace(stage, learning_rate=stage.learning_rate * cluster.learning_rate_scale())
    schedule = learning_rate_schedule(stage, steps_per_epoch)
    accuracy = {"weighted_metrics" if cluster.distributed else "metrics": ["accuracy"]}
    with cluster.scope():
        model.compile(optimizer=keras.optimizers.Adam(schedule),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                      steps_per_execution=steps_per_execution, **accuracy)


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


def finetune(config: TrainConfig, data: str | None = None, output: str | Path = DEFAULT_ROOT, name: str | None = None,
             overwrite: bool = False, echo: Callable[[str], None] = print, verbose: int | str = "auto",
             augmenter: Callable | None = None, callbacks: Sequence[keras.callbacks.Callback] = ()) -> RunFolder | None:
    """Train `config` on `data` (a folder or 'tfds:NAME'; default: config.data) and write a complete run directory.

    `augmenter` replaces the config's augmentation preset (a function of a float32 pixel batch); `callbacks` are
    Keras callbacks added to every stage's fit. With `config.distribute` multiworker, the chief returns the run and
    the other workers None."""
    start = time.time()
    cluster = connect(config.distribute)  # first: TensorFlow's multi-worker setup must precede any TensorFlow op
    if not cluster.is_chief:  # only the chief writes the run; a worker's files live and die in a temporary folder
        scratch_folder = tempfile.TemporaryDirectory(prefix=f"tfl_worker{cluster.worker_index}_")
        with cluster.peers_explained(), scratch_folder as scratch:
            finetune_on(cluster, config, data, scratch, name, False, echo, verbose, augmenter, callbacks, start)
            cluster.wait_for_all("tfl: run written")
        echo(f"Worker {cluster.worker_index} of {cluster.workers} done; the chief (worker 0) wrote the run.")
        return None
    with cluster.peers_explained():
        run = finetune_on(cluster, config, data, output, name, overwrite, echo, verbose, augmenter, callbacks, start)
        cluster.wait_for_all("tfl: run written")
    return run


def finetune_on(cluster: Cluster, config: TrainConfig, data: str | None, output: str | Path, name: str | None,
                overwrite: bool, echo: Callable[[str], None], verbose: int | str, augmenter: Callable | None,
                callbacks: Sequence[keras.callbacks.Callback], start: float) -> RunFolder | None:
    spec = get_arch(config.arch)
    name = name or default_run_name(config.arch)
    if not (data or config.data):
        raise TflError("No photos given: pass --data DIR (data= in Python), a folder with one subfolder of images "
                       "per class.")
    data = absolute_data(data or config.data)
    if config.weights not in ("imagenet", "none"):  # a weights file: saved so that it is found from any directory
        config = dataclasses.replace(config, weights=str(Path(config.weights).expanduser().resolve()))
    with run_lock(output, name):
        final_dir, work_dir = prepare_run_dir(output, name, overwrite)
        run = RunFolder(work_dir)
        with discarded_on_failure(work_dir):
            # The data: scanned, split, and the split saved, so that evaluation and resume see the same files.
            keras.utils.set_random_seed(config.seed)
            image_data = load_data(data, config.val_split, config.seed, converted_dir=run.converted_dir,
                                   scan_cache_dir=Path(output).expanduser() / SCAN_CACHE_FOLDER)
            echo(data_summary(image_data))
            write_data_files(run, image_data)

            # The plan: image size, stages and precision, chosen from the data where the config says auto.
            median_side = image_data.report.get("median_short_side")
            image_size = config.image_size or auto_image_size(spec, median_side)
            reasons = None
            if config.plan == "auto":
                config, reasons = auto_plan(config, spec, DataStats(len(image_data.train), len(image_data.class_names)),
                                            cluster.global_batch(config.batch_size))
            new_model = lambda: build_model(spec, len(image_data.class_names), image_size, config.weights,  # noqa: E731
                                            config.alpha, config.dropout)
            policy, why = resolve_precision(config.precision, new_model, image_size)
            atomic_write_text(run.config_file, run_record(
                config, data, image_size, policy, keras.backend.backend(),
                {"tfl": __version__, "keras": keras.__version__}, reasons))
            size_note = ("" if config.image_size else
                         f" (auto: photos' median short side {median_side} px)" if median_side else " (auto)")
            echo(f"\nModel: {spec.name} at {image_size} px{size_note}, weights {config.weights}, backend "
                 f"{keras.backend.backend()}, precision {policy} ({why})")

            # The training, stage by stage, checkpointed every epoch.
            distributed = cluster.describe(config.batch_size)
            if distributed:
                echo(distributed)
            with failures_explained(config, image_size, work_dir, name):
                return train_run(dataclasses.replace(config, image_size=image_size, precision=policy), image_data,
                                 work_dir, final_dir, output, echo, verbose, start, reasons, augmenter, callbacks,
                                 cluster)


def write_data_files(run: RunFolder, image_data: ImageData) -> None:
    converted = [{"path": item["path"], "to": portable_path(run.path, item["to"])}
                 for item in image_data.report["converted"]]
    report = image_data.report | {"converted": converted}
    atomic_write_text(run.data_report_file, json.dumps(report, indent=2) + "\n")
    atomic_write_text(run.labels_file, labels_text(image_data.class_names))
    splits = {k: split_record(s) for k, s in (("train", image_data.train), ("val", image_data.val),
                                              ("test", image_data.test))}
    write_splits(run.path, {k: v for k, v in splits.items() if v})


def resume(output: str | Path = DEFAULT_ROOT, name: str | None = None, echo: Callable[[str], None] = print,
           verbose: int | str = "auto") -> RunFolder:
    """Continue the interrupted run `name` (default: the newest one under `output`) from its last finished epoch,
    with the settings it was started with."""
    start = time.time()
    final_dir, work_dir = resumable_run(output, name)
    with run_lock(output, final_dir.name):
        saved = read_run_config(work_dir)
        config = from_run_record(saved, str(RunFolder(work_dir).config_file))
        if config.distribute == "multiworker":
            raise TflError(f"Run '{final_dir.name}' trained on several machines, and only its chief kept a checkpoint: "
                           "such a run cannot be resumed yet. Start it again.")
        cluster = connect(config.distribute)
        if saved.get("backend", keras.backend.backend()) != keras.backend.backend():
            raise TflError(f"Run '{final_dir.name}' was trained on the {saved['backend']} backend; resume it with "
                           f"--backend {saved['backend']}.")
        keras.utils.set_random_seed(config.seed)
        image_data = saved_image_data(work_dir, saved["data"], config)
        state = Checkpoint(RunFolder(work_dir).checkpoint_dir).load_state()
        echo(f"Resuming run '{final_dir.name}' after epoch {state.epochs_done} (stage {state.stage + 1}, "
             f"{state.stage_epochs} of its epochs done) with its own settings from {RunFolder(work_dir).config_file}")
        echo(data_summary(image_data))
        with failures_explained(config, config.image_size, work_dir, final_dir.name):
            return train_run(config, image_data, work_dir, final_dir, output, echo, verbose, start, cluster=cluster)


def saved_image_data(work_dir: Path, data: str, config: TrainConfig) -> ImageData:
    """The very splits the run was started with (its splits.json), or tfds' own splits again."""
    if data.startswith("tfds:"):
        return load_data(data, config.val_split, config.seed)
    run = RunFolder(work_dir)
    splits, report = run.splits, run.data_report
    missing = [p for s in splits.values() for p in s["paths"] if not os.path.exists(p)]
    if missing:
        raise TflError(f"{len(missing)} training file(s) of this run are gone (the first: '{missing[0]}'). Put the "
                       f"photos back where they were ({data}), or start a new run.")
    parts = {k: Split(paths=v["paths"], labels=v["labels"]) for k, v in splits.items()}
    return ImageData(run.class_names, parts["train"], parts["val"], parts.get("test"), report)


def train_run(config: TrainConfig, image_data: ImageData, work_dir: Path, final_dir: Path, output: str | Path,
              echo: Callable[[str], None], verbose: int | str, start: float, reasons: list[str] | None = None,
              augmenter: Callable | None = None, callbacks: Sequence[keras.callbacks.Callback] = (),
              cluster: Cluster | None = None) -> RunFolder | None:
    """Train the plan's stages from the checkpoint in `work_dir` (or from the start), then write the run (on the
    chief; the other workers of a cluster return None)."""
    cluster = cluster or Cluster()
    spec, image_size, num_classes = get_arch(config.arch), config.image_size, len(image_data.class_names)
    with cluster.scope(), dtype_policy(config.precision):  # layers take the policy and the devices when built
        model = build_model(spec, num_classes, image_size, config.weights, config.alpha, config.dropout)
    class_weight = auto_class_weights(list(image_data.report["counts"]["train"].values()), config.class_weight)
    echo(format_plan(plan_rows(model, spec, config.stages), class_weight, image_data.class_names, reasons))

    run = RunFolder(work_dir)
    cache_dir = run.cache_dir
    custom_augmenter = augmenter is not None
    augmenter = augmenter or build_augmenter(config.augment, config.seed)
    mixer, train_files = build_mixer(config.mixup, config.cutmix, config.seed), cluster.shard(image_data.train)
    train_ds, val_ds, fit_class_weight = cluster.fit_data(
        lambda batch, repeat: make_pipeline(train_files, num_classes, image_size, batch, training=True,
                                            augmenter=augmenter, mixer=mixer, seed=config.seed, cache_dir=cache_dir,
                                            repeat=repeat),
        lambda batch: make_pipeline(image_data.val, num_classes, image_size, batch, training=False,
                                    cache_dir=cache_dir),
        config.batch_size, class_weight)
    steps_per_epoch = cluster.steps_per_epoch(len(image_data.train), config.batch_size)
    checkpoint = Checkpoint(run.checkpoint_dir)
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
        trained, train_data, val_data, stage_class_weight = model, train_ds, val_ds, fit_class_weight
        if on_features:
            trained, train_data, val_data, stage_class_weight = feature_stage_data(
                model, config, image_data, image_size, augmenter, Path(output).expanduser() / FEATURE_CACHE_FOLDER,
                cache_dir / "features", echo, custom_augmenter, cluster, class_weight)
        # A step on feature vectors takes microseconds: 32 per call halve the epoch time (only epoch callbacks run).
        compile_for_stage(trained, stage, steps_per_epoch, config.label_smoothing,
                          steps_per_execution=32 if on_features and not cluster.distributed else 1, cluster=cluster)
        if state.stage_epochs:
            checkpoint.restore_latest(state, trained)
        if not state.stage_finished(stage.epochs):
            first_epoch = state.epochs_done - state.stage_epochs
            trained.fit(train_data, validation_data=val_data, shuffle=False,  # the pipelines shuffle
                        initial_epoch=state.epochs_done, epochs=first_epoch + stage.epochs,
                        steps_per_epoch=steps_per_epoch if cluster.distributed else None,
                        validation_steps=cluster.validation_steps(len(image_data.val), config.batch_size),
                        class_weight=stage_class_weight, verbose=verbose,
                        callbacks=[StageTracker(checkpoint, state, stage.name, stage.patience or config.patience),
                                   keras.callbacks.TensorBoard(log_dir=str(run.logs_dir), write_graph=False),
                                   *callbacks])
        checkpoint.restore_epoch(state.stage_best["epoch"], trained)  # each stage ends on its best epoch
    shutil.rmtree(cache_dir, ignore_errors=True)  # a disk cache of decoded images is no part of the run

    best_stage = active[state.best["stage"]]
    checkpoint.restore_stage_start(state.best["stage"], model)
    checkpoint.restore_epoch(state.best["epoch"], get_head(model) if uses_feature_cache(best_stage, config) else model)
    if cluster.distributed:
        model = plain_copy(model, cluster, config, spec, num_classes)
        if model is None:
            return None
    return write_run(model, config, image_data, state, work_dir, final_dir, echo, start)


def plain_copy(model: keras.Model, cluster: Cluster, config: TrainConfig, spec: ArchSpec,
               num_classes: int) -> keras.Model | None:
    """On the chief, the trained weights in a model of one device, to save and evaluate alone; None elsewhere."""
    weights = model.get_weights()  # on every worker: reading JAX's multi-process arrays is a collective step
    if not cluster.is_chief:
        return None
    disconnect(cluster)
    with dtype_policy(config.precision):
        copy = build_model(spec, num_classes, config.image_size, "none", config.alpha, config.dropout)
    copy.set_weights(weights)
    return copy


def write_run(model: keras.Model, config: TrainConfig, image_data: ImageData, state: TrainingState, work_dir: Path,
              final_dir: Path, echo: Callable[[str], None], start: float) -> RunFolder:
    """The finished run's files: model, metrics (validation and test), history, plots; then it takes its name."""
    num_classes, run = len(image_data.class_names), RunFolder(work_dir)
    with atomic_path(run.model_file, force=True) as tmp:
        model.save(tmp)
    val_ds = make_pipeline(image_data.val, num_classes, config.image_size, config.batch_size, training=False)
    metrics = evaluate_model(model, val_ds, image_data.class_names)
    if image_data.test is not None and len(image_data.test):
        test_ds = make_pipeline(image_data.test, num_classes, config.image_size, config.batch_size, training=False)
        metrics["test"] = evaluate_model(model, test_ds, image_data.class_names)
    best = state.best
    metrics["best_epoch"] = {"epoch": best["epoch"], "stage": state.rows[best["epoch"] - 1]["stage"]}
    metrics["wall_seconds"] = round(time.time() - start, 1)
    write_metrics(metrics, run.metrics_file)
    write_history_csv(state.rows, run.history_file)
    cached = {stage.name for stage in config.stages if uses_feature_cache(stage, config)}
    plot_training_curves(state.rows, run.curves_file, cached)
    plot_confusion_matrix(metrics, run.confusion_file)
    shutil.rmtree(run.checkpoint_dir)  # the run is complete: nothing left to resume
    run_dir = finish_run_dir(work_dir, final_dir)
    wall = time.time() - start
    test = f" · test accuracy {metrics['test']['accuracy']:.4f}" if "test" in metrics else ""
    echo(f"\nBest validation accuracy {metrics['accuracy']:.4f} (stage {metrics['best_epoch']['stage']}, epoch "
         f"{best['epoch']}; chosen on this validation set, so optimistic){test} · wall time "
         f"{format_duration(wall)} · run {run_dir}")
    return RunFolder(run_dir)


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"
