"""Quantized TFLite files: TensorFlow's converter for each quantization, int8's bias correction, and the fallback that
keeps in float the operations whose quantization changes the model's answers most, until the file keeps the Keras
model's answers.

int8's rounding of weights and activations shifts the mean of each layer's outputs (by about one quantization step
per channel in MobileNetV2's first blocks, more than the noise it adds), and the shifts add up through the network.
Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization"; Qualcomm's AIMET) shifts each int8 layer's
bias, in graph order, so that its outputs' mean per channel over 32 calibration photos is the float file's. On a
cats5 model it took the converter's file from 93.5% to 97.0% top-1 agreement and from -3.0 to -0.5 points, in 3 s.

The fallback, for float16, dynamic and int8 files that miss their target (TARGETS, and 1 point of accuracy when labels
exist), with a margin (SEARCH_MARGIN):
1. rank the operations it may keep in float by the damage each does alone: the divergence of the file's
   probabilities from the float file's when only that one is quantized, on 300 verification photos (with the
   unknown category, and to its decision: `ranked`). For float16 and dynamic these are the layers with weights
   (convolutions, the dense head); for int8 also the residual adds, the pooling and the softmax, since int8 rounds
   every tensor between operations (on a cats5 model, every layer in float still left 97% agreement; with those
   too, 100%);
2. keep the 1, 2, 4, 8... most damaging ones in float (then the fewest between the last two tried) until the file
   meets its target, with a margin, on the verification photos, within the fallback's limit; past it the closest is
   kept and the report says it misses.
int8 uses TensorFlow Lite's own selective quantization (QuantizationDebugger's denylisted nodes): its operations in
float compute in float32, so at most half of them are (past that the file is as slow as float32), holding at most a
third of the weights (past that it is bigger than the float16 file). Dynamic range uses
Google's AI Edge Quantizer (ai-edge-quantizer), since TensorFlow's dynamic-range converter cannot leave layers out:
its layers in float keep float16 weights, so the file is never bigger than the float16 one, and any number may be
(on flowers int8 weights in any of 44 of 53 layers cost more than 1% of the answers; see benchmarks/README.md).
float16 uses it too, its layers in float keeping float32 weights, at most a third of them.
MobileNetV2's small early layers and linear "project" convolutions are the usual culprits."""

from __future__ import annotations

import functools
import re
import tempfile
import warnings
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from tfl.backend import native_stderr_held
from tfl.tflite_metadata import packed
from tfl.unknown import LAYER_NAME, unknown_statistic

TARGETS = {"none": 0.999, "float16": 0.99, "dynamic": 0.99, "int8": 0.97}  # top-1 agreement with the Keras model
MAX_ACCURACY_DROP = 0.01
# With the unknown category (tfl/unknown.py), its decisions too: whether a photo is of none of the classes is what an
# app acts on, and it turns on a threshold int8 rounding can cross (issue 38 asks 99% of every file).
UNKNOWN_TARGET = 0.99
STEPS = (1, 2, 4, 8, 16, 32, 64, 128)  # layers kept in float, tried in turn
# A file must reach this share of the way from the target to 100% on tfl's pixels, or the fallback searches for one
# that does: apps resize and decode photos their own way (MediaPipe), and a file that just met the target on tfl's
# pixels fell below it there (flowers, dynamic: 99.1% against 98.2%; int8: 97.8% against 96.98%). It is reported as
# meeting its target when it meets the target itself.
SEARCH_MARGIN = 0.5
# verification photos the layers are ranked on: on flowers, ranked on 48 int8 needed 32 layers in float for 97%
# agreement, ranked on 300 16 (4 s more)
RANKING_IMAGES = 300
QUANTIZABLE = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}  # the ops with weights
# int8's fallback may keep any operation in float but these, which only move values (TensorFlow Lite runs them in
# int8 at their input's scale, so keeping them in float changes no rounding).
NOT_KEPT_IN_FLOAT = {"RESHAPE", "SQUEEZE", "PAD", "PADV2", "MAX_POOL_2D", "QUANTIZE", "DEQUANTIZE"}
# calibration photos the bias correction measures means on. 16, 32, 100 and 300 gave files of the same agreement on
# cats5 and flowers (benchmarks/README.md); its time grows with photos x layers: on 32, MobileNetV2 takes 2-3 s,
# ResNet50 about 30 s, InceptionV3 (96 layers at 299 px) about 80 s.
BIAS_CORRECTION_IMAGES = 32


