"""The `tfl` command line: parses options and calls the library; user mistakes become one-paragraph errors."""

from __future__ import annotations

import functools
import os
import sys
import warnings

import click

import tfl
from tfl.api import make_config
from tfl.archs import ARCHS
from tfl.backend import VERBOSE_ENV, use_backend
from tfl.config import SETTINGS, parse_per_stage
from tfl.errors import TflError, TflWarning
from tfl.report import format_checks, format_metrics, format_predictions, terminal_text
from tfl.formats import ALL, FORMATS, QUANTIZATIONS, export_help
from tfl.runs import DEFAULT_ROOT


def echo(message: str = "", err: bool = False) -> None:
    """Every line tfl prints, with names' control characters escaped (tfl/report.py's terminal_text)."""
    click.echo(terminal_text(str(message)), err=err)


def show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    if issubclass(category, TflWarning):
        echo(f"Warning: {message}", err=True)
    else:
        _default(message, category, filename, lineno, file, line)


INTERRUPTED = {
    "finetune": "Interrupted. A run that finished at least one epoch is kept with a .partial suffix: continue it "
                "with 'tfl finetune --resume NAME'.",
    "export": "Interrupted. Every artifact finished before is kept and listed in export_report.json; nothing "
              "half-written is left. Run the export again to write the rest.",
}


def friendly_errors(command):
    """Show a TflError as 'Error: ...' with exit code 1, never as a traceback; tfl's warnings as one line; Ctrl-C
    as what it left behind, for this command."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", TflWarning)
                warnings.showwarning = show_warning
                return command(*args, **kwargs)
        except TflError as exc:
            raise click.ClickException(terminal_text(str(exc))) from None
        except KeyboardInterrupt:
            echo("\n" + INTERRUPTED.get(command.__name__, "Interrupted."), err=True)
            sys.exit(130)
    return wrapper


LATEST = "\0latest"  # --resume without a name
# What `tfl check` reads the data with, as finetune does (so it checks the same split of the same files)
CHECK_SETTINGS = ("path_column", "label_column", "label_separator", "task", "val_split", "seed", "exclude",
                  "corrections")


def progress_verbosity() -> int:
    return 1 if sys.stdout.isatty() else 2  # a progress bar per step only on a terminal


@click.group()
@click.version_option(package_name="tfl")
@click.option("--verbose", is_flag=True, help="Show TensorFlow's, XLA's and absl's own log lines.")
def main(verbose):
    """Fine-tune Keras image classifiers from a folder of photos; evaluate, export and predict."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


def options_of(names: tuple[str, ...] | None = None):
    """One option per TrainConfig field (its help, type and choices from the field), so adding a setting there adds
    it here; `names`: only those."""
    return lambda command: setting_options(command, names)


def setting_options(command, names: tuple[str, ...] | None = None):
    for name, spec in reversed(SETTINGS.items()):
        meta = spec.metadata
        if not meta["cli"] or (names is not None and name not in names):
            continue
        flag = "--" + name.replace("_", "-")
        default = spec.default
        if isinstance(default, bool) or default is None:
            default = {True: "on", False: "off", None: "auto" if name == "image_size" else "none"}[default]
        help_text = f"{meta['help']} [default: {default}]"
        if meta["kind"] is bool:
            command = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)(command)
        else:
            kind = click.Choice(meta["choices"]) if meta["choices"] else meta["kind"]
            command = click.option(flag, name, type=kind, help=help_text)(command)
    return command


@main.command()
@click.option("--data", help="Folder with one subfolder per class (or train/ and val/), a label file (CSV/TSV: file "
              "names and labels), a folder with train.csv and val.csv, or tfds:NAME (default: the --config's data).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file overriding configs/<arch>.yaml "
              "(a run's config.yaml reproduces that run).")
