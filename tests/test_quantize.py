"""The quantization fallback: a dynamic or int8 file that misses its target keeps its most damaging layers in float."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import tfl.quantize as quantize
from tfl.cli import main


class FakeLayers:
    """A fallback whose file is just the number of layers kept in float."""

    kept_as, max_float_share, max_weight_share = "float32", 0.5, 1 / 3

    def __init__(self, model, calibration, float_content):
        self.all = [f"layer{i}" for i in range(53)]
        self.weights = dict.fromkeys(self.all, 1)

    def build(self, in_float):
        return len(in_float).to_bytes(2, "big")


def test_the_search_keeps_the_fewest_layers_in_float_that_meet_the_target(monkeypatch):
    measured = []

    def measure(self, content, quantize_, margin=0.0):
        steps = int.from_bytes(content, "big")
        measured.append(steps)
        return {"agreement": 0.9 + steps / 1000, "met": steps >= 11}

    monkeypatch.setattr(quantize, "convert", lambda model, q, calibration: (0).to_bytes(2, "big"))
    monkeypatch.setattr(quantize, "ranked", lambda fallback, content, images, unknown: fallback.all[::-1])
    monkeypatch.setattr(quantize, "FALLBACKS", {"int8": FakeLayers})
    monkeypatch.setattr(quantize.Goal, "measure", measure)
    goal = quantize.Goal(np.zeros((4, 8, 8, 3), np.uint8), np.eye(4))
    content, report = quantize.quantized_file(None, "int8", None, goal)
    assert int.from_bytes(content, "big") == 11
    fallback = report["fallback"]
    assert fallback["layers_in_float"] == 11 and fallback["in_float"] == [f"layer{i}" for i in range(52, 41, -1)]
    assert fallback["target_met"] and fallback["fully_quantized"] == {"agreement": 0.9}
    assert measured[:6] == [0, 1, 2, 4, 8, 16]  # doubling, then halving between 8 and 16
    assert len(measured) <= 11 and max(measured) <= 26  # never more than half of the 53 layers in float

    def plateau(self, content, q, margin=0.0):  # better with layers in float, never enough, best at 8 or more
        steps = int.from_bytes(content, "big")
        return {"agreement": 0.9 + min(steps, 8) / 1000, "met": False}

    monkeypatch.setattr(quantize.Goal, "measure", plateau)
    content, report = quantize.quantized_file(None, "int8", None, goal)
    assert report["fallback"]["target_met"] is False and report["fallback"]["layers_in_float"] == 8  # the fewest
    assert int.from_bytes(content, "big") == 8

    monkeypatch.setattr(quantize.Goal, "measure", lambda self, content, q, margin=0.0: {"agreement": 0.5,
                                                                                       "met": False})
    content, report = quantize.quantized_file(None, "int8", None, goal)
    assert report["fallback"]["layers_in_float"] == 0 and content == (0).to_bytes(2, "big")  # no better: as it was

    # a fallback whose layers in float cost no size (dynamic's float16 weights) may keep all of them in float
    monkeypatch.setattr(FakeLayers, "max_float_share", 1.0)
    monkeypatch.setattr(FakeLayers, "max_weight_share", 1.0)
    monkeypatch.setattr(quantize.Goal, "measure", lambda self, content, q, margin=0.0: {
        "agreement": 0.9, "met": int.from_bytes(content, "big") >= 44})
    content, report = quantize.quantized_file(None, "int8", None, goal)
    assert report["fallback"]["target_met"] and report["fallback"]["layers_in_float"] == 44


def test_files_that_meet_their_target_are_left_as_the_converter_wrote_them(monkeypatch):
    monkeypatch.setattr(quantize, "convert", lambda model, q, calibration: b"converted")
    monkeypatch.setattr(quantize.Goal, "measure", lambda self, content, q, margin=0.0: {"agreement": 1.0,
                                                                                       "met": True})
    goal = quantize.Goal(np.zeros((4, 8, 8, 3), np.uint8), np.eye(4))
    assert quantize.quantized_file(None, "dynamic", None, goal) == (b"converted", {})
    assert quantize.quantized_file(None, "float16", None, goal) == (b"converted", {})


def test_a_file_that_only_just_meets_its_target_is_searched_and_kept_when_nothing_does_better(monkeypatch):
    """Apps decode and resize photos their own way, so a file is searched on unless it meets its target with the
    search's margin; if no file does better, the first is kept, reported as meeting the target itself."""
    def measure(self, content, q, margin=0.0):  # 97.5%: meets 97%, not 98.5%; with 4 or more in float 99%
        agreement = 0.99 if int.from_bytes(content, "big") >= 4 else 0.975
        return {"agreement": agreement, "met": agreement >= 0.97 + margin * 0.03 - 1e-9}

    monkeypatch.setattr(quantize, "convert", lambda model, q, calibration: (0).to_bytes(2, "big"))
    monkeypatch.setattr(quantize, "ranked", lambda fallback, content, images, unknown: fallback.all)
    monkeypatch.setattr(quantize, "FALLBACKS", {"int8": FakeLayers})
    monkeypatch.setattr(quantize.Goal, "measure", measure)
    goal = quantize.Goal(np.zeros((4, 8, 8, 3), np.uint8), np.eye(4))
    content, report = quantize.quantized_file(None, "int8", None, goal)
    assert int.from_bytes(content, "big") == 4 and report["fallback"]["after"] == {"agreement": 0.99}

    monkeypatch.setattr(quantize.Goal, "measure", lambda self, content, q, margin=0.0: {
        "agreement": 0.975, "met": margin == 0.0})
    content, report = quantize.quantized_file(None, "int8", None, goal)
    assert content == (0).to_bytes(2, "big") and report["fallback"]["layers_in_float"] == 0
    assert report["fallback"]["target_met"] is True and report["fallback"]["fully_quantized_met_target"] is True


