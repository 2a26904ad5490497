"""Exports of a finished run: a TF Serving SavedModel and (quantized) TFLite files, each verified on the val set."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tfl.backend import native_stderr_held
from tfl.data import Split, decode_image_bytes, load_image_for_predict
from tfl.errors import TflError
from tfl.precision import float32_copy
from tfl.predict import OnnxPredictor, SavedModelPredictor, TFLitePredictor, load_predictor
from tfl.runs import (DEFAULT_ROOT, EXPORT_FORMATS, LABELS_FILE, QUANTIZATIONS, Run, atomic_path, atomic_write_text,
                      check_reachable)

LOUD_DROP = 0.01  # a quantized export losing more than 1 point of accuracy is reported loudly


# --- SavedModel ------------------------------------------------------------------------------------

def write_saved_model(model: keras.Model, class_names: list[str], target: Path, top_k: int) -> None:
    """Signatures: serving_default (float32 pixels), serving_uint8 (uint8 pixels), classify_images (bytes)."""
    size = int(model.input_shape[1])
    labels = tf.constant(class_names)
    k = min(top_k, len(class_names))

    def classify_pixels(pixels):
        return {"probabilities": model(pixels, training=False)}

    def classify_uint8(pixels):
        return classify_pixels(tf.cast(pixels, tf.float32))

    def classify_images(images):
        decoded = tf.map_fn(lambda data: decode_image_bytes(data, size), images,
                            fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        probabilities = model(tf.cast(decoded, tf.float32), training=False)
        scores, indices = tf.math.top_k(probabilities, k=k)
        return {"probabilities": probabilities, "classes": tf.gather(labels, indices), "scores": scores}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", classify_pixels,
                         input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")])
    archive.add_endpoint("serving_uint8", classify_uint8,
                         input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="pixels")])
    archive.add_endpoint("classify_images", classify_images,
                         input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    archive.write_out(str(target), verbose=False)
    (target / "assets").mkdir(exist_ok=True)
    (target / "assets" / LABELS_FILE).write_text("\n".join(class_names) + "\n")


# --- TFLite ----------------------------------------------------------------------------------------

def converter_settings(quantize: str, representative_dataset: Callable | None) -> dict:
    builtins_only = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}  # runs on any LiteRT, no Flex delegate
    if quantize == "none":
        return {"target_spec": builtins_only}
    if quantize == "float16":
        return {"optimizations": [tf.lite.Optimize.DEFAULT],
                "target_spec": builtins_only | {"supported_types": [tf.float16]}}
    if quantize == "dynamic":
        return {"optimizations": [tf.lite.Optimize.DEFAULT], "target_spec": builtins_only}
    return {"optimizations": [tf.lite.Optimize.DEFAULT], "representative_dataset": representative_dataset,
            "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
            "inference_input_type": tf.uint8}


def with_labels(tflite_bytes: bytes, class_names: list[str]) -> bytes:
    """Append labels.txt as a zip archive, as TFLite metadata's associated files are packed: any zip reader
    finds it, and the interpreter ignores bytes after the flatbuffer."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(LABELS_FILE, "\n".join(class_names) + "\n")
    return tflite_bytes + buffer.getvalue()


def write_tflite(model: keras.Model, class_names: list[str], target: Path, quantize: str,
                 representative_dataset: Callable | None) -> None:
    plain = target.with_name(target.name + ".plain.tflite")
    model.export(str(plain), format="litert", verbose=False, **converter_settings(quantize, representative_dataset))
    target.write_bytes(with_labels(plain.read_bytes(), class_names))
    plain.unlink()


def representative_images(train: Split, image_size: int, samples: int, seed: int = 0) -> Callable:
    """Calibration data for int8: `samples` training images, as float32 pixel batches of one."""
    if not train.paths:
        raise TflError("int8 export needs the run's training images for calibration, but the run has no saved file list.")
    chosen = np.random.default_rng(seed).permutation(len(train.paths))[:samples]

    def generate():
        for index in chosen:
            pixels = load_image_for_predict(train.paths[index], image_size)
            yield [pixels.astype(np.float32)[np.newaxis]]

    return generate


# --- ONNX ------------------------------------------------------------------------------------------

ONNX_LABELS_KEY = "labels"  # metadata_props entry: the class names, one per line


