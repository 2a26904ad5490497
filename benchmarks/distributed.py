"""Benchmark: the same tiny plan in one process and as two workers on 127.0.0.1 (`--distribute multiworker`).

Real photos (a class-balanced subset of the shared flowers, linked, not copied, into a temporary folder), MobileNetV2-0.35
with the shared weights. Each worker is pinned to one core (and told to use one thread), the single process has
every core. Prints wall time, training images per second and validation accuracy for both, and `--distribute
mirrored` too where the machine has two or more GPUs. Writes benchmarks/results/distributed.json.

    python benchmarks/distributed.py [--backend tensorflow|jax] [--per-class 100]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, WEIGHTS, flowers_subset, machine, require_shared_data, write_results

PLAN = ["--arch", "mobilenetv2", "--alpha", "0.35", "--image-size", "128", "--batch-size", "32", "--epochs", "3,2",
        "--unfreeze-blocks", "4", "--seed", "42"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tfl_command(data: Path, output: Path, name: str, backend: str, distribute: str) -> list[str]:
    return [sys.executable, "-m", "tfl.cli", "finetune", "--data", str(data), "--weights", str(WEIGHTS), *PLAN,
            "--backend", backend, "--distribute", distribute, "--output", str(output), "--name", name]


def result(output: Path, name: str, seconds: float, extra: dict) -> dict:
    run = output / name
    rows = list(csv.DictReader((run / "history.csv").open()))
    metrics = json.loads((run / "metrics.json").read_text())
    train_images = sum(json.loads((run / "data_report.json").read_text())["counts"]["train"].values())
    return {"wall_seconds": round(seconds, 1), "epochs": len(rows),
            "train_images_per_second": round(train_images * len(rows) / seconds, 1),
            "val_accuracy": metrics["accuracy"], **extra}


def single(data: Path, output: Path, backend: str, distribute: str = "none") -> dict:
    start = time.time()
    subprocess.run(tfl_command(data, output, distribute, backend, distribute), check=True, stdout=subprocess.DEVNULL)
    return result(output, distribute, time.time() - start, {"processes": 1, "cores": os.cpu_count()})


def two_workers(data: Path, output: Path, backend: str) -> dict:
    ports = [free_port(), free_port()]
    start, procs = time.time(), []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                                     "task": {"type": "worker", "index": index}}),
                   KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{ports[0]}", KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                   KERAS_DISTRIBUTION_PROCESS_ID=str(index), TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
                   OMP_NUM_THREADS="1")
        core = index % (os.cpu_count() or 1)
        procs.append(subprocess.Popen(tfl_command(data, output, "multiworker", backend, "multiworker"), env=env,
                                      stdout=subprocess.DEVNULL, preexec_fn=lambda core=core: os.sched_setaffinity(0, {core})))
    if any(p.wait() for p in procs):
        raise SystemExit("a worker failed")
    return result(output, "multiworker", time.time() - start, {"processes": 2, "cores": 2})


def gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="tensorflow", choices=["tensorflow", "jax"])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--out", default=str(RESULTS / "distributed.json"))
    args = parser.parse_args()
    require_shared_data()
    work = Path(tempfile.mkdtemp(prefix="tfl_distributed_"))
    try:
        data = flowers_subset(work / "data", args.per_class)
        rows = {"one process": single(data, work / "runs", args.backend),
                "2 workers on 127.0.0.1": two_workers(data, work / "runs", args.backend)}
        if gpu_count() >= 2:
            rows["mirrored (GPUs)"] = single(data, work / "runs", args.backend, "mirrored")
    finally:
        shutil.rmtree(work)
    print(f"{'setup':<24} {'wall':>7} {'epochs':>7} {'train img/s':>12} {'val acc':>8}")
    for name, row in rows.items():
        print(f"{name:<24} {row['wall_seconds']:>6.0f}s {row['epochs']:>7} {row['train_images_per_second']:>12.1f} "
              f"{row['val_accuracy']:>8.3f}")
    write_results(args.out, {"machine": machine(), "backend": args.backend, "per_class": args.per_class,
                             "plan": " ".join(PLAN), "rows": rows})


if __name__ == "__main__":
    main()
