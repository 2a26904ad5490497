"""Ordinary inputs that used to leave broken runs or tracebacks: each gets a usable run or a one-paragraph error."""

import json
import os
import shutil
import stat

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from tests.conftest import cli, make_image, tiny_flags, write_class_folders
from tfl.cli import main
from tfl.pipeline import load_image_for_predict

TINY = tiny_flags()


def train(data, runs, name, *extra, epochs="2,1"):
    result = cli("finetune", "--data", data, *TINY, "--epochs", epochs, "--output", runs, "--name", name, *extra)
    assert result.exit_code == 0, result.output
    return runs / name


def sixteen_bit_grey(path, seed=0):
    """A 16-bit greyscale PNG with a picture in it (Pillow's RGB conversion turns such files white)."""
    rng = np.random.default_rng(seed)
    pixels = (rng.uniform(0.1, 0.6, (40, 40)) * 65535).astype(np.uint16)
    pixels[10:20, 10:30] = 60000
    Image.fromarray(pixels).save(path)
    return (pixels / 257).round().astype(np.uint8)


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory):
    """A run trained with a relative --data path and a TIFF that had to be converted, then moved elsewhere."""
    root = tmp_path_factory.mktemp("moved")
    data = write_class_folders(root / "work" / "photos", per_class=10)
    make_image((200, 40, 40), seed=77).save(data / "red" / "scan.tiff", "TIFF")
    old_cwd = os.getcwd()
    os.chdir(root / "work")
    try:
        run = train("photos", root / "work" / "runs", "tif", epochs="2,0")
    finally:
        os.chdir(old_cwd)
    moved = root / "elsewhere" / "tif"
    shutil.move(str(run), str(moved))
    return moved


@pytest.mark.integration
def test_run_keeps_absolute_data_paths_and_its_converted_images(moved_run):
    config = yaml.safe_load((moved_run / "config.yaml").read_text())
    assert os.path.isabs(config["data"])
    splits = json.loads((moved_run / "splits.json").read_text())
    paths = [p for split in splits.values() for p in split["paths"]]
    converted = [p for p in paths if "scan" in p]
    assert converted and converted[0].startswith("converted/"), "converted files are kept relative to the run"
    assert (moved_run / converted[0]).is_file()
    assert all(os.path.isabs(p) for p in paths if p not in converted)
    report = json.loads((moved_run / "data_report.json").read_text())
    assert [item["to"] for item in report["converted"]] == converted, "no '.partial' path in the data report"


@pytest.mark.integration
def test_a_moved_run_evaluates_and_exports_from_another_directory(moved_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("evaluate", moved_run)
    assert result.exit_code == 0, result.output
    result = cli("export", moved_run, "--format", "tflite", "--quantize", "int8", "--calibration-samples", "40",
                 "--no-fallback")
    assert result.exit_code == 0, result.output
    assert (moved_run / "model_int8.tflite").is_file()


@pytest.mark.integration
def test_a_relative_weights_path_is_saved_absolute(tiny_folder, tmp_path, monkeypatch):
    from tests.conftest import require_mobilenet_weights

    weights = require_mobilenet_weights()
    monkeypatch.chdir(weights.parent)
    result = cli("finetune", "--data", tiny_folder, "--weights", weights.name, "--alpha", "0.35", "--image-size", "32",
                 "--epochs", "1,0", "--output", tmp_path, "--name", "w")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "w" / "config.yaml").read_text())["weights"] == str(weights.resolve())


@pytest.mark.integration
def test_files_get_ordinary_modes(moved_run):
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    for name in ("labels.txt", "config.yaml", "metrics.json", "splits.json", "data_report.json", "history.csv",
                 "training_curves.png", "model.keras"):
        assert stat.S_IMODE((moved_run / name).stat().st_mode) == expected, name


def test_one_decoder_sixteen_bit_pngs_keep_their_picture(tmp_path):
    expected = sixteen_bit_grey(tmp_path / "deep.png")
    pixels = load_image_for_predict(str(tmp_path / "deep.png"), 40)
    assert np.abs(pixels[..., 0].astype(int) - expected).max() <= 1
    Image.open(tmp_path / "deep.png").save(tmp_path / "deep.tiff")  # a 16-bit TIFF: Pillow converts, TF decodes
    pixels = load_image_for_predict(str(tmp_path / "deep.tiff"), 40)
    assert np.abs(pixels[..., 0].astype(int) - expected).max() <= 1