def write_onnx(model: keras.Model, class_names: list[str], target: Path) -> None:
    """Keras' own ONNX export (tf2onnx under the TensorFlow backend), then the class names into its metadata, so the
    file carries its labels as the .tflite does."""
    import onnx

    size = int(model.input_shape[1])
    model(np.zeros((1, size, size, 3), np.float32), training=False)  # Keras exports only models it has called
    plain = target.with_name(target.name + ".plain.onnx")
    with native_stderr_held():
        model.export(str(plain), format="onnx", verbose=False)
    proto = onnx.load(str(plain))
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_LABELS_KEY, "\n".join(class_names)
    onnx.save(proto, str(target))
    plain.unlink()


# --- verification ----------------------------------------------------------------------------------

def load_val_images(run: Path, splits: dict, image_size: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    if "val" not in splits:
        raise TflError(f"Run '{run}' has no saved validation files to verify exports on (trained from tfds?).")
    paths, labels = splits["val"]["paths"], splits["val"]["labels"]
    check_reachable(paths, run)
    chosen = np.random.default_rng(0).permutation(len(paths))[:limit]
    images = np.stack([load_image_for_predict(paths[i], image_size) for i in chosen])
    return images, np.asarray(labels)[chosen]


def predict_all(predictor, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([predictor.predict_pixels(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def latency_ms(predictor, image: np.ndarray, repeats: int = 30) -> float:
    for _ in range(3):
        predictor.predict_pixels(image)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict_pixels(image)
        timings.append(time.perf_counter() - start)
    return round(1000 * float(np.median(timings)), 2)


def size_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def verify(predictor, path: Path, images, labels, reference: np.ndarray | None) -> dict:
    probabilities = predict_all(predictor, images, min(32, predictor.batch_limit))
    predicted = probabilities.argmax(axis=1)
    row = {"format": predictor.kind, "file": path.name, "size_bytes": size_bytes(path),
           "accuracy": round(float((predicted == labels).mean()), 4),
           "latency_ms_batch1": latency_ms(predictor, images[:1]), "images": int(len(labels))}
    if reference is not None:
        row["accuracy_change"] = round(row["accuracy"] - float((reference.argmax(axis=1) == labels).mean()), 4)
        row["top1_agreement"] = round(float((predicted == reference.argmax(axis=1)).mean()), 4)
        row["max_abs_diff"] = float(np.abs(probabilities - reference).max())
    return row


# --- the export command ----------------------------------------------------------------------------

def export_run(run: str | Path | None = None, export_format: str = "tflite", quantize: str = "none",
               calibration_samples: int = 300, verify_images: int = 500, top_k: int = 5, force: bool = False,
               max_accuracy_drop: float | None = None, root: str | Path = DEFAULT_ROOT,
               echo: Callable[[str], None] = print) -> list[dict]:
    """Write the requested artifacts of RUN atomically, verify each, and record each in export_report.json as soon
    as it is in place (an export killed midway keeps what it finished and records it)."""
    if export_format not in EXPORT_FORMATS:
        raise TflError(f"Unknown export format '{export_format}'. Choose one of: {', '.join(EXPORT_FORMATS)}.")
    if quantize not in QUANTIZATIONS:
        raise TflError(f"Unknown quantization '{quantize}'. Choose one of: {', '.join(QUANTIZATIONS)}.")
    run = Run.open(run, root)
    run_dir = run.path
    targets = []
    if export_format in ("saved_model", "all"):
        targets.append(("saved_model", run.saved_model_dir))
    if export_format in ("tflite", "all"):
        targets.append(("tflite", run.tflite_file(quantize)))
    if export_format in ("onnx", "all"):
        targets.append(("onnx", run.onnx_file))
    report_path = run.export_report_file
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    finished = {path for _, path in targets if path.exists() and str(path.relative_to(run_dir)) in report}
    if not force and finished:
        if len(finished) == len(targets):
            raise TflError(f"'{sorted(finished)[0]}' already exists. Pass --force to replace it.")
        echo(f"Keeping {', '.join(str(p.relative_to(run_dir)) for p in sorted(finished))} (already exported and "
             "verified; --force replaces it)")
        targets = [(kind, path) for kind, path in targets if path not in finished]

    class_names = run.class_names
    keras_predictor = load_predictor(run.model_file)
    model, image_size = float32_copy(keras_predictor.model), keras_predictor.image_size
    echo(f"Exporting {run_dir} ({len(class_names)} classes, {image_size} px); verifying on up to {verify_images} "
         "validation images")
    splits = run.splits
    images, labels = load_val_images(run_dir, splits, image_size, verify_images)
    reference = predict_all(keras_predictor, images, 32)
    rows = [verify(keras_predictor, run.model_file, images, labels, None)]
    record(report, rows[0], report_path)
    for kind, path in targets:
        if path.exists() and not force:  # written by an export that was killed before it recorded it
            row = verify(artifact_predictor(kind, path), path, images, labels, reference)
        else:
            with atomic_path(path, force=force) as tmp:
                write_artifact(kind, model, class_names, tmp, top_k, quantize, splits, image_size, calibration_samples)
                row = verify(artifact_predictor(kind, tmp), tmp, images, labels, reference)
                row["file"] = str(path.relative_to(run_dir))
                check_drop(row, max_accuracy_drop, echo)
        row["file"] = str(path.relative_to(run_dir))
        row["quantize"] = quantize if kind == "tflite" else "none"
        rows.append(row)
        record(report, row, report_path)
    echo(format_report(rows))
    return rows


def write_artifact(kind: str, model: keras.Model, class_names: list[str], target: Path, top_k: int, quantize: str,
                   splits: dict, image_size: int, calibration_samples: int) -> None:
    if kind == "saved_model":
        write_saved_model(model, class_names, target, top_k)
        return
    if kind == "onnx":
        write_onnx(model, class_names, target)
        return
    calibration = (representative_images(Split(**splits.get("train", {})), image_size, calibration_samples)
                   if quantize == "int8" else None)
    write_tflite(model, class_names, target, quantize, calibration)


def artifact_predictor(kind: str, path: Path):
    return {"saved_model": SavedModelPredictor, "tflite": TFLitePredictor, "onnx": OnnxPredictor}[kind](path)


def record(report: dict, row: dict, report_path: Path) -> None:
    report[row["file"]] = row
    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")


def check_drop(row: dict, max_accuracy_drop: float | None, echo: Callable[[str], None]) -> None:
    drop = -row["accuracy_change"]
    if max_accuracy_drop is not None and drop > max_accuracy_drop:
        raise TflError(f"{row['file']} loses {drop:.1%} accuracy against the Keras model (top-1 agreement "
                       f"{row['top1_agreement']:.1%}), more than --max-accuracy-drop {max_accuracy_drop:.1%}. "
                       "Nothing was written. Try --quantize float16 or dynamic, or more --calibration-samples.")
    if drop > LOUD_DROP:
        echo(f"\n!!! WARNING: {row['file']} is {drop:.1%} less accurate than the Keras model "
             f"(top-1 agreement {row['top1_agreement']:.1%}). Check it before shipping it. !!!\n")


def format_report(rows: list[dict]) -> str:
    lines = [f"{'artifact':<36} {'size':>10} {'val acc':>8} {'change':>8} {'agree':>7} {'ms/img':>7}"]
    for row in rows:
        change = f"{row['accuracy_change']:+.4f}" if "accuracy_change" in row else "ref"
        agree = f"{row['top1_agreement']:.1%}" if "top1_agreement" in row else "ref"
        lines.append(f"{row['file']:<36} {row['size_bytes'] / 1e6:>8.2f}MB {row['accuracy']:>8.4f} {change:>8} "
                     f"{agree:>7} {row['latency_ms_batch1']:>7.2f}")
    return "\n".join(lines + [fastest_line(rows)])


def fastest_line(rows: list[dict]) -> str:
    """Which artifact runs fastest here: int8 is not always it (on x86 CPUs without VNNI, XNNPACK's int8 kernels are
    slower than its float32 ones for small models), so the report says what was measured, not what is expected."""
    fastest = min(rows, key=lambda row: row["latency_ms_batch1"])
    return (f"Fastest at batch 1 on this machine: {fastest['file']} ({fastest['latency_ms_batch1']:.2f} ms per image); "
            "on another device, export there or measure there.")