def test_with_the_unknown_category_the_ranking_weighs_what_moves_its_decision(monkeypatch):
    """Of two operations, one moves a photo's unknown score across the threshold and one shifts another photo's
    class scores a little more: ranked on all N + 1 scores alone the second comes first; with the unknown category
    the first does, since its decision is what apps act on."""
    reference = np.array([[0.36, 0.16, 0.16, 0.32], [0.60, 0.20, 0.10, 0.10]])  # 3 classes, then unknown
    quantized = {b"threshold": np.array([[0.32, 0.16, 0.16, 0.36], reference[1]]),  # photo 1 becomes unknown
                 b"classes": np.array([reference[0], [0.55, 0.25, 0.10, 0.10]])}

    class TwoOperations:
        all = ["threshold", "classes"]

        def build(self, in_float):  # the file with the one operation not in float quantized
            return next(name for name in self.all if name not in in_float).encode()

    monkeypatch.setattr(quantize, "probabilities",
                        lambda content, images: reference if content == b"float" else quantized[content])
    assert quantize.ranked(TwoOperations(), b"float", None) == ["classes", "threshold"]
    assert quantize.ranked(TwoOperations(), b"float", None, unknown=True) == ["threshold", "classes"]
    assert quantize.unknown_divergence(reference, reference) == pytest.approx(0.0, abs=1e-12)
    assert quantize.unknown_divergence(reference, quantized[b"threshold"]) > 10 * quantize.unknown_divergence(
        reference, quantized[b"classes"])


def test_goal_needs_agreement_and_accuracy(monkeypatch):
    reference = np.eye(4)[[0, 1, 2, 3] * 25]  # 100 answers
    goal = quantize.Goal(np.zeros((100, 8, 8, 3), np.uint8), reference, labels=reference.argmax(axis=1))
    flipped = reference.copy()
    flipped[:2] = np.roll(flipped[:2], 1, axis=1)  # 2 answers changed: 98% agreement, 2 points less accurate
    monkeypatch.setattr(quantize, "probabilities", lambda content, images: flipped)
    assert goal.measure(b"", "int8") == {"agreement": 0.98, "accuracy_drop": 0.02, "met": False}
    goal.labels = None
    assert goal.measure(b"", "int8") == {"agreement": 0.98, "met": True}
    assert goal.measure(b"", "dynamic")["met"] is False


