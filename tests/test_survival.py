"""Runs that survive what users do to them: photos that move or vanish, concurrent exports, full disks, in-memory
images and loose Python arguments. Each test failed (a traceback or a wrong result) before the fix it guards."""

import errno
import json
import os
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import tfl
from tests.conftest import REPO, TINY_SETTINGS, cli, make_image, write_class_folders
from tfl.cli import main

TINY = dict(TINY_SETTINGS, echo=lambda s: None, verbose=0)


def move_photos_away(run):
    """The run's photos are gone (the run was copied to another machine, or the data folder cleaned up)."""
    splits = json.loads((run / "splits.json").read_text())
    for split in splits.values():
        split["paths"] = ["/gone" + p for p in split["paths"]]
    (run / "splits.json").write_text(json.dumps(splits))


# --- exports without the training photos ------------------------------------------------------------------------

def test_a_run_whose_photos_are_gone_still_exports_and_says_what_was_not_verified(own_run, tiny_run):
    move_photos_away(own_run)
    result = cli("export", own_run, "--format", "all")
    assert result.exit_code == 0, result.output
    assert "accuracy NOT verified" in result.output and "--data DIR" in result.output
    report = json.loads((own_run / "export_report.json").read_text())
    for row in report.values():
        assert row["accuracy"] is None and "generated images" in row["verified_on"]
    assert report["model_float32.tflite"]["top1_agreement"] >= 0.9
    assert report["model_float32.tflite"]["max_abs_diff"] < 1e-3

    result = cli("export", own_run, "--quantize", "int8")
    assert result.exit_code == 1
    assert "calibrates the quantization on photos" in result.output and "--data DIR" in result.output
    assert not (own_run / "model_int8.tflite").exists()

    data = tiny_run.parent.parent / "data"  # photos of the same classes, in class folders
    result = cli("export", own_run, "--quantize", "int8", "--data", data, "--calibration-samples", "8", "--no-fallback")
    assert result.exit_code == 0, result.output
    assert "int8 calibration: on the 30 photos of --data" in result.output
    row = json.loads((own_run / "export_report.json").read_text())["model_int8.tflite"]
    assert row["accuracy"] is not None and row["verified_on"] == "30 photos of --data"


def test_a_run_with_some_photos_gone_verifies_on_those_left(own_run):
    splits = json.loads((own_run / "splits.json").read_text())
    splits["val"]["paths"][0] = "/gone/photo.jpg"
    (own_run / "splits.json").write_text(json.dumps(splits))
    result = cli("export", own_run, "--quantize", "dynamic", "--no-fallback")
    assert result.exit_code == 0, result.output
    row = json.loads((own_run / "export_report.json").read_text())["model_dynamic.tflite"]
    n = len(splits["val"]["paths"])
    assert row["verified_on"] == f"{n - 1} validation photos (of the {n - 1} still there; 1 are gone)"
    assert row["accuracy"] is not None


# --- one export at a time ----------------------------------------------------------------------------------------

