"""tfl export and tfl predict: every format and quantization, loaded as other apps would, verified, written safely."""

import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import REPO, cli, make_image
import tfl
from tfl.cli import main
from tfl.pipeline import load_image_for_predict


def keras_probabilities(run, images):
    import keras

    model = keras.models.load_model(run / "model.keras", compile=False)
    return np.asarray(model.predict_on_batch(images.astype("float32")))


def keras_scores(run, images):
    """The classes' probabilities and the unknown category's score, as the artifacts give them (tfl/unknown.py)."""
    return tfl.load(run).scores(images.astype("float32"))


def assert_scores_match(got, reference, tolerance, name):
    """The tiny runs' N + 1 scores alike: the classes' probabilities (each over their sum) within `tolerance`; the
    unknown score within 1e-3 for float32 files, not compared for float16. On random weights every photo's pooled
    activations are nearly the same, so the unknown score, a distance in units of the validation photos' spread,
    magnifies rounding: float32's in another runtime's convolutions moved it by up to 2e-4, float16's weights by
    0.17. On a trained run both hold (test_mediapipe_given_photo_files_answers_as_keras_on_tfl_pixels)."""
    from tfl.unknown import class_probabilities

    np.testing.assert_allclose(class_probabilities(got), class_probabilities(reference), atol=tolerance, err_msg=name)
    if tolerance < 1e-3:
        np.testing.assert_allclose(got[:, -1], reference[:, -1], atol=1e-3, err_msg=name)


def val_images(run, n=6):
    splits = json.loads((run / "splits.json").read_text())
    size = int(__import__("yaml").safe_load((run / "config.yaml").read_text())["image_size"])
    return np.stack([load_image_for_predict(p, size) for p in splits["val"]["paths"][:n]])


def test_every_artifact_is_written_and_reported(exported_run):
    for name in ("model_float32.tflite", "model_float16.tflite", "model_dynamic.tflite", "model_int8.tflite"):
        assert (exported_run / name).stat().st_size > 10_000
    saved_model = exported_run / "export" / "saved_model" / "1"
    assert (saved_model / "saved_model.pb").is_file()
    assert (saved_model / "assets" / "labels.txt").read_text().split() == ["blue", "green", "red"]
    report = json.loads((exported_run / "export_report.json").read_text())
    assert {"model.keras", "export/saved_model/1", "model_int8.tflite", "model_float16.tflite"} <= set(report)
    for row in report.values():
        assert {"size_bytes", "accuracy", "latency_ms_batch1"} <= set(row)
    assert report["model_float32.tflite"]["top1_agreement"] == 1.0
    assert report["model.onnx"]["top1_agreement"] == 1.0 and report["model.onnx"]["max_abs_diff"] < 1e-4
    assert report["model.onnx"]["format"] == "onnx"
    assert not list(exported_run.rglob("*.tmp")), "no temporary file may be left behind"


def test_labels_travel_inside_the_tflite(exported_run):
    for name in ("model_float32.tflite", "model_int8.tflite"):
        with zipfile.ZipFile(exported_run / name) as archive:  # the last label is the unknown category's
            assert archive.read("labels.txt").decode().split() == ["blue", "green", "red", "unknown"]
            assert archive.read("unknown.txt").decode().strip() == "unknown"


TFLITE_FILES = ("model_float32.tflite", "model_float16.tflite", "model_dynamic.tflite", "model_int8.tflite")


def test_every_tflite_carries_metadata_for_mediapipe(exported_run):
    """TFLite Metadata as MediaPipe Tasks reads it: an RGB image input normalized by mean 0 and std 1 (the model
    normalizes by itself), the labels as the output's axis labels, stored uncompressed."""
    from tfl.tflite_metadata import read_metadata
    from tfl.vendor import metadata_schema_py_generated as meta

    for name in TFLITE_FILES:
        data = (exported_run / name).read_bytes()
        metadata = read_metadata(data)
        assert metadata is not None, name
        graph = metadata.subgraphMetadata[0]
        normalization = graph.inputTensorMetadata[0].processUnits[0].options
        assert (normalization.mean, normalization.std) == ([0.0], [1.0])
        labels = graph.outputTensorMetadata[0].associatedFiles[0]
        assert labels.name == b"labels.txt" and labels.type == meta.AssociatedFileType.TENSOR_AXIS_LABELS
        assert metadata.version == b"tiny" and metadata.minParserVersion == b"1.0.0"
        with zipfile.ZipFile(exported_run / name) as archive:
            assert archive.getinfo("labels.txt").compress_type == zipfile.ZIP_STORED
    assert_int8_input(exported_run)


