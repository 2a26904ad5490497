"""Benchmark: batch-1 latency of MobileNetV2-0.35 as float32 and as int8 TFLite (three int8 recipes), at 128 and 224 px.

Answers "is int8 the fastest here?": on x86 CPUs without VNNI (AVX2 + FMA only), XNNPACK's int8 kernels can be slower
than its float32 ones for a model this small. Recipes: int8 (tfl's: per-channel weights, uint8 input),
int8_per_tensor (one scale per tensor), int8_float_io (float32 input and output around the int8 graph). Calibrated on
64 flower photos; latency is the median of 50 invokes after 5 warm-ups, with 1 and 2 threads (XNNPACK).

    python benchmarks/int8_latency.py
"""

from __future__ import annotations

import argparse
import time

from common import FLOWERS, RESULTS, WEIGHTS, machine, require_shared_data, write_results  # sets up TF logging

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from tfl.archs import get_arch
from tfl.pipeline import load_image_for_predict
from tfl.model import build_model

RECIPES = ("float32", "int8", "int8_per_tensor", "int8_float_io")


def convert(model, size: int, recipe: str, photos: list[str]) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if recipe != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [load_image_for_predict(p, size).astype(np.float32)[None]] for p in photos)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if recipe != "int8_float_io":
            converter.inference_input_type = tf.uint8
        if recipe == "int8_per_tensor":
            converter._experimental_disable_per_channel = True
    return converter.convert()


def latency_ms(model_bytes: bytes, size: int, threads: int, repeats: int = 50) -> float:
    interpreter = Interpreter(model_content=model_bytes, num_threads=threads)
    interpreter.allocate_tensors()
    given = interpreter.get_input_details()[0]
    image = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(given["dtype"])
    timings = []
    for step in range(5 + repeats):
        start = time.perf_counter()
        interpreter.set_tensor(given["index"], image)
        interpreter.invoke()
        if step >= 5:
            timings.append(time.perf_counter() - start)
    return round(1000 * float(np.median(timings)), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "int8_latency.json"))
    args = parser.parse_args()
    require_shared_data()
    photos = sorted(str(p) for p in FLOWERS.glob("*/*"))[::40][:64]
    rows = []
    for size in (128, 224):
        model = build_model(get_arch("mobilenetv2"), 5, size, str(WEIGHTS), 0.35)
        converted = {recipe: convert(model, size, recipe, photos) for recipe in RECIPES}
        for threads in (1, 2):
            rows.append({"image_size": size, "threads": threads,
                         **{recipe: latency_ms(data, size, threads) for recipe, data in converted.items()}})
            print(rows[-1], flush=True)
    print(f"\n{machine()}")
    print(f"{'px':>4} {'threads':>7} " + " ".join(f"{r:>16}" for r in RECIPES) + "   (ms per image, batch 1)")
    for row in rows:
        print(f"{row['image_size']:>4} {row['threads']:>7} " + " ".join(f"{row[r]:>16.2f}" for r in RECIPES))
    write_results(args.out, {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
