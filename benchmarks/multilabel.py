"""Benchmark: several labels per photo. tfl's defaults on miml_scenes (read from its labels.csv) against a hand-written
plain-Keras multi-label recipe: the Keras transfer-learning guide's two stages (a frozen backbone and a new head at
Adam 1e-3, then the whole backbone at 1e-5) with a sigmoid head, binary cross-entropy and a 0.5 threshold. Same
backbone and weights (MobileNetV2-0.35), the same files in the same split (tfl's) at the same image size; the
recipe's best epoch by validation mAP, as tfl keeps its best epoch.

    python benchmarks/multilabel.py [--epochs 10 10] [--out benchmarks/results/multilabel.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import REPO, RESULTS, WEIGHTS, keras_guide_model, machine, write_results  # sets up TF logging

import keras
import numpy as np
import tensorflow as tf

import tfl
from tfl.multilabel import average_precision, f1_score, multi_hot

MIML = REPO.parent / "shared" / "datasets" / "miml_scenes"


def scores(probabilities: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict:
    precisions = [average_precision(probabilities[:, i], truth[:, i]) for i in range(truth.shape[1])]
    decided = probabilities >= threshold
    return {"map": round(float(np.mean(precisions)), 4),
            "macro_f1": round(float(np.mean([f1_score(decided[:, i], truth[:, i] > 0)
                                             for i in range(truth.shape[1])])), 4)}


def keras_recipe(run: tfl.Run, epochs: tuple[int, int], seed: int = 42) -> dict:
    """The hand-written recipe, on the run's own split and image size."""
    start = time.time()
    keras.utils.set_random_seed(seed)
    size, classes = int(run.config["image_size"]), len(run.class_names)
    splits = run.splits

    def dataset(split, training: bool):
        def load(path, label):
            image = tf.image.resize(tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False),
                                    (size, size))
            return image, label

        data = tf.data.Dataset.from_tensor_slices((split.paths, multi_hot(split.labels, classes)))
        data = data.shuffle(len(split), seed=seed) if training else data
        return data.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(32).prefetch(tf.data.AUTOTUNE)

    train, val = dataset(splits["train"], True), dataset(splits["val"], False)
    truth = multi_hot(splits["val"].labels, classes)
    model, base = keras_guide_model(size, classes, activation="sigmoid")
    rows = []

    class Measure(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            rows.append({"epoch": epoch + 1, **scores(np.asarray(model.predict(val, verbose=0)), truth)})
            print(f"recipe epoch {epoch + 1}: {rows[-1]}", flush=True)

    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    model.fit(train, epochs=epochs[0], callbacks=[Measure()], verbose=2)
    base.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="binary_crossentropy")
    model.fit(train, epochs=sum(epochs), initial_epoch=epochs[0], callbacks=[Measure()], verbose=2)
    best = max(rows, key=lambda row: row["map"])
    return {"map": best["map"], "macro_f1_at_0.5": best["macro_f1"], "best_epoch": best["epoch"],
            "epochs": sum(epochs), "wall_seconds": round(time.time() - start, 1), "per_epoch": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs=2, default=(10, 10), help="the recipe's two stages")
    parser.add_argument("--out", default=str(RESULTS / "multilabel.json"))
    args = parser.parse_args()
    if not MIML.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"needs {MIML} and {WEIGHTS} (the shared folder beside the repo)")
    with tempfile.TemporaryDirectory() as tmp:
        run = tfl.finetune(MIML / "labels.csv", alpha=0.35, weights=WEIGHTS, output=tmp, name="miml", verbose=2)
        metrics = run.metrics
        ours = {"map": metrics["map"], "macro_f1_at_thresholds": metrics["macro_f1"],
                "micro_f1_at_thresholds": metrics["micro_f1"], "exact_match": metrics["exact_match"],
                "epochs": len(run.history), "wall_seconds": metrics["wall_seconds"],
                "image_size": int(run.config["image_size"]),
                "plan": [f"{s['name']}:{s['epochs']}@{s['learning_rate']}/{s['unfreeze_blocks']}"
                         for s in run.config["stages"]]}
        theirs = keras_recipe(run, tuple(args.epochs))
    print(f"\nmiml_scenes (2,000 photos, 5 labels), MobileNetV2-0.35 at {ours['image_size']} px, {machine()}")
    print(f"{'recipe':<34} {'epochs':>6} {'val mAP':>8} {'macro F1':>9} {'wall time':>10}")
    print(f"{'tfl defaults':<34} {ours['epochs']:>6} {ours['map']:>8.4f} {ours['macro_f1_at_thresholds']:>9.4f} "
          f"{ours['wall_seconds']:>9.0f}s")
    print(f"{'Keras guide, sigmoid, 0.5':<34} {theirs['epochs']:>6} {theirs['map']:>8.4f} "
          f"{theirs['macro_f1_at_0.5']:>9.4f} {theirs['wall_seconds']:>9.0f}s")
    write_results(args.out, {"machine": machine(), "tfl": ours, "keras_recipe": theirs})


if __name__ == "__main__":
    main()
