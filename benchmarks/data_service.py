"""Benchmark: training's input pipeline (decode, resize, the `light` augmentation, batches of 32) read here against
read from a tf.data service whose workers are `tfl data-worker` processes on this machine.

On this 2-core machine the workers share the trainer's cores, so the figure is the service's overhead, not its gain:
the service pays where a trainer (a GPU) is fed by fewer cores than its pipeline needs and the workers run on other
machines' cores. Prints images/s per pass and writes benchmarks/results/data_service.json.

    python benchmarks/data_service.py [--passes 3] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

from common import FLOWERS, RESULTS, machine, require_shared_data, write_results


def images_per_second(dataset, passes: int) -> list[float]:
    rates = []
    for _ in range(passes):
        start, images = time.perf_counter(), 0
        for _, labels in dataset:
            images += len(labels)
        rates.append(round(images / (time.perf_counter() - start)))
    return rates


def started(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tfl.cli", *command], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default=str(RESULTS / "data_service.json"))
    args = parser.parse_args()
    require_shared_data()
    from tfl.augment import build_augmenter
    from tfl.data import load_data
    from tfl.data_service import check_dispatcher
    from tfl.errors import TflError
    from tfl.pipeline import make_pipeline

    data = load_data(str(FLOWERS), 0.2, 42)
    augment = build_augmenter("light", 42)
    pipeline = lambda service=None: make_pipeline(data.train, 5, 128, 32, training=True,  # noqa: E731
                                                  augmenter=augment, service=service)
    results = {"machine": machine(), "photos": len(data.train), "image_size": 128, "passes": args.passes,
               "here": images_per_second(pipeline(), args.passes)}  # the first pass decodes, the others read the cache
    print(f"read here: {results['here']} images/s", flush=True)
    for workers in args.workers:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        address = f"grpc://127.0.0.1:{port}"
        processes = [started(["data-dispatcher", "--port", str(port)])]
        try:
            for _ in range(120):
                try:
                    check_dispatcher(address)
                    break
                except TflError:
                    time.sleep(0.5)
            processes += [started(["data-worker", "--dispatcher", address]) for _ in range(workers)]
            time.sleep(5)  # the workers register
            # Each pass is one job (tfl's training reads one endless job per stage); every pass decodes again.
            results[f"service_{workers}_workers"] = images_per_second(pipeline(address), args.passes)
        finally:
            for process in processes:
                process.terminate()
                process.wait()
        print(f"{workers} worker(s): {results[f'service_{workers}_workers']} images/s", flush=True)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
