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


def require_shared_data() -> None:
    if not FLOWERS.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"needs {FLOWERS} and {WEIGHTS} (the shared folder beside the repo)")


def machine() -> str:
    import keras
    import tensorflow as tf

    return f"{platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}, Keras {keras.__version__}"


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
