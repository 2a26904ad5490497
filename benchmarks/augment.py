"""Benchmark: tfl's fused light augmentation vs the same transforms as a chain of Keras 3 layers.

Both in this one script run, on ../shared/datasets/flowers with the shared MobileNetV2-0.35 backbone at 128 px:
1. augmentation alone, images/s on decoded, cached training batches;
2. the default mobilenetv2 plan end to end with each, wall time and validation accuracy.

    python benchmarks/augment.py [--out benchmarks/results/augment.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import FLOWERS, RESULTS, WEIGHTS, machine, require_shared_data, write_results  # sets up TF logging

import keras
import tensorflow as tf

import tfl
from tfl.augment import build_augmenter
from tfl.data import load_image_folder
from tfl.pipeline import make_pipeline

SIZE = 128


def keras_layer_chain(seed: int = 42):
    """The light preset's transforms as separate Keras layers (tfl's light preset before the fused transform)."""
    layers = [keras.layers.RandomFlip("horizontal", seed=seed),
              keras.layers.RandomRotation(0.05, fill_mode="reflect", seed=seed + 1),
              keras.layers.RandomZoom((-0.15, 0.1), fill_mode="reflect", seed=seed + 2),
              keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 3),
              keras.layers.RandomContrast(0.15, value_range=(0, 255), seed=seed + 4)]

    def augment(images):
        for layer in layers:
            images = layer(images, training=True)
        return images
    return augment


AUGMENTERS = {"tfl light (one fused affine)": lambda seed=42: build_augmenter("light", seed),
              "Keras layer chain": keras_layer_chain}


def augment_throughput() -> dict:
    data = load_image_folder(FLOWERS, val_split=0.2, seed=42)
    batches = make_pipeline(data.train, 5, SIZE, 32, training=True).cache()
    for _ in batches:  # decode and cache once, so only augmentation is timed
        pass
    rates = {}
    for name, make in AUGMENTERS.items():
        augmented = batches.map(lambda x, y, f=make(): (f(x), y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
        for _ in augmented:  # warm-up epoch: tracing and AUTOTUNE
            pass
        start = time.perf_counter()
        for _ in augmented:
            pass
        rates[name] = round(len(data.train) / (time.perf_counter() - start), 1)
    return rates


def default_plan_with(make_augmenter) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = tfl.finetune(FLOWERS, alpha=0.35, weights=WEIGHTS, image_size=SIZE, augmenter=make_augmenter(42),
                           output=tmp, name="bench", verbose=0, echo=lambda s: None)
        return {"val_accuracy": run.metrics["accuracy"], "wall_seconds": run.metrics["wall_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "augment.json"))
    args = parser.parse_args()
    require_shared_data()
    rates = augment_throughput()
    plans = {name: default_plan_with(make) for name, make in AUGMENTERS.items()}
    print(f"\nflowers, MobileNetV2-0.35 at {SIZE} px, default mobilenetv2 plan, {machine()}")
    print(f"{'augmentation':<30} {'img/s alone':>12} {'plan wall time':>15} {'val acc':>8}")
    for name in AUGMENTERS:
        print(f"{name:<30} {rates[name]:>12,.0f} {plans[name]['wall_seconds']:>14.0f}s {plans[name]['val_accuracy']:>8.4f}")
    write_results(args.out, {"machine": machine(), "image_size": SIZE, "img_per_s": rates, "default_plan": plans})


if __name__ == "__main__":
    main()
