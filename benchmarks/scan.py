"""Benchmark: the pre-training scan (every file decoded once with Pillow) on 20,000+ real JPEGs, cold and warm.

The set is made from the shared flower photos, each re-encoded at several sizes (128 to 640 px), so that it has
the size spread of a user's folder. Measured: a cold scan (no scan cache) file by file, on a thread pool and as tfl does it (a worker process per
core), a warm one (every file unchanged: only a
stat per file), and one after 1% of the files changed. Prints files/s and writes benchmarks/results/scan.json.

    python benchmarks/scan.py [--folder DIR (kept, made if missing)] [--sizes 128 256 384 512 640]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from common import machine, write_results  # sets up TF logging (tfl.data imports TensorFlow)
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
FLOWERS = REPO.parent / "shared" / "datasets" / "flowers"
RESULTS = REPO / "benchmarks" / "results"


def reencode(job: tuple[str, str, int]) -> None:
    source, target, size = job
    with Image.open(source) as image:
        image.convert("RGB").resize((size, size * 3 // 4), Image.BICUBIC).save(target, "JPEG", quality=90)


def make_set(folder: Path, sizes: list[int]) -> int:
    """Every shared flower photo at each size, in the same class folders; returns the number of files."""
    jobs = []
    for class_dir in sorted(p for p in FLOWERS.iterdir() if p.is_dir()):
        (folder / class_dir.name).mkdir(parents=True, exist_ok=True)
        for photo in sorted(class_dir.iterdir()):
            jobs += [(str(photo), str(folder / class_dir.name / f"{photo.stem}_{size}.jpg"), size) for size in sizes]
    missing = [job for job in jobs if not os.path.exists(job[1])]
    with ProcessPoolExecutor() as pool:
        list(pool.map(reencode, missing, chunksize=64))
    return len(jobs)


def baseline_scan(folder: Path, threads: bool) -> float:
    """The same decode without tfl's worker processes: file after file, or on a thread pool."""
    from tfl.data import list_class_folders, list_files
    from tfl.scan import scan_file, scan_in_threads

    start = time.perf_counter()
    paths = [path for class_dir in list_class_folders(folder) for path in list_files(class_dir)]
    scan_in_threads(paths) if threads else [scan_file(path) for path in paths]
    return time.perf_counter() - start


def timed_scan(folder: Path, cache_file: Path | None) -> tuple[float, int]:
    from tfl.data import ScanCache, list_class_folders, scan_class_folders

    start = time.perf_counter()
    class_names = [p.name for p in list_class_folders(folder)]
    cache = ScanCache.load(cache_file) if cache_file else None
    split = scan_class_folders(folder, class_names, {"skipped": [], "converted": []}, None, cache)
    if cache:
        cache.save()
    return time.perf_counter() - start, len(split)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 384, 512, 640])
    parser.add_argument("--out", default=str(RESULTS / "scan.json"))
    args = parser.parse_args()
    if not FLOWERS.is_dir():
        raise SystemExit(f"needs {FLOWERS} (the shared folder beside the repo)")
    folder = args.folder or Path(tempfile.mkdtemp(prefix="tfl_scan_"))
    start = time.perf_counter()
    n_files = make_set(folder, args.sizes)
    print(f"{n_files:,} JPEGs in {folder} (made in {time.perf_counter() - start:.0f} s)")
    work = Path(tempfile.mkdtemp(prefix="tfl_scan_cache_"))
    cache_file = work / "scan.json"
    rows = {}
    rows["cold, one thread"] = baseline_scan(folder, threads=False)  # also brings the files into the page cache
    rows["cold, threads"] = baseline_scan(folder, threads=True)
    rows["cold"], n = timed_scan(folder, cache_file)
    rows["warm"], _ = timed_scan(folder, cache_file)
    changed = sorted(folder.rglob("*_256.jpg"))[: n_files // 100]
    for path in changed:
        os.utime(path, None)  # a new modification time: the cache must decode these again
    rows["1% changed"], _ = timed_scan(folder, cache_file)
    print(f"{'scan':<16} {'seconds':>8} {'files/s':>9}")
    for name, seconds in rows.items():
        print(f"{name:<16} {seconds:>8.2f} {n / seconds:>9,.0f}")
    print(f"on {os.cpu_count()} cores, against one thread: threads {rows['cold, one thread'] / rows['cold, threads']:.2f}x, "
          f"tfl's processes {rows['cold, one thread'] / rows['cold']:.2f}x; warm against cold: "
          f"{rows['cold'] / rows['warm']:.0f}x")
    write_results(args.out, {"machine": machine(), "files": n, "sizes_px": args.sizes,
                             "seconds": {k: round(v, 2) for k, v in rows.items()},
                             "files_per_second": {k: round(n / v) for k, v in rows.items()}})
    shutil.rmtree(work)
    if not args.folder:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
