"""Exports of a finished run: a TF Serving SavedModel and (quantized) TFLite files, each verified on the val set."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tfl.backend import native_stderr_held
from tfl.split import Split
from tfl.pipeline import decode_image_bytes, label_array, load_image_for_predict
from tfl.errors import TflError, disk_full_explained
from tfl.evaluate import load_labelled_folder
from tfl.precision import float32_copy
from tfl.predict import load_predictor
from tfl.quantize import Calibration, Goal, Traced, quantized_file
from tfl.report import format_export_report
from tfl.tflite_metadata import ModelInfo, with_metadata
from tfl.fileio import interrupts_deferred, atomic_path, atomic_write_text
from tfl.multilabel import average_precision
from tfl.formats import ArtifactFormat, formats_for
from tfl.runs import (DEFAULT_ROOT, LABELS_FILE, THRESHOLDS_FILE, UNKNOWN_NAME_FILE, RunFolder, export_lock,
                      labels_text, thresholds_text, unknown_text)
from tfl.unknown import flagged, open_set_model

LOUD_DROP = 0.01  # a quantized export losing more than 1 point of accuracy is reported loudly


# --- SavedModel ------------------------------------------------------------------------------------

@dataclass
class ArtifactJob:
    """What a writer needs besides the model and its target path."""

    class_names: list[str]
    quantize: str = "none"
    top_k: int = 5  # classes the SavedModel's classify_images returns
    calibration: list[str] | None = None  # int8: photos like the training ones
    calibration_samples: int = 300
    info: ModelInfo = dataclasses.field(default_factory=ModelInfo)  # TFLite metadata: name, description, author...
    goal: Goal | None = None  # what a quantized TFLite file must keep of the Keras model's answers
    fallback: bool = True  # a quantized file below its goal keeps its most damaging operations in float
    thresholds: list[float] | None = None  # several labels per photo: each label's decision threshold
    traced: Traced | None = None  # the model as the TFLite converter reads it, shared by the export's .tflite files
    unknown: str | None = None  # the unknown category's name: the model's last score is that category's

    @property
    def output_names(self) -> list[str]:
        """The name of each of the model's scores: the classes, then the unknown category when there is one."""
        return self.class_names + ([self.unknown] if self.unknown else [])