def assert_int8_input(run):
    """A fully int8 file takes uint8 pixels at scale 1 (MediaPipe feeds raw pixels and ignores the input's
    quantization); one with operations kept in float by the fallback takes float32 pixels."""
    from ai_edge_litert.interpreter import Interpreter

    row = json.loads((run / "export_report.json").read_text())["model_int8.tflite"]
    details = Interpreter(model_path=str(run / "model_int8.tflite")).get_input_details()[0]
    if row.get("fallback", {}).get("layers_in_float"):
        assert details["dtype"] == np.float32
    else:
        assert details["dtype"] == np.uint8
        assert (round(details["quantization"][0], 6), details["quantization"][1]) == (1.0, 0)


def test_every_tflite_loads_in_mediapipe_tasks_with_its_class_names(exported_run):
    """As an app developer loads it: MediaPipe Tasks' ImageClassifier, on a photo file."""
    mp = pytest.importorskip("mediapipe", reason="MediaPipe Tasks is tfl's [mediapipe] extra (in [dev])")
    from mediapipe.tasks.python import BaseOptions, vision

    report = json.loads((exported_run / "export_report.json").read_text())
    photo = json.loads((exported_run / "splits.json").read_text())["val"]["paths"][0]
    keras_top = keras_scores(exported_run, val_images(exported_run, 1)).argmax()
    for name in TFLITE_FILES:
        assert "mediapipe_top1_agreement" in report[name], "the export ran it through MediaPipe"
        options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(exported_run / name)),
                                                max_results=4)
        with vision.ImageClassifier.create_from_options(options) as classifier:
            categories = classifier.classify(mp.Image.create_from_file(photo)).classifications[0].categories
        assert sorted(c.category_name for c in categories) == ["blue", "green", "red", "unknown"], name
        if name != "model_int8.tflite":  # the tiny model's int8 may differ; the report measures agreement
            assert max(categories, key=lambda c: c.score).index == keras_top, name
    assert report["model_float32.tflite"]["mediapipe_top1_agreement"] == 1.0
    assert report["model_float32.tflite"]["mediapipe_unknown_agreement"] == 1.0  # the unknown category's decisions