@dataclass
class Calibration:
    """The photos int8 calibrates on (uint8, resized). Called, it is TensorFlow Lite's representative dataset: a black
    and a white image, then each photo, as float32 batches of one. The two make the uint8 input's scale 1 and zero
    point 0, so that a uint8 pixel is its own value: MediaPipe feeds raw pixels and ignores the input's quantization
    (with photos alone its scale came out 0.9 and its scores shifted)."""

    photos: np.ndarray

    @property
    def correction_photos(self) -> np.ndarray:
        """The photos the bias correction measures on."""
        return self.photos[:BIAS_CORRECTION_IMAGES]

    def __call__(self):
        for value in (0.0, 255.0):
            yield [np.full((1, *self.photos.shape[1:]), value, np.float32)]
        for photo in self.photos:
            yield [photo.astype(np.float32)[np.newaxis]]


def converter(model: keras.Model | Traced, work: str) -> tf.lite.TFLiteConverter:
    """TensorFlow Lite's converter for the model (as Keras' own litert export makes it), builtin ops only, so that
    the file runs on any LiteRT without the Flex delegate. A Traced model's SavedModel is reused, not written to
    `work`."""
    if isinstance(model, Traced):
        return model.converter()
    size = int(model.input_shape[1])
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", functools.partial(model.__call__, training=False),
                         input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    archive.write_out(work, verbose=False)
    return builtin_converter(work)


def builtin_converter(saved_model: str) -> tf.lite.TFLiteConverter:
    result = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    result.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return result


class Traced:
    """A model as TensorFlow Lite's converter reads it, for one export: written out as a SavedModel once (tracing
    it is most of a conversion's time: about 5 s of 9 for the tiny test model) and converted to float32 once,
    however many quantizations, fallback files and the int8 bias correction need them."""

    def __init__(self, model: keras.Model, folder: str):
        self.model, self.folder, self.written, self.float_content = model, folder, False, None

    def converter(self) -> tf.lite.TFLiteConverter:
        if not self.written:
            converter(self.model, self.folder)
            self.written = True
        return builtin_converter(self.folder)


def convert(model: keras.Model | Traced, quantize: str, calibration: Calibration | None) -> bytes:
    """The plain .tflite of one quantization; int8 takes uint8 pixels (scale 1, see Calibration)."""
    if isinstance(model, Traced) and quantize == "none" and model.float_content is not None:
        return model.float_content
    with tempfile.TemporaryDirectory() as work, native_stderr_held():
        settings = converter(model, work)
        if quantize != "none":
            settings.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            settings.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            settings.representative_dataset = calibration
            settings.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            settings.inference_input_type = tf.uint8
        content = settings.convert()
    if isinstance(model, Traced) and quantize == "none":
        model.float_content = content
    return content


