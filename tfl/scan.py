"""The pre-training scan: every file decoded once with Pillow, on every core, and remembered between runs."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from tfl.fileio import atomic_write_text

TF_DECODABLE_FORMATS = {"JPEG", "PNG", "GIF", "BMP", "WEBP"}  # what tf.io.decode_image reads, by content
SCAN_CACHE_FOLDER = ".scan_cache"  # under the runs root, one file per data folder
PROCESS_POOL_MIN_FILES = 2000  # below this, starting interpreters costs more than the GIL does


@dataclass
class ScannedFile:
    path: str
    problem: str | None = None  # why the file cannot be used
    needs_conversion: bool = False  # decodable by Pillow but not by tf.io.decode_image
    short_side: int = 0  # pixels, of the image as stored
    # What the data checks (tfl/checks.py) use, measured in the same pass:
    md5: str = ""  # of the file's bytes: exact duplicates
    phash: str = ""  # perceptual hash (imagehash's DCT hash, 64 bits in hex): near duplicates
    brightness: float = 0.0  # mean grey level 0..255
    contrast: float = 0.0  # standard deviation of the grey levels
    sharpness: float = 0.0  # variance of the Laplacian of the grey image at 128 px: low is blurry
    aspect: float = 1.0  # long side / short side


def image_measures(image: Image.Image) -> dict:
    """The perceptual hash and the grey-level figures of a decoded image (RGB or not)."""
    import imagehash
    import numpy as np

    grey = image.convert("L")
    small = np.asarray(grey.resize((128, 128), Image.Resampling.BILINEAR), np.float32)
    laplacian = (4 * small[1:-1, 1:-1] - small[:-2, 1:-1] - small[2:, 1:-1] - small[1:-1, :-2] - small[1:-1, 2:])
    return {"phash": str(imagehash.phash(grey)), "brightness": round(float(small.mean()), 2),
            "contrast": round(float(small.std()), 2), "sharpness": round(float(laplacian.var()), 2),
            "aspect": round(max(image.size) / max(1, min(image.size)), 3)}


def scan_file(path: str) -> ScannedFile:
    """Fully decode one file with Pillow to find empty, truncated and non-image files up front, and measure what
    the data checks need."""
    try:
        if os.path.getsize(path) == 0:
            return ScannedFile(path, "empty file")
        with open(path, "rb") as handle:
            with Image.open(handle):  # Pillow knows an image by its first bytes: a video is not read whole
                pass
            handle.seek(0)
            content = handle.read()  # read once: hashed, then decoded
        digest = hashlib.md5(content).hexdigest()
        with Image.open(io.BytesIO(content)) as image:
            image_format, short_side, aspect = image.format, min(image.size), max(image.size) / max(1, min(image.size))
            image.draft("RGB", (512, 512))  # JPEG: decode at reduced size, still reads every byte
            image.load()
            measures = image_measures(image) | {"aspect": round(aspect, 3)}
    except UnidentifiedImageError:
        return ScannedFile(path, "not an image")
    except Image.DecompressionBombError as exc:
        return ScannedFile(path, f"too large to decode safely ({exc}); shrink it below "
                                 f"{Image.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} megapixels")
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's truncated/corrupt errors
        return ScannedFile(path, f"unreadable ({exc})")
    return ScannedFile(path, needs_conversion=image_format not in TF_DECODABLE_FORMATS, short_side=short_side,
                       md5=digest, **measures)


def scan_files(paths: list[str]) -> list[ScannedFile]:
    """scan_file on every path, on every core: in one worker process per core for a large folder, else in threads.

    Processes, because Pillow holds the GIL for much of a small file's scan (threads measured 1.34x faster than one
    thread on 2 cores); fresh interpreters (`python -m tfl.scan`), because forking a process that runs TensorFlow's
    threads can deadlock and multiprocessing's spawn would re-run a user's script that lacks a __main__ guard."""
    cores = os.cpu_count() or 1
    if cores == 1 or len(paths) < PROCESS_POOL_MIN_FILES:
        return scan_in_threads(paths)
    shares = [paths[i::cores] for i in range(cores)]
    workers = [start_scan_worker(share) for share in shares]
    results: list[ScannedFile | None] = [None] * len(paths)
    for i, (share, worker) in enumerate(zip(shares, workers)):
        for j, result in enumerate(finish_scan_worker(worker, share)):
            results[i + j * cores] = result
    return results


def scan_in_threads(paths: list[str]) -> list[ScannedFile]:
    with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:
        return list(pool.map(scan_file, paths))


def start_scan_worker(paths: list[str]) -> subprocess.Popen | None:
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    try:
        worker = subprocess.Popen([sys.executable, "-m", "tfl.scan"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, env=env)
        worker.stdin.write(json.dumps(paths).encode())
        worker.stdin.close()
        return worker
    except OSError:
        return None


def finish_scan_worker(worker: subprocess.Popen | None, paths: list[str]) -> list[ScannedFile]:
    """The worker's results, or the same scan done here in threads if the worker could not do it."""
    if worker is not None:
        output = worker.stdout.read()
        if worker.wait() == 0:
            with contextlib.suppress(ValueError, TypeError):
                rows = json.loads(output)
                if len(rows) == len(paths):
                    return [ScannedFile(path, *row) for path, row in zip(paths, rows)]
    return scan_in_threads(paths)


