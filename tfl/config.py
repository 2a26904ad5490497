"""Training configuration: defaults, configs/<arch>.yaml, a user's --config file and CLI overrides, validated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tfl.archs import get_arch
from tfl.errors import TflError, warn

AUGMENT_PRESETS = ("none", "light", "strong")
CLASS_WEIGHT_MODES = ("auto", "none")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")
MAX_IMAGE_SIZE = 1024  # beyond this a batch of activations no longer fits the memory of ordinary machines
RUN_RECORD_KEYS = ("versions", "plan_reasons")
PLANS = ("auto", "fixed")  # written into a run's config.yaml as a record, ignored when it is read back


@dataclass
class Stage:
    """One stage of the fine-tuning plan: which blocks train, for how long, at what learning rate."""

    name: str
    epochs: int
    learning_rate: float
    unfreeze_blocks: int | str = 0  # 0: head only; N: the top N backbone blocks; "all": the whole backbone
    warmup_epochs: int = 0  # the learning rate rises linearly from 0 over these first epochs
    patience: int | None = None  # early stopping within the stage; None: the config's patience


@dataclass
class TrainConfig:
    data: str | None = None  # the photos: a folder, or tfds:NAME (--data); a run's config.yaml holds its own
    arch: str = "mobilenetv2"
    plan: str = "auto"  # auto: stages chosen from the data (tfl/plan.py); fixed: the stages below, as given
    alpha: float = 1.0  # MobileNetV2 width multiplier
    image_size: int | None = None  # None ("auto"): the arch's size, or the photos' median size when smaller
    weights: str = "imagenet"  # "imagenet", "none" or a path to a no-top backbone weights file
    batch_size: int = 32
    augment: str = "light"
    mixup: float = 0.0  # MixUp alpha, 0 turns it off
    cutmix: float = 0.0  # CutMix alpha, 0 turns it off
    dropout: float = 0.2
    label_smoothing: float = 0.1
    val_split: float = 0.2
    class_weight: str = "auto"
    patience: int = 3  # EarlyStopping patience within a stage, in epochs
    seed: int = 42
    backend: str = "tensorflow"
    precision: str = "float32"  # float32, mixed_float16, mixed_bfloat16, or auto (measured)
    feature_cache: bool = True  # head-only stages train on backbone features computed once
    cache_views: int = 1  # feature vectors per training image: 1 plain, plus K-1 augmented copies
    stages: list[Stage] = field(
        default_factory=lambda: [
            Stage("head", 5, 1e-3, 0),
            Stage("top_blocks", 5, 1e-4, 3),
            Stage("full", 0, 1e-5, "all"),
        ]
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    # PyYAML reads "1e-3" as a string, so numbers are converted here rather than trusted.
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise TflError(f"'{name}' in {source} must be a {kind.__name__}, got {value!r}.") from None


def _parse_stage(raw: Any, index: int, source: str) -> Stage:
    if not isinstance(raw, dict):
        raise TflError(f"Stage {index + 1} in {source} must be a mapping with keys name, epochs, learning_rate, unfreeze_blocks.")
    known = {f.name for f in dataclasses.fields(Stage)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TflError(f"Unknown key(s) {', '.join(unknown)} in stage {index + 1} of {source}. Valid keys: {', '.join(sorted(known))}.")
    blocks = raw.get("unfreeze_blocks", 0)
    if blocks != "all":
        blocks = _coerce("unfreeze_blocks", blocks, int, source)
        if blocks < 0:
            raise TflError(f"'unfreeze_blocks' in stage {index + 1} of {source} must be 0 or more, or 'all'.")
    patience = raw.get("patience")
    stage = Stage(
        name=str(raw.get("name", f"stage{index + 1}")),
        epochs=_coerce("epochs", raw.get("epochs", 0), int, source),
        learning_rate=_coerce("learning_rate", raw.get("learning_rate", 1e-4), float, source),
        unfreeze_blocks=blocks,
        warmup_epochs=_coerce("warmup_epochs", raw.get("warmup_epochs", 0), int, source),
        patience=None if patience is None else _coerce("patience", patience, int, source),
    )
    if stage.epochs < 0 or stage.learning_rate <= 0 or stage.warmup_epochs < 0 or (stage.patience or 1) < 1:
        raise TflError(f"Stage {index + 1} of {source} needs epochs >= 0, a learning_rate above 0, warmup_epochs "
                       ">= 0 and a patience of 1 or more.")
    return stage


_SCALAR_TYPES = {"data": str, "plan": str, "arch": str, "alpha": float, "weights": str, "batch_size": int, "augment": str,
                 "mixup": float, "cutmix": float, "dropout": float, "label_smoothing": float,
                 "val_split": float, "class_weight": str, "patience": int, "seed": int, "backend": str,
                 "feature_cache": bool, "cache_views": int, "precision": str}


def apply_overrides(config: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """Return `config` with `values` applied; unknown keys and wrong types are errors naming `source`."""
    values = {k: v for k, v in values.items() if k not in RUN_RECORD_KEYS}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TflError(f"Unknown config key(s) {', '.join(unknown)} in {source}. Valid keys: {', '.join(sorted(known))}.")
    updates: dict[str, Any] = {}
    for key, value in values.items():
        if key == "stages":
            if not isinstance(value, list) or not value:
                raise TflError(f"'stages' in {source} must be a non-empty list of stages.")
            updates[key] = [_parse_stage(raw, i, source) for i, raw in enumerate(value)]
        elif key == "image_size":
            updates[key] = None if value in (None, "auto") else _coerce(key, value, int, source)
        else:
            updates[key] = _coerce(key, value, _SCALAR_TYPES[key], source)
    return dataclasses.replace(config, **updates)


def validate(config: TrainConfig) -> TrainConfig:
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
        warn(f"alpha {config.alpha} is ignored: only mobilenetv2 has a width multiplier, {spec.name} has none.")
        config = dataclasses.replace(config, alpha=1.0)
    if config.plan not in PLANS:
        raise TflError(f"Unknown plan '{config.plan}'. Choose one of: {', '.join(PLANS)}.")
    if config.augment not in AUGMENT_PRESETS:
        raise TflError(f"Unknown augment preset '{config.augment}'. Choose one of: {', '.join(AUGMENT_PRESETS)}.")
    if config.class_weight not in CLASS_WEIGHT_MODES:
        raise TflError(f"class_weight must be one of {', '.join(CLASS_WEIGHT_MODES)}, got '{config.class_weight}'.")
    if not 0 < config.val_split < 1:
        raise TflError(f"val_split must be between 0 and 1 (exclusive), got {config.val_split}.")
    if config.precision not in PRECISIONS:
        raise TflError(f"Unknown precision '{config.precision}'. Choose one of: {', '.join(PRECISIONS)}.")
    if config.cache_views < 1:
        raise TflError(f"cache_views must be at least 1, got {config.cache_views}.")
    if config.batch_size < 1:
        raise TflError(f"batch_size must be at least 1, got {config.batch_size}.")
    if not 0 <= config.dropout < 1:
        raise TflError(f"dropout must be in [0, 1), got {config.dropout}.")
    for stage in config.stages:
        if isinstance(stage.unfreeze_blocks, int) and stage.unfreeze_blocks > spec.num_blocks:
            raise TflError(
                f"Stage '{stage.name}' unfreezes {stage.unfreeze_blocks} blocks, but {spec.name} has "
                f"{spec.num_blocks}. Use at most {spec.num_blocks}, or 'all'."
            )
    if not any(stage.epochs for stage in config.stages):
        raise TflError("Every stage has 0 epochs, so there is nothing to train. Give at least one stage some epochs.")
    return config


def load_config(arch: str | None = None, config_file: str | None = None,
                overrides: dict[str, Any] | None = None) -> TrainConfig:
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
    config = apply_overrides(config, overrides | {"arch": arch}, "the command line")
    return validate(config)


def parse_per_stage(text: str, kind: type, flag: str) -> list:
    """Parse '5,5,0' style per-stage flag values."""
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise TflError(f"{flag} takes comma-separated numbers, one per stage (like 5,5,0), got '{text}'.") from None


def override_stages(config: TrainConfig, epochs: str | None, learning_rates: str | None,
                    unfreeze_blocks: str | None) -> TrainConfig:
    """Apply --epochs 5,5,0 / --lr 1e-3,1e-4 / --unfreeze-blocks N (stage 2) to the arch's fixed plan: giving any
    of them switches `plan: auto` off."""
    if (epochs, learning_rates, unfreeze_blocks) == (None, None, None):
        return config
    config = dataclasses.replace(config, plan="fixed")
    stages = [dataclasses.replace(s) for s in config.stages]
    for flag, text, attr, kind in (("--epochs", epochs, "epochs", int), ("--lr", learning_rates, "learning_rate", float)):
        if text is None:
            continue
        values = parse_per_stage(text, kind, flag)
        if len(values) > len(stages):
            raise TflError(f"{flag} gives {len(values)} values but the plan has {len(stages)} stages ({', '.join(s.name for s in stages)}).")
        for stage, value in zip(stages, values):
            setattr(stage, attr, value)
    if unfreeze_blocks is not None:
        if len(stages) < 2:
            raise TflError("--unfreeze-blocks sets stage 2, but the plan has only one stage.")
        stages[1].unfreeze_blocks = "all" if unfreeze_blocks == "all" else _coerce("--unfreeze-blocks", unfreeze_blocks, int, "the command line")
    for stage in stages:
        if stage.epochs < 0 or stage.learning_rate <= 0:
            raise TflError("Epochs must be 0 or more and learning rates above 0.")
    return validate(dataclasses.replace(config, stages=stages))
