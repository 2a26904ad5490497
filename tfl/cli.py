"""The `tfl` command line: parses options and calls the library; user mistakes become one-paragraph errors."""

from __future__ import annotations

import functools
import sys
import warnings

import click

from tfl.archs import ARCHS
from tfl.backend import BACKENDS, use_backend
from tfl.config import AUGMENT_PRESETS, CLASS_WEIGHT_MODES, PLANS, PRECISIONS, load_config, override_stages
from tfl.errors import TflError, TflWarning
from tfl.runs import DEFAULT_ROOT, read_run_config, resumable_run


def show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    if issubclass(category, TflWarning):
        click.echo(f"Warning: {message}", err=True)
    else:
        _default(message, category, filename, lineno, file, line)


def friendly_errors(command):
    """Show a TflError as 'Error: ...' with exit code 1, never as a traceback; tfl's warnings as one line."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", TflWarning)
                warnings.showwarning = show_warning
                return command(*args, **kwargs)
        except TflError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("\nInterrupted. A run that finished at least one epoch is kept with a .partial suffix: "
                       "continue it with 'tfl finetune --resume NAME'.", err=True)
            sys.exit(130)
    return wrapper


LATEST = "\0latest"  # --resume without a name


def progress_verbosity() -> int:
    return 1 if sys.stdout.isatty() else 2  # a progress bar per step only on a terminal


@click.group()
@click.version_option(package_name="tfl")
def main():
    """Fine-tune Keras image classifiers from a folder of photos; evaluate, export and predict."""


@main.command()
@click.option("--data", help="Folder with one subfolder per class (or train/ and val/), or tfds:NAME (default: the "
              "--config's data).")
@click.option("--arch", type=click.Choice(sorted(ARCHS)), help="Backbone (default: mobilenetv2, or the --config's).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file overriding configs/<arch>.yaml.")
@click.option("--weights", help="imagenet (download, cached), none, or the path of a no-top backbone weights file.")
@click.option("--alpha", type=float, help="MobileNetV2 width multiplier (0.35, 0.5, 0.75, 1.0, 1.3, 1.4).")
@click.option("--image-size", type=int, help="Square input size in pixels (default: the config's, else the arch's).")
@click.option("--batch-size", type=int)
@click.option("--augment", type=click.Choice(AUGMENT_PRESETS), help="Augmentation preset for training images.")
@click.option("--mixup", type=float, help="MixUp alpha (0 = off).")
@click.option("--cutmix", type=float, help="CutMix alpha (0 = off).")
@click.option("--plan", type=click.Choice(PLANS), help="fixed: the config's stages; auto: stages chosen from the "
              "number of images and classes (head to convergence, then warmed-up fine-tuning).")
@click.option("--epochs", help="Epochs per stage, comma-separated: head,top_blocks,full (e.g. 5,5,0).")
@click.option("--lr", help="Learning rate per stage, comma-separated (e.g. 1e-3,1e-4,1e-5).")
@click.option("--unfreeze-blocks", help="How many top backbone blocks stage 2 trains (a number or 'all').")
@click.option("--val-split", type=float, help="Validation fraction when --data has no val/ folder.")
@click.option("--class-weight", type=click.Choice(CLASS_WEIGHT_MODES), help="auto: balance imbalanced classes.")
@click.option("--seed", type=int, help="Seed for the split, augmentation and initialisation.")
@click.option("--precision", type=click.Choice(PRECISIONS), help="Dtype policy (default float32); auto: float16 "
              "on a GPU, bfloat16 on a CPU where it measures faster, else float32.")
@click.option("--feature-cache/--no-feature-cache", default=None,
              help="Train head-only stages on backbone features computed once (default: on).")
@click.option("--cache-views", type=click.IntRange(1), help="Feature vectors per training image (1 + augmented copies).")
@click.option("--backend", type=click.Choice(BACKENDS), help="Keras backend (default tensorflow).")
@click.option("--name", help="Run name (default: arch and timestamp).")
@click.option("--output", default=DEFAULT_ROOT, show_default=True, help="Folder that holds runs.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run of the same name.")
@click.option("--resume", is_flag=False, flag_value=LATEST, default=None, metavar="[NAME]",
              help="Continue the interrupted run NAME (alone: the newest one under --output) from its last "
                   "finished epoch, with its own settings.")
@friendly_errors
def finetune(data, arch, config_file, epochs, lr, unfreeze_blocks, name, output, overwrite, resume, **options):
    """Fine-tune a backbone with staged unfreezing and write a run directory."""
    if resume is not None:
        return resume_run(resume, output, data, arch, config_file, epochs, lr, unfreeze_blocks, name, overwrite,
                          options)
    config = load_config(arch, config_file, options)
    config = override_stages(config, epochs, lr, unfreeze_blocks)
    if not (data or config.data):
        raise click.UsageError("Missing option '--data' (a folder with one subfolder of images per class).")
    use_backend(config.backend)
    from tfl.train import finetune as run_finetune

    run_finetune(config, data, output=output, name=name, overwrite=overwrite, echo=click.echo,
                 verbose=progress_verbosity())


def resume_run(resume, output, *settings):
    """--resume takes nothing but --output: the run keeps its settings, its backend included."""
    *flags, options = settings
    if [v for v in flags if v not in (None, False)] + [k for k, v in options.items() if v is not None]:
        raise TflError("--resume continues a run with the settings it was started with, so it takes no other "
                       "training option (only --output). Drop them, or start a new run.")
    final, partial = resumable_run(output, None if resume == LATEST else resume)
    use_backend(read_run_config(partial).get("backend", "tensorflow"))
    from tfl.train import resume as resume_training

    resume_training(output, final.name, echo=click.echo, verbose=progress_verbosity())


@main.command()
@click.argument("run", required=False)
@click.option("--data", help="Folder of class subfolders to evaluate on (default: the run's validation split).")
@click.option("--output", "root", default=DEFAULT_ROOT, show_default=True, help="Runs folder, for the latest run.")
@friendly_errors
def evaluate(run, data, root):
    """Recompute accuracy, loss, per-class metrics and the confusion matrix of RUN (default: the latest)."""
    use_backend("tensorflow")
    from tfl.evaluate import evaluate_run

    metrics, run_dir = evaluate_run(run, data, root)
    click.echo(f"Run {run_dir} on {metrics['num_images']} images: accuracy {metrics['accuracy']:.4f}, "
               f"loss {metrics['loss']:.4f}, macro F1 {metrics['macro_f1']:.4f}")
    click.echo(f"{'class':<20} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
    for name, row in metrics["per_class"].items():
        click.echo(f"{name:<20} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>7.3f} {row['support']:>8}")


@main.command()
@click.argument("run", required=False)
@click.option("--format", "export_format", type=click.Choice(["saved_model", "tflite", "all"]), default="tflite",
              show_default=True, help="saved_model: TF Serving layout; tflite: for phones; all: both.")
@click.option("--quantize", type=click.Choice(["none", "float16", "dynamic", "int8"]), default="none",
              show_default=True, help="TFLite weights: float32, float16, dynamic-range int8, or full int8.")
@click.option("--calibration-samples", type=click.IntRange(1), default=300, show_default=True,
              help="Training images used to calibrate int8.")
@click.option("--verify-images", type=click.IntRange(1), default=500, show_default=True,
              help="Validation images each artifact is checked on.")
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True,
              help="Classes returned by the SavedModel's classify_images signature.")
@click.option("--max-accuracy-drop", type=float, help="Fail (and write nothing) if an artifact loses more accuracy "
              "than this against the Keras model, e.g. 0.01.")
@click.option("--force", is_flag=True, help="Replace existing artifacts.")
@click.option("--output", "root", default=DEFAULT_ROOT, show_default=True, help="Runs folder, for the latest run.")
@friendly_errors
def export(run, root, **options):
    """Export RUN (default: the latest) as a SavedModel and/or TFLite file, verified on its validation images."""
    use_backend("tensorflow")  # exports need TF; a JAX-trained model.keras loads under TF as it is
    from tfl.export import export_run

    export_run(run, root=root, echo=click.echo, **options)


@main.command()
@click.argument("artifact")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--top-k", type=click.IntRange(1), default=3, show_default=True)
@click.option("--format", "output_format", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
@friendly_errors
def predict(artifact, inputs, top_k, output_format):
    """Classify image files or folders INPUTS with ARTIFACT (.keras, run dir, SavedModel dir or .tflite)."""
    use_backend("tensorflow")
    from tfl.predict import collect_images, format_rows, load_predictor, predict_files

    predictor = load_predictor(artifact)
    rows = predict_files(predictor, collect_images(list(inputs)), top_k)
    click.echo(format_rows(rows, output_format))
    failed = sum("error" in row for row in rows)
    if failed == len(rows):
        raise TflError(f"None of the {len(rows)} input file(s) could be read as an image (see the errors above). "
                       "Pass JPEG, PNG, GIF, BMP, WebP or TIFF files.")
    if failed:
        click.echo(f"{failed} of {len(rows)} file(s) could not be read; the others were predicted.", err=True)


@main.command()
def archs():
    """List the available backbones."""
    for spec in ARCHS.values():
        click.echo(f"{spec.name:<12} {spec.image_size:>4} px (min {spec.min_image_size:>3})  "
                   f"{spec.num_blocks:>2} blocks  {spec.description}")


if __name__ == "__main__":
    main()