@click.option("--epochs", help="Epochs per stage, comma-separated: head,top_blocks,full (e.g. 5,5,0).")
@click.option("--lr", help="Learning rate per stage, comma-separated (e.g. 1e-3,1e-4,1e-5).")
@click.option("--unfreeze-blocks", help="How many top backbone blocks stage 2 trains (a number or 'all').")
@setting_options
@click.option("--name", help="Run name (default: arch and timestamp).")
@click.option("--output", default=DEFAULT_ROOT, show_default=True, help="Folder that holds runs.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run of the same name.")
@click.option("--resume", is_flag=False, flag_value=LATEST, default=None, metavar="[NAME]",
              help="Continue the interrupted run NAME (alone: the newest one under --output) from its last "
                   "finished epoch, with its own settings.")
@friendly_errors
def finetune(data, config_file, epochs, lr, unfreeze_blocks, name, output, overwrite, resume, **settings):
    """Fine-tune a backbone with staged unfreezing and write a run directory."""
    # Nine parameters: click passes every option of the command as one.
    if resume is not None:
        return resume_run(resume, output, data, config_file, epochs, lr, unfreeze_blocks, name, overwrite, settings)
    config = make_config(config_file, settings,
                         None if epochs is None else parse_per_stage(epochs, int, "--epochs"),
                         None if lr is None else parse_per_stage(lr, float, "--lr"), unfreeze_blocks,
                         source="the command line")
    if not (data or config.data):
        raise click.UsageError("Missing option '--data' (a folder with one subfolder of images per class).")
    tfl.finetune(data, config=config, output=output, name=name, overwrite=overwrite, echo=echo,
                 verbose=progress_verbosity())


def resume_run(resume, output, *settings):
    """--resume takes nothing but --output: the run keeps its settings, its backend included."""
    *flags, options = settings
    if [v for v in flags if v not in (None, False)] + [k for k, v in options.items() if v is not None]:
        raise TflError("--resume continues a run with the settings it was started with, so it takes no other "
                       "training option (only --output). Drop them, or start a new run.")
    tfl.resume(None if resume == LATEST else resume, output=output, echo=echo, verbose=progress_verbosity())


@main.command()
@click.argument("data")
@click.option("--probe/--no-probe", default=True, show_default=True,
              help="Look for likely label errors with a quick probe of the backbone's features (needs the weights).")
