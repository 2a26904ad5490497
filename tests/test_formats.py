"""The export formats table (tfl/formats.py) names its writers, predictors and app checks as strings: each resolves."""

import inspect

import pytest

from tfl.errors import TflError
from tfl.formats import LOADABLE, QUANTIZATIONS, formats_for, resolve


@pytest.mark.parametrize("row", LOADABLE, ids=lambda row: row.name)
def test_every_reference_in_the_formats_table_resolves_to_a_callable(row):
    references = [r for r in (row.writer, row.predictor, row.app_check) if r]
    assert row.predictor and (row.writer or row.name == "keras")
    for reference in references:
        assert callable(resolve(reference)), reference
    if row.writer:
        assert len(inspect.signature(resolve(row.writer)).parameters) == 3, "writer(model, target, job)"


def test_every_quantization_has_a_file_name_of_its_own():
    tflite = next(row for row in LOADABLE if row.name == "tflite")
    assert len({tflite.path(q) for q in QUANTIZATIONS}) == len(QUANTIZATIONS)
    assert [(row.name, q) for row, q in formats_for("all", "int8")] == [("saved_model", "none"), ("tflite", "int8"),
                                                                          ("onnx", "none")]


def test_several_quantizations_are_one_export_and_a_wrong_one_is_refused_before_work():
    pairs = [(row.name, q) for row, q in formats_for("all", "none,float16, int8,float16")]
    assert pairs == [("saved_model", "none"), ("tflite", "none"), ("tflite", "float16"), ("tflite", "int8"),
                     ("onnx", "none")]
    assert [q for _, q in formats_for("tflite", ["dynamic", "int8"])] == ["dynamic", "int8"]
    assert [(row.name, q) for row, q in formats_for("all", "int8,dynamic")][0] == ("saved_model", "none")
    with pytest.raises(TflError, match="takes no --quantize int8"):
        formats_for("onnx", "none,int8")
    with pytest.raises(TflError, match="int4"):
        formats_for("tflite", "float16,int4")
