"""Shared fixtures: tiny generated image folders, and the real data and weights in ../shared."""

import os
import shutil

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TFL_SHARED", REPO.parent / "shared"))
FLOWERS = SHARED / "datasets" / "flowers"
MOBILENET_035_WEIGHTS = SHARED / "weights" / "mobilenet_v2_0.35_no_top.weights.h5"

CLASS_COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def make_image(colour, size=40, seed=0) -> Image.Image:
    """A colour-coded image with noise and a random bright square, so classes are easy but not trivial."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.asarray(colour) + rng.normal(0, 25, (size, size, 3)), 0, 255)
    x, y = rng.integers(0, size // 2, 2)
    pixels[y:y + size // 4, x:x + size // 4] = 255
    return Image.fromarray(pixels.astype("uint8"))


def write_class_folders(root: Path, per_class: int, classes=CLASS_COLOURS, size=40, seed=0) -> Path:
    for c, (name, colour) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(colour, size, seed=seed + 1000 * c + i).save(folder / f"{name}_{i}.jpg")
    return root


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """Three colour classes, 12 images each, 40x40 JPEGs."""
    return write_class_folders(tmp_path / "tiny", per_class=12)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One finished run on tiny data (mobilenetv2, weights none, 32 px), shared by read-only tests."""
    import tfl

    root = tmp_path_factory.mktemp("tiny_run")
    data = write_class_folders(root / "data", per_class=10)
    run = tfl.finetune(data, **TINY_SETTINGS, epochs=(2, 1), output=root / "runs", name="tiny", echo=lambda s: None,
                       verbose=0)
    return run.path


# The tiny model every test run trains: MobileNetV2-0.35 at 32 px, 8 photos a batch (as flags and as settings).
TINY_SETTINGS = dict(arch="mobilenetv2", alpha=0.35, weights="none", image_size=32, batch_size=8)


def tiny_flags(weights: str | Path = "none") -> list[str]:
    """TINY_SETTINGS as `tfl finetune` flags."""
    return ["--arch", "mobilenetv2", "--alpha", "0.35", "--weights", str(weights), "--image-size", "32",
            "--batch-size", "8"]


def cli(*args):
    """`tfl ARGS` in this process (click's runner): any exception but an exit, or a traceback printed, fails."""
    from click.testing import CliRunner

    from tfl.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.fixture
def own_run(tiny_run, tmp_path) -> Path:
    """A copy of the shared tiny run without its exports, free to export into or damage."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("export*", "model_*.tflite", "model.onnx",
                                                                   ".export.lock"))
    return copy


def require_flowers():
    if not FLOWERS.is_dir():
        pytest.skip(f"real images not found at {FLOWERS} (the shared datasets folder is absent)")
    return FLOWERS


def require_mobilenet_weights():
    if not MOBILENET_035_WEIGHTS.is_file():
        pytest.skip(f"shared MobileNetV2-0.35 weights not found at {MOBILENET_035_WEIGHTS}")
    return MOBILENET_035_WEIGHTS


def flowers_subset(target: Path, train_per_class: int, val_per_class: int) -> Path:
    """A train/val layout of symlinks into ../shared/datasets/flowers (no image is copied)."""
    flowers = require_flowers()
    for class_dir in sorted(p for p in flowers.iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())
        for split, chosen in (("train", files[:train_per_class]),
                              ("val", files[train_per_class:train_per_class + val_per_class])):
            folder = target / split / class_dir.name
            folder.mkdir(parents=True, exist_ok=True)
            for f in chosen:
                (folder / f.name).symlink_to(f)
    return target


@pytest.fixture(scope="session")
def real_run(tmp_path_factory):
    """MobileNetV2-0.35 with the shared ImageNet weights, briefly trained on real flower photos."""
    weights = require_mobilenet_weights()
    import tfl

    root = tmp_path_factory.mktemp("real_run")
    data = flowers_subset(root / "flowers", train_per_class=30, val_per_class=12)
    return tfl.finetune(data, alpha=0.35, weights=weights, image_size=96, epochs=(4, 0, 0), learning_rates=(3e-3,),
                        output=root / "runs", name="real", echo=lambda s: None, verbose=0).path
