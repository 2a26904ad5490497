"""Benchmark: every step before training at 10,000-100,000 photos, and the near-copy index at 1,000,000 hashes.

Folders of tiny synthetic JPEGs with planted copies (benchmarks/synthetic.py, kept under --folder). For each size:
- `tfl check DIR --no-probe` in its own process, cold (no scan cache) and warm: wall time and peak memory (the
  largest resident set of the process or of one of its scan workers);
- the same steps in one process, phase by phase (listing, scan from the cache, the grouped split, the checks, the
  report written): seconds and the report's size;
- whether every planted exact and near copy is in one group with its original.
Then, with --hashes N: N perceptual hashes of synthetic patterns (with 1% planted near copies, 0-4 bits flipped),
the index's time and the planted pairs found. With --probe N: the label probe on N synthetic float16 feature
vectors (memory-mapped, 1% of labels flipped): its time, peak memory and the flips it ranks first.

    python benchmarks/scale.py [--photos 10000 25000 100000] [--hashes 1000000] [--probe 20000 100000 1000000] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from synthetic import make_folder, pattern, TINTS  # not common: it starts TensorFlow, whose memory a child's peak
# would count (a forked child's resident set starts at its parent's)

HERE = Path(__file__).resolve().parent


# `tfl check` as the command runs it, then the largest resident set of its process and of its scan workers
CHECK = ("import resource, sys\nfrom tfl.cli import main\ncode = 0\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as end:\n"
         "    code = end.code\nprint('peak', max(resource.getrusage(who).ru_maxrss for who in "
         "(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) // 1024)\nsys.exit(code)")


def timed_check(folder: Path, scratch: Path, report: Path) -> dict:
    """`tfl check --no-probe` in a fresh process: wall time and peak memory (MB)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHECK, "check", str(folder), "--no-probe", "--output",
                           str(scratch), "--json", str(report), "--listed", "1"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stdout + done.stderr)
    return {"seconds": round(time.perf_counter() - start, 1), "peak_mb": int(done.stdout.split("peak")[-1])}


def planted_found(report: dict, planted: dict) -> dict:
    """How many planted pairs share a group of the report's exact / near duplicates (or conflicts)."""
    group_of = {}
    for key in ("exact_duplicates", "near_duplicates"):
        for n, group in enumerate(report["checks"][key]):
            for path in group["paths"]:
                group_of[os.path.realpath(path)] = (key, n)
    found = lambda pairs: sum(  # noqa: E731
        group_of.get(os.path.realpath(a)) is not None and group_of.get(os.path.realpath(a)) == group_of.get(
            os.path.realpath(b)) for a, b in pairs)
    import imagehash
    from PIL import Image

    from tfl.checks import NEAR_RADIUS

    def distance(a: str, b: str) -> int:
        with Image.open(a) as first, Image.open(b) as second:
            return int(imagehash.phash(first.convert("L")) - imagehash.phash(second.convert("L")))

    # A re-encoded, resized copy can move its hash past the radius: then it is no near copy by tfl's definition.
    within = [pair for pair in planted["near"] if distance(*pair) <= NEAR_RADIUS]
    return {"exact": f"{found(planted['exact'])}/{len(planted['exact'])}",
            "near": f"{found(within)}/{len(within)}", "near_beyond_radius": len(planted["near"]) - len(within)}


