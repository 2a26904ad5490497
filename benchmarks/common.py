"""What the benchmarks share: quiet TensorFlow logs, the shared data and weights beside the repo, the machine line."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from tfl.backend import use_backend

use_backend(os.environ.get("KERAS_BACKEND", "tensorflow"))  # before Keras is imported; TF's start-up lines held

REPO = Path(__file__).resolve().parent.parent
FLOWERS = REPO.parent / "shared" / "datasets" / "flowers"
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_0.35_no_top.weights.h5"
RESULTS = REPO / "benchmarks" / "results"
DATASETS = REPO.parent / "shared" / "datasets"
SINGLE_LABEL_SETS = ("flowers", "weather4", "potato_leaf3", "cats5", "dogs10b")  # the development suite
LABEL_FILES = {"cats5": DATASETS / "cats5" / "cat_labels.csv"}  # sets labelled by a file; the others are class folders


def source(name: str) -> Path:
    """What tfl reads a shared set from: its label file, or its folder of class folders."""
    return LABEL_FILES.get(name, DATASETS / name)


def require_shared_data() -> None:
    if not FLOWERS.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"needs {FLOWERS} and {WEIGHTS} (the shared folder beside the repo)")


def machine() -> str:
    import keras
    import tensorflow as tf

    return (f"{platform.machine()}, {os.cpu_count()} cores ({cpu_vector_units()}), TF {tf.__version__}, "
            f"Keras {keras.__version__}")


def cpu_vector_units() -> str:
    """Which x86 vector extensions the CPU has: int8 TFLite is fast with VNNI and slower than float32 without."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "CPU flags unknown"
    names = {"avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI", "avx512f": "AVX512", "avx2": "AVX2"}
    present = [label for flag, label in names.items() if flag in flags]
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    return " + ".join(present or ["no AVX2"]) + ("" if vnni else ", no VNNI")


def write_results(path: str | Path, results: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


def flowers_subset(target: Path, per_class: int) -> Path:
    """The first `per_class` shared flower photos of each class, linked (not copied) into `target`."""
    for class_dir in sorted(p for p in FLOWERS.iterdir() if p.is_dir()):
        (target / class_dir.name).mkdir(parents=True)
        for photo in sorted(class_dir.iterdir())[:per_class]:
            (target / class_dir.name / photo.name).symlink_to(photo)
    return target


def keras_guide_model(size: int, classes: int, activation: str = "softmax", zoom: float | None = None,
                     rotation: float = 0.1):
    """The Keras transfer-learning guide's model, as the hand-written recipes build it: augmentation layers, the
    shared MobileNetV2-0.35 (frozen, called with training=False), pooling, dropout 0.2 and a new dense head.
    Returns (model, backbone), so that a recipe can unfreeze the backbone for its second stage."""
    import keras

    base = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=str(WEIGHTS),
                                          input_shape=(size, size, 3))
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomRotation(rotation)(x)
    if zoom:
        x = keras.layers.RandomZoom(zoom)(x)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation=activation)(x)), base
