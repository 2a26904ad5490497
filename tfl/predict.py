"""Running a trained classifier from any artifact (.keras, run dir, SavedModel, .tflite) on image files."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from tfl.data import is_hidden, load_image_for_predict
from tfl.errors import TflError
from tfl.runs import LABELS_FILE, MODEL_FILE, read_labels


class Predictor:
    """What every artifact kind offers: its class names and input size, probabilities for a batch of pixels
    (`predict_pixels`), and top-k classes for image files or folders (`predict`)."""

    kind: str
    image_size: int
    class_names: list[str]
    batch_limit = 16  # images per call of predict_pixels

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """[batch, size, size, 3] RGB pixels 0..255 -> [batch, classes] probabilities."""
        raise NotImplementedError

    def predict(self, inputs: str | Path | list[str | Path], top_k: int = 3) -> list[dict]:
        """One row per image file in `inputs` (files or folders): {"path", "top": [(class, score), ...]}, or
        {"path", "error"} for a file that could not be read."""
        return predict_files(self, collect_images([inputs] if isinstance(inputs, (str, Path)) else list(inputs)),
                             top_k, self.batch_limit)


class KerasPredictor(Predictor):
    kind = "keras"

    def __init__(self, model_path: Path):
        import keras

        self.model = keras.models.load_model(model_path, compile=False)
        self.image_size = int(self.model.input_shape[1])
        self.class_names = read_labels(model_path.parent / LABELS_FILE)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(pixels.astype("float32")))


class SavedModelPredictor(Predictor):
    kind = "saved_model"

    def __init__(self, path: Path):
        import tensorflow as tf

        self.model = tf.saved_model.load(str(path))
        self.serve = self.model.signatures["serving_default"]
        self.image_size = int(self.serve.structured_input_signature[1]["pixels"].shape[1])
        self.class_names = read_labels(path / "assets" / LABELS_FILE)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return self.serve(pixels=tf.constant(pixels, tf.float32))["probabilities"].numpy()


class TFLitePredictor(Predictor):
    kind = "tflite"
    batch_limit = 1  # resizing the interpreter's input for every batch size costs more than it saves

    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path))
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.image_size = int(self.input["shape"][1])
        self.batch = 0
        self.class_names = tflite_labels(path)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.shape[0] != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], list(pixels.shape))
            self.interpreter.allocate_tensors()
            self.batch = pixels.shape[0]
        self.interpreter.set_tensor(self.input["index"], pixels.astype(self.input["dtype"]))
        self.interpreter.invoke()
        output = self.interpreter.get_tensor(self.output["index"])
        if self.output["dtype"] != np.float32:  # a quantized output: back to probabilities
            scale, zero_point = self.output["quantization"]
            output = (output.astype("float32") - zero_point) * scale
        return output


class OnnxPredictor(Predictor):
    """An ONNX file, run by ONNX Runtime (no TensorFlow needed); its labels are in its metadata."""

    kind = "onnx"

    def __init__(self, path: Path):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.image_size = int(self.input.shape[1])
        labels = self.session.get_modelmeta().custom_metadata_map.get("labels")
        self.class_names = ([line for line in labels.splitlines() if line.strip()] if labels
                            else read_labels(path.parent / LABELS_FILE))

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input.name: pixels.astype(np.float32)})[0]


def tflite_labels(path: Path) -> list[str]:
    """Labels packed inside the .tflite (an associated labels.txt, read as a zip), else labels.txt beside it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [line for line in archive.read(LABELS_FILE).decode().splitlines() if line.strip()]
    except (zipfile.BadZipFile, KeyError):
        beside = path.parent / LABELS_FILE
        if beside.is_file():
            return read_labels(beside)
        raise TflError(f"'{path}' carries no labels and has no labels.txt beside it.") from None