def probabilities(content: bytes, images: np.ndarray) -> np.ndarray:
    """The file's outputs for each image, one at a time (as apps run it)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(source["index"], [1, *images.shape[1:]])
    with native_stderr_held():
        interpreter.allocate_tensors()
    rows = []
    for image in images:
        interpreter.set_tensor(source["index"], image[np.newaxis].astype(source["dtype"]))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(target["index"])[0].astype(np.float32))
    return np.stack(rows)


@dataclass
class Goal:
    """What a quantized file must keep: the Keras model's top-1 answers on the verification images (and its accuracy
    within MAX_ACCURACY_DROP, when they are labelled)."""

    images: np.ndarray
    reference: np.ndarray  # the Keras model's probabilities
    labels: np.ndarray | None = None
    thresholds: np.ndarray | None = None  # several labels per photo: the agreement is of every label's decision
    unknown: bool = False  # the last score is the unknown category's: its decisions must agree too

    def measure(self, content: bytes, quantize: str, margin: float = 0.0) -> dict:
        """Agreement (and accuracy drop), and whether they meet the target raised `margin` of the way to 100%. With
        several labels per photo, the agreement is the share of (photo, label) decisions at the thresholds that are
        the Keras model's (judged on the top answer alone, a file agreeing on 85.7% of them was kept)."""
        scores = probabilities(content, self.images)
        if self.thresholds is not None:
            same = (scores >= self.thresholds) == (self.reference >= self.thresholds)
            return {"agreement": round(float(same.mean()), 6)} | {"met": meets({"agreement": float(same.mean())},
                                                                                quantize, margin)}
        predicted = scores.argmax(axis=1)
        result = {"agreement": round(float((predicted == self.reference.argmax(axis=1)).mean()), 6)}
        if self.unknown:
            last = scores.shape[1] - 1
            same = (predicted == last) == (self.reference.argmax(axis=1) == last)
            result["unknown_agreement"] = round(float(same.mean()), 6)
        if self.labels is not None:
            drop = float((self.reference.argmax(axis=1) == self.labels).mean() - (predicted == self.labels).mean())
            result["accuracy_drop"] = round(drop, 6)
        return result | {"met": meets(result, quantize, margin)}


def meets(measured: dict, quantize: str, margin: float = 0.0) -> bool:
    """Whether a measurement meets the target of `quantize` raised `margin` of the way to 100%."""
    return (measured["agreement"] >= TARGETS[quantize] + margin * (1 - TARGETS[quantize]) - 1e-9
            and measured.get("unknown_agreement", 1.0) >= UNKNOWN_TARGET + margin * (1 - UNKNOWN_TARGET) - 1e-9
            and measured.get("accuracy_drop", 0.0) <= MAX_ACCURACY_DROP + 1e-9)


@dataclass(frozen=True)
class Layer:
    """A quantizable layer of a float .tflite: its output tensor's name, its op, and how many weights it holds."""

    name: str
    op: str
    weights: int


