"""TFLite Metadata for an image classifier: what MediaPipe Tasks' ImageClassifier (and ML Kit, the TFLite Task
Library) read to feed the model and name its classes.

What goes into a `.tflite` (the layout MediaPipe's and tflite-support's metadata writers produce):
- a `TFLITE_METADATA` buffer in the model flatbuffer: the input is an RGB image with NormalizationOptions mean 0 and
  std 1 (tfl's preprocessing is inside the model, so a runtime feeds raw pixels 0..255), the output is a vector of
  probabilities whose axis labels are the associated file `labels.txt`;
- `labels.txt` in a zip appended after the flatbuffer, stored uncompressed (MediaPipe refuses a deflated one); any
  zip reader finds it, and interpreters ignore bytes after the flatbuffer.

Written with the `flatbuffers` package, the model schema that ai-edge-litert ships, and the metadata schema module
vendored in tfl/vendor/ (no maintained package ships it without native code).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as model_schema

from tfl.errors import TflError
from tfl.runs import LABELS_FILE, THRESHOLDS_FILE, UNKNOWN_NAME_FILE, labels_text, thresholds_text, unknown_text
from tfl.vendor import metadata_schema_py_generated as meta

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
# The oldest metadata parser that reads what is written here: 1.0.0 for an image classifier with axis labels and
# normalization (MediaPipe's metadata_version.cc raises it only for tokenizers, audio, tensor groups, custom
# metadata and versioned or vocabulary files, none of which tfl writes).
MIN_PARSER_VERSION = "1.0.0"


@dataclass
class ModelInfo:
    """The fields of the metadata a user can set (`tfl export --meta KEY=VALUE`)."""

    name: str = "tfl image classifier"
    description: str = ""
    version: str = ""
    author: str = ""
    license: str = ""


def input_metadata() -> meta.TensorMetadataT:
    tensor = meta.TensorMetadataT()
    tensor.name, tensor.description = "image", "RGB pixels 0..255, resized to the model's input size"
    tensor.content = meta.ContentT()
    tensor.content.contentPropertiesType = meta.ContentProperties.ImageProperties
    tensor.content.contentProperties = meta.ImagePropertiesT()
    tensor.content.contentProperties.colorSpace = meta.ColorSpaceType.RGB
    normalization = meta.ProcessUnitT()
    normalization.optionsType = meta.ProcessUnitOptions.NormalizationOptions
    normalization.options = meta.NormalizationOptionsT()
    normalization.options.mean, normalization.options.std = [0.0], [1.0]  # the model normalizes by itself
    tensor.processUnits = [normalization]
    tensor.stats = meta.StatsT()
    tensor.stats.min, tensor.stats.max = [0.0], [255.0]
    return tensor


def output_metadata(uint8: bool) -> meta.TensorMetadataT:
    tensor = meta.TensorMetadataT()
    tensor.name = "probability"  # MediaPipe names the classification head after it; unnamed, it crashes
    tensor.description = ("Probability of each class, in the order of labels.txt; when its last label is the one "
                          "unknown.txt names, that category wins for photos of none of the classes")
    tensor.content = meta.ContentT()
    tensor.content.contentPropertiesType = meta.ContentProperties.FeatureProperties
    tensor.content.contentProperties = meta.FeaturePropertiesT()
    tensor.stats = meta.StatsT()
    tensor.stats.min, tensor.stats.max = [0.0], [255.0 if uint8 else 1.0]
    labels = meta.AssociatedFileT()
    labels.name, labels.type = LABELS_FILE, meta.AssociatedFileType.TENSOR_AXIS_LABELS
    labels.description = "The class names, one per line"
    tensor.associatedFiles = [labels]
    return tensor


def metadata_bytes(info: ModelInfo, output_uint8: bool) -> bytes:
    subgraph = meta.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [input_metadata()]
    subgraph.outputTensorMetadata = [output_metadata(output_uint8)]
    model = meta.ModelMetadataT()
    model.name, model.description = info.name, info.description
    model.version, model.author, model.license = info.version or None, info.author or None, info.license or None
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


class AlignedBuilder(flatbuffers.Builder):
    """Keeps weight buffers 16-byte aligned (the schema's `force_align: 16`, which the object API ignores)."""

    def StartVector(self, elemSize, numElems, alignment):  # noqa: N802 - flatbuffers' name
        return super().StartVector(elemSize, numElems, max(alignment, 16) if elemSize == 1 else alignment)


def packed(model, size_hint: int) -> bytes:
    """A TFLite model object (schema's ModelT) as .tflite bytes, its buffers aligned."""
    builder = AlignedBuilder(size_hint + 4096)
    builder.Finish(model.Pack(builder), MODEL_IDENTIFIER)
    return bytes(builder.Output())


def with_metadata(tflite: bytes, class_names: list[str], info: ModelInfo,
                  thresholds: list[float] | None = None, unknown: str | None = None) -> bytes:
    """The model with its metadata (replacing any) and labels.txt appended (and, with several labels per photo,
    thresholds.json: the metadata has no place for a threshold per label; with the unknown category, whose name is
    the last of `class_names`, unknown.txt naming it); its tensors and weights unchanged."""
    model = model_schema.ModelT.InitFromObj(model_schema.Model.GetRootAs(tflite, 0))
    if tflite[4:8] != MODEL_IDENTIFIER or len(model.subgraphs) != 1:
        raise TflError("The converter wrote a TFLite file tfl cannot add metadata to (not one subgraph).")
    if any(buffer.offset and buffer.offset > 1 for buffer in model.buffers or []):
        raise TflError("The model is over 2 GB, kept outside the flatbuffer; its TFLite file cannot carry metadata.")
    graph = model.subgraphs[0]
    first_out = graph.tensors[graph.outputs[0]]
    if int(first_out.shape[-1]) != len(class_names):
        raise TflError(f"The model has {first_out.shape[-1]} outputs but {len(class_names)} class names.")
    uint8 = model_schema.TensorType.UINT8
    buffer = model_schema.BufferT()
    buffer.data = np.frombuffer(metadata_bytes(info, first_out.type == uint8), np.uint8)
    entries = [m for m in model.metadata or [] if m.name in (METADATA_NAME, METADATA_NAME.encode())]
    if entries:
        model.buffers[entries[0].buffer] = buffer
    else:
        model.buffers.append(buffer)
        entry = model_schema.MetadataT()
        entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    out = io.BytesIO(packed(model, len(tflite)))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(LABELS_FILE, labels_text(class_names))
        if thresholds is not None:
            archive.writestr(THRESHOLDS_FILE, thresholds_text(class_names, thresholds))
        if unknown:
            archive.writestr(UNKNOWN_NAME_FILE, unknown_text(unknown))
    return out.getvalue()


def read_metadata(tflite: bytes) -> meta.ModelMetadataT | None:
    """The metadata of a .tflite file's bytes, or None."""
    model = model_schema.Model.GetRootAs(tflite, 0)
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name() == METADATA_NAME.encode():
            data = model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes()
            return meta.ModelMetadataT.InitFromObj(meta.ModelMetadata.GetRootAs(data, 0))
    return None