@click.option("--arch", default="mobilenetv2", show_default=True, help="Backbone of the label probe.")
@click.option("--alpha", type=float, default=1.0, show_default=True, help="MobileNetV2 width of the label probe.")
@click.option("--weights", default="imagenet", show_default=True, help="Weights of the label probe (as for finetune).")
@click.option("--image-size", type=int, default=None, help="Pixels of the label probe (default: as finetune chooses).")
@click.option("--images", help="Label files: the folder their file names are relative to.")
@click.option("--listed", type=click.IntRange(1), default=10, show_default=True, help="Entries shown per list.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), help="Also write the whole report here.")
@click.option("--exclusions", "exclusions_file", type=click.Path(dir_okay=False),
              help="Also write the doubted photos here, commented out, to edit for tfl finetune --exclude.")
@click.option("--output", default=DEFAULT_ROOT, show_default=True, help="Runs folder (where the scan cache lives).")
@options_of(CHECK_SETTINGS)
@friendly_errors
def check(data, probe, arch, alpha, weights, image_size, images, listed, json_file, exclusions_file, output,
          **settings):
    """Check photos before training: duplicates, conflicting labels, leaks, unusable photos, likely label errors."""
    # Eleven parameters: click passes every option of the command as one.
    report = tfl.check(data, probe=probe, output=output, echo=echo, report_file=json_file,
                       exclusions_file=exclusions_file, arch=arch, alpha=alpha, weights=weights, image_size=image_size,
                       images=images, **{key: value for key, value in settings.items() if value is not None})
    echo(format_checks(report, listed))
    if report["checks"].get("label_probe_error"):  # the checks above need no weights; the probe does
        raise TflError(f"{report['checks']['label_probe_error']} The checks above are complete; the label probe did "
                       "not run (pass --no-probe to leave it out).")


@main.command()
@click.argument("run", required=False)
@click.option("--data", help="Folder of class subfolders to evaluate on (default: the run's validation split).")
@click.option("--unknown-data", help="Folder of photos of none of the classes: how many the unknown category takes, "
              "and how well it tells them from the evaluated photos (AUROC).")
@click.option("--output", "root", default=DEFAULT_ROOT, show_default=True, help="Runs folder, for the latest run.")
@friendly_errors
def evaluate(run, data, unknown_data, root):
    """Recompute accuracy, loss, per-class metrics and the confusion matrix of RUN (default: the latest)."""
    use_backend("tensorflow")
    found = tfl.open_run(run, root)
    metrics = found.evaluate(data, unknown_data=unknown_data)
    echo(format_metrics(metrics, found.path))


@main.command()
@click.argument("run", required=False)
@click.option("--unlabelled", type=click.Path(file_okay=False),
              help="Also a folder of unlabelled photos to label, the ones the model would learn most from first.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port on 127.0.0.1 (default: a free one).")
@click.option("--no-browser", is_flag=True, help="Print the URL only; do not open a browser.")
@click.option("--output", "root", default=DEFAULT_ROOT, show_default=True, help="Runs folder, for the latest run.")
@friendly_errors
def review(run, unlabelled, port, no_browser, root):
    """Fix labels and label new photos in the browser: RUN's doubted labels, copies under two labels and validation
    mistakes, one at a time (keys 1-9 relabel, k keep, x exclude, z undo), each decision saved to RUN/review.csv;
    then tfl finetune --corrections RUN/review.csv."""
    use_backend("tensorflow")
    tfl.open_run(run, root).review(unlabelled, port, not no_browser, echo)


@main.command()
@click.argument("run", required=False)
@click.option("--format", "export_format", type=click.Choice([*FORMATS, ALL]), default="tflite", show_default=True,
              help=export_help())
@click.option("--quantize", default="none", show_default=True, metavar="|".join(QUANTIZATIONS),
              help="Weights: float32, float16, dynamic-range int8, or full int8 (" + ", ".join(
                  row.name for row in FORMATS.values() if len(row.quantizations) > 1) + " only); several "
                  "comma-separated (float16,int8) are exported together.")
@click.option("--calibration-samples", type=click.IntRange(1), default=300, show_default=True,
              help="Training images used to calibrate int8 (its activation ranges; 32 of them also correct "
                   "each layer's bias).")
@click.option("--verify-images", type=click.IntRange(1), default=500, show_default=True,
              help="Validation images each artifact is checked on.")
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True,
              help="Classes returned by the SavedModel's classify_images signature.")
@click.option("--max-accuracy-drop", type=float, help="Fail (and write nothing) if an artifact loses more accuracy "
              "than this against the Keras model, e.g. 0.01.")
@click.option("--fallback/--no-fallback", default=True, show_default=True,
              help="A float16, dynamic or int8 file below its agreement target keeps its most damaging operations in "
                   "float (minutes on a large model); --no-fallback keeps the converter's file, its agreement "
                   "reported.")
@click.option("--meta", "metadata", multiple=True, metavar="KEY=VALUE",
              help="A field of the TFLite metadata (name, description, version, author, license); repeatable.")
@click.option("--force", is_flag=True, help="Replace existing artifacts.")
@click.option("--data", help="Folder of class subfolders to verify on (and calibrate int8 with), instead of the "
              "run's own photos (for a run whose photos moved away).")
@click.option("--output", "root", default=DEFAULT_ROOT, show_default=True, help="Runs folder, for the latest run.")
@friendly_errors
def export(run, root, export_format, quantize, **options):
    """Export RUN (default: the latest) as a SavedModel, TFLite or ONNX file, verified on its validation images
    (those still there; --data DIR for others; generated images, for the agreement alone, when none is left)."""
    use_backend("tensorflow")  # exports need TF; a JAX-trained model.keras loads under TF as it is
    pairs = [item.partition("=") for item in options.pop("metadata")]
    bad = [key for key, sep, _ in pairs if not sep or not key]
    if bad:
        raise TflError(f"--meta takes KEY=VALUE (like --meta author='Jane Doe'), got '{bad[0]}'.")
    tfl.open_run(run, root).export(export_format, quantize, echo=echo,
                                   metadata={key.strip(): value for key, _, value in pairs}, **options)