def test_predict_sees_exactly_the_pixels_training_saw(tmp_path):
    from tfl.data import Split
    from tfl.pipeline import decoded_images

    paths = []
    for i, size in enumerate((40, 300, 900)):  # small, larger than the model, large enough for a reduced decode
        make_image((200, 40, 40), size=size, seed=i).save(tmp_path / f"{i}.jpg", quality=85)
        paths.append(str(tmp_path / f"{i}.jpg"))
    Image.fromarray(np.full((50, 70), 30000, np.uint16)).save(tmp_path / "deep.png")
    paths.append(str(tmp_path / "deep.png"))
    training = [image.numpy() for image, _ in decoded_images(Split(paths=paths, labels=[0] * len(paths)), 96)]
    for path, seen in zip(paths, training):
        np.testing.assert_array_equal(load_image_for_predict(path, 96), seen, err_msg=path)


def test_metrics_and_the_export_reference_agree(own_run):
    tiny_run = own_run
    result = cli("export", tiny_run, "--format", "tflite", "--quantize", "dynamic", "--no-fallback")
    assert result.exit_code == 0, result.output
    report = json.loads((tiny_run / "export_report.json").read_text())
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert report["model.keras"]["accuracy"] == metrics["accuracy"]


def test_damaged_artifacts_and_runs_are_clear_errors(tiny_run, tmp_path):
    photo = tmp_path / "photo.jpg"
    make_image((200, 40, 40)).save(photo)
    (tmp_path / "random.keras").write_bytes(os.urandom(2000))
    result = cli("predict", tmp_path / "random.keras", photo)
    assert result.exit_code == 1 and "cannot be read as a Keras model" in result.output
    (tmp_path / "cut.tflite").write_bytes((tiny_run / "model.keras").read_bytes()[:1000])
    result = cli("predict", tmp_path / "cut.tflite", photo)
    assert result.exit_code == 1 and "cannot be read as a TFLite model" in result.output
    no_labels = tmp_path / "no_labels"
    no_labels.mkdir()
    shutil.copy(tiny_run / "model.keras", no_labels / "model.keras")
    result = cli("predict", no_labels, photo)
    assert result.exit_code == 1 and "labels.txt' is missing" in result.output
    for command in ("evaluate", "export"):
        result = cli(command, no_labels)
        assert result.exit_code == 1 and "is not a finished tfl run" in result.output


def test_predict_fails_when_no_input_could_be_read(tiny_run, tmp_path):
    (tmp_path / "a.jpg").write_text("not an image")
    result = cli("predict", tiny_run, tmp_path / "a.jpg")
    assert result.exit_code == 1 and "None of the 1 input file(s) could be read" in result.output


@pytest.mark.integration
def test_huge_images_are_skipped_and_reported(tmp_path, monkeypatch):
    """Pillow refuses images over twice MAX_IMAGE_PIXELS (a decompression bomb); a smaller limit stands in for a
    196-megapixel photo."""
    data = write_class_folders(tmp_path / "d", per_class=6)
    make_image((200, 40, 40), size=120).save(data / "red" / "huge.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 120x120 = 14,400 > 2 x 3,000
    result = cli("finetune", "--data", data, *TINY, "--epochs", "1,0", "--output", tmp_path / "runs", "--name", "h")
    assert result.exit_code == 0, result.output
    assert "huge.jpg: too large to decode safely" in result.output
    report = json.loads((tmp_path / "runs" / "h" / "data_report.json").read_text())
    assert [item["path"].endswith("huge.jpg") for item in report["skipped"]] == [True]


def test_absurd_image_size_is_refused(tiny_folder):
    result = cli("finetune", "--data", tiny_folder, *TINY[:-4], "--image-size", "100000")
    assert result.exit_code == 1 and "is too large" in result.output


@pytest.mark.parametrize("problem", ["missing weights file", "weights of another alpha", "unknown tfds name"])
def test_a_run_that_fails_before_training_leaves_nothing(problem, tiny_folder, tmp_path):
    from tests.conftest import require_mobilenet_weights

    args = {"missing weights file": ["--data", tiny_folder, "--weights", tmp_path / "nope.weights.h5"],
            "unknown tfds name": ["--data", "tfds:no_such_dataset_xyz", "--weights", "none"]}.get(problem)
    if args is None:
        args = ["--data", tiny_folder, "--weights", require_mobilenet_weights(), "--alpha", "1.0"]
    runs = tmp_path / "runs"
    result = cli("finetune", *args, "--image-size", "32", "--epochs", "1,0", "--output", runs, "--name", "f")
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) <= 12, "one paragraph, not a page of Keras warnings"
    assert not (runs / "f.partial").exists() and not (runs / "f").exists()


def test_alpha_for_an_arch_without_it_is_a_warning(tmp_path):
    from tfl.config import load_config
    from tfl.errors import TflWarning

    with pytest.warns(TflWarning, match="alpha 0.35 is ignored"):
        assert load_config("resnet50", overrides={"alpha": 0.35}).alpha == 1.0  # what config.yaml records
    result = cli("finetune", "--data", tmp_path / "nope", "--arch", "resnet50", "--alpha", "0.35")
    assert result.output.startswith("Warning: alpha 0.35 is ignored: resnet50 has no width multiplier (only mobilenetv2")


