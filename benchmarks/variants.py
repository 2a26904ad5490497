"""Benchmark: one-run variants of the auto plan on one shared dataset, the experiments behind the README's "tried" notes.

A variant is '+'-joined tokens that change the auto plan's fine-tuning stage or the run's settings ("auto" alone is
the plan as it is):

    e<N> epochs · blocks<N> unfrozen blocks · warm<N> warmup epochs · lr<x> peak rate · gradual<B>x<E> first the top B
    blocks for E of the epochs, then the rest · px<N> image size · bs<N> batch size · nols no label smoothing ·
    zoom<f> zoom in up to f (the light preset's affine transform, 0.15 by default) · aug<preset> · drop<p> dropout ·
    views<N> cached feature views for the head · lp0 / lp1 the blur off / on (not measured per run)

    python benchmarks/variants.py --data flowers auto blocks14+e20+warm4+zoom0.35 auto+gradual7x3

Each run appends one JSON line to benchmarks/results/variants.jsonl: the best epoch's validation accuracy, the wall
time, every epoch's time, and the curve (stage, training accuracy, validation accuracy). One run per variant:
identical runs on flowers vary by about 1.6 points, so a single difference smaller than that is noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, WEIGHTS, machine  # sets up TF logging

import keras

import tfl
from tfl.archs import get_arch
from tfl.augment import apply_in_turn, light_layers
from tfl.config import Stage, TrainConfig
from tfl.data import load_data
from tfl.plan import DataStats, auto_plan

DATASETS = REPO.parent / "shared" / "datasets"
SETTINGS = {"px": ("image_size", int), "bs": ("batch_size", int), "drop": ("dropout", float),
            "views": ("cache_views", int), "aug": ("augment", str)}
STAGE_FIELDS = {"e": ("epochs", int), "blocks": ("unfreeze_blocks", int), "warm": ("warmup_epochs", int),
                "lr": ("learning_rate", float)}


def auto_stages(data: Path) -> list[Stage]:
    config = TrainConfig(arch="mobilenetv2", alpha=0.35, weights=str(WEIGHTS))
    image_data = load_data(str(data), config.val_split, config.seed)
    stats = DataStats(len(image_data.train), len(image_data.class_names))
    return auto_plan(config, get_arch("mobilenetv2"), stats)[0].stages


def split_token(token: str, prefixes) -> tuple[str, str] | None:
    for prefix in sorted(prefixes, key=len, reverse=True):
        if token.startswith(prefix) and token[len(prefix):][:1] in "0123456789.-" and token[len(prefix):]:
            return prefix, token[len(prefix):]
    return None


def light_preset_zooming_in(zoom_in: float):
    """The light preset (fused affine transform, then contrast) with zooms in up to `zoom_in` instead of 0.15."""
    layers = light_layers(seed=42)
    layers[0].zoom = (-zoom_in, layers[0].zoom[1])
    return apply_in_turn(layers)


def parse_variant(variant: str, stages: list[Stage]) -> tuple[list[Stage], dict]:
    """(stages, finetune keyword arguments) for a variant of the auto plan's `stages` (head, then top_blocks)."""
    head, tune = stages
    settings: dict = {}
    gradual = None
    for token in variant.split("+"):
        try:
            tune, gradual = apply_token(token, tune, settings, gradual)
        except ValueError:
            raise SystemExit(f"bad value in token '{token}' of variant '{variant}'") from None
    if gradual is None:
        return [head, tune], settings
    blocks, epochs = gradual
    first = dataclasses.replace(tune, name="top_few", epochs=epochs, unfreeze_blocks=blocks, warmup_epochs=1)
    rest = dataclasses.replace(tune, name="top_more", epochs=tune.epochs - epochs,
                               warmup_epochs=max(1, tune.warmup_epochs - 1))
    return [head, first, rest], settings


def apply_token(token: str, tune: Stage, settings: dict, gradual):
    """(fine-tuning stage, gradual) after one token; `settings` are updated in place."""
    if token == "nols":
        settings["label_smoothing"] = 0.0
    elif token in ("lp0", "lp1"):
        settings["low_pass"] = token == "lp1"
    elif token.startswith("zoom"):
        settings["augmenter"] = light_preset_zooming_in(float(token[4:]))
    elif token.startswith("gradual"):
        blocks, epochs = token[7:].split("x")
        gradual = int(blocks), int(epochs)
    elif token.startswith("aug"):
        settings["augment"] = token[3:]
    elif found := split_token(token, STAGE_FIELDS):
        name, kind = STAGE_FIELDS[found[0]]
        tune = dataclasses.replace(tune, **{name: kind(found[1])})
    elif found := split_token(token, SETTINGS):
        name, kind = SETTINGS[found[0]]
        settings[name] = kind(found[1])
    elif token != "auto":
        raise SystemExit(f"unknown token '{token}'")
    return tune, gradual


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self.started, 1))


def run_variant(data: Path, stages: list[Stage], settings: dict, variant: str, output: Path) -> dict:
    timer = EpochTimer()
    start = time.perf_counter()
    run = tfl.finetune(str(data), arch="mobilenetv2", alpha=0.35, weights=str(WEIGHTS), stages=stages,
                       output=str(output), name="variant", overwrite=True, verbose=0, echo=lambda line: None,
                       callbacks=[timer], **settings)
    rows = run.history
    return {"data": data.name, "variant": variant, "val_best": run.metrics["accuracy"],
            "best_epoch": run.metrics["best_epoch"], "test": run.metrics.get("test", {}).get("accuracy"),
            "wall_seconds": round(time.perf_counter() - start, 1), "epoch_seconds": timer.seconds,
            "stages": [dataclasses.asdict(stage) for stage in stages],
            "curve": [(row["stage"], round(float(row["accuracy"]), 3), round(float(row["val_accuracy"]), 3))
                      for row in rows], "machine": machine()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--data", default="flowers", help="a folder name in ../shared/datasets")
    parser.add_argument("--out", default=str(RESULTS / "variants.jsonl"))
    args = parser.parse_args()
    data = DATASETS / args.data
    if not data.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"needs {data} and {WEIGHTS} (the shared folder beside the repo)")
    plan = auto_stages(data)
    parsed = {variant: parse_variant(variant, plan) for variant in args.variants}  # a typo fails before training
    with tempfile.TemporaryDirectory() as output:
        for variant, (stages, settings) in parsed.items():
            result = run_variant(data, stages, settings, variant, Path(output))
            print(f"{args.data} {variant}: best validation {result['val_best']:.4f} in {result['wall_seconds']:.0f} s",
                  flush=True)
            with open(args.out, "a") as out:
                out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
