"""The artifact formats, one row each: `tfl export`, its CLI choices and help, and `tfl.load` are built from this.

Adding a format is one row here, its writer (tfl/export.py) and its predictor (tfl/predict.py). Writers and
predictors are named as "module:attribute" and imported when used, so that reading the table (the CLI does, to
build its options) imports neither TensorFlow nor Keras."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from tfl.errors import TflError, unknown

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
ALL = "all"  # --format all: every exportable format


@dataclass(frozen=True)
class ArtifactFormat:
    """One kind of artifact: where it goes in the run, what it accepts, what writes and what runs it."""

    name: str  # --format value
    help: str  # one line for the CLI
    file: Callable[[str], str]  # its path inside the run folder, per quantization
    writer: str | None  # "module:function(model, target, job)"; None: not exported (the run's own model)
    predictor: str  # "module:Class(path)"
    quantizations: tuple[str, ...] = ("none",)
    suffix: str | None = None  # tfl.load: a file with this suffix is of this format
    marker: str | None = None  # tfl.load: a folder holding this file is of this format
    app_check: str | None = None  # "module:function(path, verification, reference, names, unknown) -> report
    #                               fields": the artifact run as the apps that use it run it

    def check_in_apps(self, *args) -> dict:
        return resolve(self.app_check)(*args) if self.app_check else {}

    def path(self, quantize: str = "none") -> str:
        return self.file(quantize)

    def write(self, *args) -> None:
        return resolve(self.writer)(*args)

    def open(self, path):
        return resolve(self.predictor)(path)


def resolve(reference: str):
    module, attribute = reference.split(":")
    return getattr(importlib.import_module(module), attribute)


FORMATS: dict[str, ArtifactFormat] = {row.name: row for row in [
    ArtifactFormat("saved_model", "TF Serving layout: float32 and uint8 pixel signatures, and encoded image bytes in",
                   lambda q: "export/saved_model/1", "tfl.export:write_saved_model", "tfl.predict:SavedModelPredictor",
                   marker="saved_model.pb"),
    ArtifactFormat("tflite", "for phones and edge devices (LiteRT), in every quantization",
                   lambda q: f"model_{'float32' if q == 'none' else q}.tflite", "tfl.export:write_tflite",
                   "tfl.predict:TFLitePredictor", quantizations=QUANTIZATIONS, suffix=".tflite",
                   app_check="tfl.export:mediapipe_check"),
    ArtifactFormat("onnx", "for ONNX Runtime apps (C#, Java, C++, JavaScript, Python) and browsers",
                   lambda q: "model.onnx", "tfl.export:write_onnx", "tfl.predict:OnnxPredictor", suffix=".onnx"),
]}
KERAS = ArtifactFormat("keras", "the run's own Keras model", lambda q: "model.keras", None,
                       "tfl.predict:KerasPredictor", suffix=".keras")
LOADABLE = (*FORMATS.values(), KERAS)  # what tfl.load / tfl predict opens


def export_help() -> str:
    return "; ".join(f"{row.name}: {row.help}" for row in FORMATS.values()) + f"; {ALL}: each one."


def quantizations_of(quantize: str | list[str] | tuple[str, ...]) -> list[str]:
    """--quantize's value: one quantization, or several comma-separated ("float16,int8"), in order, once each."""
    asked = quantize.split(",") if isinstance(quantize, str) else list(quantize)
    asked = list(dict.fromkeys(q.strip() for q in asked))
    for q in asked:
        if q not in QUANTIZATIONS:
            raise unknown("quantization", q, QUANTIZATIONS)
    return asked


def formats_for(name: str, quantize: str | list[str]) -> list[tuple[ArtifactFormat, str]]:
    """(format, quantization) pairs `tfl export --format name --quantize quantize` writes, quantize being one or
    several (comma-separated): one export loads the model, its verification photos and the converter's SavedModel
    once for them all. An unknown name or a quantization the named format does not take is an error (with 'all',
    formats without it are written plain)."""
    asked = quantizations_of(quantize)
    if name == ALL:
        return [(row, q) for row in FORMATS.values()
                for q in ([q for q in asked if q in row.quantizations] or ["none"])]
    if name not in FORMATS:
        raise unknown("export format", name, [*FORMATS, ALL])
    row = FORMATS[name]
    for q in asked:
        if q not in row.quantizations:
            takers = [r.name for r in FORMATS.values() if q in r.quantizations]
            raise TflError(f"--format {name} takes no --quantize {q} (it takes: {', '.join(row.quantizations)}); "
                           f"{q} is for {', '.join(takers)}.")
    return [(row, q) for q in asked]
