"""Benchmark: the exports as apps run them, on every shared single-label set. For each set, tfl's defaults train a
run (MobileNetV2-0.35 with the shared weights), which is exported as TFLite in every quantization; then:
- calibration: the expected calibration error on validation before and after the temperature (metrics.json);
- MediaPipe Tasks' ImageClassifier loading each file and each validation photo itself (its own decoder, EXIF and
  bilinear resize): top-1 agreement with the Keras model on tfl's pixels, and of each quantization with float32,
  over the answers apps see (a class, or `unknown` where the run has the unknown category, which counts as a miss in
  MediaPipe's accuracy);
- accuracy and batch-1 latency of each file on tfl's pixels (export_report.json), and the layers the quantization
  fallback kept in float where the converter's file missed its target.

    python benchmarks/apps.py [--datasets flowers weather4 potato_leaf3 cats5 dogs10b] [--quantize none int8]
                              [--out benchmarks/results/apps.json]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import RESULTS, SINGLE_LABEL_SETS, WEIGHTS, machine, source, write_results  # sets up TF logging

import numpy as np

import tfl
from tfl.pipeline import load_image_for_predict

FILES = {"none": "model_float32.tflite", "float16": "model_float16.tflite", "dynamic": "model_dynamic.tflite",
         "int8": "model_int8.tflite"}


def mediapipe_tops(model_path: Path, photos: list[str]) -> np.ndarray:
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(model_path)), max_results=1)
    tops = []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for photo in photos:
            image = mp.Image.create_from_file(photo)
            if image.channels != 3:  # MediaPipe keeps a greyscale or RGBA file's channels, and an RGB model then fails
                pixels = image.numpy_view()
                pixels = np.repeat(pixels.reshape(*pixels.shape[:2], -1)[..., :1], 3, axis=-1) \
                    if image.channels == 1 else pixels[..., :3]
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels))
            tops.append(classifier.classify(image).classifications[0].categories[0].index)
    return np.array(tops)


def measure(name: str, workdir: Path, files: dict) -> dict:
    run = tfl.finetune(source(name), alpha=0.35, weights=WEIGHTS, output=workdir, name=name, verbose=2)
    for quantize in files:
        run.export("tflite", quantize, verify_images=10_000, force=True)
    report, calibration = tfl.open_run(run.path).export_report_file, run.metrics["calibration"]
    import json

    report = json.loads(report.read_text())
    val = run.splits["val"]
    size = int(run.config["image_size"])
    keras_model = tfl.load(run.path)
    # the answer apps see: a class, or the unknown category (the last of N + 1 scores) when the run has one
    keras_top = np.concatenate([keras_model.scores(np.stack([load_image_for_predict(p, size)
                                                             for p in val.paths[i:i + 32]])).argmax(axis=1)
                                for i in range(0, len(val), 32)])
    tops = {quantize: mediapipe_tops(run.path / file, val.paths) for quantize, file in files.items()}
    labels = np.asarray(val.labels)
    rows = {quantize: {"accuracy_tfl_pixels": report[file]["accuracy"],
                       "change_vs_keras": report[file]["accuracy_change"],
                       "latency_ms_batch1": report[file]["latency_ms_batch1"],
                       "mediapipe_accuracy_own_loader": round(float((tops[quantize] == labels).mean()), 4),
                       "mediapipe_agreement_with_keras": round(float((tops[quantize] == keras_top).mean()), 4),
                       "mediapipe_agreement_with_float32": (round(float((tops[quantize] == tops["none"]).mean()), 4)
                                                            if "none" in tops else None),
                       "size_mb": round(report[file]["size_bytes"] / 1e6, 2),
                       "bias_correction": report[file].get("bias_correction", {}),
                       "fallback": {key: value for key, value in report[file].get("fallback", {}).items()
                                    if key != "in_float"}}
            for quantize, file in files.items()}
    return {"dataset": name, "val_images": len(val), "keras_accuracy": run.metrics["accuracy"],
            "low_pass": run.config["low_pass"], "unknown_val_flagged": run.metrics.get("unknown", {}).get("val_flagged"),
            "temperature": calibration["temperature"], "ece_before": calibration["ece_before"],
            "ece_after": calibration["ece_after"], "ece_if_calibrated": calibration["ece_if_calibrated"],
            "debiased_before": calibration["debiased_before"], "debiased_after": calibration["debiased_after"],
            "files": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(SINGLE_LABEL_SETS))
    parser.add_argument("--out", default=str(RESULTS / "apps.json"))
    parser.add_argument("--quantize", nargs="+", choices=list(FILES), default=list(FILES))
    args = parser.parse_args()
    files = {quantize: FILES[quantize] for quantize in args.quantize}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:  # written after each set, so that a long run's finished sets are kept
            results.append(measure(name, Path(tmp), files))
            write_results(args.out, {"machine": machine(), "results": results})
    print(f"\n{machine()}")
    print(f"{'dataset':<14} {'T':>5} {'ECE before':>10} {'after':>6} {'floor':>6} {'debiased':>8} {'after':>6} | {'file':<8} {'acc':>6} {'change':>7} {'ms':>5} "
          f"{'MP acc':>7} {'MP=keras':>8} {'MP=f32':>7} {'MB':>5} float layers")
    for result in results:
        for quantize, row in result["files"].items():
            print(f"{result['dataset']:<14} {result['temperature']:>5.2f} {result['ece_before']:>10.4f} "
                  f"{result['ece_after']:>6.4f} {result['ece_if_calibrated']:>6.4f} {result['debiased_before']:>8.4f} "
                  f"{result['debiased_after']:>6.4f} | {quantize:<8} {row['accuracy_tfl_pixels']:>6.4f} "
                  f"{row['change_vs_keras']:>+7.4f} {row['latency_ms_batch1']:>5.2f} "
                  f"{row['mediapipe_accuracy_own_loader']:>7.4f} {row['mediapipe_agreement_with_keras']:>8.1%} "
                  f"{row['mediapipe_agreement_with_float32'] or 0:>7.1%} {row['size_mb']:>5.2f} "
                  + (f"{row['fallback']['layers_in_float']}/{row['fallback']['layers']} (before "
                     f"{row['fallback']['fully_quantized']['agreement']:.1%})" if row["fallback"] else "-")
                  + (f", converter's file {row['bias_correction']['converted']['agreement']:.1%} before bias "
                     "correction" if row["bias_correction"] else ""))
    write_results(args.out, {"machine": machine(), "results": results})


if __name__ == "__main__":
    main()
