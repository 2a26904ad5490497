"""Shared fixtures (tiny generated image folders, runs trained once per session, the real data and weights in
../shared) and the two tiers: a test that trains or exports a run is an integration test (`-m "not integration"` is
the fast tier), marked here from the fixtures it uses, and a fast test that trains a run anyway fails."""

import os
import shutil
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TFL_SHARED", REPO.parent / "shared"))
FLOWERS = SHARED / "datasets" / "flowers"
MOBILENET_035_WEIGHTS = SHARED / "weights" / "mobilenet_v2_0.35_no_top.weights.h5"

CLASS_COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}

# --- the two tiers ---------------------------------------------------------------------------------------------------

# A test using one of these reads or copies a trained run: it is an integration test, whether it says so or not.
INTEGRATION_FIXTURES = {"tiny_run", "own_run", "exported_run", "real_run", "real_copy"}


# The tests on these share one xdist worker (--dist loadgroup), so the other never waits while one builds them.
GROUPED_FIXTURES = ("exported_run", "real_run")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if INTEGRATION_FIXTURES & fixtures or item.get_closest_marker("extended"):
            item.add_marker(pytest.mark.integration)
        group = next((name for name in GROUPED_FIXTURES if name in fixtures), None)
        if group and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))


def started_by_a_test() -> bool:
    """Whether the code that called into subprocess is a test's (tfl's own scan workers are not)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename in (subprocess.__file__, __file__):
        frame = frame.f_back
    return frame is not None and Path(frame.f_code.co_filename).resolve().is_relative_to(REPO / "tests")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A test not marked integration that trains a run or starts a Python process, in its own code or in a fixture
    it sets up, fails saying where it belongs: so the fast tier stays fast without anyone timing it."""
    if item.get_closest_marker("integration"):
        return (yield)
    import tfl.train

    real_fit, real_popen = tfl.train.Training.fit, subprocess.Popen

    def refuse(what):
        def refused(*args, **kwargs):
            pytest.fail(f"{item.nodeid} {what}: mark it @pytest.mark.integration (or use a trained-run fixture); "
                        "the fast tier neither trains runs nor starts Python processes.", pytrace=False)
        return refused

    class GuardedPopen(real_popen):
        def __init__(self, args, *rest, **kwargs):
            command = [args] if isinstance(args, (str, os.PathLike)) else list(args)
            if command and os.path.basename(str(command[0])).startswith("python") and started_by_a_test():
                refuse("starts a Python process")()
            super().__init__(args, *rest, **kwargs)

    tfl.train.Training.fit, subprocess.Popen = refuse("trains a run"), GuardedPopen
    try:
        return (yield)
    finally:
        tfl.train.Training.fit, subprocess.Popen = real_fit, real_popen


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


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `build(folder)` makes, built by one test process of the session and read by all (pytest-xdist's
    workers share the session's temporary folder): the first to take the lock builds it, the others wait for it.
    Tests read what it holds; one that writes works on a copy (own_run, real_copy)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = shared / f"built_once_{name}", shared / f"built_once_{name}.done"
    with FileLock(str(shared / f"built_once_{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a build that failed left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One finished run on tiny data (mobilenetv2, weights none, 32 px), built once per session; read it only."""
    def build(root):
        import tfl

        data = write_class_folders(root / "data", per_class=10)
        tfl.finetune(data, **TINY_SETTINGS, epochs=(2, 1), output=root / "runs", name="tiny", echo=lambda s: None,
                     verbose=0)

    return built_once(tmp_path_factory, "tiny_run", build) / "runs" / "tiny"


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


def run_copy(run: Path, target: Path) -> Path:
    """A copy of a run without its exports, free to export into or damage."""
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("export*", "model_*.tflite", "model.onnx",
                                                               ".export.lock", "evaluations"))
    return target


@pytest.fixture
def own_run(tiny_run, tmp_path) -> Path:
    """A copy of the shared tiny run without its exports, free to export into or damage."""
    return run_copy(tiny_run, tmp_path / "run")


@pytest.fixture(scope="session")
def exported_run(tiny_run, tmp_path_factory):
    from tfl.formats import QUANTIZATIONS

    """A copy of tiny_run exported as a SavedModel, ONNX and TFLite in every quantization, built once per session;
    read it only. Without the quantization fallback (tests/test_quantize.py searches on the real run): the tiny
    model's low-margin answers would send each quantized file through minutes of search."""
    def build(folder):
        run = run_copy(tiny_run, folder / "tiny")  # the folder's name is the TFLite metadata's version
        result = cli("export", run, "--format", "all", "--quantize", ",".join(QUANTIZATIONS),  # one export, all files
                     "--calibration-samples", "8", "--verify-images", "6", "--no-fallback")
        assert result.exit_code == 0, result.output
        (folder / "output.txt").write_text(result.output)

    return built_once(tmp_path_factory, "exported_run", build) / "tiny"


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
    """MobileNetV2-0.35 with the shared ImageNet weights, trained briefly (head, then the top blocks) on 200 real
    flower photos and validated on 100; built once per session, read it only."""
    weights = require_mobilenet_weights()

    def build(root):
        import tfl

        data = flowers_subset(root / "flowers", train_per_class=40, val_per_class=20)
        tfl.finetune(data, alpha=0.35, weights=weights, image_size=96, batch_size=20, epochs=(8, 1, 0),
                     learning_rates=(3e-3, 2e-4), output=root / "runs", name="real", echo=lambda s: None, verbose=0)

    return built_once(tmp_path_factory, "real_run", build) / "runs" / "real"


@pytest.fixture
def real_copy(real_run, tmp_path) -> Path:
    """A copy of the shared real run without its exports, free to export into."""
    return run_copy(real_run, tmp_path / "real")
