"""Benchmark: tfl's defaults against the Keras guide's two-stage recipe written by hand, on every shared dataset.

For each single-label set in ../shared/datasets (flowers, weather4, potato_leaf3, cats5 read through its label
file, and dogs10b) both train MobileNetV2-0.35 with the shared
ImageNet weights on the same training and validation files (tfl's split, read from its splits.json) at the same
image size (tfl's auto size), in one script run. The hand recipe is plain Keras and tf.data, no tfl code:
10 head epochs at 1e-3 (Adam) on flipped/rotated/zoomed pixels, then 10 epochs at 1e-4 with the backbone trainable
from block 10 on (BatchNormalization in inference mode), as in the Keras transfer-learning guide. Prints one table
and writes benchmarks/results/quality.json.

    python benchmarks/quality.py [--plan auto|fixed] [--datasets flowers weather4 potato_leaf3 cats5 dogs10b]
                                 [--out ...] [--tfl-only]   (a change judged against an earlier file's tfl rows)
                                 [--variant NAME KEY=VALUE...]   (tfl again with these settings, side by side)
                                 [--seeds 42 43 44]   (each seed another split and initialisation, for both; the
                                                       summary gives each set's mean paired difference)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import RESULTS, SINGLE_LABEL_SETS, WEIGHTS, keras_guide_model, machine, source, write_results  # sets up TF logging

import keras
import tensorflow as tf
import yaml

import tfl
from tfl.config import TrainConfig

HEAD_EPOCHS, TUNE_EPOCHS, BATCH = 10, 10, 32
DEFAULT_SEED = TrainConfig().seed  # every file before --seeds was this seed's split


def file_dataset(paths, labels, size, training, seed=42):
    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return tf.image.resize(image, (size, size)), label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels)).map(load, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(BATCH).prefetch(tf.data.AUTOTUNE)


def hand_recipe(splits: dict, classes: int, size: int, seed: int = 42) -> dict:
    start = time.time()
    keras.utils.set_random_seed(seed)
    train = file_dataset(splits["train"].paths, splits["train"].labels, size, True, seed)
    val = file_dataset(splits["val"].paths, splits["val"].labels, size, False)
    model, base = keras_guide_model(size, classes, zoom=0.1)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    head = model.fit(train, validation_data=val, epochs=HEAD_EPOCHS, verbose=2)
    base.trainable = True
    first = [layer.name for layer in base.layers].index("block_10_expand")
    for layer in base.layers[:first]:
        layer.trainable = False
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", metrics=["accuracy"])
    tuned = model.fit(train, validation_data=val, epochs=HEAD_EPOCHS + TUNE_EPOCHS, initial_epoch=HEAD_EPOCHS,
                      verbose=2)
    history = head.history["val_accuracy"] + tuned.history["val_accuracy"]
    result = {"val_best": round(max(history), 4), "val_final": round(history[-1], 4),
              "wall_seconds": round(time.time() - start, 1)}
    if "test" in splits:
        test = file_dataset(splits["test"].paths, splits["test"].labels, size, False)
        result["test_final"] = round(float(model.evaluate(test, verbose=0)[1]), 4)
    return result


def tfl_defaults(data: Path, runs: Path, plan: str | None, settings: dict | None = None,
                 tag: str = "") -> tuple[dict, dict, int]:
    start = time.time()
    name = (data.parent.name if data.is_file() else data.name) + tag
    run = tfl.finetune(data, alpha=0.35, weights=WEIGHTS, plan=plan, output=runs, name=name, verbose=2,
                       **(settings or {}))
    wall = time.time() - start
    metrics = run.metrics
    rows = run.history
    result = {"val_best": metrics["accuracy"], "val_final": float(rows[-1]["val_accuracy"]),
              "wall_seconds": round(wall, 1), "epochs": len(rows), "best_epoch": metrics["best_epoch"],
              "low_pass": run.config.get("low_pass")}
    if "test" in metrics:
        result["test_best_model"] = metrics["test"]["accuracy"]
    return result, run.splits, int(run.config["image_size"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=list(SINGLE_LABEL_SETS))
    parser.add_argument("--plan", choices=["auto", "fixed"], help="tfl's plan (default: the config's)")
    parser.add_argument("--out", default=str(RESULTS / "quality.json"))
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME KEY=VALUE",
                        help="also run tfl with these settings (values read as YAML), e.g. --variant blurless "
                             "low_pass=false")
    parser.add_argument("--seeds", nargs="+", type=int, default=[DEFAULT_SEED],
                        help="one run of each per seed: tfl's seed chooses its split (which the recipe reads) and "
                             "both initialise from it")
    parser.add_argument("--tfl-only", action="store_true", help="skip the hand recipe (its accuracy on tfl's split "
                        "does not change with tfl's code; its time does with the machine)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, seed in ((name, seed) for name in args.datasets for seed in args.seeds):
            data = source(name)
            if not data.exists() or not WEIGHTS.is_file():
                raise SystemExit(f"needs {data} and {WEIGHTS} (the shared folder beside the repo)")
            seeded = {} if seed == DEFAULT_SEED else {"seed": seed}
            tag = "" if seed == DEFAULT_SEED else f"-seed{seed}"
            ours, splits, size = tfl_defaults(data, Path(tmp), args.plan, seeded, tag)
            classes = len(set(splits["train"].labels))
            rows.append({"dataset": name, "seed": seed, "train_images": len(splits["train"]),
                         "val_images": len(splits["val"]), "classes": classes, "image_size": size, "tfl": ours})
            for variant_name, *pairs in args.variant:
                settings = {key: yaml.safe_load(value) for key, _, value in (p.partition("=") for p in pairs)}
                rows[-1][variant_name] = tfl_defaults(data, Path(tmp), args.plan, {**seeded, **settings},
                                                      f"{tag}-{variant_name}")[0]
                rows[-1][variant_name]["settings"] = settings
            if not args.tfl_only:
                theirs = rows[-1]["hand"] = hand_recipe(splits, classes, size, seed)
                rows[-1]["difference_best"] = round(ours["val_best"] - theirs["val_best"], 4)
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for name in args.datasets:
        paired = [row for row in rows if row["dataset"] == name and "difference_best" in row]
        if len(paired) > 1:
            mean = lambda values: round(statistics.mean(values), 4)  # noqa: E731
            summary[name] = {"seeds": [row["seed"] for row in paired],
                             "tfl_mean": mean(row["tfl"]["val_best"] for row in paired),
                             "hand_mean": mean(row["hand"]["val_best"] for row in paired),
                             "difference_mean": mean(row["difference_best"] for row in paired),
                             "time_ratio": round(sum(row["tfl"]["wall_seconds"] for row in paired)
                                                 / sum(row["hand"]["wall_seconds"] for row in paired), 2)}
    header = (f"{'dataset':<13} {'train':>6} {'cls':>4} {'px':>4} | {'tfl best':>8} {'final':>6} {'time':>6} | "
              f"{'hand best':>9} {'final':>6} {'time':>6} | {'diff':>6} | {'test tfl / hand':>15}")
    print(header)
    for row in rows:
        ours, theirs = row["tfl"], row.get("hand", {"val_best": float("nan"), "val_final": float("nan"),
                                                    "wall_seconds": float("nan")})
        test = (f"{ours['test_best_model']:.3f} / {theirs['test_final']:.3f}" if "test_final" in theirs else "")
        label = row["dataset"] + ("" if row.get("seed", DEFAULT_SEED) == DEFAULT_SEED else f"/{row['seed']}")
        print(f"{label:<13} {row['train_images']:>6} {row['classes']:>4} {row['image_size']:>4} | "
              f"{ours['val_best']:>8.4f} {ours['val_final']:>6.3f} {ours['wall_seconds']:>5.0f}s | "
              f"{theirs['val_best']:>9.4f} {theirs['val_final']:>6.3f} {theirs['wall_seconds']:>5.0f}s | "
              f"{row.get('difference_best', float('nan')):>+6.3f} | {test:>15}")
        for variant_name, *_ in args.variant:
            print(f"{'  ' + variant_name:<13} {'':>6} {'':>4} {'':>4} | {row[variant_name]['val_best']:>8.4f} "
                  f"{row[variant_name]['val_final']:>6.3f} {row[variant_name]['wall_seconds']:>5.0f}s |")
    for name, cells in summary.items():
        print(f"{name}, seeds {cells['seeds']}: tfl {cells['tfl_mean']:.4f}, recipe {cells['hand_mean']:.4f} on "
              f"average, paired difference {cells['difference_mean']:+.4f}, time ratio {cells['time_ratio']:.2f}x")
    write_results(args.out, {"machine": machine(), "plan": args.plan or "config default", "rows": rows,
                             **({"summary": summary} if summary else {})})


if __name__ == "__main__":
    main()