def test_two_exports_of_one_run_at_once_the_second_stops_with_a_message(own_run):
    target = own_run / "export" / "saved_model"
    first = subprocess.Popen([sys.executable, "-m", "tfl.cli", "export", str(own_run), "--format", "saved_model",
                              "--verify-images", "4"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(target.glob(".1.*.tmp")) and first.poll() is None:
        time.sleep(0.05)
    assert first.poll() is None, "the first export ended before the second could start"
    second = cli("export", own_run, "--format", "saved_model", "--verify-images", "4")
    assert second.exit_code == 1 and "is being exported by another tfl process" in second.output
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output
    assert (target / "1" / "saved_model.pb").is_file() and not list(target.glob(".1.*.tmp"))


def test_a_temporary_folder_being_written_is_not_swept_as_stale(tmp_path):
    from tfl.fileio import atomic_path

    path = tmp_path / "artifact"
    with atomic_path(path) as first:
        first.write_text("one")
        (tmp_path / ".artifact.dead.tmp").mkdir()  # left by a writer that was killed
        with atomic_path(path, force=True) as second:
            second.write_text("two")
            assert first.is_file(), "a live writer's folder was swept"
            assert not (tmp_path / ".artifact.dead.tmp").exists(), "a dead writer's folder was kept"
        assert path.read_text() == "two"
    assert path.read_text() == "one" and not list(tmp_path.glob(".artifact.*"))


# --- photos that vanish, disks that fill -------------------------------------------------------------------------

class DeleteAfterFirstFit:
    """A Keras callback deleting a training photo when the head stage (on cached features) ends."""

    def __init__(self, photo):
        import keras

        outer = self

        class Callback(keras.callbacks.Callback):
            def on_train_end(self, logs=None):
                if outer.photo.exists():
                    outer.photo.unlink()

        self.photo, self.callback = photo, Callback()


@pytest.mark.integration
def test_a_photo_deleted_during_training_is_a_message_and_the_run_resumes(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=8)
    run = tfl.finetune(data, epochs=(1, 0), output=tmp_path / "runs", name="ok", **TINY)  # for its split alone
    train_photo = json.loads((run.path / "splits.json").read_text())["train"]["paths"][0]
    shutil.rmtree(run.path)
    deleter = DeleteAfterFirstFit(tmp_path / "data" / os.path.relpath(train_photo, data))
    with pytest.raises(tfl.TflError) as caught:
        tfl.finetune(data, epochs=(2, 1), output=tmp_path / "runs", name="vanish", callbacks=[deleter.callback],
                     **TINY)
    message = str(caught.value)
    assert "disappeared during training" in message and os.path.basename(train_photo) in message
    assert "tfl finetune --resume vanish" in message
    make_image((1, 2, 3)).save(deleter.photo)  # put it back, as the message says
    resumed = tfl.resume("vanish", output=tmp_path / "runs", echo=lambda s: None, verbose=0)
    assert (resumed.path / "model.keras").is_file()


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoint/epoch2.npz")


@pytest.mark.integration
def test_a_full_disk_while_training_is_a_message_and_the_run_resumes(tiny_folder, tmp_path, monkeypatch):
    from tfl.checkpoint import Checkpoint

    real_end_epoch = Checkpoint.end_epoch

    def fills_up(self, state, trained):
        if state.epochs_done >= 2:
            disk_full()
        real_end_epoch(self, state, trained)

    monkeypatch.setattr(Checkpoint, "end_epoch", fills_up)
    result = cli("finetune", "--data", tiny_folder, "--arch", "mobilenetv2", "--alpha", "0.35", "--weights", "none",
                 "--image-size", "32", "--batch-size", "8", "--epochs", "3,0", "--output", tmp_path / "runs",
                 "--name", "full")
    assert result.exit_code == 1
    assert "The disk filled up while training run 'full' ('/runs/x/checkpoint/epoch2.npz')" in result.output
    assert "Free some space" in result.output and "tfl finetune --resume full" in result.output
    assert result.output.count("Error") == 1 and "Errno" not in result.output
    monkeypatch.undo()
    resumed = cli("finetune", "--resume", "full", "--output", tmp_path / "runs")
    assert resumed.exit_code == 0, resumed.output
    assert (tmp_path / "runs" / "full" / "model.keras").is_file()


@pytest.mark.integration
def test_a_full_disk_while_computing_the_feature_cache_leaves_nothing(tiny_folder, tmp_path, monkeypatch):
    import tfl.features

    monkeypatch.setattr(tfl.features, "compute_features", disk_full)
    with pytest.raises(tfl.TflError, match="disk filled up.*Free some space. The run is kept"):
        tfl.finetune(tiny_folder, epochs=(2, 1), output=tmp_path / "runs", name="f", **TINY)
    assert not list((tmp_path / "runs" / ".feature_cache").glob("*")), "no half-written cache entry"


def test_a_full_disk_while_exporting_keeps_what_was_finished(own_run, monkeypatch):
    import tfl.export

    monkeypatch.setattr(tfl.export, "write_tflite", disk_full)  # the second of saved_model, tflite, onnx
    result = cli("export", own_run, "--format", "all", "--verify-images", "4")
    assert result.exit_code == 1 and "The disk filled up while exporting" in result.output
    assert "Every artifact finished before is kept" in result.output
    report = json.loads((own_run / "export_report.json").read_text())
    assert "export/saved_model/1" in report and not {"model_float32.tflite", "model.onnx"} & set(report)
    assert (own_run / "export" / "saved_model" / "1" / "saved_model.pb").is_file()
    assert not (own_run / "model_float32.tflite").exists() and not list(own_run.glob(".model_float32.tflite*"))
    assert not (own_run / "model.onnx").exists()


# --- the Python API is as strict as the CLI ----------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: tfl.finetune("x", epochs=3), "epochs takes one value per stage"),
    (lambda: tfl.finetune("x", batch_size=2.5), "'batch_size' in the keyword arguments of tfl.finetune must be a "
                                                "whole number, got 2.5"),
    (lambda: tfl.finetune("x", batch_size="eight"), "must be a whole number, got 'eight'"),
    (lambda: tfl.finetune("x", bogus=1), r"Unknown config key\(s\) bogus in the keyword arguments of tfl.finetune"),
    (lambda: tfl.finetune("x", image_size=0), "Image size in the keyword arguments of tfl.finetune must be at least 32"),
    (lambda: tfl.finetune(["a", "b"]), "data= of tfl.finetune takes the path of a folder or a label file, got list"),
    (lambda: tfl.finetune("x", name=3), "name= of tfl.finetune takes a run name"),
    (lambda: tfl.load(None), "tfl.load takes the path of a .tflite, .onnx, .keras file"),
    (lambda: tfl.open_run(5), "run= of tfl.open_run takes a run folder's path"),
])
def test_wrong_python_arguments_are_tfl_errors_naming_the_keyword(call, message):
    with pytest.raises(tfl.TflError, match=message):
        call()