def write_saved_model(model: keras.Model, target: Path, job: ArtifactJob) -> None:
    """Signatures: serving_default (float32 pixels), serving_uint8 (uint8 pixels), classify_images (bytes)."""
    size = int(model.input_shape[1])
    labels = tf.constant(job.class_names)
    k = min(job.top_k, len(job.class_names))

    classes = len(job.class_names)

    # The model is traced once, here, and every signature calls this graph (the tiny test model's SavedModel took
    # 6.0-6.3 s to write when each signature traced the model, 5.0-5.2 s so).
    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    def scores_of(pixels):
        return model(pixels, training=False)

    def outputs_of(pixels):
        """{"probabilities"} of the classes; with the unknown category also its decision and every score."""
        scores = scores_of(pixels)
        if not job.unknown:
            return {"probabilities": scores}
        known = scores[:, :classes]
        return {"probabilities": known / tf.maximum(tf.reduce_sum(known, axis=1, keepdims=True), 1e-12),
                "unknown": tf.equal(tf.argmax(scores, axis=1), classes), "all_scores": scores}

    def classify_pixels(pixels):
        return outputs_of(pixels)

    def classify_uint8(pixels):
        return classify_pixels(tf.cast(pixels, tf.float32))

    def classify_images(images):
        decoded = tf.map_fn(lambda data: decode_image_bytes(data, size), images,
                            fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        result = outputs_of(tf.cast(decoded, tf.float32))
        probabilities = result["probabilities"]
        scores, indices = tf.math.top_k(probabilities, k=k)
        result = {"probabilities": probabilities, "classes": tf.gather(labels, indices), "scores": scores} | (
            {"unknown": result["unknown"], "unknown_score": result["all_scores"][:, classes]} if job.unknown else {})
        if job.thresholds is not None:  # several labels per photo: which labels reach their threshold
            above = probabilities >= tf.constant(job.thresholds, tf.float32)
            result["above_threshold"] = above
            result["labels"] = tf.where(above, labels, "")  # [N, labels]: a label's name where it is chosen, else ""
        return result

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", classify_pixels,
                         input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")])
    archive.add_endpoint("serving_uint8", classify_uint8,
                         input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="pixels")])
    archive.add_endpoint("classify_images", classify_images,
                         input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    with interrupts_deferred():  # TensorFlow's saver swallowed or mangled a Ctrl-C (SystemError) about 1 time in 6
        archive.write_out(str(target), verbose=False)
    (target / "assets").mkdir(exist_ok=True)
    (target / "assets" / LABELS_FILE).write_text(labels_text(job.class_names))
    if job.thresholds is not None:
        (target / "assets" / THRESHOLDS_FILE).write_text(thresholds_text(job.class_names, job.thresholds))
    if job.unknown:
        (target / "assets" / UNKNOWN_NAME_FILE).write_text(unknown_text(job.unknown))


# --- TFLite ----------------------------------------------------------------------------------------

def write_tflite(model: keras.Model, target: Path, job: ArtifactJob) -> dict:
    """The .tflite of job.quantize with its TFLite metadata; a dynamic or int8 file that misses its target keeps its
    most damaging layers in float (tfl/quantize.py), and says so in the returned report fields."""
    representative = (representative_images(job.calibration, int(model.input_shape[1]), job.calibration_samples)
                      if job.quantize == "int8" else None)
    source = job.traced if job.traced is not None and job.traced.model is model else model
    content, report = quantized_file(source, job.quantize, representative, job.goal, search=job.fallback)
    target.write_bytes(with_metadata(content, job.output_names, job.info, job.thresholds, job.unknown))
    return report


def representative_images(paths: list[str], image_size: int, samples: int, seed: int = 0) -> Calibration:
    """Calibration data for int8: `samples` of `paths`, drawn at random, resized as training saw them."""
    chosen = np.random.default_rng(seed).permutation(len(paths))[:samples]
    return Calibration(np.stack([load_image_for_predict(paths[index], image_size) for index in chosen]))


def calibration_photos(run: RunFolder, data: Split | None, echo: Callable[[str], None]) -> list[str]:
    """The photos int8 calibrates on: the run's training photos that are still where they were, else those of
    --data; said on screen, and an error when there are none."""
    saved = run.splits.get("train", Split()).paths
    present = [p for p in saved if os.path.isfile(p)]
    if present:
        gone = f" ({len(saved) - len(present):,} are gone)" if len(present) < len(saved) else ""
        echo(f"int8 calibration: on the run's training photos, {len(present):,} of {len(saved):,}{gone}")
        return present
    if data is not None and len(data):
        echo(f"int8 calibration: on the {len(data):,} photos of --data (the run's training photos are gone)")
        return data.paths
    what = (f"none of the run's {len(saved):,} training photos is where it was (the first: '{saved[0]}')" if saved
            else "the run has no saved list of training photos")
    raise TflError(f"int8 export calibrates the quantization on photos like the training ones, but {what}. Pass "
                   "--data DIR, a folder of class subfolders of such photos, or export another quantization.")


# --- ONNX ------------------------------------------------------------------------------------------

ONNX_LABELS_KEY = "labels"  # metadata_props entry: the class names, one per line
ONNX_THRESHOLDS_KEY = "thresholds"  # several labels per photo: {label: threshold} as JSON
ONNX_UNKNOWN_KEY = "unknown"  # the unknown category's name: the last label, and the last score, are that category's


def write_onnx(model: keras.Model, target: Path, job: ArtifactJob) -> None:
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
    entry.key, entry.value = ONNX_LABELS_KEY, labels_text(job.output_names)
    if job.unknown:
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_UNKNOWN_KEY, job.unknown
    if job.thresholds is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_THRESHOLDS_KEY, thresholds_text(job.class_names, job.thresholds)
    onnx.save(proto, str(target))
    plain.unlink()


# --- verification ----------------------------------------------------------------------------------

@dataclass
class Verification:
    """What every artifact is checked on: labelled photos (so accuracy too), or generated images when no photo is
    left (then only the agreement with the Keras model)."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str


GENERATED_IMAGES = 32


def verification_set(run: RunFolder, data: Split | None, image_size: int, limit: int) -> Verification:
    """--data's photos; else the run's validation photos still where they were; else generated images."""
    def sample(split: Split, source: str) -> Verification:
        chosen = np.random.default_rng(0).permutation(len(split))[:limit]
        images = np.stack([load_image_for_predict(split.paths[i], image_size) for i in chosen])
        labels = label_array(split.labels, len(run.class_names))  # multi-hot rows when photos have several labels
        return Verification(images, labels[chosen], f"{len(chosen):,} {source}")

    if data is not None:
        return sample(data, "photos of --data")
    saved = run.splits.get("val", Split())
    present = saved.present()
    if len(present):
        gone = len(saved) - len(present)
        return sample(present, "validation photos" + (f" (of the {len(present):,} still there; {gone:,} are gone)"
                                                      if gone else ""))
    # Smooth random scenes (noise at 8x8, enlarged) rather than pixel noise, so that predictions vary.
    small = np.random.default_rng(0).uniform(0, 255, (GENERATED_IMAGES, 8, 8, 3)).astype(np.float32)
    images = np.clip(np.round(tf.image.resize(small, [image_size, image_size]).numpy()), 0, 255).astype(np.uint8)
    why = (f"none of its {len(saved):,} validation photos is where it was, the first '{saved.paths[0]}'"
           if saved.paths else "it saved no validation file list")
    return Verification(images, None, f"{GENERATED_IMAGES} generated images, since {why}: accuracy NOT verified, "
                        "only agreement with the Keras model (pass --data DIR to verify on labelled photos)")


def predict_all(predictor, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Every score the artifact gives (the classes', and the unknown category's last when it has one)."""
    return np.concatenate([predictor.scores(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


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


def verify(predictor, path: Path, check: Verification, reference_scores: np.ndarray | None) -> dict:
    """The artifact's accuracy and latency, and (with the Keras model's scores) how far its answers agree: top-1 (a
    class, or the unknown category), the unknown category's decisions, the largest difference of a probability."""
    scores = predict_all(predictor, check.images, min(32, predictor.batch_limit))
    probabilities = predictor.probabilities_of(scores)
    reference = None if reference_scores is None else predictor.probabilities_of(reference_scores)
    predicted = probabilities.argmax(axis=1)
    row = {"format": predictor.kind, "file": path.name, "size_bytes": size_bytes(path), "accuracy": None,
           "latency_ms_batch1": latency_ms(predictor, check.images[:1]), "images": int(len(check.images)),
           "verified_on": check.source}
    if getattr(predictor, "thresholds", None) is not None:
        return row | multilabel_checks(probabilities, predictor.thresholds, check, reference)
    if predictor.unknown:
        row["unknown_flagged"] = round(float(flagged(scores).mean()), 4)
        if reference_scores is not None:
            row["unknown_agreement"] = round(float((flagged(scores) == flagged(reference_scores)).mean()), 4)
    if check.labels is not None:
        row["accuracy"] = round(float((predicted == check.labels).mean()), 4)
    if reference is not None:
        if check.labels is not None:
            row["accuracy_change"] = round(row["accuracy"] - float((reference.argmax(axis=1) == check.labels).mean()), 4)
        # the answer apps see: a class, or the unknown category when the artifact has one (as MediaPipe names it)
        row["top1_agreement"] = round(float((scores.argmax(axis=1) == reference_scores.argmax(axis=1)).mean()), 4)
        row["max_abs_diff"] = float(np.abs(probabilities - reference).max())
    return row


def multilabel_checks(probabilities: np.ndarray, thresholds: list[float], check: Verification,
                      reference: np.ndarray | None) -> dict:
    """Several labels per photo: mAP on the labelled photos, and how often each (photo, label) decision at the
    artifact's own thresholds agrees with the Keras model's."""
    decided = probabilities >= np.asarray(thresholds)
    row = {"accuracy": None}
    if check.labels is not None:
        row["map"] = mean_average_precision(probabilities, check.labels)
        if reference is not None:  # what --max-accuracy-drop and the loud warning judge: the mAP lost
            row["accuracy_change"] = round(row["map"] - mean_average_precision(reference, check.labels), 4)
    if reference is not None:
        row["label_agreement"] = round(float((decided == (reference >= np.asarray(thresholds))).mean()), 4)
        row["top1_agreement"] = round(float((probabilities.argmax(axis=1) == reference.argmax(axis=1)).mean()), 4)
        row["max_abs_diff"] = float(np.abs(probabilities - reference).max())
    return row


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    precisions = [average_precision(scores[:, i], labels[:, i]) for i in range(scores.shape[1])]
    return round(float(np.mean([p for p in precisions if p is not None])), 4)


# --- the export command ----------------------------------------------------------------------------

def export_run(run: str | Path | None = None, export_format: str = "tflite", quantize: str | list[str] = "none",
               calibration_samples: int = 300, verify_images: int = 500, top_k: int = 5, force: bool = False,
               max_accuracy_drop: float | None = None, root: str | Path = DEFAULT_ROOT,
               echo: Callable[[str], None] = print, data: str | Path | None = None,
               metadata: dict[str, str] | None = None, fallback: bool = True) -> list[dict]:
    """Write the requested artifacts of RUN (`quantize`: one quantization or several) atomically, verify each, and
    record each in export_report.json as soon as it is in place (an export killed midway keeps what it finished and
    records it). `data`: a folder of class
    subfolders to verify (and calibrate int8) on, instead of the run's own photos. `metadata`: fields of the TFLite
    metadata (name, description, version, author, license) over tfl's. One export of a run at a time. (Its
    parameters are the options of `tfl export`, one each.)"""
    wanted = formats_for(export_format, quantize)
    run = RunFolder.open(run, root)
    advice = lambda: ("Every artifact finished before is kept and listed in export_report.json; nothing half-written "  # noqa: E731
                      "is left. Free some space and run the export again.")
    with export_lock(run.path), disk_full_explained(f"exporting '{run.path}'", advice), \
            tempfile.TemporaryDirectory(prefix="tfl_converted_") as converted:
        job = ArtifactJob(run.class_names, "none", top_k, None, calibration_samples, model_info(run, metadata),
                          thresholds=run.thresholds, fallback=fallback)
        return Export(run, job, echo, Path(converted)).write(wanted, force, verify_images, max_accuracy_drop, data)


class Export:
    """One `tfl export` of a run: the float32 model, the photos it is checked on, the report it fills."""

    def __init__(self, run: RunFolder, job: ArtifactJob, echo: Callable[[str], None], converted_dir: Path):
        self.run, self.job, self.echo, self.converted_dir = run, job, echo, converted_dir
        self.report_path = run.export_report_file
        self.report = json.loads(self.report_path.read_text()) if self.report_path.is_file() else {}

    def write(self, wanted: list[tuple[ArtifactFormat, str]], force: bool, verify_images: int,
              max_accuracy_drop: float | None, data: str | Path | None) -> list[dict]:
        targets = self.still_to_write(wanted, force)
        keras_predictor = load_predictor(self.run.model_file)
        model, image_size = float32_copy(keras_predictor.model), keras_predictor.image_size
        self.job.unknown = keras_predictor.unknown
        if keras_predictor.detector is not None:  # every artifact carries the unknown category
            model = open_set_model(model, keras_predictor.detector)
        self.job.traced = Traced(model, str(self.converted_dir / ".tflite_source"))  # hidden: never a class folder
        labelled = None if data is None else self.labelled_folder(data)
        check = verification_set(self.run, labelled, image_size, verify_images)
        if check.labels is None and max_accuracy_drop is not None:
            raise TflError(f"--max-accuracy-drop needs labelled photos to measure accuracy on, and run "
                           f"'{self.run.path}' has none left where they were. Pass --data DIR, a folder of class "
                           "subfolders.")
        if any(row.name == "tflite" and quantize == "int8" for row, quantize, _ in targets):
            self.job.calibration = calibration_photos(self.run, labelled, self.echo)
        self.echo(f"Exporting {self.run.path} ({len(self.job.class_names)} classes, {image_size} px); verifying on "
                  f"{check.source}")
        reference = predict_all(keras_predictor, check.images, 32)
        self.job.goal = Goal(check.images, reference, None if check.labels is None or check.labels.ndim > 1
                             else check.labels,  # several labels per photo: every label's decision agrees
                             None if self.job.thresholds is None else np.asarray(self.job.thresholds),
                             unknown=self.job.unknown is not None)
        rows = [verify(keras_predictor, self.run.model_file, check, None) | self.calibration()]
        self.record(rows[0])
        for row_format, quantize, path in targets:
            rows.append(self.write_one(row_format, quantize, path, model, check, reference, force, max_accuracy_drop))
            self.record(rows[-1])
        self.echo(format_export_report(rows))
        return rows

    def calibration(self) -> dict:
        """What the model's temperature did at training (metrics.json), which every artifact carries."""
        calibration = self.run.metrics.get("calibration", {}) if self.run.metrics_file.is_file() else {}
        required = ("temperature", "ece_before", "ece_after", "ece_if_calibrated", "measured_on")
        optional = ("fitted_temperature", "p_value", "debiased_before", "debiased_after")  # absent from older runs
        if not set(required) <= set(calibration):
            return {}
        return {"calibration": {key: calibration[key] for key in (*required, *optional) if key in calibration}}

    def still_to_write(self, wanted, force: bool) -> list[tuple[ArtifactFormat, str, Path]]:
        """(format, quantization, path) of each artifact asked for, without those already exported and verified
        (unless `force`)."""
        targets = [(row, quantize, self.run.path / row.path(quantize)) for row, quantize in wanted]
        finished = {path for _, _, path in targets if path.exists() and self.relative(path) in self.report}
        if not force and finished:
            if len(finished) == len(targets):
                raise TflError(f"'{sorted(finished)[0]}' already exists. Pass --force to replace it.")
            self.echo(f"Keeping {', '.join(self.relative(p) for p in sorted(finished))} (already exported and "
                      "verified; --force replaces it)")
        return [target for target in targets if force or target[2] not in finished]

    def write_one(self, row_format: ArtifactFormat, quantize: str, path: Path, model, check: Verification,
                  reference: np.ndarray, force: bool, max_accuracy_drop: float | None) -> dict:
        if path.exists() and not force:  # written by an export that was killed before it recorded it
            row = verify(row_format.open(path), path, check, reference)
        else:
            with atomic_path(path, force=force) as tmp:
                written = row_format.write(model, tmp, dataclasses.replace(self.job, quantize=quantize))
                row = verify(row_format.open(tmp), tmp, check, reference) | (written or {})
                row |= row_format.check_in_apps(tmp, check, reference, self.job.output_names, self.job.unknown)
                row["file"] = self.relative(path)
                check_drop(row, max_accuracy_drop, self.echo)
        return row | {"file": self.relative(path), "quantize": quantize}

    def labelled_folder(self, data: str | Path) -> Split:
        """--data's photos, converted where TensorFlow cannot read them (into a folder that lives as long as this
        export), with what was skipped said on screen."""
        split, report = load_labelled_folder(data, self.job.class_names, self.converted_dir)
        if report["skipped"]:
            self.echo(f"--data: skipped {len(report['skipped'])} unusable file(s), the first "
                      f"'{report['skipped'][0]['path']}' ({report['skipped'][0]['reason']})")
        return split

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.run.path))

    def record(self, row: dict) -> None:
        self.report[row["file"]] = row
        atomic_write_text(self.report_path, json.dumps(self.report, indent=2) + "\n")


def mediapipe_check(path: Path, check: Verification, reference: np.ndarray, class_names: list[str],
                    unknown: str | None = None) -> dict:
    """The .tflite run as apps load it, through MediaPipe Tasks' ImageClassifier (Android, iOS, web and Python): it
    must load, name the classes as labels.txt does, and agree with the Keras model (the category that wins, and,
    with the unknown category, whether it wins). It is given the verification pixels at the model's size, so that
    it resizes nothing and the comparison is of the model alone."""
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision
    except ImportError:
        return {"mediapipe": "not checked: pip install 'tfl[mediapipe]'"}
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                            max_results=len(class_names))
    tops, named = [], True
    try:
        with native_stderr_held(), vision.ImageClassifier.create_from_options(options) as classifier:
            for pixels in check.images:
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels, np.uint8))
                categories = classifier.classify(image).classifications[0].categories
                tops.append(max(categories, key=lambda category: category.score).index)
                named = named and all(c.category_name == class_names[c.index] for c in categories)
    except Exception as exc:  # MediaPipe raises RuntimeError and ValueError with its C++ status text
        raise TflError(f"MediaPipe Tasks' ImageClassifier cannot run {path.name} ({str(exc).splitlines()[0][:200]}), "
                       "so apps could not load it. Nothing was written; please report this as a tfl bug.") from None
    if not named:
        raise TflError(f"MediaPipe Tasks reads other class names from {path.name} than labels.txt holds. Nothing was "
                       "written; please report this as a tfl bug.")
    tops = np.asarray(tops)
    row = {"mediapipe_top1_agreement": round(float(np.mean(tops == reference.argmax(axis=1))), 4)}
    if unknown:  # its category is the last: MediaPipe names it as any other
        row["mediapipe_unknown_agreement"] = round(float(np.mean((tops == len(class_names) - 1) == flagged(reference))),
                                                   4)
    return row


