"""Running a trained classifier from any artifact (.keras, run dir, SavedModel, .tflite, .onnx) on images."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from tfl.backend import native_stderr_held
from tfl.data import is_hidden
from tfl.pipeline import load_image_for_predict, pixels_of_image
from tfl.errors import TflError
from tfl.formats import LOADABLE, ArtifactFormat
from tfl.runs import (LABELS_FILE, MODEL_FILE, THRESHOLDS_FILE, UNKNOWN_NAME_FILE, parse_labels,
                      parse_thresholds, read_labels, read_thresholds, read_unknown_name, read_unknown_text)
from tfl.unknown import UNKNOWN_FILE, Detector, class_probabilities, open_set_model


class Predictor:
    """What every artifact kind offers: its class names and input size, probabilities for a batch of pixels
    (`predict_pixels`), and top-k classes for images (`predict`). A kind implements `_probabilities`."""

    kind: str
    image_size: int
    class_names: list[str]
    thresholds: list[float] | None = None  # several labels per photo: each label's decision threshold
    unknown: str | None = None  # the extra category's name, when the artifact has one (tfl/unknown.py)
    batch_limit = 16  # images per call of predict_pixels

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """[batch, size, size, 3] RGB pixels 0..255 -> [batch, classes] probabilities."""
        return self.probabilities_of(self.scores(pixels))

    def probabilities_of(self, scores: np.ndarray) -> np.ndarray:
        """The classes' probabilities in what `scores` gave (the unknown category's score aside)."""
        return class_probabilities(scores) if self.unknown else scores

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """What the artifact outputs for a batch of pixels: the class probabilities, and, when it has the unknown
        category, that category's score last (then the classes' are p (1 - u): tfl/unknown.py)."""
        pixels = np.asarray(pixels)
        expected = (self.image_size, self.image_size, 3)
        if pixels.ndim != 4 or pixels.shape[1:] != expected or not np.issubdtype(pixels.dtype, np.number):
            raise TflError(f"predict_pixels and scores take a batch of RGB pixels 0..255 of shape [batch, "
                           f"{self.image_size}, {self.image_size}, 3] for this model; got {pixels.dtype} of shape {list(pixels.shape)}. "
                           "Resize the images first, or pass them to predict(), which resizes.")
        probabilities = self._probabilities(pixels)
        given = probabilities.shape[-1] - (1 if self.unknown else 0)  # the unknown category's score aside
        if given != len(self.class_names):  # a labels.txt of another model, or edited by hand
            raise TflError(f"This {self.kind} model gives {given} scores per image, but its class "
                           f"names ({LABELS_FILE}) are {len(self.class_names)}: they belong to another model or were "
                           f"edited. Put back the {LABELS_FILE} of the run that trained it.")
        return probabilities

    def _probabilities(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, inputs, top_k: int = 3) -> list[dict]:
        """One row per image in `inputs`: {"path", "top": [(class, score), ...]} (and, when photos have several
        labels, "labels": every label whose score reaches its threshold), or {"path", "error"} for a file that
        could not be read. `inputs` is an image file or folder, a PIL image, an RGB array (height x width x 3,
        0..255; a greyscale or RGBA one too), or a list of these; in-memory images are named '<image N>'."""
        return predict_items(self, collect_inputs(inputs), check_top_k(top_k), self.batch_limit)


class KerasPredictor(Predictor):
    kind = "keras"

    def __init__(self, model_path: Path):
        import keras

        from tfl.model import LowPass  # the classifier's own layer

        self.model = keras.models.load_model(model_path, compile=False, custom_objects={"LowPass": LowPass})
        self.image_size = int(self.model.input_shape[1])
        self.class_names = read_labels(model_path.parent / LABELS_FILE)
        self.thresholds = read_thresholds(model_path.parent / THRESHOLDS_FILE, self.class_names)
        self.detector = Detector.load(model_path.parent / UNKNOWN_FILE)  # the run's, beside its model
        self.scoring = self.model if self.detector is None else open_set_model(self.model, self.detector)
        self.unknown = None if self.detector is None else self.detector.name

    def _probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.scoring.predict_on_batch(pixels.astype("float32")))


class SavedModelPredictor(Predictor):
    kind = "saved_model"

    def __init__(self, path: Path):
        import tensorflow as tf

        self.model = tf.saved_model.load(str(path))
        self.serve = self.model.signatures["serving_default"]
        self.image_size = int(self.serve.structured_input_signature[1]["pixels"].shape[1])
        self.class_names = read_labels(path / "assets" / LABELS_FILE)
        self.thresholds = read_thresholds(path / "assets" / THRESHOLDS_FILE, self.class_names)
        self.unknown = read_unknown_name(path / "assets" / UNKNOWN_NAME_FILE)

    def _probabilities(self, pixels: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        outputs = self.serve(pixels=tf.constant(pixels, tf.float32))
        return outputs["all_scores" if self.unknown else "probabilities"].numpy()


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
        self.unknown = tflite_unknown(path)
        if self.unknown:  # the last label names the extra category
            self.class_names = self.class_names[:-1]
        self.thresholds = tflite_thresholds(path, self.class_names)

    def _probabilities(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.shape[0] != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], list(pixels.shape))
            with native_stderr_held():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate" line
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
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.class_names = (parse_labels(metadata["labels"]) if metadata.get("labels")
                            else read_labels(path.parent / LABELS_FILE))
        self.unknown = metadata.get("unknown") or None
        if self.unknown:  # the last label names the extra category
            self.class_names = self.class_names[:-1]
        thresholds = metadata.get("thresholds")
        self.thresholds = parse_thresholds(thresholds, self.class_names) if thresholds else None

    def _probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input.name: pixels.astype(np.float32)})[0]


def tflite_packed(path: Path, name: str) -> str | None:
    """A text file packed inside the .tflite (its metadata's associated files are a zip appended to it), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(name).decode()
    except (zipfile.BadZipFile, KeyError):
        return None


def tflite_thresholds(path: Path, class_names: list[str]) -> list[float] | None:
    """Several labels per photo: the thresholds packed inside the .tflite beside labels.txt."""
    text = tflite_packed(path, THRESHOLDS_FILE)
    return None if text is None else parse_thresholds(text, class_names)


def tflite_unknown(path: Path) -> str | None:
    """The unknown category's name, packed inside the .tflite when its last label is that category."""
    text = tflite_packed(path, UNKNOWN_NAME_FILE)
    return None if text is None else read_unknown_text(text)


def tflite_labels(path: Path) -> list[str]:
    """Labels packed inside the .tflite (an associated labels.txt, read as a zip), else labels.txt beside it."""
    text = tflite_packed(path, LABELS_FILE)
    if text is not None:
        return parse_labels(text)
    beside = path.parent / LABELS_FILE
    if beside.is_file():
        return read_labels(beside)
    raise TflError(f"'{path}' carries no labels and has no labels.txt beside it.")


ARTIFACT_KINDS = (f"a {', '.join(row.suffix for row in LOADABLE if row.suffix)} file, a run directory or a "
                  "SavedModel directory")


def load_predictor(artifact: str | Path) -> Predictor:
    """The predictor of an artifact, found by the formats table: a file by its suffix, a folder by its marker file,
    and a run directory by its model.keras."""
    if not isinstance(artifact, (str, Path)):
        raise TflError(f"tfl.load takes the path of {ARTIFACT_KINDS}; got {type(artifact).__name__}.")
    path = Path(artifact).expanduser()
    if not path.exists():
        raise TflError(f"'{path}' does not exist. Pass {ARTIFACT_KINDS}.")
    if path.is_dir() and (path / MODEL_FILE).is_file():
        path = path / MODEL_FILE
    for row in LOADABLE:
        if (row.suffix and path.suffix == row.suffix) or (row.marker and (path / row.marker).is_file()):
            return open_artifact(row, path)
    raise TflError(f"'{path}' is not a model tfl can run: expected {ARTIFACT_KINDS} (with {MODEL_FILE} or "
                   "saved_model.pb).")


def open_artifact(row: ArtifactFormat, path: Path) -> Predictor:
    """A damaged or foreign file is the user's to replace: say so instead of showing the loader's traceback."""
    kind = {"keras": "Keras model", "tflite": "TFLite model", "onnx": "ONNX model", "saved_model": "SavedModel"
            }.get(row.name, row.name)
    try:
        return row.open(path)
    except TflError:
        raise
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise TflError(f"'{path}' cannot be read as a {kind} ({reason}). The file may be damaged, cut short or of "
                       "another kind: export it again with 'tfl export', or pass another artifact.") from None


def check_top_k(top_k) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise TflError(f"top_k must be a whole number of at least 1 (the classes listed per image); got {top_k!r}.")
    return int(top_k)


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """The image files of `inputs`, files and folders (searched recursively; hidden files below them skipped)."""
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


INPUT_KINDS = ("image files or folders (str or Path), PIL images, or RGB arrays of height x width x 3 (or a list "
               "of these)")


def collect_inputs(inputs) -> list[tuple[str, object]]:
    """(name, source) per image: a file path, or an in-memory PIL image or array named '<image N>'."""
    from PIL import Image

    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if not items:
        raise TflError(f"No input given. Pass {INPUT_KINDS}.")
    collected: list[tuple[str, object]] = []
    for index, item in enumerate(items):
        if isinstance(item, (str, Path)):
            collected += [(str(path), path) for path in collect_images([item])]
        elif isinstance(item, (np.ndarray, Image.Image)):
            collected.append((f"<image {index}>", item))
        else:
            raise TflError(f"predict cannot read input {index} of type {type(item).__name__}. Pass {INPUT_KINDS}.")
    return collected


def load_input(source, image_size: int) -> np.ndarray:
    """Resized uint8 RGB pixels of a file, PIL image or array, all through the one decoder's resize."""
    if isinstance(source, Path):
        return load_image_for_predict(str(source), image_size)
    return pixels_of_image(source, image_size)


def predict_items(predictor: Predictor, items: list[tuple[str, object]], top_k: int = 3,
                  batch_size: int = 16) -> list[dict]:
    """One row per item: the top-k classes and scores, or the error that kept it from being read."""
    top_k = min(top_k, len(predictor.class_names))
    rows: list[dict] = []
    batch: list[tuple[str, np.ndarray]] = []

    def flush():
        if not batch:
            return
        scores = predictor.scores(np.stack([pixels for _, pixels in batch]))
        probabilities = predictor.probabilities_of(scores)
        for (name, _), probs, row_scores in zip(batch, probabilities, scores):
            best = np.argsort(-probs)[:top_k]
            rows.append({"path": name, "top": [(predictor.class_names[i], float(probs[i])) for i in best]})
            if predictor.unknown:  # the extra category won: the photo is of none of the classes
                rows[-1]["unknown"] = bool(row_scores.argmax() == len(row_scores) - 1)
                rows[-1]["unknown_score"] = float(row_scores[-1])
            if predictor.thresholds is not None:
                rows[-1]["labels"] = [(predictor.class_names[i], float(probs[i])) for i in np.argsort(-probs)
                                      if probs[i] >= predictor.thresholds[i]]
        batch.clear()

    batch_limit = min(batch_size, predictor.batch_limit)
    for name, source in items:
        try:
            batch.append((name, load_input(source, predictor.image_size)))
        except TflError:
            raise
        except Exception as exc:  # Pillow raises several kinds for unreadable files
            rows.append({"path": name, "error": f"could not read image ({type(exc).__name__}: {exc})"})
        if len(batch) >= batch_limit:
            flush()
    flush()
    order = {name: i for i, (name, _) in enumerate(items)}
    return sorted(rows, key=lambda row: order[row["path"]])