def test_a_config_file_value_out_of_bounds_names_the_file(tiny_folder, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("image_size: -5\n")
    result = cli("finetune", "--data", tiny_folder, "--config", config)
    assert result.exit_code == 1 and f"Image size in {config} must be at least 32, got -5" in result.output
    result = cli("finetune", "--data", tiny_folder, "--image-size", "0")
    assert result.exit_code == 1 and "Image size in the command line must be at least 32, got 0" in result.output


@pytest.fixture
def every_predictor(exported_run):
    """The tiny run as every artifact kind (tests/test_export.py's exported_run, built once per session)."""
    return {"keras": exported_run, "saved_model": exported_run / "export" / "saved_model" / "1",
            "tflite": exported_run / "model_float32.tflite", "onnx": exported_run / "model.onnx"}


@pytest.mark.parametrize("kind", ["keras", "saved_model", "tflite", "onnx"])
def test_every_predictor_takes_arrays_and_pil_images_and_checks_pixel_sizes(every_predictor, tiny_run, kind):
    predictor = tfl.load(every_predictor[kind])
    photo = next((tiny_run.parent.parent / "data" / "red").glob("*.jpg"))
    from_file = predictor.predict([photo], top_k=3)[0]["top"]
    image = Image.open(photo)
    rows = predictor.predict([image, np.asarray(image), np.asarray(image.convert("L")), str(photo)], top_k=3)
    assert [row["path"] for row in rows] == ["<image 0>", "<image 1>", "<image 2>", str(photo)]
    for row in rows[:2]:
        assert [label for label, _ in row["top"]] == [label for label, _ in from_file]
        np.testing.assert_allclose([s for _, s in row["top"]], [s for _, s in from_file], atol=1e-5)
    assert len(predictor.predict(image)) == 1
    size = predictor.image_size
    for wrong in (np.zeros((1, size + 8, size + 8, 3)), np.zeros((size, size, 3)), np.zeros((2, size, size, 1))):
        with pytest.raises(tfl.TflError, match=f"shape \\[batch, {size}, {size}, 3\\]"):
            predictor.predict_pixels(wrong)
        with pytest.raises(tfl.TflError):  # twice: the TFLite interpreter once accepted it and failed later
            predictor.predict_pixels(wrong)
    assert predictor.predict_pixels(np.zeros((2, size, size, 3), np.uint8)).shape == (2, 3)
    for bad_k in (0, -2, 1.5, True):
        with pytest.raises(tfl.TflError, match="top_k must be a whole number of at least 1"):
            predictor.predict([photo], top_k=bad_k)
    for bad_input in (None, 42, [None], np.zeros((4, 4, 7))):
        with pytest.raises(tfl.TflError):
            predictor.predict(bad_input)


# --- smaller messages and stray lines ----------------------------------------------------------------------------

def test_ctrl_c_says_what_each_command_leaves(own_run, monkeypatch, tmp_path):
    import tfl.export
    import tfl.predict

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tfl.export, "write_tflite", interrupted)
    result = CliRunner().invoke(main, ["export", str(own_run), "--verify-images", "4"])
    assert result.exit_code == 130 and "export_report.json" in result.output and "--resume" not in result.output
    monkeypatch.setattr(tfl.predict, "predict_items", interrupted)
    photo = tmp_path / "a.jpg"
    make_image((1, 2, 3)).save(photo)
    result = CliRunner().invoke(main, ["predict", str(own_run), str(photo)])
    assert result.exit_code == 130 and "Interrupted." in result.output and "--resume" not in result.output


