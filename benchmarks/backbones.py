"""Benchmark: every backbone of the table at its own size, as a 5-class classifier: parameters, float32 TFLite size,
batch-1 latency with LiteRT, and training throughput of the auto plan's fine-tuning stage (the blocks above the
stem). Built with --weights none: ImageNet weights other than MobileNetV2-0.35's cannot be downloaded here, so
this measures cost, not accuracy.

    python benchmarks/backbones.py [--out benchmarks/results/backbones.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import RESULTS, machine, write_results  # sets up TF logging

import numpy as np

from tfl.archs import ARCHS
from tfl.export import ArtifactJob, latency_ms, write_tflite
from tfl.model import build_model, count_params, set_trainable_blocks
from tfl.predict import TFLitePredictor
from tfl.train import compile_for_stage
from tfl.config import Stage

CLASSES, BATCH, STEPS = 5, 16, 6


def training_images_per_second(model, spec, size: int) -> float:
    set_trainable_blocks(model, spec, spec.tunable_blocks)
    compile_for_stage(model, Stage("top_blocks", 1, 1e-4, spec.tunable_blocks), STEPS, 0.1)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (BATCH, size, size, 3)).astype("float32")
    labels = np.eye(CLASSES, dtype="float32")[np.arange(BATCH) % CLASSES]
    model.train_on_batch(pixels, labels)
    start = time.perf_counter()
    for _ in range(STEPS):
        model.train_on_batch(pixels, labels)
    return BATCH * STEPS / (time.perf_counter() - start)


def measure(name: str, folder: Path) -> dict:
    spec = ARCHS[name]
    size = spec.image_size
    model = build_model(spec, CLASSES, size, weights="none")
    path = folder / f"{name}.tflite"
    write_tflite(model, path, ArtifactJob([f"c{i}" for i in range(CLASSES)]))
    predictor = TFLitePredictor(path)
    image = np.random.default_rng(1).uniform(0, 255, (1, size, size, 3)).astype("float32")
    return {"arch": name, "px": size, "params": count_params(model.weights),
            "tflite_mb": round(path.stat().st_size / 1e6, 2), "tflite_ms_batch1": latency_ms(predictor, image, 50),
            "train_img_per_s": round(training_images_per_second(model, spec, size), 1),
            "blocks": spec.num_blocks, "stem_blocks": spec.stem_blocks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "backbones.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, Path(tmp)) for name in ARCHS]
    print(f"\n{machine()}")
    print(f"{'arch':<18} {'px':>4} {'params':>11} {'TFLite MB':>10} {'ms/img':>7} {'train img/s':>12}")
    for row in rows:
        print(f"{row['arch']:<18} {row['px']:>4} {row['params']:>11,} {row['tflite_mb']:>10.2f} "
              f"{row['tflite_ms_batch1']:>7.2f} {row['train_img_per_s']:>12.1f}")
    write_results(args.out, {"machine": machine(), "results": rows})


if __name__ == "__main__":
    main()