def phases(folder: Path, scratch: Path) -> dict:
    """The steps of `tfl check --no-probe`, one by one in this process (the scan cache warm)."""
    from tfl.checks import Photo, grouped_split_groups, health_report
    from tfl.data import list_class_folders, list_files, stratified_split
    from tfl.scan import ScanCache, scan_cache_file
    from tfl.split import Split

    seconds, start = {}, time.perf_counter()

    def lap(name):
        nonlocal start
        seconds[name] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()

    classes = list_class_folders(folder)
    candidates = [(path, label) for label, c in enumerate(classes) for path in list_files(c)]
    lap("list")
    cache = ScanCache.load(scan_cache_file(scratch / ".scan_cache", folder))
    scanned = cache.scan([path for path, _ in candidates])
    lap("scan (cached)")
    split = Split([p for p, _ in candidates], [y for _, y in candidates])
    by_path = {r.path: r for r in scanned}
    train, val = stratified_split(split, 0.2, 42, grouped_split_groups(split.paths, by_path))
    lap("grouped split")
    photos = [Photo(p, y, name, by_path[p]) for name, s in (("train", train), ("val", val))
              for p, y in zip(s.paths, s.labels)]
    checks = health_report(photos, [c.name for c in classes])
    lap("checks")
    size = len(json.dumps(checks))
    lap("report")
    return {"seconds": seconds, "report_bytes": size,
            "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def one_size(photos: int, root: Path) -> dict:
    folder = root / f"photos_{photos}"
    planted_file = folder / "planted.json"
    planted = json.loads(planted_file.read_text()) if planted_file.is_file() else make_folder(folder, photos)
    files = photos + len(planted["exact"]) + len(planted["near"])
    with tempfile.TemporaryDirectory(prefix="tfl_scale_") as scratch:
        scratch, report = Path(scratch), Path(scratch) / "report.json"
        cold = timed_check(folder, scratch, report)
        warm = timed_check(folder, scratch, report)
        found = planted_found(json.loads(report.read_text()), planted)
        steps = json.loads(subprocess.run(
            [sys.executable, str(HERE / "scale.py"), "--phases", str(folder), str(scratch)],
            capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    row = {"photos": files, "cold": cold, "warm": warm, "planted_found": found, "phases": steps}
    print(json.dumps(row), flush=True)
    return row


def hash_share(job: tuple[int, int]) -> list[str]:
    import imagehash

    start, stop = job
    return [str(imagehash.phash(pattern(i, TINTS[i % len(TINTS)], 32).convert("L"))) for i in range(start, stop)]


def index_at(count: int) -> dict:
    """`count` hashes of synthetic patterns, 1% of them planted near copies of others (0-4 bits flipped)."""
    from tfl.checks import near_pairs

    start = time.perf_counter()
    originals = count - count // 100
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        hashes = [h for share in pool.map(hash_share, [(s, min(originals, s + 20_000))
                                                       for s in range(0, originals, 20_000)]) for h in share]
    made = time.perf_counter() - start
    rng = np.random.default_rng(0)
    sources = rng.choice(originals, count - originals, replace=False)
    for source in sources:
        value = int(hashes[source], 16)
        for bit in rng.choice(64, int(rng.integers(0, 5)), replace=False):
            value ^= 1 << int(bit)
        hashes.append(format(value, "016x"))
    start = time.perf_counter()
    pairs = near_pairs(hashes)
    seconds = time.perf_counter() - start
    found = {(i, j) for i, j, _ in pairs}
    hits = sum((int(s), originals + k) in found for k, s in enumerate(sources))
    row = {"hashes": count, "index_seconds": round(seconds, 1), "pairs": len(pairs),
           "planted_found": f"{hits}/{len(sources)}", "hashing_seconds": round(made, 1),
           "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print(json.dumps(row), flush=True)
    return row


SEPARATION = 0.07  # of the synthetic classes' centres: a linear probe gets about 0.8 right, as on flowers


def make_features(count: int, folder: Path, classes: int = 10, width: int = 1280) -> None:
    """The synthetic features probe_at reads, written in a process of their own (pages written through a memory
    map count in the writer's resident set)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, count)  # the same draws as probe_at's
    centres = np.random.default_rng(1).normal(0, 1, (classes, width)).astype(np.float32)
    features = np.lib.format.open_memmap(folder / f"features_{count}.npy", mode="w+", dtype="float16",
                                         shape=(count, width))
    for start in range(0, count, 5_000):
        rows = slice(start, min(count, start + 5_000))
        noise = rng.standard_normal((rows.stop - start, width), dtype=np.float32)
        features[rows] = centres[labels[rows]] * SEPARATION + noise
    features.flush()


def probe_at(count: int, folder: Path, classes: int = 10, width: int = 1280) -> dict:
    """The label probe on `count` synthetic feature vectors (float16, memory-mapped as the feature cache keeps them;
    classes as clusters as hard as flowers' for a linear probe, 1% of labels flipped): seconds, peak memory (which
    counts the pages of the memory map read, which the OS may drop), and how many flips rank among the first 1%."""
    from cleanlab.filter import find_label_issues

    from tfl.probe import PROBE_SAMPLE, out_of_fold_probabilities

    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, count)
    path = folder / f"features_{count}.npy"
    features = np.load(path, mmap_mode="r")  # written by make_features in another process
    flipped = rng.choice(count, count // 100, replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, classes, len(flipped))) % classes
    start = time.perf_counter()
    probabilities = out_of_fold_probabilities(features, noisy)
    fitted = time.perf_counter() - start
    ranked = find_label_issues(noisy, probabilities, return_indices_ranked_by="self_confidence")
    seconds = time.perf_counter() - start
    top = set(ranked[:len(flipped)].tolist())
    row = {"photos": count, "fit_and_predict_seconds": round(fitted, 1), "with_cleanlab_seconds": round(seconds, 1),
           "sample": min(count, PROBE_SAMPLE), "flips_in_first_1_percent": f"{len(top & set(flipped.tolist()))}/"
                                                                          f"{len(flipped)}",
           "accuracy_of_probe": round(float((probabilities.argmax(1) == labels).mean()), 3),
           "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    path.unlink()
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    if sys.argv[1:2] == ["--phases"]:  # a child: one size's phases in a fresh process
        print(json.dumps(phases(Path(sys.argv[2]), Path(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, nargs="*", default=[10_000, 25_000, 100_000])
    parser.add_argument("--hashes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--probe", type=int, nargs="*", default=[20_000, 100_000, 1_000_000])
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "tfl_scale")
    parser.add_argument("--out", default=str(HERE / "results" / "scale.json"))
    parser.add_argument("--keep", action="store_true", help="Keep the parts of --out that this run does not measure.")
    args = parser.parse_args()
    earlier = json.loads(Path(args.out).read_text()) if args.keep and Path(args.out).is_file() else {}
    results = {"sizes": [], "index": []}
    for photos in args.photos:  # each size from a fresh parent, so that the children's peak is its own
        done = subprocess.run([sys.executable, str(HERE / "scale.py"), "--one", str(photos), str(args.folder)],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stdout + done.stderr)
        results["sizes"].append(json.loads(done.stdout.splitlines()[-1]))
    for count in args.hashes:
        results["index"].append(index_at(count))
    results["probe"] = []
    for count in args.probe:  # each in a fresh process: its own memory peak
        for step in ("--probe-make", "--probe-one"):
            done = subprocess.run([sys.executable, str(HERE / "scale.py"), step, str(count), str(args.folder)],
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stdout + done.stderr)
        results["probe"].append(json.loads(done.stdout.splitlines()[-1]))
    sizes = results["sizes"]
    for row in sizes[1:]:
        row["cold_ratio_to_previous"] = round(row["cold"]["seconds"] / sizes[sizes.index(row) - 1]["cold"]["seconds"],
                                              2)
    results |= {key: earlier[key] for key in ("sizes", "index", "probe") if earlier.get(key) and not results[key]}
    from common import machine, write_results  # last: it starts TensorFlow, which the children above must not share

    write_results(args.out, {"machine": machine(), **results})


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(one_size(int(sys.argv[2]), Path(sys.argv[3]))))
    elif sys.argv[1:2] == ["--probe-make"]:
        Path(sys.argv[3]).mkdir(parents=True, exist_ok=True)
        make_features(int(sys.argv[2]), Path(sys.argv[3]))
    elif sys.argv[1:2] == ["--probe-one"]:
        print(json.dumps(probe_at(int(sys.argv[2]), Path(sys.argv[3]))))
    else:
        main()
