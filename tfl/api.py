"""The public Python API (`import tfl`): train, resume, reopen and load; the CLI is a thin layer over exactly this."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Sequence

from tfl.backend import ensure_backend, use_backend
from tfl.config import Stage, TrainConfig, apply_overrides, load_config, per_stage, validate, with_stages
from tfl.errors import TflError
from tfl.runs import DEFAULT_ROOT, RunFolder, read_run_config, resumable_run

if TYPE_CHECKING:
    from tfl.predict import Predictor


def finetune(data: str | Path | None = None, *, config: str | Path | TrainConfig | None = None,
             epochs: Sequence[int] | None = None, learning_rates: Sequence[float] | None = None,
             unfreeze_blocks: int | str | None = None, stages: Sequence[Stage | dict] | None = None,
             augmenter: Callable | None = None, callbacks: Sequence[Any] = (), output: str | Path = DEFAULT_ROOT,
             name: str | None = None, overwrite: bool = False, echo: Callable[[str], None] = print,
             verbose: int | str = "auto", **settings: Any) -> Run | None:
    """Fine-tune a backbone on the photos in `data` and return the finished run.

    `settings` are fields of TrainConfig (arch, alpha, weights, image_size, batch_size, augment, ...; see its
    table). `config` is a YAML file or a TrainConfig they override. `epochs` / `learning_rates` per stage,
    `unfreeze_blocks` (stage 2) or whole `stages` fix the plan instead of choosing it from the data. `augmenter`
    replaces the augmentation preset (a function of a float32 pixel batch, 0..255); `callbacks` are Keras callbacks
    added to every stage, for progress or logging. With `distribute="multiworker"` only the chief (worker 0) writes
    and returns the run; the other workers return None. (Thirteen parameters: the public API, one keyword per option
    of `tfl finetune`.)"""
    check_arguments("tfl.finetune", data=(data, (str, Path, type(None)), "the path of a folder or a label file"),
                    output=(output, (str, Path), "a folder's path"), name=(name, (str, type(None)), "a run name"),
                    overwrite=(overwrite, bool, "True or False"), echo=(echo, Callable, "a function of one string"),
                    augmenter=(augmenter, (Callable, type(None)), "a function of a pixel batch"),
                    callbacks=(callbacks, (list, tuple), "a list of Keras callbacks"))
    train_config = make_config(config, settings, epochs, learning_rates, unfreeze_blocks, stages)
    use_backend(train_config.backend, start_devices=train_config.distribute != "multiworker")
    from tfl.train import Caller, finetune as train

    folder = train(train_config, None if data is None else str(data), output=output, name=name, overwrite=overwrite,
                   caller=Caller(echo, verbose, augmenter, callbacks))
    return None if folder is None else Run(folder.path)


class Run(RunFolder):
    """A finished run folder, and what can be done with it: evaluate, export, predict. (Its files and their readers
    are RunFolder's, tfl/runs.py.)"""

    def evaluate(self, data: str | Path | None = None, unknown_data: str | Path | None = None) -> dict[str, Any]:
        """Metrics on `data` (a folder of class subfolders), or on the run's validation files; `unknown_data`, a
        folder of photos of none of the classes, measures the unknown category on them too."""
        from tfl.evaluate import evaluate_run

        return evaluate_run(self.path, None if data is None else str(data),
                            unknown_data=None if unknown_data is None else str(unknown_data))[0]

    def export(self, format: str = "tflite", quantize: str = "none", **options) -> Path:
        """Write and verify an artifact (options: those of tfl.export.export_run, e.g. data=, force=,
        metadata={"author": ...}); its path, the last one when format is 'all'."""
        from tfl.export import export_run

        rows = export_run(self.path, format, quantize, **options)
        return self.path / rows[-1]["file"]

    def report(self) -> Path:
        """Build report.html again from the run's files (after an export, say); its path."""
        from tfl.html_report import build_report

        return build_report(self.path)

    def review(self, unlabelled: str | Path | None = None, port: int = 0, open_browser: bool = True,
               echo: Callable[[str], None] = print) -> None:
        """Serve the review of this run's doubted labels, copies and mistakes (and `unlabelled` photos, to label)
        on http://127.0.0.1:PORT/ until Ctrl-C; each decision goes to review.csv (tfl/review_app.py)."""
        ensure_backend()
        from tfl.review import Review
        from tfl.review_app import flask_module, serve

        flask_module()  # the extra is there, before the queue is built
        serve(Review(self, unlabelled), port, open_browser, echo)

    def predictor(self) -> Predictor:
        return load(self.model_file)

    def predict(self, inputs, top_k: int = 3) -> list[dict]:
        return self.predictor().predict(inputs, top_k)


API_SOURCE = "the keyword arguments of tfl.finetune"


def check_arguments(function: str, **arguments: tuple[Any, type | tuple, str]) -> None:
    """A TflError naming the keyword and what it takes, for a value of the wrong type (as the CLI's parser does)."""
    for keyword, (value, kinds, what) in arguments.items():
        if not isinstance(value, kinds):
            raise TflError(f"{keyword}= of {function} takes {what}, got {type(value).__name__} {value!r:.80}.")


def make_config(config: str | Path | TrainConfig | None, settings: dict[str, Any],
                epochs: Sequence[int] | None = None, learning_rates: Sequence[float] | None = None,
                unfreeze_blocks: int | str | None = None, stages: Sequence[Stage | dict] | None = None,
                source: str = API_SOURCE) -> TrainConfig:
    """Defaults < configs/<arch>.yaml < `config` < `settings` (from `source`), then the stage options."""
    if isinstance(config, TrainConfig):
        given = {k: v for k, v in settings.items() if v is not None}
        result = validate(apply_overrides(config, given, source))
    elif config is None or isinstance(config, (str, Path)):
        arch = settings.pop("arch", None)
        if arch is not None and not isinstance(arch, str):
            raise TflError(f"'arch' in {source} must be the name of a backbone (`tfl archs` lists them), got {arch!r}.")
        result = load_config(arch, None if config is None else str(config), settings, source)
    else:
        raise TflError(f"config must be a YAML file's path or a tfl.TrainConfig, got {type(config).__name__}.")
    if stages is not None:
        if isinstance(stages, (str, bytes, dict)) or not isinstance(stages, Sequence):
            raise TflError(f"stages must be a list of tfl.Stage (or of mappings), got {stages!r}.")
        result = validate(apply_overrides(result, {"stages": list(stages), "plan": "fixed"}, "the stages given"))
    return with_stages(result, per_stage(epochs, int, "epochs"), per_stage(learning_rates, float, "learning_rates"),
                       unfreeze_blocks)


def resume(name: str | None = None, *, output: str | Path = DEFAULT_ROOT, echo: Callable[[str], None] = print,
           verbose: int | str = "auto") -> Run:
    """Continue the interrupted run `name` (default: the newest under `output`) with its own settings."""
    check_arguments("tfl.resume", name=(name, (str, type(None)), "a run name"),
                    output=(output, (str, Path), "a folder's path"))
    final, partial = resumable_run(output, name)
    use_backend(read_run_config(partial).get("backend", "tensorflow"))
    from tfl.train import Caller, resume as resume_training

    return Run(resume_training(output, final.name, Caller(echo, verbose)).path)


def check(data: str | Path, *, probe: bool = True, output: str | Path = DEFAULT_ROOT,
          echo: Callable[[str], None] = print, report_file: str | Path | None = None,
          exclusions_file: str | Path | None = None, **settings: Any) -> dict[str, Any]:
    """The data checks of `tfl finetune` on `data`, alone: duplicates, conflicting labels, leaks, unusable photos,
    imbalance, and (with `probe`) likely label errors by a quick probe of the backbone's features (`settings`: arch,
    alpha, weights, image_size... as for tfl.finetune). Returns the report (also written to `report_file` as JSON,
    when given) and, with `exclusions_file`, a list of the doubted photos to edit for `exclude=`; nothing else is
    written but the scan cache."""
    check_arguments("tfl.check", data=(data, (str, Path), "the path of a folder or a label file"),
                    probe=(probe, bool, "True or False"))
    config = make_config(None, settings)
    from tfl.fileio import atomic_write_text, file_to_write, folder_to_write

    output = folder_to_write(output, "--output")  # each checked before minutes of work
    report_file = None if report_file is None else file_to_write(report_file, "--json")
    exclusions_file = None if exclusions_file is None else file_to_write(exclusions_file, "--exclusions")
    if str(data).startswith("tfds:"):
        raise TflError(f"tfl check reads photo files (their bytes, hashes and pixels); a tensorflow-datasets set such "
                       f"as '{data}' has none. Check a folder of photos or a label file.")
    if probe:  # the checks alone read files: no Keras, no TensorFlow
        use_backend(config.backend)
    from tfl.probe import check_data

    data = str(data) if str(data).startswith("tfds:") else str(Path(data).expanduser().resolve())  # as finetune's
    report = check_data(config, data, output / ".scan_cache", probe, echo)
    if report_file is not None:
        import json

        atomic_write_text(report_file, json.dumps(report, indent=2) + "\n")
        echo(f"Wrote {report_file}")
    if exclusions_file is not None:
        from tfl.probe import exclusions_text

        atomic_write_text(exclusions_file, exclusions_text(report))
        echo(f"Wrote {exclusions_file}: uncomment the photos to leave out, then tfl finetune --exclude {exclusions_file}")
    return report


def open_run(run: str | Path | None = None, root: str | Path = DEFAULT_ROOT) -> Run:
    """A finished run folder (default: the newest under `root`), to evaluate, export or predict with."""
    check_arguments("tfl.open_run", run=(run, (str, Path, type(None)), "a run folder's path"),
                    root=(root, (str, Path), "a folder's path"))
    return Run.open(run, root)


def load(artifact: str | Path) -> Predictor:
    """A predictor for a .keras or .tflite file, a run folder or a SavedModel folder:
    `tfl.load(path).predict(["a.jpg", "photos/"], top_k=3)`."""
    ensure_backend()
    from tfl.predict import load_predictor

    return load_predictor(artifact)
