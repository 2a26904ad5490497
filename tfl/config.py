"""Training configuration: defaults, configs/<arch>.yaml, a user's --config file and CLI overrides, validated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from tfl.archs import ARCHS, get_arch
from tfl.augment import PRESETS as AUGMENT_PRESETS
from tfl.backend import BACKENDS
from tfl.errors import TflError, unknown, warn

CLASS_WEIGHT_MODES = ("auto", "none")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")
PLANS = ("auto", "fixed")
DISTRIBUTE_MODES = ("auto", "none", "mirrored", "multiworker")
MIN_IMAGE_SIZE = 32  # the smallest any keras.applications backbone takes (each arch may ask more)
MAX_IMAGE_SIZE = 1024  # beyond this a batch of activations no longer fits the memory of ordinary machines
RUN_RECORD_KEYS = ("versions", "plan_reasons")  # written into a run's config.yaml as a record, ignored when read back


def setting(default: Any, help: str, kind: type | None = None, choices: tuple | None = None, low: float | None = None,
            high: float | None = None, factory: Callable | None = None, cli: bool = True) -> Any:
    """A config field with what the YAML loader, validation and the CLI need to know about it.

    `kind` is the type values are converted to (default: the default's type); `choices`, `low` and `high` are
    checked in one place, `validate`; `cli=False` keeps a field off the command line's generic options."""
    metadata = {"help": help, "kind": kind or type(default), "choices": choices, "low": low, "high": high, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Stage:
    """One stage of the fine-tuning plan: which blocks train, for how long, at what learning rate."""

    name: str = setting("stage", "Shown in the plan table, history.csv and the curves.")
    epochs: int = setting(0, "Epochs of this stage (0 skips it).", low=0)
    learning_rate: float = setting(1e-4, "Peak learning rate (cosine decay to 5% of it).", low=1e-12)
    unfreeze_blocks: int | str = setting(0, "0: head only; N: the top N backbone blocks; 'all': the whole backbone.",
                                         kind=int)
    warmup_epochs: int = setting(0, "Epochs over which the learning rate rises linearly from 0.", low=0)
    patience: int | None = setting(None, "Early stopping within the stage, in epochs (none: the config's).", kind=int,
                                   low=1)


def default_stages() -> list[Stage]:
    return [Stage("head", 5, 1e-3, 0), Stage("top_blocks", 5, 1e-4, 3), Stage("full", 0, 1e-5, "all")]


@dataclass
class TrainConfig:
    """Every training setting, its meaning and its default: the one place a setting is added.

    configs/<arch>.yaml holds only what differs for an arch, a user's --config file and the CLI options (one per
    field, derived from this table) override it, and a run's config.yaml holds all of them as used."""

    data: str | None = setting(None, "The photos: a folder with one subfolder per class (or train/ and val/), a "
                               "label file (CSV/TSV), a folder with train.csv and val.csv, or tfds:NAME.", kind=str,
                               cli=False)
    images: str | None = setting(None, "Label files: the folder their file names are relative to (default: the "
                                 "file's own folder, or the one subfolder that holds them).", kind=str)
    path_column: str | None = setting(None, "Label files: the column naming the image files (default: detected).",
                                      kind=str)
    label_column: str | None = setting(None, "Label files: the column holding the labels (default: detected; one "
                                       "0/1 column per label is read as such).", kind=str)
    exclude: str | None = setting(None, "A text file of photos to leave out, one path per line ('#' comments); "
                                  "'tfl check --exclusions FILE' writes one to edit.", kind=str)
    corrections: str | None = setting(None, "A review.csv that `tfl review` wrote: its relabels and exclusions "
                                      "applied, its labelled photos added to training; your folder is not changed.",
                                      kind=str)
    task: str = setting("auto", "single (one label per photo), multilabel (several: independent scores and a "
                        "threshold per label), or auto: multilabel when some photo has several labels.",
                        choices=("auto", "single", "multilabel"))
    label_separator: str | None = setting(None, "Label files: what separates several labels in one column "
                                          "(default: detected among , ; | and space; 'none': one label per "
                                          "value).", kind=str)
    arch: str = setting("mobilenetv2", "Backbone (`tfl archs` lists them).", choices=tuple(ARCHS))
    plan: str = setting("auto", "auto: stages chosen from the number of images and classes (tfl/plan.py: head to "
                        "convergence, then warmed-up fine-tuning); fixed: the config's stages as given.",
                        choices=PLANS)
    alpha: float = setting(1.0, "MobileNetV2 width multiplier (0.35, 0.5, 0.75, 1.0, 1.3, 1.4).", low=0.01)
    image_size: int | None = setting(None, "Square input size in pixels; auto: the arch's size, or the photos' "
                                     "median short side when smaller.", kind=int, low=MIN_IMAGE_SIZE)
    weights: str = setting("imagenet", "imagenet (downloaded once, cached), none, or the path of a no-top backbone "
                           "weights file.")
    batch_size: int = setting(32, "Images per training step.", low=1)
    augment: str = setting("light", "Augmentation preset for training images.", choices=tuple(AUGMENT_PRESETS))
    mixup: float = setting(0.0, "MixUp alpha (0: off).", low=0)
    cutmix: float = setting(0.0, "CutMix alpha (0: off).", low=0)
    dropout: float = setting(0.2, "Dropout before the classifier layer.", low=0, high=0.999)
    low_pass: bool | str = setting("auto", "A fixed 3x3 blur of the pixels before the backbone: answers that a "
                                   "decoder's, a resize's or int8's pixel noise does not move (tfl/model.py); auto: "
                                   "on unless the validation photos show it costs accuracy (tfl/low_pass.py).",
                                   kind=bool)
    label_smoothing: float = setting(0.1, "Label smoothing of the cross-entropy loss.", low=0, high=0.999)
    val_split: float = setting(0.2, "Validation fraction when the data has no val/ folder.", low=0.001, high=0.999)
    class_weight: str = setting("auto", "auto: weight the loss to balance imbalanced classes; none: never.",
                                choices=CLASS_WEIGHT_MODES)
    patience: int = setting(3, "Early-stopping patience within a stage, in epochs.", low=1)
    seed: int = setting(42, "Seed for the split, augmentation and initialisation.")
    backend: str = setting("tensorflow", "Keras backend.", choices=BACKENDS)
    precision: str = setting("auto", "Dtype policy; auto: mixed float16 on a GPU, float32 on a CPU.", choices=PRECISIONS)
    distribute: str = setting("auto", "Devices and machines: auto (every GPU of this machine when it has several, "
                              "else one device), none, mirrored (every device of this machine), multiworker (several "
                              "machines: TF_CONFIG on TensorFlow, KERAS_DISTRIBUTION_* on JAX; see the README).",
                              choices=DISTRIBUTE_MODES)
    data_service: str | None = setting(None, "grpc://HOST:PORT of a tf.data service dispatcher: its workers decode "
                                       "and augment the training photos (`tfl data-dispatcher`, `tfl data-worker`; "
                                       "tfl/data_service.py).", kind=str)
    calibrate: bool = setting(True, "After training, fit one temperature on the validation set and fold it into the "
                              "model, so that every artifact's scores are calibrated probabilities.")
    unknown: bool = setting(True, "After training, fit a score for photos of none of the classes and give every "
                            "artifact one more category, 'unknown', that wins for them (tfl/unknown.py).")
    unknown_keep: float = setting(0.95, "The share of validation photos the unknown category leaves to the classes "
                                  "(the rest of them it calls unknown): higher flags fewer photos of anything.",
                                  low=0.5, high=0.9999)
    background: str | None = setting(None, "A folder of photos of none of the classes (from where the app will be "
                                     "used): the unknown score is tuned to flag them, never trained as a class.",
                                     kind=str)
    feature_cache: bool = setting(True, "Train head-only stages on backbone features computed once.")
    cache_views: int = setting(1, "Feature vectors per training image in the cache: 1 plain, plus augmented copies.",
                               low=1)
    stages: list[Stage] = setting(None, "The fixed plan: a list of stages.", kind=list, factory=default_stages,
                                  cli=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SETTINGS = {f.name: f for f in dataclasses.fields(TrainConfig)}
STAGE_SETTINGS = {f.name: f for f in dataclasses.fields(Stage)}


def _config_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    return [here / "configs", here.parent / "configs"]  # installed wheel, then a source checkout


def arch_config_path(arch: str) -> Path | None:
    for folder in _config_dirs():
        path = folder / f"{arch}.yaml"
        if path.is_file():
            return path
    return None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TflError(f"Config file '{path}' does not exist. Pass the path of a YAML file like configs/mobilenetv2.yaml.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise TflError(f"Config file '{path}' is not valid YAML{line}: {getattr(exc, 'problem', exc)}. Fix the file and run again.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TflError(f"Config file '{path}' must hold a mapping of keys to values (like configs/mobilenetv2.yaml), not a {type(data).__name__}.")
    return data


def _coerce(name: str, value: Any, kind: type, source: str) -> Any:
    # PyYAML reads "1e-3" as a string, so numbers are converted here rather than trusted; but a fraction is no
    # whole number (batch_size 2.5 is not cut to 2) and True is no number.
    what = {int: "whole number", float: "number", bool: "true or false", str: "text"}.get(kind, kind.__name__)
    try:
        if kind is bool or isinstance(value, bool):
            if isinstance(value, bool) and kind is bool:
                return value
            raise ValueError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if kind is str and not isinstance(value, (str, Path)):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        raise TflError(f"'{name}' in {source} must be a {what}, got {value!r}.") from None


def _coerce_field(spec: dataclasses.Field, value: Any, source: str) -> Any:
    """A YAML, CLI or Python value of one setting in its field's type ('auto' and 'all' where a field takes them)."""
    if spec.name == "image_size" and value in (None, "auto"):
        return None
    if spec.name == "unfreeze_blocks" and value == "all":
        return "all"
    if spec.name == "low_pass" and not isinstance(value, bool):
        if value == "auto":
            return "auto"
        raise TflError(f"'low_pass' in {source} takes true, false or auto, got {value!r}.")
    if value is None and spec.default is None:
        return None
    if spec.name == "stages":
        return _parse_stages(value, source)
    value = _coerce(spec.name, value, spec.metadata["kind"], source)
    _check_field(spec, value, f" in {source}")
    return value


def _unknown_keys(values: dict, known: dict, where: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise TflError(f"Unknown key(s) {', '.join(unknown)} in {where}. Valid keys: {', '.join(sorted(known))}."
                       if where.startswith("stage") else
                       f"Unknown config key(s) {', '.join(unknown)} in {where}. Valid keys: {', '.join(sorted(known))}.")


def _parse_stages(value: Any, source: str) -> list[Stage]:
    if isinstance(value, list) and all(isinstance(stage, Stage) for stage in value) and value:
        return [dataclasses.replace(stage) for stage in value]
    if not isinstance(value, list) or not value:
        raise TflError(f"'stages' in {source} must be a non-empty list of stages.")
    stages = []
    for index, raw in enumerate(value):
        if not isinstance(raw, dict):
            raise TflError(f"Stage {index + 1} in {source} must be a mapping with keys name, epochs, learning_rate, "
                           "unfreeze_blocks.")
        _unknown_keys(raw, STAGE_SETTINGS, f"stage {index + 1} of {source}")
        values = {"name": f"stage{index + 1}"} | raw
        stages.append(Stage(**{k: _coerce_field(STAGE_SETTINGS[k], v, source) for k, v in values.items()}))
    return stages


def apply_overrides(config: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """Return `config` with `values` applied; unknown keys and wrong types are errors naming `source`."""
    values = {k: v for k, v in values.items() if k not in RUN_RECORD_KEYS}
    _unknown_keys(values, SETTINGS, source)
    return dataclasses.replace(config, **{k: _coerce_field(SETTINGS[k], v, source) for k, v in values.items()})


def _check_field(spec: dataclasses.Field, value: Any, where: str) -> None:
    """The bounds and choices a field declares."""
    if value is None or isinstance(value, (list, bool)) or value == "all":
        return
    meta, name = spec.metadata, spec.name.replace("_", " ")
    label = f"{name}{where}"
    if meta["choices"] and value not in meta["choices"]:
        raise unknown(name, value, meta["choices"], where)
    low, high = meta["low"], meta["high"]
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f"between {low} and {high}" if low is not None and high is not None
                  else f"at least {low}" if low is not None else f"at most {high}")
        raise TflError(f"{label[0].upper()}{label[1:]} must be {bounds}, got {value}.")


def validate(config: TrainConfig) -> TrainConfig:
    """Every check of a config, in one place: declared bounds and choices, then what depends on the arch."""
    for name, spec in SETTINGS.items():
        _check_field(spec, getattr(config, name), "")
    for index, stage in enumerate(config.stages):
        for name, spec in STAGE_SETTINGS.items():
            _check_field(spec, getattr(stage, name), f" of stage {index + 1} ({stage.name})")
    spec = get_arch(config.arch)
    if config.image_size is not None and config.image_size < spec.min_image_size:
        raise TflError(
            f"Image size {config.image_size} is too small for {spec.name}: it needs at least "
            f"{spec.min_image_size} px (its default is {spec.image_size}). Pass a larger --image-size."
        )
    if config.image_size is not None and config.image_size > MAX_IMAGE_SIZE:
        raise TflError(f"Image size {config.image_size} is too large: tfl trains at up to {MAX_IMAGE_SIZE} px "
                       f"({spec.name} was pretrained at {spec.image_size}). Pass a smaller --image-size.")
    if "alpha" not in spec.constructor_kwargs and config.alpha != 1.0:
        widths = ", ".join(name for name, arch in ARCHS.items() if "alpha" in arch.constructor_kwargs)
        warn(f"alpha {config.alpha} is ignored: {spec.name} has no width multiplier (only {widths} have one).")
        config = dataclasses.replace(config, alpha=1.0)
    for stage in config.stages:
        if isinstance(stage.unfreeze_blocks, int) and stage.unfreeze_blocks > spec.num_blocks:
            raise TflError(
                f"Stage '{stage.name}' unfreezes {stage.unfreeze_blocks} blocks, but {spec.name} has "
                f"{spec.num_blocks}. Use at most {spec.num_blocks}, or 'all'."
            )
    if config.data_service is not None:
        from tfl.data_service import parse_address

        parse_address(config.data_service)
        if config.distribute == "multiworker":
            raise TflError("--data-service feeds the trainers of one machine; with --distribute multiworker each "
                           "machine reads its own share of the photos. Use one of the two.")
    if not any(stage.epochs for stage in config.stages):
        raise TflError("Every stage has 0 epochs, so there is nothing to train. Give at least one stage some epochs.")
    return config


def load_config(arch: str | None = None, config_file: str | None = None,
                overrides: dict[str, Any] | None = None, source: str = "the command line") -> TrainConfig:
    """Defaults < configs/<arch>.yaml < `config_file` < `overrides` (CLI flags)."""
    user_values = read_yaml(config_file) if config_file else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    arch = arch or overrides.get("arch") or user_values.get("arch") or TrainConfig.arch
    get_arch(arch)  # an unknown name fails here, before any file is read for it
    config = TrainConfig(arch=arch)
    arch_file = arch_config_path(arch)
    if arch_file:
        config = apply_overrides(config, read_yaml(arch_file), str(arch_file))
    if config_file:
        if "stages" in user_values and "plan" not in user_values:
            user_values = user_values | {"plan": "fixed"}  # stages written out are meant to be used as they are
        config = apply_overrides(config, user_values, config_file)
    config = apply_overrides(config, overrides | {"arch": arch}, source)
    return validate(config)


def parse_per_stage(text: str, kind: type, flag: str) -> list:
    """Parse '5,5,0' style per-stage flag values."""
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise TflError(f"{flag} takes comma-separated numbers, one per stage (like 5,5,0), got '{text}'.") from None


def per_stage(values: Any, kind: type, name: str) -> list | None:
    """A per-stage option from Python or YAML: a sequence of numbers, or text like '5,5,0' as on the command line."""
    if values is None:
        return None
    if isinstance(values, str):
        return parse_per_stage(values, kind, name)
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, Sequence):
        raise TflError(f"{name} takes one value per stage, like {name}=(3, 10) for the head and the top blocks; got "
                       f"{values!r}.")
    return list(values)


def with_stages(config: TrainConfig, epochs: Sequence[int] | None = None,
                learning_rates: Sequence[float] | None = None, unfreeze_blocks: int | str | None = None) -> TrainConfig:
    """The config's fixed plan with epochs / learning rates per stage and stage 2's unfrozen blocks replaced:
    giving any of them switches `plan: auto` off."""
    if (epochs, learning_rates, unfreeze_blocks) == (None, None, None):
        return config
    stages = [dataclasses.replace(s) for s in config.stages]
    for what, values, attr in (("epochs", epochs, "epochs"), ("learning rates", learning_rates, "learning_rate")):
        if values is None:
            continue
        if len(values) > len(stages):
            raise TflError(f"{len(values)} {what} given, but the plan has {len(stages)} stages "
                           f"({', '.join(s.name for s in stages)}).")
        for stage, value in zip(stages, values):
            setattr(stage, attr, _coerce_field(STAGE_SETTINGS[attr], value, f"the {what} given"))
    if unfreeze_blocks is not None:
        if len(stages) < 2:
            raise TflError("unfreeze_blocks sets stage 2, but the plan has only one stage.")
        stages[1].unfreeze_blocks = _coerce_field(STAGE_SETTINGS["unfreeze_blocks"], unfreeze_blocks,
                                                  "the unfrozen blocks given")
    return validate(dataclasses.replace(config, stages=stages, plan="fixed"))


def override_stages(config: TrainConfig, epochs: str | None, learning_rates: str | None,
                    unfreeze_blocks: str | None) -> TrainConfig:
    """The CLI's --epochs 5,5,0 / --lr 1e-3,1e-4 / --unfreeze-blocks N, as `with_stages`."""
    return with_stages(config, None if epochs is None else parse_per_stage(epochs, int, "--epochs"),
                       None if learning_rates is None else parse_per_stage(learning_rates, float, "--lr"),
                       unfreeze_blocks)


def run_record(config: TrainConfig, data: str, image_size: int, precision: str, backend: str,
               versions: dict[str, Any], plan_reasons: list[str] | None) -> str:
    """A run's config.yaml: every setting as used (so `--config` reproduces the run), plus a record of versions
    and of why the plan was chosen."""
    values = config.to_dict() | {"data": data, "image_size": image_size, "precision": precision, "backend": backend,
                                 "versions": versions}
    return yaml.safe_dump(values | ({"plan_reasons": plan_reasons} if plan_reasons else {}), sort_keys=False)


# Settings added after runs were recorded without them, and the value those runs used (a run started before the
# low-pass has no blur in its model, and resumes so).
RECORDED_BEFORE = {"low_pass": False}


def from_run_record(values: dict[str, Any], source: str) -> TrainConfig:
    """The config a run was trained with, from its config.yaml."""
    return apply_overrides(TrainConfig(), RECORDED_BEFORE | values, source)