def test_weights_kept_past_the_flatbuffer_are_brought_inside(tiny_run):
    """AI Edge Quantizer writes weights past the flatbuffer once they pass 256 KB; the metadata needs them inside."""
    import keras
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer import quantizer, recipe

    content = quantize.convert(keras.models.load_model(tiny_run / "model.keras", compile=False), "none", None)
    job = quantizer.Quantizer(content, recipe.dynamic_wi8_afp32())
    outside = bytes(job.quantize(enable_progress_bar=False, enable_progress_report=False).quantized_model)
    assert any(b.offset > 1 for b in schema.ModelT.InitFromPackedBuf(outside, 0).buffers)
    inside = quantize.inlined(outside)
    assert not any(b.offset for b in schema.ModelT.InitFromPackedBuf(inside, 0).buffers)
    assert quantize.inlined(inside) == inside
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_array_equal(quantize.probabilities(inside, images), quantize.probabilities(outside, images))


def test_layers_in_float_hold_at_most_the_fallbacks_share_of_the_weights():
    """int8 keeps in float32 no layers past a third of the weights (else the file outgrows float16's), even the most
    damaging: the search walks the rest of the ranking."""
    fallback = FakeLayers(None, None, None)
    fallback.weights |= {"layer0": 100, "layer1": 10}  # 161 weights in all: at most 53 in float
    order = ["layer0", "layer2", "layer1", "layer3"] + [f"layer{i}" for i in range(4, 53)]
    kept = quantize.within_weight_share(order, fallback)
    assert kept[:3] == ["layer2", "layer1", "layer3"] and "layer0" not in kept
    assert sum(fallback.weights[name] for name in kept) == 53 and kept[-1] == "layer44" and len(kept) == 44