@main.command()
@click.argument("artifact")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--top-k", type=click.IntRange(1), default=3, show_default=True)
@click.option("--format", "output_format", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
@friendly_errors
def predict(artifact, inputs, top_k, output_format):
    """Classify image files or folders INPUTS with ARTIFACT (.keras, run dir, SavedModel dir, .tflite or .onnx)."""
    use_backend("tensorflow")
    rows = tfl.load(artifact).predict(list(inputs), top_k)
    echo(format_predictions(rows, output_format))
    failed = sum("error" in row for row in rows)
    if failed == len(rows):
        raise TflError(f"None of the {len(rows)} input file(s) could be read as an image (see the errors above). "
                       "Pass JPEG, PNG, GIF, BMP, WebP or TIFF files.")
    if failed:
        echo(f"{failed} of {len(rows)} file(s) could not be read; the others were predicted.", err=True)


@main.command()
@click.argument("run", required=False)
@click.option("--output", "root", default=DEFAULT_ROOT, show_default=True, help="Runs folder, for the latest run.")
@friendly_errors
def report(run, root):
    """Build a run's report.html again (data health, plan, curves, mistakes, exports), one self-contained file."""
    echo(f"Wrote {tfl.open_run(run, root).report()}")


@main.command("data-dispatcher")
@click.option("--port", type=click.IntRange(1, 65535), default=5050, show_default=True, help="Port to listen on.")
@friendly_errors
def data_dispatcher(port):
    """Start a tf.data service dispatcher: training runs given --data-service grpc://THIS_HOST:PORT send their input
    pipeline to the workers registered with it (tfl data-worker). Runs until Ctrl-C."""
    from tfl.data_service import serve_forever, start_dispatcher

    server = start_dispatcher(port)
    serve_forever(server, f"tf.data service dispatcher at grpc://{os.uname().nodename}:{port}: start workers with "
                          f"`tfl data-worker --dispatcher grpc://{os.uname().nodename}:{port}`, then train with "
                          f"--data-service grpc://{os.uname().nodename}:{port}. Ctrl-C stops it.", echo)


@main.command("data-worker")
@click.option("--dispatcher", required=True, help="The dispatcher's address, grpc://HOST:PORT.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="Port (0: a free one).")
@click.option("--host", help="This machine's name as the trainers reach it (default: localhost when the dispatcher "
              "is local, else this machine's name).")
@friendly_errors
def data_worker(dispatcher, port, host):
    """Start a tf.data service worker: it decodes and augments training photos for the trainers of DISPATCHER's
    runs. The photos must be at the same paths here as on the trainer. Runs until Ctrl-C."""
    from tfl.data_service import check_dispatcher, serve_forever, start_worker

    check_dispatcher(dispatcher)
    serve_forever(start_worker(dispatcher, port, host), f"tf.data service worker of {dispatcher}. Ctrl-C stops it.",
                  echo)


@main.command()
def archs():
    """List the available backbones."""
    for spec in ARCHS.values():
        echo(f"{spec.name:<12} {spec.image_size:>4} px (min {spec.min_image_size:>3})  "
                   f"{spec.num_blocks:>2} blocks  {spec.description}")


def run() -> None:
    """The `tfl` command: a Ctrl-C that lands outside a command's own handling (after it printed its results, say)
    ends quietly with exit 130, never as a traceback."""
    try:
        main()
    except KeyboardInterrupt:
        sys.stderr.write("\nInterrupted.\n")
        sys.exit(130)


if __name__ == "__main__":
    run()