def model_info(run: RunFolder, metadata: dict[str, str] | None) -> ModelInfo:
    """The TFLite metadata's fields: what tfl knows of the run, then the user's."""
    names = run.class_names
    listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    info = ModelInfo(name=f"{run.config.get('arch', 'tfl')} image classifier",
                     description=f"Classifies photos into {len(names)} classes: {listed}. Trained with tfl.",
                     version=run.name)
    fields = {field.name for field in dataclasses.fields(ModelInfo)}
    unknown_keys = sorted(set(metadata or {}) - fields)
    if unknown_keys:
        raise TflError(f"Unknown metadata field(s) {', '.join(unknown_keys)}. The TFLite metadata has: "
                       f"{', '.join(sorted(fields))} (--meta KEY=VALUE).")
    return dataclasses.replace(info, **(metadata or {}))


def check_drop(row: dict, max_accuracy_drop: float | None, echo: Callable[[str], None]) -> None:
    if row.get("accuracy_change") is None:
        return
    drop = -row["accuracy_change"]
    measure = "mAP" if "map" in row else "accuracy"
    if max_accuracy_drop is not None and drop > max_accuracy_drop:
        raise TflError(f"{row['file']} loses {drop:.1%} {measure} against the Keras model (top-1 agreement "
                       f"{row['top1_agreement']:.1%}), more than --max-accuracy-drop {max_accuracy_drop:.1%}. "
                       "Nothing was written. Try --quantize float16 or dynamic, or more --calibration-samples.")
    if drop > LOUD_DROP:
        echo(f"\n!!! WARNING: {row['file']} is {drop:.1%} less accurate than the Keras model "
             f"(top-1 agreement {row['top1_agreement']:.1%}). Check it before shipping it. !!!\n")
