"""--precision: mixed policies train with a float32 softmax, export as float32, and auto picks as documented."""

import json

import keras
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import tfl.precision
from tests.conftest import write_class_folders
from tfl.cli import main
from tfl.precision import resolve_precision


@pytest.mark.integration
@pytest.mark.parametrize("policy", [pytest.param("mixed_bfloat16", marks=pytest.mark.extended), "mixed_float16"])
def test_mixed_precision_trains_and_exports(tmp_path, policy):
    data = write_class_folders(tmp_path / "data", per_class=6)
    # --no-unknown: this untrained model's three validation photos all sit on the unknown category's threshold
    # (their features barely differ), where float16 activations and the float32 file's may fall either side
    result = CliRunner().invoke(main, ["finetune", "--data", str(data), "--weights", "none", "--alpha", "0.35",
                                       "--image-size", "32", "--epochs", "2,1", "--precision", policy, "--no-unknown",
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
    monkeypatch.setattr(tfl.precision, "has_gpu", lambda: True)
    assert resolve_precision("auto") == ("mixed_float16", "auto: a GPU is present")
    monkeypatch.setattr(tfl.precision, "has_gpu", lambda: False)
    assert resolve_precision("auto") == ("float32", "auto: no GPU")
    assert resolve_precision("mixed_bfloat16") == ("mixed_bfloat16", "as asked")


def test_a_mixed_precision_mobilenetv3_has_a_float32_copy_for_export():
    """MobileNetV3 wraps plain operations (`x + 3.0`) as layers, whose constructors take no dtype."""
    from tfl.archs import get_arch
    from tfl.model import build_model
    from tfl.precision import dtype_policy, float32_copy

    with dtype_policy("mixed_bfloat16"):
        model = build_model(get_arch("mobilenetv3small"), 3, 32, "none")
    copy = float32_copy(model)
    assert all(getattr(layer, "dtype_policy", None) is None or layer.dtype_policy.name == "float32"
               for layer in copy.layers + copy.get_layer("backbone").layers)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(copy.predict_on_batch(pixels), model.predict_on_batch(pixels), atol=0.05)
