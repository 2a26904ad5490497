"""Benchmark: every export format and quantization, size, accuracy and batch-1 CPU latency, side by side.

- mobilenetv2 alpha 0.35 with the shared ImageNet weights, the default plan on the whole flowers set (real accuracy);
- resnet50 and inceptionv3 with --weights none, one head epoch on a flowers subset (size and speed only: their
  ImageNet weights cannot be downloaded here, so their accuracy figures mean nothing).

    python benchmarks/export_formats.py [--skip-mobilenet-training RUN] [--out benchmarks/results/export_formats.json]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import FLOWERS, RESULTS, WEIGHTS, flowers_subset, machine, require_shared_data, write_results  # sets up TF logging


import tfl
from tfl.export import export_run

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")


def train_run(arch: str, workdir: Path) -> Path:
    if arch == "mobilenetv2":
        return tfl.finetune(FLOWERS, arch=arch, alpha=0.35, weights=WEIGHTS, output=workdir / "runs", name=arch,
                            verbose=2).path
    data = flowers_subset(workdir / f"{arch}_data", per_class=30)
    return tfl.finetune(data, arch=arch, weights="none", batch_size=16, epochs=(1, 0, 0), output=workdir / "runs",
                        name=arch, verbose=2).path


def export_all(run: Path, verify_images: int) -> list[dict]:
    rows = []
    for quantize in QUANTIZATIONS:
        fmt = "all" if quantize == "none" else "tflite"
        produced = export_run(run, export_format=fmt, quantize=quantize, verify_images=verify_images,
                              calibration_samples=200, force=True)
        rows += [r for r in produced if r["file"] != "model.keras" or quantize == "none"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-mobilenet-training", help="use this finished mobilenetv2 run instead of training one")
    parser.add_argument("--out", default=str(RESULTS / "export_formats.json"))
    args = parser.parse_args()
    require_shared_data()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("mobilenetv2", "resnet50", "inceptionv3"):
            if arch == "mobilenetv2" and args.skip_mobilenet_training:
                run = Path(args.skip_mobilenet_training)
            else:
                run = train_run(arch, Path(tmp))
            results[arch] = export_all(run, verify_images=864 if arch == "mobilenetv2" else 100)
    print(f"\n{machine()}")
    print(f"{'arch':<12} {'artifact':<24} {'MB':>7} {'x f32':>6} {'val acc':>8} {'change':>8} {'agree':>7} {'ms/img':>7}")
    for arch, rows in results.items():
        float32 = next(r["size_bytes"] for r in rows if r["file"] == "model_float32.tflite")
        for row in rows:
            ratio = f"{row['size_bytes'] / float32:.2f}" if row["file"].endswith(".tflite") else ""
            change = f"{row.get('accuracy_change', 0):+.4f}" if "accuracy_change" in row else "ref"
            agree = f"{row['top1_agreement']:.1%}" if "top1_agreement" in row else "ref"
            print(f"{arch:<12} {row['file']:<24} {row['size_bytes'] / 1e6:>7.2f} {ratio:>6} {row['accuracy']:>8.4f} "
                  f"{change:>8} {agree:>7} {row['latency_ms_batch1']:>7.2f}")
    write_results(args.out, {"machine": machine(), "results": results})


if __name__ == "__main__":
    main()