def test_plots_of_class_names_in_any_script_raise_no_font_warnings(tmp_path):
    from tfl.plots import plot_confusion_matrix

    metrics = {"class_names": ["猫", "犬", "鳥"], "confusion_matrix": np.eye(3, dtype=int).tolist(),
               "accuracy": 1.0, "num_images": 3}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion_matrix(metrics, tmp_path / "c.png")
    assert (tmp_path / "c.png").is_file()
    assert not [w for w in caught if "Glyph" in str(w.message)]


def test_tflite_predict_prints_no_xnnpack_line(every_predictor, tiny_run):
    photo = next((tiny_run.parent.parent / "data" / "red").glob("*.jpg"))
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFL_VERBOSE")}
    result = subprocess.run([sys.executable, "-m", "tfl.cli", "predict", str(every_predictor["tflite"]), str(photo)],
                            capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "XNNPACK" not in result.stderr + result.stdout


def test_evaluate_on_a_folder_converts_and_reports_as_training_does(own_run, tmp_path):
    data = write_class_folders(tmp_path / "more", per_class=2)
    make_image((200, 40, 40), seed=5).save(data / "red" / "scan.tiff", "TIFF")
    (data / "green" / "broken.jpg").write_text("not an image")
    result = cli("evaluate", own_run, "--data", data)
    assert result.exit_code == 0, result.output
    assert "on 7 images" in result.output, "the TIFF is read, converted"
    assert "Skipped 1 unusable file(s):" in result.output and "broken.jpg" in result.output
    assert "Converted 1 file(s)" in result.output
    metrics = tfl.open_run(own_run).evaluate(data)
    assert metrics["num_images"] == 7 and [item["path"].split("/")[-1] for item in metrics["skipped"]] == ["broken.jpg"]


def test_ctrl_c_inside_a_native_write_is_held_until_it_ends():
    """Issue 41.14: Ctrl-C while the SavedModel was written ended in SystemError about 1 time in 6, or was lost."""
    import signal

    from tfl.fileio import interrupts_deferred

    finished, before = [], signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            finished.append(True)  # the write went on to its end
    assert finished == [True] and signal.getsignal(signal.SIGINT) == before