def scan_worker_main() -> None:
    """`python -m tfl.scan`: paths as JSON on stdin, rows of each ScannedFile's fields but its path as JSON out."""
    paths = json.load(sys.stdin)
    rows = [[getattr(r, name) for name in CACHED] for r in map(scan_file, paths)]
    sys.stdout.write(json.dumps(rows))


CACHED = [f.name for f in dataclasses.fields(ScannedFile)][1:]  # a cache entry: the signature, then these


class ScanCache:
    """Scan results kept between runs, keyed by path, size and modification time: a second run on the same folder
    decodes only new or changed files (a stat per file instead of a full decode)."""

    VERSION = 2  # 2: the data checks' hashes and measures

    def __init__(self, path: Path | None = None, entries: dict | None = None):
        self.path, self.entries, self.changed = path, entries or {}, False

    @classmethod
    def load(cls, path: str | Path) -> "ScanCache":
        path = Path(path)
        try:
            saved = json.loads(path.read_text())
            entries = saved["files"] if saved.get("version") == cls.VERSION else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # none yet, or damaged: scan all again
            entries = {}
        if not isinstance(entries, dict):
            entries = {}
        return cls(path, entries)

    @staticmethod
    def signature(path: str) -> list[int] | None:
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return [stat.st_size, stat.st_mtime_ns]

    def scan(self, paths: list[str]) -> list[ScannedFile]:
        """Like scan_files, from the cache where a file's size and modification time are unchanged."""
        signatures = [self.signature(path) for path in paths]
        results: list[ScannedFile | None] = []
        for path, signature in zip(paths, signatures):
            entry = self.entries.get(path)
            hit = signature is not None and isinstance(entry, list) and len(entry) == len(CACHED) + 1 and \
                entry[0] == signature
            results.append(ScannedFile(path, *entry[1:]) if hit else None)
        todo = [i for i, result in enumerate(results) if result is None]
        for i, result in zip(todo, scan_files([paths[i] for i in todo])):
            results[i] = result
            if signatures[i] is not None:
                self.entries[paths[i]] = [signatures[i], *(getattr(result, name) for name in CACHED)]
        self.changed = self.changed or bool(todo)
        return results

    def save(self) -> None:
        if self.path is not None and self.changed:
            atomic_write_text(self.path, json.dumps({"version": self.VERSION, "files": self.entries}))
            self.changed = False


def scan_cache_file(cache_dir: Path, data_root: Path) -> Path:
    """One cache file per data folder, so that runs on different folders do not rewrite each other's."""
    return cache_dir / f"{hashlib.sha1(str(data_root.resolve()).encode()).hexdigest()[:16]}.json"


if __name__ == "__main__":
    scan_worker_main()