def test_mediapipe_given_photo_files_answers_as_keras_on_tfl_pixels(real_copy, tmp_path):
    """MediaPipe Tasks decodes and resizes a photo itself; tfl trains on pixels made the way it makes them (libjpeg's
    accurate DCT, bilinear with the photo's corners mapped to the tensor's), so its float32 file scores the photo
    files as the Keras model scores tfl's pixels. Photos under twice the model's size: larger ones tfl first
    averages in boxes, where MediaPipe samples the full photo."""
    mp = pytest.importorskip("mediapipe", reason="MediaPipe Tasks is tfl's [mediapipe] extra (in [dev])")
    from mediapipe.tasks.python import BaseOptions, vision
    from PIL import Image

    result = cli("export", real_copy, "--format", "tflite", "--quantize", "none,float16", "--verify-images", "4")
    assert result.exit_code == 0, result.output
    photos = []
    for k, path in enumerate(json.loads((real_copy / "splits.json").read_text())["val"]["paths"][:16]):
        photo = tmp_path / f"{k}.jpg"  # 100-190 px wide, 0.6-1.7 times as high: shrunk and enlarged, either way
        Image.open(path).convert("RGB").resize((100 + 6 * k, 160 - 3 * k)).save(photo, quality=92)
        photos.append(str(photo))
    size = int(__import__("yaml").safe_load((real_copy / "config.yaml").read_text())["image_size"])
    keras = keras_scores(real_copy, np.stack([load_image_for_predict(photo, size) for photo in photos]))
    options = vision.ImageClassifierOptions(base_options=BaseOptions(
        model_asset_path=str(real_copy / "model_float32.tflite")), max_results=-1)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        seen = np.zeros_like(keras)
        for row, photo in zip(seen, photos):
            for category in classifier.classify(mp.Image.create_from_file(photo)).classifications[0].categories:
                row[category.index] = category.score
    apart = np.abs(seen - keras).max(axis=1)  # measured: median 0.003, at most 0.011 (half-pixel centres: 0.012, 0.038)
    assert np.median(apart) < 0.006 and apart.max() < 0.02, apart.round(4)
    pixels = val_images(real_copy, 16).astype("float32")  # and on a trained model the files give Keras's N + 1 scores
    # measured: float32 3e-6; float16 0.022 on a class's score (this briefly trained model's weights rounded), 0.009 on
    # the unknown score
    for name, tolerance in {"model_float32.tflite": 1e-4, "model_float16.tflite": 3e-2}.items():
        np.testing.assert_allclose(tfl.load(real_copy / name).scores(pixels), keras_scores(real_copy, pixels),
                                   atol=tolerance, err_msg=name)  # (tfl's TFLitePredictor runs ai-edge-litert)
    top_two = np.sort(keras, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > 2 * apart.max()  # answers the scores' differences cannot swap
    assert clear.sum() >= 8 and (seen.argmax(axis=1) == keras.argmax(axis=1))[clear].all()


def test_tflite_runs_with_ai_edge_litert_and_matches_keras(exported_run):
    from ai_edge_litert.interpreter import Interpreter

    images = val_images(exported_run)
    reference = keras_scores(exported_run, images)  # the classes' and the unknown category's
    tolerances = {"model_float32.tflite": 1e-4, "model_float16.tflite": 2e-2}
    for name, tolerance in tolerances.items():
        interpreter = Interpreter(model_path=str(exported_run / name))
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.resize_tensor_input(inp["index"], list(images.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], images.astype("float32"))
        interpreter.invoke()
        assert_scores_match(interpreter.get_tensor(out["index"]), reference, tolerance, name)
    assert_int8_input(exported_run)


def test_saved_model_loads_without_tfl_or_keras(exported_run, tmp_path):
    images = val_images(exported_run, 3)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "reference.npy", keras_probabilities(exported_run, images))
    make_image((10, 200, 30), size=300, seed=1).save(tmp_path / "big.jpg", quality=95)
    make_image((200, 30, 30), size=50, seed=2).save(tmp_path / "small.png")
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["keras"] = None  # as on a server without Keras: any import of it fails
        sys.modules["tfl"] = None
        import numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({str(exported_run / 'export' / 'saved_model' / '1')!r})
        images = np.load({str(tmp_path / 'images.npy')!r})
        reference = np.load({str(tmp_path / 'reference.npy')!r})
        float_out = loaded.signatures["serving_default"](pixels=tf.constant(images, tf.float32))["probabilities"]
        uint8_out = loaded.signatures["serving_uint8"](pixels=tf.constant(images, tf.uint8))["probabilities"]
        data = [open({str(tmp_path / 'big.jpg')!r}, "rb").read(), open({str(tmp_path / 'small.png')!r}, "rb").read()]
        result = loaded.signatures["classify_images"](images=tf.constant(data))
        print("RESULT" + json.dumps({{
            "float_diff": float(np.abs(float_out.numpy() - reference).max()),
            "uint8_diff": float(np.abs(uint8_out.numpy() - reference).max()),
            "classes": [[c.decode() for c in row] for row in result["classes"].numpy()],
            "scores": result["scores"].numpy().tolist(),
            "probabilities": result["probabilities"].numpy().tolist(),
            "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "tfl") and sys.modules[m]),
        }}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT")[-1])
    assert result["imported"] == [], "the SavedModel must load and run with TensorFlow alone"
    assert result["float_diff"] < 1e-4 and result["uint8_diff"] < 1e-4
    assert len(result["classes"]) == 2 and all(set(row) == {"blue", "green", "red"} for row in result["classes"])
    for probabilities, classes, scores in zip(result["probabilities"], result["classes"], result["scores"]):
        assert scores == sorted(scores, reverse=True)
        assert scores[0] == pytest.approx(max(probabilities))
    # the bytes signature decodes and resizes like tfl predict does
    keras_out = keras_probabilities(exported_run, np.stack([load_image_for_predict(str(tmp_path / n), 32)
                                                            for n in ("big.jpg", "small.png")]))
    np.testing.assert_allclose(result["probabilities"], keras_out, atol=1e-4)


def test_onnx_runs_with_onnxruntime_alone(exported_run, tmp_path):
    """As a C#, Java or browser app would run it: no TensorFlow, no Keras, no tfl; labels from the file itself."""
    images = val_images(exported_run, 6)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "reference.npy", keras_scores(exported_run, images))
    script = textwrap.dedent(f"""
        import json, sys
        for blocked in ("tensorflow", "keras", "tfl"):
            sys.modules[blocked] = None  # any import of them fails
        import numpy as np, onnxruntime
        session = onnxruntime.InferenceSession({str(exported_run / 'model.onnx')!r})
        images = np.load({str(tmp_path / 'images.npy')!r}).astype(np.float32)
        reference = np.load({str(tmp_path / 'reference.npy')!r})
        out = session.run(None, {{session.get_inputs()[0].name: images}})[0]
        print("RESULT" + json.dumps({{
            "diff": float(np.abs(out[:, :-1] / out[:, :-1].sum(1, keepdims=True) - reference[:, :-1]
                                 / reference[:, :-1].sum(1, keepdims=True)).max()),
            "unknown_diff": float(np.abs(out[:, -1] - reference[:, -1]).max()),
            "agreement": float((out.argmax(1) == reference.argmax(1)).mean()),
            "labels": session.get_modelmeta().custom_metadata_map["labels"].split(),
            "unknown": session.get_modelmeta().custom_metadata_map["unknown"],
            "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tfl")
                               and sys.modules[m]),
        }}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT")[-1])
    assert result["imported"] == [] and result["labels"] == ["blue", "green", "red", "unknown"]
    assert result["unknown"] == "unknown"  # the last label and score are the unknown category's
    assert result["diff"] < 1e-4 and result["unknown_diff"] < 1e-3 and result["agreement"] == 1.0  # (assert_scores_match)


def test_int8_export_agrees_with_keras_on_real_photos(real_copy):
    result = cli("export", real_copy, "--format", "tflite", "--quantize", "int8", "--calibration-samples", "60",
                 "--no-fallback")  # the search is tests/test_quantize.py's
    assert result.exit_code == 0, result.output
    row = json.loads((real_copy / "export_report.json").read_text())["model_int8.tflite"]
    print("int8 on real photos:", row)
    # a briefly trained model has low-margin predictions, so int8 flips some; chance agreement is about 0.2
    assert row["top1_agreement"] >= 0.75 and row["accuracy_change"] >= -0.1
    # the unknown category's decisions (about 5% of these photos) as the Keras model's, but a few near its threshold
    assert row["unknown_agreement"] >= 0.9 and 0 < row["unknown_flagged"] < 0.2
    keras_row = json.loads((real_copy / "export_report.json").read_text())["model.keras"]
    assert row["size_bytes"] < 0.6 * (real_copy / "model.keras").stat().st_size
    assert keras_row["accuracy"] > 0.4
    # bias-corrected on BIAS_CORRECTION_IMAGES of the calibration photos, and the report says what that changed
    assert row["bias_correction"]["images"] == 32 and "agreement" in row["bias_correction"]["converted"]
    assert "bias corrected on 32 calibration photos" in result.output
    # the report carries the temperature the model was calibrated with, and how far its effect can be measured
    assert set(keras_row["calibration"]) == {"temperature", "fitted_temperature", "p_value", "ece_before", "ece_after",
                                             "ece_if_calibrated", "debiased_before", "debiased_after", "measured_on"}
    assert "perfectly calibrated model would measure about" in result.output


def test_existing_artifact_needs_force(exported_run):
    before = (exported_run / "model_float32.tflite").stat().st_mtime_ns
    result = CliRunner().invoke(main, ["export", str(exported_run), "--format", "tflite"])
    assert result.exit_code == 1 and "already exists. Pass --force" in result.output
    assert (exported_run / "model_float32.tflite").stat().st_mtime_ns == before


def test_accuracy_drop_over_the_limit_fails_and_writes_nothing(tiny_run, monkeypatch, tmp_path):
    import shutil

    import tfl.export

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.tflite", "export*"))
    real_verify = tfl.export.verify

    def worse(*args, **kwargs):
        row = real_verify(*args, **kwargs)
        row.update(accuracy_change=-0.05, top1_agreement=0.9)
        return row

    monkeypatch.setattr(tfl.export, "verify", worse)
    result = CliRunner().invoke(main, ["export", str(run), "--quantize", "dynamic", "--max-accuracy-drop", "0.01",
                                       "--verify-images", "4", "--no-fallback"])
    assert result.exit_code == 1 and "loses 5.0% accuracy" in result.output and "Nothing was written" in result.output
    assert not (run / "model_dynamic.tflite").exists() and not list(run.glob(".*tmp"))


def test_export_killed_midway_leaves_nothing(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.tflite", "export*"))
    target = run / "export" / "saved_model" / "1"
    process = subprocess.Popen([sys.executable, "-m", "tfl.cli", "export", str(run), "--format", "saved_model",
                                "--verify-images", "4"], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list(target.parent.glob(".1.*.tmp/1/*")):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(target.parent.glob(".1.*.tmp")), "the export was killed while writing its temporary folder"
    assert not target.exists(), "a killed export must not leave a partial artifact in place"
    result = cli("export", run, "--format", "saved_model", "--verify-images", "4")
    assert result.exit_code == 0, result.output
    assert (target / "saved_model.pb").is_file() and not list(target.parent.glob(".1.*.tmp"))


def test_predict_every_artifact_kind_and_report_unreadable_files(exported_run, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    make_image((200, 40, 40), seed=5).save(photos / "a.jpg")
    make_image((40, 60, 200), seed=6).save(photos / "b.png")
    (photos / "broken.jpg").write_text("not an image")
    outputs = {}
    for artifact in (exported_run, exported_run / "model.keras", exported_run / "export" / "saved_model" / "1",
                     exported_run / "model_float32.tflite", exported_run / "model_int8.tflite",
                     exported_run / "model.onnx"):
        result = CliRunner().invoke(main, ["predict", str(artifact), str(photos), "--format", "json",
                                                           "--top-k", "2"])
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)
        assert [r["path"].split("/")[-1] for r in rows] == ["a.jpg", "b.png", "broken.jpg"]
        assert "error" in rows[2] and "1 of 3 file(s) could not be read" in result.stderr
        outputs[artifact.name] = rows
        assert all(len(r["top"]) == 2 for r in rows[:2])
    reference = [r["top"][0]["score"] for r in outputs["model.keras"][:2]]
    for name in ("1", "model_float32.tflite", "model.onnx"):
        assert [r["top"][0]["score"] for r in outputs[name][:2]] == pytest.approx(reference, abs=1e-4)


def test_predict_table_and_csv(exported_run, tmp_path):
    make_image((200, 40, 40), seed=5).save(tmp_path / "a.jpg")
    table = cli("predict", exported_run / "model.keras", tmp_path / "a.jpg")
    assert table.exit_code == 0 and "a.jpg:" in table.output and table.output.count(",") == 2
    lines = cli("predict", exported_run, tmp_path / "a.jpg", "--format", "csv", "--top-k", "3").output.splitlines()
    assert lines[0] == "path,rank,label,score,error,unknown" and len(lines) == 4


def test_predict_missing_artifact_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "nope.tflite"), str(tmp_path)])
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output


def test_predict_collects_a_folder_given_through_dot_dot_but_skips_hidden_files(tmp_path):
    from tfl.predict import collect_images

    photos = tmp_path / "photos"
    (photos / ".thumbnails").mkdir(parents=True)
    make_image((10, 200, 10)).save(photos / "a.jpg")
    make_image((10, 200, 10)).save(photos / ".thumbnails" / "a.jpg")
    (tmp_path / "elsewhere").mkdir()
    found = collect_images([str(tmp_path / "elsewhere" / ".." / "photos")])
    assert [p.name for p in found] == ["a.jpg"], "'..' in the input is not a hidden folder; '.thumbnails' is"


def chromium_binary() -> str:
    found = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                  if shutil.which(name)), None)
    if not found:
        pytest.skip("the browser check needs Chromium (Debian: apt-get install chromium); not installed here")
    return found


def web_example_folder(target: Path) -> Path:
    """examples/web with ONNX Runtime Web from the npm registry (npm ci, or its node_modules when installed)."""
    source = REPO / "examples" / "web"
    target.mkdir()
    for name in ("index.html", "app.js", "package.json", "package-lock.json"):
        shutil.copy(source / name, target / name)
    if (source / "node_modules" / "onnxruntime-web").is_dir():
        (target / "node_modules").symlink_to(source / "node_modules")
    elif not shutil.which("npm") or subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=target,
                                                   capture_output=True, timeout=300).returncode:
        pytest.skip("the browser check needs onnxruntime-web from the npm registry, and npm could not install it")
    return target


@contextlib.contextmanager
def served(folder: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)  # a free port, chosen now
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def web_page_dom(browser: str, site: Path, query: str, tmp_path: Path) -> str:
    """The page served from `site`, loaded in headless Chromium with `query`, as its DOM once its scripts ran."""
    with served(site) as address:
        return subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=60000", "--dump-dom",
             f"{address}/index.html?{query}"], capture_output=True, text=True, timeout=180).stdout


def test_web_page_classifies_a_photo_like_tfl_predict(real_copy, tmp_path):
    """examples/web in headless Chromium: ONNX Runtime Web's top-1 for a real photo is tfl predict's."""
    browser = chromium_binary()
    result = cli("export", real_copy, "--format", "onnx", "--verify-images", "12")
    assert result.exit_code == 0, result.output
    photos = json.loads((real_copy / "splits.json").read_text())["val"]["paths"][:12]
    predicted = json.loads(cli("predict", real_copy / "model.onnx", *photos, "--format", "json").stdout)
    confident = max(predicted, key=lambda row: row["top"][0]["score"] - row["top"][1]["score"])
    site = web_example_folder(tmp_path / "site")
    shutil.copy(real_copy / "model.onnx", site / "model.onnx")
    shutil.copy(confident["path"], site / "photo.jpg")
    page = web_page_dom(browser, site, "image=photo.jpg", tmp_path)
    status = re.search(r'<p id="status"([^>]*)>([^<]*)</p>', page)
    assert status and status.group(2) == "done", f"the page did not classify the photo: {status and status.group(2)}"
    top1 = re.search(r'data-top1="([^"]+)"', status.group(1)).group(1)
    assert top1 == ("unknown" if confident["unknown"] else confident["top"][0]["label"])
    assert len(re.findall(r"<li data-label=", page)) == 3


def test_web_page_resizes_a_photo_as_tfl_does(real_copy, tmp_path):
    """The page's input to the model for a photo under twice the model's size is tfl's pixels for it (the canvas's
    own scaling, half a pixel elsewhere, differed by up to 7 levels on this photo)."""
    from PIL import Image

    browser = chromium_binary()
    result = cli("export", real_copy, "--format", "onnx", "--verify-images", "4")
    assert result.exit_code == 0, result.output
    site = web_example_folder(tmp_path / "site")
    shutil.copy(real_copy / "model.onnx", site / "model.onnx")
    photo = json.loads((real_copy / "splits.json").read_text())["val"]["paths"][0]
    Image.open(photo).convert("RGB").resize((150, 121)).save(site / "photo.png")  # lossless: no decoder between them
    page = web_page_dom(browser, site, "image=photo.png&pixels", tmp_path)
    found = re.search(r'data-pixels="([^"]+)"', page)
    assert found, "the page did not give its pixels"
    size = int(__import__("yaml").safe_load((real_copy / "config.yaml").read_text())["image_size"])
    seen = np.frombuffer(__import__("base64").b64decode(found.group(1)), np.uint8).reshape(size, size, 3)
    expected = load_image_for_predict(str(site / "photo.png"), size)
    assert np.abs(seen.astype(int) - expected).max() <= 1 and (seen == expected).mean() > 0.99


def test_the_report_names_the_fastest_artifact_measured():
    from tfl.report import format_export_report as format_report

    rows = [{"file": name, "size_bytes": 1000, "accuracy": 0.9, "latency_ms_batch1": ms}
            for name, ms in (("model.keras", 7.0), ("model_float32.tflite", 0.6), ("model_int8.tflite", 0.8))]
    assert format_report(rows).splitlines()[-1].startswith(
        "Fastest at batch 1 on this machine: model_float32.tflite (0.60 ms")