@pytest.mark.integration
def test_a_runs_config_yaml_reproduces_the_run(tiny_folder, tmp_path):
    first = train(tiny_folder, tmp_path, "first", "--seed", "5", epochs="3,0")
    result = cli("finetune", "--config", first / "config.yaml", "--output", tmp_path, "--name", "again")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again" / "history.csv").read_text() == (first / "history.csv").read_text()


def test_small_classes_are_warned_about_and_left_out_of_macro_f1(tmp_path):
    from tfl.data import load_image_folder
    from tfl.errors import TflWarning
    from tfl.metrics import classification_metrics

    data = write_class_folders(tmp_path / "d", per_class=10)
    write_class_folders(data, per_class=2, classes={"pair": (200, 200, 40)}, seed=900)
    write_class_folders(data, per_class=1, classes={"single": (40, 200, 200)}, seed=950)
    with pytest.warns(TflWarning) as caught:
        loaded = load_image_folder(data, val_split=0.2, seed=0)
    messages = " ".join(str(w.message) for w in caught)
    assert "too small for a 20% validation split" in messages and "pair (1 of 2)" in messages
    assert "single have no validation image" in messages
    assert loaded.report["counts"]["val"]["single"] == 0

    names = ["a", "b", "never"]  # 'never' is neither in the labels nor predicted
    probabilities = np.eye(3)[[0, 0, 1, 0]]
    metrics = classification_metrics(probabilities, np.asarray([0, 0, 1, 1]), names)
    f1 = {name: row["f1"] for name, row in metrics["per_class"].items()}
    assert metrics["macro_f1"] == pytest.approx((f1["a"] + f1["b"]) / 2, abs=1e-4) and f1["never"] == 0


def test_an_export_killed_after_its_saved_model_finishes_on_a_rerun(own_run, monkeypatch):
    import tfl.export

    tiny_run = own_run

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tfl.export, "write_tflite", killed)
    result = CliRunner().invoke(main, ["export", str(tiny_run), "--format", "all"])
    assert result.exit_code == 130
    assert (tiny_run / "export" / "saved_model" / "1" / "saved_model.pb").is_file()
    assert "export/saved_model/1" in json.loads((tiny_run / "export_report.json").read_text())
    monkeypatch.undo()
    result = cli("export", tiny_run, "--format", "all")
    assert result.exit_code == 0, result.output
    assert "Keeping export/saved_model/1" in result.output
    report = json.loads((tiny_run / "export_report.json").read_text())
    assert {"export/saved_model/1", "model_float32.tflite"} <= set(report)


def test_a_class_named_with_a_line_break_is_refused_before_training(tmp_path):
    """Issue 41.10: a class folder named with a newline made labels.txt list four names for three outputs."""
    data = write_class_folders(tmp_path / "photos", per_class=3)
    (data / "red").rename(data / "red\ntulip")
    result = cli("finetune", "--data", data, *TINY, "--epochs", "1,0", "--output", tmp_path / "runs")
    assert result.exit_code == 1 and "'red\\ntulip'" in result.output and "control character" in result.output
    assert not (tmp_path / "runs").exists() or not [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]


@pytest.mark.integration
def test_labels_that_do_not_match_the_models_outputs_are_a_clear_error(own_run, tmp_path):
    (own_run / "labels.txt").write_text("blue\ngreen\nred\ntulip\n")
    make_image((200, 40, 40)).save(tmp_path / "a.jpg")
    result = cli("predict", own_run, tmp_path / "a.jpg")
    assert result.exit_code == 1 and "gives 3 scores per image, but its class names (labels.txt) are 4" in result.output


@pytest.mark.integration
def test_report_on_a_damaged_or_read_only_run_is_a_clear_error(own_run, monkeypatch):
    """Issue 41.13: tfl report on a cut metrics.json or config.yaml, or on a run it cannot write, gave a traceback."""
    import tfl.html_report

    metrics = (own_run / "metrics.json").read_text()
    (own_run / "metrics.json").write_text(metrics[: len(metrics) // 2])
    result = cli("report", own_run)
    assert result.exit_code == 1 and "metrics.json' is damaged" in result.output
    (own_run / "metrics.json").write_text(metrics)
    config = (own_run / "config.yaml").read_text()
    (own_run / "config.yaml").write_text("arch: [mobilenetv2\n")
    result = cli("report", own_run)
    assert result.exit_code == 1 and "config.yaml' is damaged" in result.output
    (own_run / "config.yaml").write_text(config)

    def refused(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(tfl.html_report, "atomic_write_text", refused)  # root writes anywhere: refused as on read-only
    result = cli("report", own_run)
    assert result.exit_code == 1 and "Permission denied" in result.output and "copy the run folder" in result.output
