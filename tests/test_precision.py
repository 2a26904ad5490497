"""--precision: mixed policies train with a float32 softmax, export as float32, and auto picks as documented."""

import json

import keras
import pytest
import yaml
from click.testing import CliRunner

import tfl.precision
from tests.conftest import write_class_folders
from tfl.cli import main
from tfl.precision import resolve_precision


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_and_exports(tmp_path, policy):
    data = write_class_folders(tmp_path / "data", per_class=6)
    result = CliRunner().invoke(main, ["finetune", "--data", str(data), "--weights", "none", "--alpha", "0.35",
                                       "--image-size", "32", "--epochs", "2,1", "--precision", policy,
                                       "--output", str(tmp_path / "runs"), "--name", "p"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"precision {policy} (as asked)" in result.output
    run = tmp_path / "runs" / "p"
    assert yaml.safe_load((run / "config.yaml").read_text())["precision"] == policy
    assert keras.config.dtype_policy().name == "float32", "the process-wide policy is restored"
    model = keras.models.load_model(run / "model.keras", compile=False)
    assert model.get_layer("backbone").layers[2].dtype_policy.name == policy
    assert model.output.dtype == "float32"
    exported = CliRunner().invoke(main, ["export", str(run), "--format", "tflite", "--verify-images", "3"],
                                  catch_exceptions=False)
    assert exported.exit_code == 0, exported.output
    report = json.loads((run / "export_report.json").read_text())
    assert report["model_float32.tflite"]["top1_agreement"] == 1.0


def test_auto_precision_choices(monkeypatch):
    build = lambda: None  # noqa: E731  (only steps_per_second would build, and it is replaced below)
    monkeypatch.setattr(tfl.precision, "has_gpu", lambda: True)
    assert resolve_precision("auto", build, 32)[0] == "mixed_float16"
    monkeypatch.setattr(tfl.precision, "has_gpu", lambda: False)
    monkeypatch.setattr(tfl.precision, "cpu_has_bfloat16", lambda: False)
    assert resolve_precision("auto", build, 32) == ("float32", "auto: this CPU has no native bfloat16")
    monkeypatch.setattr(tfl.precision, "cpu_has_bfloat16", lambda: True)
    speeds = {"float32": 10.0, "mixed_bfloat16": 5.0}
    monkeypatch.setattr(tfl.precision, "steps_per_second", lambda b, policy, size: speeds[policy])
    assert resolve_precision("auto", build, 32)[0] == "float32"
    speeds["mixed_bfloat16"] = 20.0
    policy, why = resolve_precision("auto", build, 32)
    assert policy == "mixed_bfloat16" and "2.00x" in why
    assert resolve_precision("float32", build, 32) == ("float32", "as asked")


def test_auto_precision_measures_the_real_model():
    from tfl.archs import get_arch
    from tfl.model import build_model

    speed = tfl.precision.steps_per_second(lambda: build_model(get_arch("mobilenetv2"), 3, 32, "none", 0.35),
                                           "float32", 32, steps=1)
    assert speed > 0
