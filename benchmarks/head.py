"""Benchmark: what makes a head trained on cached features as good as one trained on augmented pixels (issue 25).

For each shared single-label set, on tfl's own split and auto image size with the shared MobileNetV2-0.35, the
backbone's pooled features are computed once: the plain view of every photo and VIEWS augmented views of each
training photo ("light" preset). Then heads (dropout + dense softmax, as tfl builds them) train on them in several
ways, each to tfl's head stopping rule (up to 100 epochs, patience 8), and the best validation accuracy, the epoch
it came at and the training accuracy there are printed. Features are computed once per set, so every variant
costs seconds.

    python benchmarks/head.py [--datasets flowers weather4 potato_leaf3 cats5] [--out benchmarks/results/head.json]
"""

from __future__ import annotations

import argparse
import time

from common import RESULTS, SINGLE_LABEL_SETS, WEIGHTS, machine, source, write_results  # sets up TF logging

import keras
import numpy as np
import tensorflow as tf

from tfl.archs import auto_image_size, get_arch
from tfl.augment import build_augmenter
from tfl.data import load_data
from tfl.pipeline import make_pipeline
from tfl.model import feature_extractor
from tfl.model import build_head, build_model

VIEWS = 4
MAX_EPOCHS, PATIENCE, BATCH = 100, 8, 32


def features(extractor, split, classes, size, augmenter=None):
    pipeline = make_pipeline(split, classes, size, 64, training=False)
    if augmenter is not None:
        pipeline = pipeline.map(lambda x, y: (augmenter(x), y))
    return np.concatenate([np.asarray(extractor.predict_on_batch(np.asarray(x))) for x, _ in pipeline])


def train_head(train_x, train_y, val_x, val_y, classes, *, dropout=0.2, smoothing=0.1, schedule="cosine100",
               weight_decay=0.0, mixup=0.0, learning_rate=1e-3, seed=0):
    keras.utils.set_random_seed(seed)
    head = build_head(train_x.shape[1], classes, dropout)
    steps = -(-len(train_x) // BATCH)
    rate = (keras.optimizers.schedules.CosineDecay(learning_rate, steps * MAX_EPOCHS, alpha=0.05)
            if schedule == "cosine100" else learning_rate)
    optimizer = (keras.optimizers.AdamW(rate, weight_decay=weight_decay) if weight_decay
                 else keras.optimizers.Adam(rate))
    head.compile(optimizer, keras.losses.CategoricalCrossentropy(label_smoothing=smoothing), metrics=["accuracy"])
    one_hot = np.eye(classes, dtype=np.float32)
    data = tf.data.Dataset.from_tensor_slices((train_x, one_hot[train_y])).shuffle(len(train_x), seed=seed)
    data = data.batch(BATCH)
    if mixup:
        def mix(x, y):
            gamma1 = tf.random.gamma([tf.shape(x)[0], 1], mixup)
            gamma2 = tf.random.gamma([tf.shape(x)[0], 1], mixup)
            lam = gamma1 / (gamma1 + gamma2)  # Beta(mixup, mixup)
            order = tf.random.shuffle(tf.range(tf.shape(x)[0]))
            return lam * x + (1 - lam) * tf.gather(x, order), lam * y + (1 - lam) * tf.gather(y, order)
        data = data.map(mix)
    val = (val_x, one_hot[val_y])
    best, best_epoch, train_at_best, bad = -1.0, 0, 0.0, 0
    for epoch in range(MAX_EPOCHS):
        history = head.fit(data, validation_data=val, epochs=epoch + 1, initial_epoch=epoch, verbose=0).history
        accuracy = history["val_accuracy"][-1]
        if accuracy > best:
            best, best_epoch, train_at_best, bad = accuracy, epoch + 1, history["accuracy"][-1], 0
        else:
            bad += 1
            if bad >= PATIENCE:
                break
    return {"val_best": round(best, 4), "epoch": best_epoch, "train_at_best": round(train_at_best, 4),
            "epochs": epoch + 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(SINGLE_LABEL_SETS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "head.json"))
    args = parser.parse_args()
    rows = []
    for name in args.datasets:
        data = load_data(str(source(name)), 0.2, 42)
        classes = len(data.class_names)
        spec = get_arch("mobilenetv2")
        size = auto_image_size(spec, data.report.get("median_short_side"))
        extractor = feature_extractor(build_model(spec, classes, size, str(WEIGHTS), 0.35))
        start = time.time()
        plain = features(extractor, data.train, classes, size)
        val_x = features(extractor, data.val, classes, size)
        augmenter = build_augmenter("light", 42)
        views = [features(extractor, data.train, classes, size, augmenter) for _ in range(VIEWS)]
        seconds = time.time() - start
        train_y, val_y = np.asarray(data.train.labels), np.asarray(data.val.labels)
        many_x, many_y = np.concatenate([plain, *views]), np.tile(train_y, VIEWS + 1)
        variants = {
            "tfl (plain, cosine over 100, dropout 0.2)": (plain, train_y, {}),
            "constant 1e-3": (plain, train_y, {"schedule": "constant"}),
            "dropout 0.5": (plain, train_y, {"dropout": 0.5}),
            "AdamW weight decay 0.05": (plain, train_y, {"weight_decay": 0.05}),
            "feature MixUp 0.4": (plain, train_y, {"mixup": 0.4}),
            f"{VIEWS} augmented views + plain": (many_x, many_y, {}),
            f"{VIEWS} views, dropout 0.5": (many_x, many_y, {"dropout": 0.5}),
            f"{VIEWS} views, constant 1e-3": (many_x, many_y, {"schedule": "constant"}),
        }
        results = {}
        for label, (x, y, options) in variants.items():
            runs = [train_head(x, y, val_x, val_y, classes, seed=seed, **options) for seed in range(args.seeds)]
            results[label] = {"val_best_mean": round(float(np.mean([r["val_best"] for r in runs])), 4),
                              "runs": runs}
            print(f"{name:<13} {label:<45} {results[label]['val_best_mean']:.4f}  "
                  + "  ".join(f"(ep {r['epoch']}, train {r['train_at_best']:.3f})" for r in runs), flush=True)
        rows.append({"dataset": name, "image_size": size, "train": len(train_y), "val": len(val_y),
                     "feature_seconds": round(seconds, 1), "variants": results})
    write_results(args.out, {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
