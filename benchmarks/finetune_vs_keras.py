"""Benchmark: tfl's default mobilenetv2 plan vs the TensorFlow transfer-learning tutorial's two-stage recipe.

Both use the shared ImageNet MobileNetV2-0.35 backbone on ../shared/datasets/flowers at the same image size,
with an 80/20 split, in one script run on the same machine. Prints a table and writes a JSON file.

    python benchmarks/finetune_vs_keras.py [--image-size 128] [--out benchmarks/results/finetune_vs_keras.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import FLOWERS, RESULTS, WEIGHTS, keras_guide_model, machine, require_shared_data, write_results  # sets up TF logging

import keras
import tensorflow as tf

import tfl



def naive_keras_two_stage(image_size: int, seed: int = 42) -> dict:
    """The tutorial recipe: frozen base 10 epochs (RMSprop 1e-4), then layers from 100 on, 10 epochs at 1e-5."""
    start = time.time()
    keras.utils.set_random_seed(seed)
    train, val = keras.utils.image_dataset_from_directory(
        FLOWERS, validation_split=0.2, subset="both", seed=seed, image_size=(image_size, image_size), batch_size=32)
    train, val = train.prefetch(tf.data.AUTOTUNE), val.prefetch(tf.data.AUTOTUNE)
    model, base = keras_guide_model(image_size, 5, rotation=0.2)  # the tutorial rotates by up to 0.2
    model.compile(optimizer=keras.optimizers.RMSprop(1e-4), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    head = model.fit(train, validation_data=val, epochs=10, verbose=2)
    base.trainable = True
    for layer in base.layers[:100]:
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.RMSprop(1e-5), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    tuned = model.fit(train, validation_data=val, epochs=20, initial_epoch=10, verbose=2)
    return {"val_accuracy_final": round(tuned.history["val_accuracy"][-1], 4),
            "val_accuracy_best": round(max(head.history["val_accuracy"] + tuned.history["val_accuracy"]), 4),
            "epochs": 20, "wall_seconds": round(time.time() - start, 1)}


def tfl_default(image_size: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = tfl.finetune(FLOWERS, alpha=0.35, weights=WEIGHTS, image_size=image_size, output=tmp, name="bench",
                           verbose=2)
        history = run.history_file.read_text().strip().splitlines()
        return {"val_accuracy_final": run.metrics["accuracy"], "val_accuracy_best": run.metrics["accuracy"],
                "epochs": len(history) - 1, "wall_seconds": run.metrics["wall_seconds"],
                "plan": [f"{s['name']}:{s['epochs']}@{s['learning_rate']}/{s['unfreeze_blocks']}"
                         for s in run.config["stages"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128, help="the flowers photos are 128 px")
    parser.add_argument("--out", default=str(RESULTS / "finetune_vs_keras.json"))
    args = parser.parse_args()
    require_shared_data()
    results = {"tfl default plan": tfl_default(args.image_size),
               "Keras tutorial two-stage": naive_keras_two_stage(args.image_size)}
    print(f"\nflowers (4,317 photos, 5 classes), MobileNetV2-0.35 at {args.image_size} px, {machine()}")
    print(f"{'recipe':<28} {'epochs':>6} {'val acc (kept model)':>21} {'wall time':>10}")
    for name, row in results.items():
        print(f"{name:<28} {row['epochs']:>6} {row['val_accuracy_final']:>21.4f} {row['wall_seconds']:>9.0f}s")
    write_results(args.out, {"machine": machine(), "image_size": args.image_size, "results": results})


if __name__ == "__main__":
    main()