def layers(content: bytes, ops: set[str] | None = QUANTIZABLE) -> list[Layer]:
    """The ops of a float .tflite named in `ops` (None: every op with a quantizable output), in graph order; an op's
    weights are its constant second input's."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(content, 0)
    codes = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    graph = model.subgraphs[0]
    found = []
    for operator in graph.operators:
        code = model.operatorCodes[operator.opcodeIndex]
        name = codes.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        wanted = name not in NOT_KEPT_IN_FLOAT if ops is None else name in ops
        if wanted:
            second = graph.tensors[operator.inputs[1]] if len(operator.inputs) > 1 else None
            constant = second is not None and model.buffers[second.buffer].data is not None
            found.append(Layer(graph.tensors[operator.outputs[0]].name.decode(), name,
                               int(np.prod(second.shape)) if constant else 0))
    return found


# The unknown category's operations (tfl/unknown.py's layer, LAYER_NAME in the open-set model) stay in float in
# every file the fallback builds, and count against none of its caps: vector operations and small products beside the
# backbone's convolutions, whose rounding moves the one threshold apps act on. Ranked with the rest, they took 32 of
# the 70 operations a dogs10b int8 file kept in float, where the cap on operations (max_float_share) is there for
# the convolutions' time. Kept in float, the three int8 files of eight that missed their target within the caps met it
# (their unknown decisions 99.6-100%), at the same speed (benchmarks/README.md, "The unknown category in float").
# The backbone's operations are ranked by their damage to its decision too (`ranked`).
ALWAYS_IN_FLOAT = re.compile(rf"(^|/){LAYER_NAME}(_\d+)?/")


class LayerFallback:
    """What a fallback knows of the float file: its quantizable layers (`found`), the weights each holds, and their
    names in graph order (`all`), less those always kept in float (`kept`, ALWAYS_IN_FLOAT); a subclass builds the
    file with chosen layers in float (`build`, which keeps `kept` in float too: `in_float`)."""

    kept_as: str
    max_float_share: float
    max_weight_share: float
    ops: set[str] | None = QUANTIZABLE  # what it may keep in float (see `layers`)

    def __init__(self, float_content: bytes):
        self.found = layers(float_content, self.ops)
        self.kept = [layer.name for layer in self.found if ALWAYS_IN_FLOAT.search(layer.name)]
        self.weights = {layer.name: layer.weights for layer in self.found if layer.name not in self.kept}

    def in_float(self, chosen: list[str]) -> set[str]:
        """The layers a file built with `chosen` in float holds in float."""
        return {*self.kept, *chosen}

    @property
    def all(self) -> list[str]:
        return list(self.weights)


class Int8Layers(LayerFallback):
    """Full int8 with some layers in float: TensorFlow Lite's selective quantization. The file takes float32 pixels
    (the converter's selective path keeps float inputs); its metadata tells apps to feed raw pixels all the same."""

    kept_as = "float32"
    ops = None  # any operation (see the module's docstring)
    # At most this share of the layers in float: beyond it the file is about as slow as float32 (flowers once needed
    # 43 of 53 to reach 97% agreement: 1.62 MB, float32's speed), so the closest within it is kept and reported.
    max_float_share = 0.5
    # And at most this share of the weights: a float32 weight is 4 bytes against int8's 1, so the backbone's part of
    # the file stays smaller than in the float16 one (a flowers file with the 1,280-channel convolution in float was
    # 1.34 MB against 0.88). The unknown category's weights, always in float32 (ALWAYS_IN_FLOAT), add 0.3-0.4 MB.
    max_weight_share = 1 / 3

    def __init__(self, model: keras.Model, calibration: Calibration, float_content: bytes):
        super().__init__(float_content)
        self.correct = BiasCorrection(float_content, calibration.correction_photos)
        with tempfile.TemporaryDirectory() as work, native_stderr_held():
            settings = converter(model, work)
            settings.optimizations = [tf.lite.Optimize.DEFAULT]
            settings.representative_dataset = calibration
            self.debugger = tf.lite.experimental.QuantizationDebugger(converter=settings, debug_dataset=calibration)

    def build(self, in_float: list[str]) -> bytes:
        with native_stderr_held():
            self.debugger.options = tf.lite.experimental.QuantizationDebugOptions(
                denylisted_nodes=sorted(self.in_float(in_float)))
            content = self.debugger.get_nondebug_quantized_model()
        return self.correct(content)


class DynamicLayers(LayerFallback):
    """Dynamic-range quantization (int8 weights, activations quantized as they come) by AI Edge Quantizer, with the
    layers kept in float holding float16 weights (dequantized once when the file loads, as in the float16 file)."""

    kept_as = "float16"
    max_float_share = max_weight_share = 1.0  # all in float16 is the float16 file (on x86 faster than hybrid int8)

    def __init__(self, model: keras.Model, calibration: Calibration, float_content: bytes):
        super().__init__(float_content)
        self.float_content = float_content

    def build(self, in_float: list[str]) -> bytes:
        from ai_edge_quantizer import algorithm_manager, quantizer

        job, in_float = quantizer.Quantizer(self.float_content), self.in_float(in_float)
        for layer in self.found:  # its own name as a regular expression matches this layer alone
            op = qtyping_op(layer.op)
            if layer.name in in_float:
                job.add_weight_only_config(re.escape(layer.name), op, 16,
                                           algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
            else:
                job.add_dynamic_config(re.escape(layer.name), op, 8)
        with native_stderr_held():
            return inlined(bytes(job.quantize(enable_progress_bar=False, enable_progress_report=False).quantized_model))


class Float16Layers(LayerFallback):
    """float16 weights (AI Edge Quantizer's float casting, as in DynamicLayers), with the layers kept in float
    holding float32 ones: all are computed in float32 either way, and a layer's rounded weights alone moved top-1
    answers on a 67%-accurate cats5 model (its converter's float16 file agreed with Keras on 98.5%)."""

    kept_as = "float32"
    max_float_share = 1.0
    max_weight_share = 1 / 3  # a float32 weight takes twice a float16 one: the file stays under 2/3 of float32's

    def __init__(self, model: keras.Model, calibration: Calibration | None, float_content: bytes):
        super().__init__(float_content)
        self.float_content = float_content

    def build(self, in_float: list[str]) -> bytes:
        from ai_edge_quantizer import algorithm_manager, quantizer

        job, in_float = quantizer.Quantizer(self.float_content), self.in_float(in_float)
        for layer in self.found:
            if layer.name not in in_float:
                job.add_weight_only_config(re.escape(layer.name), qtyping_op(layer.op), 16,
                                           algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
        with native_stderr_held():
            return inlined(bytes(job.quantize(enable_progress_bar=False, enable_progress_report=False).quantized_model))


def qtyping_op(op: str):
    """AI Edge Quantizer's name of a TFLite op."""
    from ai_edge_quantizer import qtyping

    return qtyping.TFLOperationName[op]


def inlined(content: bytes) -> bytes:
    """The model with every weight inside the flatbuffer: AI Edge Quantizer writes weights past the flatbuffer (the
    format of models over 2 GB) once they pass 256 KB, and the metadata and labels zip go there."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(content, 0)
    outside = [buffer for buffer in model.buffers if buffer.offset and buffer.offset > 1]
    if not outside:
        return content
    for buffer in outside:
        buffer.data = np.frombuffer(content[buffer.offset:buffer.offset + buffer.size], np.uint8)
        buffer.offset = buffer.size = 0
    return packed(model, len(content))


FALLBACKS = {"int8": Int8Layers, "dynamic": DynamicLayers, "float16": Float16Layers}


def channel_means(content: bytes, images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The mean over `images` and positions of each channel of the tensors named, dequantized."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings(), native_stderr_held():
        warnings.simplefilter("ignore")  # "preserve_all_tensors is intended for debugging"
        interpreter = Interpreter(model_content=content, experimental_preserve_all_tensors=True)
        source = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(source["index"], [1, *images.shape[1:]])
        interpreter.allocate_tensors()
    details = {detail["name"]: detail for detail in interpreter.get_tensor_details()}
    sums = dict.fromkeys(names, 0.0)
    for image in images:
        interpreter.set_tensor(source["index"], image[np.newaxis].astype(source["dtype"]))
        interpreter.invoke()
        for name in names:
            values = interpreter.get_tensor(details[name]["index"]).astype(np.float64)
            scale, zero_point = details[name]["quantization"]
            values = (values - zero_point) * scale if scale else values
            sums[name] = sums[name] + values.reshape(-1, values.shape[-1]).mean(axis=0)
    return {name: total / len(images) for name, total in sums.items()}


class BiasCorrection:
    """Shifts each int8 layer's bias, in graph order, so that the mean of each channel of its output over `images`
    is the float file's (see the module's docstring); layers in float are left as they are. The float file's means
    are measured once, for every file corrected (the fallback corrects each one it builds)."""

    def __init__(self, float_content: bytes, images: np.ndarray):
        self.images = images
        self.target = channel_means(float_content, images, [layer.name for layer in layers(float_content)])

    def __call__(self, content: bytes) -> bytes:
        from ai_edge_litert import schema_py_generated as schema

        model = schema.ModelT.InitFromPackedBuf(content, 0)
        graph = model.subgraphs[0]
        quantized = []  # (output name, bias tensor) of each int8 layer with a bias, in graph order
        for operator in graph.operators:
            name = graph.tensors[operator.outputs[0]].name.decode()
            bias = graph.tensors[operator.inputs[2]] if len(operator.inputs) > 2 and operator.inputs[2] >= 0 else None
            if (bias is not None and bias.type == schema.TensorType.INT32 and bias.quantization is not None
                    and name in self.target and model.buffers[bias.buffer].data is not None):
                quantized.append((name, bias))
        for name, bias in quantized:
            error = channel_means(content, self.images, [name])[name] - self.target[name]
            buffer = model.buffers[bias.buffer]
            values = np.frombuffer(bytes(bytearray(buffer.data)), np.int32).copy()
            values -= np.round(error / np.asarray(bias.quantization.scale, np.float64)).astype(np.int32)
            buffer.data = np.frombuffer(values.tobytes(), np.uint8)
            content = packed(model, len(content))
        return content


def divergence(reference: np.ndarray, probabilities_: np.ndarray) -> float:
    """Mean Kullback-Leibler divergence of each row from the reference's."""
    reference, probabilities_ = np.clip(reference, 1e-7, 1), np.clip(probabilities_, 1e-7, 1)
    return float(np.mean(np.sum(reference * (np.log(reference) - np.log(probabilities_)), axis=1)))


def unknown_divergence(reference: np.ndarray, probabilities_: np.ndarray) -> float:
    """Mean Kullback-Leibler divergence of the unknown decision, sigmoid(log(u / best class score)), from the
    reference's: a change that moves a photo towards the threshold weighs more than one far from it."""
    def decision(scores: np.ndarray) -> np.ndarray:  # [known, unknown] per photo
        unknown = 1 / (1 + np.exp(-np.clip(unknown_statistic(scores), -50, 50)))
        return np.stack([1 - unknown, unknown], axis=1)

    return divergence(decision(reference), decision(probabilities_))


def ranked(fallback, float_content: bytes, images: np.ndarray, unknown: bool = False) -> list[str]:
    """The layers, most damaging first: each quantized alone, the rest kept in float, its damage the divergence of
    the file's N + 1 scores from the float file's. With the unknown category (`unknown`), the damage to its decision
    counts as much: each divergence as a share of its total over the layers, the two shares added. Ranked by the
    scores alone, where the unknown category is one score among N + 1, two of three dogs10b int8 files met their
    target within the caps; by the scores and the decision added as they are, one (the decision's divergence is
    the larger); by the two shares, all three (benchmarks/README.md, "Ranked by the unknown decision too")."""
    reference = probabilities(float_content, images)

    def damage(name: str) -> tuple[float, float]:
        try:
            quantized = probabilities(fallback.build([n for n in fallback.all if n != name]), images)
        except ValueError:  # TensorFlow's debugger cannot quantize this operation alone: it is ranked last, and
            return 0.0, 0.0  # quantized with the others
        return divergence(reference, quantized), unknown_divergence(reference, quantized) if unknown else 0.0

    measured = {name: damage(name) for name in fallback.all}
    totals = [max(sum(values), 1e-12) for values in zip(*measured.values())]
    return sorted(fallback.all, key=lambda name: sum(v / t for v, t in zip(measured[name], totals)), reverse=True)


def within_weight_share(order: list[str], fallback) -> list[str]:
    """The layers of `order` that may be kept in float, in order: each while the ones before it and it hold no more
    than the fallback's share of the weights."""
    budget, used, kept = fallback.max_weight_share * sum(fallback.weights.values()), 0, []
    for name in order:
        if used + fallback.weights[name] <= budget:
            kept.append(name)
            used += fallback.weights[name]
    return kept


def quantized_file(model: keras.Model | Traced, quantize: str, calibration: Calibration | None,
                   goal: Goal | None, search: bool = True) -> tuple[bytes, dict]:
    """The .tflite of `quantize`, and what its report says of the fallback (empty when none was needed, or
    `search` is False: the converter's file, bias-corrected for int8, is kept whatever it measures)."""
    content, report, float_content = convert(model, quantize, calibration), {}, None
    if quantize == "int8" and calibration is not None:
        float_content = convert(model, "none", None)
        converted, content = content, BiasCorrection(float_content, calibration.correction_photos)(content)
        if goal is not None:
            report["bias_correction"] = {"images": len(calibration.correction_photos),
                                         "converted": _shown(goal.measure(converted, quantize))}
    if goal is None or quantize not in FALLBACKS:
        return content, report
    first = goal.measure(content, quantize, SEARCH_MARGIN)  # with the search's margin, for the reason given there
    if first["met"]:
        return content, report
    if not search:
        return content, report | {"below_target": target(quantize, goal)}
    float_content = float_content or convert(model, "none", None)
    fallback = FALLBACKS[quantize](model, calibration, float_content)
    order = within_weight_share(ranked(fallback, float_content, goal.images[:RANKING_IMAGES], goal.unknown), fallback)
    tried = {}  # operations in float: (the file, what it measured with the margin)

    def attempt(steps: int) -> bool:
        built = fallback.build(order[:steps])
        tried[steps] = built, goal.measure(built, quantize, SEARCH_MARGIN)
        return tried[steps][1]["met"]

    below = 0  # the most operations in float known to miss the target
    most = min(len(order), max(1, int(len(fallback.all) * fallback.max_float_share)))
    for steps in sorted({min(step, most) for step in STEPS}):
        if attempt(steps):
            while steps - below > 1:  # then the fewest between the last miss and this hit
                middle = (below + steps) // 2
                below, steps = (below, middle) if attempt(middle) else (middle, steps)
            break
        below = steps
    met = [steps for steps, (_, measured) in tried.items() if measured["met"]]
    steps = min(met) if met else max(tried, key=lambda s: (tried[s][1]["agreement"], -s))
    candidate = tried[steps][0]
    if not met and tried[steps][1]["agreement"] <= first["agreement"]:  # nothing did better than the first file
        candidate, steps = content, 0
    measured = goal.measure(candidate, quantize)  # against the target itself
    return candidate, report | {"fallback": {
        "layers_in_float": steps, "layers": len(fallback.all), "kept_as": fallback.kept_as,
        "in_float": [name.split(";")[0] for name in order[:steps]],
        "fully_quantized": _shown(first), "fully_quantized_met_target": meets(first, quantize),
        "after": _shown(measured), "target_met": measured["met"],
        "searched_to": f"top-1 agreement >= {TARGETS[quantize] + SEARCH_MARGIN * (1 - TARGETS[quantize]):.1%}, " + (
                       f"unknown decisions >= {UNKNOWN_TARGET + SEARCH_MARGIN * (1 - UNKNOWN_TARGET):.1%}, "
                       if goal.unknown else "") +
                       f"at most {most} operations in {fallback.kept_as}" + (
                           f" holding at most {fallback.max_weight_share:.0%} of the weights"
                           if fallback.max_weight_share < 1 else ""),
        "target": target(quantize, goal)}}


def target(quantize: str, goal: Goal) -> str:
    """The target a file of `quantize` must meet, as the report says it."""
    return f"top-1 agreement >= {TARGETS[quantize]:.0%}" + (
        f", unknown decisions >= {UNKNOWN_TARGET:.0%}" if goal.unknown else "") + (
        f", accuracy drop <= {MAX_ACCURACY_DROP:.0%}" if goal.labels is not None else "")


def _shown(measured: dict) -> dict:
    """A measurement as the report shows it (to 4 places, without whether it met the target, said once beside it)."""
    return {key: round(value, 4) for key, value in measured.items() if key != "met"}
