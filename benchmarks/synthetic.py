"""Synthetic photo folders for the scale benchmarks: tiny JPEGs in class folders, with planted exact and near copies.

Each photo is a smooth random pattern (a 6x6 grid of random grey levels upsampled, fine noise over it, a class tint),
so its perceptual hash differs from every other's as real photos' do. Planted: exact copies (the same bytes, under
the same or another class) and near copies (the photo re-encoded at another JPEG quality and size). planted.json
beside the classes names every planted pair, for the benchmark to check that all are found.

    python benchmarks/synthetic.py FOLDER --photos 100000 [--classes 10] [--size 48] [--copies 0.01]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

TINTS = [(250, 90, 90), (90, 250, 90), (90, 90, 250), (230, 230, 90), (90, 230, 230), (230, 90, 230),
         (200, 140, 80), (80, 140, 200), (160, 160, 160), (120, 200, 120)]


def pattern(seed: int, tint, size: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    grid = Image.fromarray((rng.uniform(0, 1, (6, 6)) * 255).astype("uint8"))
    grey = np.asarray(grid.resize((size, size), Image.BICUBIC), np.float32) + rng.normal(0, 12, (size, size))
    return Image.fromarray(np.clip(grey[..., None] * np.asarray(tint) / 255 + 20, 0, 255).astype("uint8"))


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_share(job: tuple[str, int, int, int, int, int]) -> None:
    """Photos start..stop-1 of a set of `classes` classes."""
    folder, start, stop, classes, size, seed = job
    for i in range(start, stop):
        label = i % classes
        path = Path(folder) / f"class_{label:02d}" / f"photo_{i:07d}.jpg"
        if not path.exists():
            path.write_bytes(jpeg_bytes(pattern(seed * 10_000_019 + i, TINTS[label % len(TINTS)], size), 90))


def make_folder(folder: Path, photos: int, classes: int = 10, size: int = 48, copies: float = 0.01,
                seed: int = 0) -> dict:
    """`photos` originals in `classes` folders, then copies of `copies` of them exact and as many near (a tenth of
    the exact ones under another class); returns the planted pairs (also written to planted.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    for label in range(classes):
        (folder / f"class_{label:02d}").mkdir(exist_ok=True)
    chunk = 2000
    jobs = [(str(folder), start, min(photos, start + chunk), classes, size, seed) for start in range(0, photos, chunk)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write_share, jobs))
    rng = np.random.default_rng(seed)
    picked = rng.choice(photos, size=2 * int(photos * copies), replace=False)
    exact, near = picked[:len(picked) // 2], picked[len(picked) // 2:]
    original = lambda i: folder / f"class_{i % classes:02d}" / f"photo_{i:07d}.jpg"  # noqa: E731
    planted = {"photos": photos, "exact": [], "near": []}
    for n, i in enumerate(exact):
        label = (i % classes + 1) % classes if n % 10 == 0 else i % classes  # one in ten under another class
        target = folder / f"class_{label:02d}" / f"copy_{i:07d}.jpg"
        shutil.copyfile(original(i), target)
        planted["exact"].append([str(original(i)), str(target)])
    for i in near:
        target = folder / f"class_{i % classes:02d}" / f"near_{i:07d}.jpg"
        with Image.open(original(i)) as image:
            target.write_bytes(jpeg_bytes(image.convert("RGB").resize((size + 8, size + 8), Image.BILINEAR), 75))
        planted["near"].append([str(original(i)), str(target)])
    (folder / "planted.json").write_text(json.dumps(planted))
    return planted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--photos", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--copies", type=float, default=0.01)
    args = parser.parse_args()
    planted = make_folder(args.folder, args.photos, args.classes, args.size, args.copies)
    print(f"{args.photos:,} photos and {len(planted['exact'])} exact and {len(planted['near'])} near copies in "
          f"{args.folder}")


if __name__ == "__main__":
    main()