def test_layers_kept_in_float_hold_float16_weights_in_dynamic_and_float32_in_float16(tiny_run):
    """The dynamic fallback's float layers keep float16 weights (the file is never bigger than the float16 one);
    the float16 fallback's keep float32 ones."""
    import keras
    from ai_edge_litert import schema_py_generated as schema

    model = keras.models.load_model(tiny_run / "model.keras", compile=False)
    content = quantize.convert(model, "none", None)
    fallback = quantize.DynamicLayers(model, None, content)
    kept = fallback.all[:2]

    def weight_types(built: bytes) -> dict[str, str]:
        """Each quantizable layer's weight type, through the DEQUANTIZE that feeds it if there is one."""
        parsed = schema.ModelT.InitFromPackedBuf(built, 0)
        graph = parsed.subgraphs[0]
        made_by = {op.outputs[0]: op for op in graph.operators}
        names = {value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
        found = {}
        for op in graph.operators:
            output = graph.tensors[op.outputs[0]].name.decode()
            if output in fallback.all:
                weight = op.inputs[1]
                if weight in made_by:  # weight-only: a DEQUANTIZE of the stored weights
                    weight = made_by[weight].inputs[0]
                found[output] = names[graph.tensors[weight].type]
        return found

    types = weight_types(fallback.build(kept))
    assert {types[name] for name in kept} == {"FLOAT16"}
    assert {types[name] for name in fallback.all[2:]} == {"INT8"}
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype(np.uint8)
    assert quantize.probabilities(fallback.build(kept), images).shape == (4, model.output_shape[-1])
    assert len(fallback.build(fallback.all)) <= 1.02 * len(quantize.convert(model, "float16", None))

    fallback = quantize.Float16Layers(model, None, content)  # float16's: float32 weights where kept in float
    assert fallback.all == [layer.name for layer in quantize.layers(content)]
    types = weight_types(fallback.build(kept))
    assert {types[name] for name in kept} == {"FLOAT32"}
    assert {types[name] for name in fallback.all[2:]} == {"FLOAT16"}
    assert len(fallback.build([])) <= 1.02 * len(quantize.convert(model, "float16", None))
    assert quantize.probabilities(fallback.build(kept), images).shape == (4, model.output_shape[-1])


@pytest.mark.parametrize("kind", ["dynamic", "int8"])
def test_a_file_below_its_target_keeps_layers_in_float_and_still_loads_in_mediapipe(real_copy, kind, monkeypatch):
    run = real_copy
    monkeypatch.setitem(quantize.TARGETS, kind, 1.0)  # every answer kept: the converter's file misses it
    result = CliRunner().invoke(main, ["export", str(run), "--format", "tflite", "--quantize", kind,
                                       "--calibration-samples", "40"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    row = json.loads((run / "export_report.json").read_text())[f"model_{kind}.tflite"]
    fallback = row["fallback"]
    print(kind, {k: v for k, v in fallback.items() if k != "in_float"})
    assert fallback["fully_quantized"]["agreement"] < 1.0
    assert 1 <= fallback["layers_in_float"] == len(set(fallback["in_float"])) <= fallback["layers"]
    assert fallback["after"]["agreement"] == row["top1_agreement"] >= fallback["fully_quantized"]["agreement"]
    assert "operations that lose most kept in float" in result.output
    assert row["mediapipe_top1_agreement"] >= row["top1_agreement"] - 0.05  # loads in MediaPipe, names checked
    assert row["size_bytes"] < 0.8 * (run / "model.keras").stat().st_size


def test_the_report_says_what_the_fallback_kept_and_as_what():
    from tfl.report import fallback_line

    def row(kept, layers, kept_as):
        return {"file": "model_dynamic.tflite", "fallback": {
            "layers_in_float": kept, "layers": layers, "kept_as": kept_as, "target_met": True,
            "fully_quantized": {"agreement": 0.97}, "after": {"agreement": 0.994}, "target": "top-1 agreement >= 99%",
            "searched_to": "top-1 agreement >= 99.5%"}}

    said = fallback_line(row(31, 53, "float16"))
    assert "31 of 53 operations that lose most kept in float16 it agrees on 99.4%" in said
    assert "the float16 one in effect" in fallback_line(row(53, 53, "float16"))
    assert "in effect" not in fallback_line(row(26, 53, "float32"))
    just_met = row(0, 53, "float32")  # met the target, not the margin, and nothing did better
    just_met["fallback"]["fully_quantized_met_target"] = True
    just_met = fallback_line(just_met)
    assert "not the margin" in just_met and "kept as it was." in just_met and "!!!" not in just_met
    missed = row(0, 53, "float32")
    missed["fallback"]["target_met"] = False
    assert "below its target" in fallback_line(missed) and "!!! It misses its target" in fallback_line(missed)


def test_bias_correction_brings_each_int8_layers_mean_output_back_to_the_float_files(real_run):
    """int8's rounding shifts the mean of each channel of each layer's output; bias correction, measured on the
    calibration photos, must undo most of that shift on other photos too, and leave float layers alone."""
    import tfl
    from tfl.export import representative_images

    run = tfl.Run(real_run)
    model = tfl.load(run.path).model
    size = int(model.input_shape[1])
    calibration = representative_images(list(run.splits["train"].paths), size, 40)
    float_content = quantize.convert(model, "none", None)
    converted = quantize.convert(model, "int8", calibration)
    correct = quantize.BiasCorrection(float_content, calibration.photos)
    corrected = correct(converted)
    assert corrected != converted and abs(len(corrected) - len(converted)) < 0.01 * len(converted)

    held_out = representative_images(list(run.splits["val"].paths), size, 40).photos
    names = [layer.name for layer in quantize.layers(float_content)]
    target = quantize.channel_means(float_content, held_out, names)

    def shift(content: bytes) -> float:
        """The mean over layers of each one's mean absolute shift per channel, relative to its outputs' spread."""
        means = quantize.channel_means(content, held_out, names)
        return float(np.mean([np.abs(means[n] - target[n]).mean() / (np.abs(target[n]).mean() + 1e-6)
                              for n in names]))

    before, after = shift(converted), shift(corrected)
    print(f"mean shift per channel, relative: {before:.4f} as converted, {after:.4f} corrected")
    assert after < 0.6 * before
    assert correct(float_content) == float_content


def test_int8_fallback_may_keep_the_adds_pooling_and_softmax_in_float_as_well_as_layers(real_run):
    """int8 rounds every tensor between operations, so its fallback ranks every operation but those that only move
    values; one kept in float computes in float32 while the layers around it stay int8. The unknown category's
    operations stay in float in every file, outside the ranking and the caps."""
    import tfl
    from ai_edge_litert import schema_py_generated as schema

    from tfl.export import representative_images
    from tfl.unknown import open_set_model

    run = tfl.Run(real_run)
    predictor = tfl.load(run.path)
    model = open_set_model(predictor.model, predictor.detector)  # as every artifact is exported
    calibration = representative_images(list(run.splits["train"].paths), int(model.input_shape[1]), 8)
    float_content = quantize.convert(model, "none", None)
    fallback = quantize.Int8Layers(model, calibration, float_content)
    ops = {layer.name: layer for layer in fallback.found if layer.name in fallback.all}  # the backbone's and head's
    kinds = {layer.op for layer in ops.values()}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MEAN", "SOFTMAX"} <= kinds
    assert not {layer.op for layer in fallback.found} & quantize.NOT_KEPT_IN_FLOAT
    with_weights = [layer for layer in quantize.layers(float_content) if layer.name in ops]
    assert len(ops) > len(with_weights)  # more than the layers with weights
    adds = [name for name, layer in ops.items() if layer.op == "ADD"]
    assert adds and all(ops[name].weights == 0 for name in adds)
    assert all(layer.weights > 0 for layer in ops.values() if layer.op in quantize.QUANTIZABLE)
    assert fallback.kept and all("/unknown" in name for name in fallback.kept)
    assert not set(fallback.kept) & set(fallback.all) and not any("/unknown" in name for name in fallback.all)

    content = fallback.build(adds)
    graph = schema.ModelT.InitFromPackedBuf(content, 0).subgraphs[0]
    types = {graph.tensors[op.outputs[0]].name.decode(): graph.tensors[op.outputs[0]].type for op in graph.operators}
    assert all(types[name] == schema.TensorType.FLOAT32 for name in [*adds, *fallback.kept])
    convolutions = [name for name, layer in ops.items() if layer.op == "CONV_2D"]
    assert all(types[name] == schema.TensorType.INT8 for name in convolutions)
    agreement = (quantize.probabilities(content, calibration.photos).argmax(1)
                 == quantize.probabilities(float_content, calibration.photos).argmax(1)).mean()
    assert agreement >= 0.5, "the file with float adds must still classify"


def test_the_converters_int8_file_takes_raw_uint8_pixels(tiny_run):
    """The fully int8 file's input is uint8 at scale 1 and zero point 0, so that a uint8 pixel is its own value, as
    MediaPipe feeds it (the black and white calibration images fix the range at 0..255)."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    model = keras.models.load_model(tiny_run / "model.keras", compile=False)
    photos = np.random.default_rng(0).integers(30, 220, (4, 32, 32, 3)).astype(np.uint8)
    details = Interpreter(model_content=quantize.convert(model, "int8", quantize.Calibration(photos))
                          ).get_input_details()[0]
    assert details["dtype"] == np.uint8
    assert (round(details["quantization"][0], 6), details["quantization"][1]) == (1.0, 0)


def test_a_multilabel_file_is_judged_on_every_labels_decision(monkeypatch):
    """Issue 41.4: judged on the top answer only, a multi-label int8 file agreeing on 85.7% of the label decisions
    was kept with no fallback and no warning."""
    reference = np.array([[0.9, 0.6], [0.2, 0.7], [0.8, 0.1]])
    quantized = np.array([[0.9, 0.4], [0.2, 0.7], [0.8, 0.1]])  # the same top answers; one label's decision flips
    monkeypatch.setattr(quantize, "probabilities", lambda content, images: quantized)
    images = np.zeros((3, 4, 4, 3))
    measured = quantize.Goal(images, reference, thresholds=np.array([0.5, 0.5])).measure(b"", "int8")
    assert measured["agreement"] == pytest.approx(5 / 6) and not measured["met"]
    assert quantize.Goal(images, reference).measure(b"", "int8")["met"], "the top answer alone would keep it"


def test_max_accuracy_drop_judges_a_multilabel_file_by_its_map():
    """Issue 41.4: --max-accuracy-drop had no effect on multi-label runs (their rows had no accuracy change)."""
    from types import SimpleNamespace

    from tfl.errors import TflError
    from tfl.export import check_drop, multilabel_checks

    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.9], [0.1, 0.2]])  # mAP 1.0
    worse = np.array([[0.3, 0.1], [0.2, 0.8], [0.7, 0.9], [0.6, 0.2]])  # a negative above a positive: mAP 0.917
    row = {"file": "model_int8.tflite"} | multilabel_checks(worse, [0.5, 0.5], SimpleNamespace(labels=labels),
                                                            reference)
    assert row["accuracy_change"] == pytest.approx(-1 / 12, abs=1e-4)
    with pytest.raises(TflError, match="loses 8.3% mAP"):
        check_drop(row, 0.01, print)
    check_drop(row, 0.1, print)
