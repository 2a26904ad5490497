"""The public Python API (`import tfl`): train, resume, reopen and load; the CLI is a thin layer over exactly this."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from tfl.backend import use_backend
from tfl.config import Stage, TrainConfig, apply_overrides, load_config, validate, with_stages
from tfl.runs import DEFAULT_ROOT, Run, read_run_config, resumable_run

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
    and returns the run; the other workers return None."""
    train_config = make_config(config, settings, epochs, learning_rates, unfreeze_blocks, stages)
    use_backend(train_config.backend, start_devices=train_config.distribute != "multiworker")
    from tfl.train import finetune as train

    return train(train_config, None if data is None else str(data), output=output, name=name, overwrite=overwrite,
                 echo=echo, verbose=verbose, augmenter=augmenter, callbacks=callbacks)


def make_config(config: str | Path | TrainConfig | None, settings: dict[str, Any],
                epochs: Sequence[int] | None = None, learning_rates: Sequence[float] | None = None,
                unfreeze_blocks: int | str | None = None, stages: Sequence[Stage | dict] | None = None) -> TrainConfig:
    """Defaults < configs/<arch>.yaml < `config` < `settings`, then the stage options."""
    if isinstance(config, TrainConfig):
        given = {k: v for k, v in settings.items() if v is not None}
        result = validate(apply_overrides(config, given, "the options given"))
    else:
        result = load_config(settings.pop("arch", None), None if config is None else str(config), settings)
    if stages is not None:
        result = validate(apply_overrides(result, {"stages": list(stages), "plan": "fixed"}, "the stages given"))
    return with_stages(result, epochs, learning_rates, unfreeze_blocks)


def resume(name: str | None = None, *, output: str | Path = DEFAULT_ROOT, echo: Callable[[str], None] = print,
           verbose: int | str = "auto") -> Run:
    """Continue the interrupted run `name` (default: the newest under `output`) with its own settings."""
    final, partial = resumable_run(output, name)
    use_backend(read_run_config(partial).get("backend", "tensorflow"))
    from tfl.train import resume as resume_training

    return resume_training(output, final.name, echo=echo, verbose=verbose)


def open_run(run: str | Path | None = None, root: str | Path = DEFAULT_ROOT) -> Run:
    """A finished run folder (default: the newest under `root`), to evaluate, export or predict with."""
    return Run.open(run, root)


def load(artifact: str | Path) -> Predictor:
    """A predictor for a .keras or .tflite file, a run folder or a SavedModel folder:
    `tfl.load(path).predict(["a.jpg", "photos/"], top_k=3)`."""
    from tfl.predict import load_predictor

    return load_predictor(artifact)
