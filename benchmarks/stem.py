"""Benchmark: fine-tuning throughput with the stem frozen (the auto plan) vs the whole backbone trainable.

MobileNetV2-0.35 with the shared ImageNet weights, batch 32, `model.fit` on in-memory arrays, BatchNormalization
frozen as in every tfl stage. For each image size the two settings are measured side by side, interleaved over
three repeats, best of three (identical runs on this VM vary up to 2x).

    python benchmarks/stem.py [--sizes 128 224] [--out benchmarks/results/stem.json]
"""

from __future__ import annotations

import argparse
import time

from common import RESULTS, WEIGHTS, machine, require_shared_data, write_results  # sets up TF logging

import keras
import numpy as np

from tfl.archs import get_arch
from tfl.model import build_model, set_trainable_blocks

SPEC = get_arch("mobilenetv2")
BATCH, STEPS, REPEATS = 32, 20, 3


def training_model(size: int, blocks: int | str) -> keras.Model:
    model = build_model(SPEC, 5, size, str(WEIGHTS), alpha=0.35)
    set_trainable_blocks(model, SPEC, blocks)
    model.compile(keras.optimizers.Adam(1e-4), "categorical_crossentropy")
    return model


def images_per_second(model: keras.Model, size: int) -> float:
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (BATCH * STEPS, size, size, 3)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 5, len(images)), 5)
    start = time.perf_counter()
    model.fit(images, labels, batch_size=BATCH, epochs=1, verbose=0)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--out", default=str(RESULTS / "stem.json"))
    args = parser.parse_args()
    require_shared_data()
    settings = {"whole backbone": "all", f"top {SPEC.tunable_blocks} (stem frozen)": SPEC.tunable_blocks}
    rows = []
    for size in args.sizes:
        models = {name: training_model(size, blocks) for name, blocks in settings.items()}
        for model in models.values():  # compile and warm up outside the timing
            model.fit(np.zeros((BATCH, size, size, 3), "float32"), np.eye(5)[[0] * BATCH], verbose=0)
        best = {name: 0.0 for name in models}
        for _ in range(REPEATS):
            for name, model in models.items():
                best[name] = max(best[name], images_per_second(model, size))
        whole, frozen = best.values()
        rows.append({"image_size": size, **{name: round(v, 1) for name, v in best.items()},
                     "speedup": round(frozen / whole, 2)})
        print(f"{size} px: " + ", ".join(f"{name} {v:.0f} img/s" for name, v in best.items())
              + f"; stem frozen {frozen / whole:.2f}x", flush=True)
    write_results(args.out, {"machine": machine(), "batch": BATCH, "rows": rows})


if __name__ == "__main__":
    main()