def load_predictor(artifact: str | Path) -> Predictor:
    """Pick the predictor for a .keras file, a run directory, a SavedModel directory or a .tflite file."""
    path = Path(artifact).expanduser()
    if not path.exists():
        raise TflError(f"'{path}' does not exist. Pass a .keras file, a run directory, a SavedModel directory or a .tflite file.")
    if path.suffix == ".tflite":
        return open_artifact(TFLitePredictor, path, "TFLite model")
    if path.suffix == ".onnx":
        return open_artifact(OnnxPredictor, path, "ONNX model")
    if path.suffix == ".keras":
        return open_artifact(KerasPredictor, path, "Keras model")
    if (path / "saved_model.pb").is_file():
        return open_artifact(SavedModelPredictor, path, "SavedModel")
    if (path / MODEL_FILE).is_file():
        return open_artifact(KerasPredictor, path / MODEL_FILE, "Keras model")
    raise TflError(f"'{path}' is not a model tfl can run: expected a .keras or .tflite file, a run directory "
                   f"(with {MODEL_FILE}) or a SavedModel directory (with saved_model.pb).")


def open_artifact(predictor_class, path: Path, kind: str):
    """A damaged or foreign file is the user's to replace: say so instead of showing the loader's traceback."""
    try:
        return predictor_class(path)
    except TflError:
        raise
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise TflError(f"'{path}' cannot be read as a {kind} ({reason}). The file may be damaged, cut short or of "
                       "another kind: export it again with 'tfl export', or pass another artifact.") from None


def collect_images(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*")  # hidden below `path` only: '../photos' is fine
                            if p.is_file() and not any(is_hidden(part) for part in p.relative_to(path).parts))
        elif path.exists():
            files.append(path)
        else:
            raise TflError(f"Input '{item}' does not exist. Pass image files or folders of images.")
    if not files:
        raise TflError("No image files found in the inputs given.")
    return files


def predict_files(predictor: Predictor, files: list[Path], top_k: int = 3, batch_size: int = 16) -> list[dict]:
    """One row per file: the top-k classes and scores, or the error that kept it from being read."""
    top_k = max(1, min(top_k, len(predictor.class_names)))
    rows: list[dict] = []
    batch: list[tuple[Path, np.ndarray]] = []

    def flush():
        if not batch:
            return
        probabilities = predictor.predict_pixels(np.stack([pixels for _, pixels in batch]))
        for (path, _), probs in zip(batch, probabilities):
            best = np.argsort(-probs)[:top_k]
            rows.append({"path": str(path), "top": [(predictor.class_names[i], float(probs[i])) for i in best]})
        batch.clear()

    batch_limit = min(batch_size, predictor.batch_limit)
    for path in files:
        try:
            batch.append((path, load_image_for_predict(str(path), predictor.image_size)))
        except Exception as exc:  # Pillow raises several kinds for unreadable files
            rows.append({"path": str(path), "error": f"could not read image ({type(exc).__name__}: {exc})"})
        if len(batch) >= batch_limit:
            flush()
    flush()
    order = {str(p): i for i, p in enumerate(files)}
    return sorted(rows, key=lambda row: order[row["path"]])


def format_rows(rows: list[dict], output_format: str) -> str:
    if output_format == "json":
        return json.dumps([{"path": r["path"], **({"error": r["error"]} if "error" in r else
                                                  {"top": [{"label": l, "score": round(s, 5)} for l, s in r["top"]]})}
                           for r in rows], indent=2)
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "rank", "label", "score", "error"])
        for row in rows:
            if "error" in row:
                writer.writerow([row["path"], "", "", "", row["error"]])
            for rank, (label, score) in enumerate(row.get("top", []), start=1):
                writer.writerow([row["path"], rank, label, f"{score:.5f}", ""])
        return buffer.getvalue().rstrip("\n")
    lines = []
    for row in rows:
        if "error" in row:
            lines.append(f"{row['path']}: ERROR {row['error']}")
        else:
            lines.append(f"{row['path']}: " + ", ".join(f"{label} {score:.3f}" for label, score in row["top"]))
    return "\n".join(lines)
