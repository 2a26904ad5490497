"""Benchmark: does the int8 file keep the model's answers better with other calibration photos (issue 22)?

Trains tfl's defaults on a shared set (or takes --run), then converts the model to full int8 with no fallback,
calibrated on several choices of training photos, and measures each file's top-1 agreement with the Keras model on
every validation photo (tfl's pixels) and, through MediaPipe Tasks' ImageClassifier, with the float32 file.

    python benchmarks/int8_calibration.py [--dataset flowers] [--run saved_models/RUN]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, WEIGHTS, machine, write_results  # sets up TF logging

import numpy as np

import tfl
from tfl.pipeline import load_image_for_predict
from tfl.export import model_info, representative_images
from tfl.precision import float32_copy
from tfl.quantize import convert, probabilities
from tfl.runs import RunFolder
from tfl.tflite_metadata import with_metadata

from apps import mediapipe_tops

DATASETS = REPO.parent / "shared" / "datasets"


def balanced(paths: list[str], labels: list[int], per_class: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted(set(labels)):
        own = [p for p, y in zip(paths, labels) if y == label]
        chosen += [own[i] for i in rng.permutation(len(own))[:per_class]]
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="flowers")
    parser.add_argument("--run")
    parser.add_argument("--out", default=str(RESULTS / "int8_calibration.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = tfl.open_run(args.run) if args.run else tfl.finetune(
            DATASETS / args.dataset, alpha=0.35, weights=WEIGHTS, output=tmp, name=args.dataset, verbose=0)
        folder = RunFolder(run.path)
        model = float32_copy(tfl.load(run.path).model)
        size = int(model.input_shape[1])
        val, train = run.splits["val"], run.splits["train"]
        pixels = np.stack([load_image_for_predict(p, size) for p in val.paths])
        keras_top = model.predict(pixels, batch_size=64, verbose=0).argmax(axis=1)
        info = model_info(folder, None)
        float_path = Path(tmp) / "float32.tflite"
        float_path.write_bytes(with_metadata(convert(model, "none", None), run.class_names, info))
        float_tops = mediapipe_tops(float_path, val.paths)
        choices = {
            "300 random (tfl's default)": (train.paths, 300),
            "100 random": (train.paths, 100),
            "1000 random": (train.paths, 1000),
            "every training photo": (train.paths, len(train)),
            "60 per class": (balanced(train.paths, train.labels, 60), 10_000),
            "300 random, another draw": (train.paths[::-1], 300),
        }
        rows = {}
        for label, (paths, samples) in choices.items():
            start = time.time()
            content = convert(model, "int8", representative_images(paths, size, samples))
            seconds = time.time() - start
            tops = probabilities(content, pixels).argmax(axis=1)
            path = Path(tmp) / "int8.tflite"
            path.write_bytes(with_metadata(content, run.class_names, info))
            mediapipe = mediapipe_tops(path, val.paths)
            rows[label] = {"agreement_tfl_pixels": round(float((tops == keras_top).mean()), 4),
                           "accuracy_drop": round(float((keras_top == np.asarray(val.labels)).mean()
                                                        - (tops == np.asarray(val.labels)).mean()), 4),
                           "mediapipe_agreement_with_float32": round(float((mediapipe == float_tops).mean()), 4),
                           "convert_seconds": round(seconds, 1)}
            print(f"{label:<28} {rows[label]}", flush=True)
        write_results(args.out, {"machine": machine(), "dataset": args.dataset, "val_images": len(val),
                                 "keras_accuracy": run.metrics["accuracy"], "choices": rows})


if __name__ == "__main__":
    main()
