"""The JAX backend trains every arch and runs tfl finetune end to end (in subprocesses: one backend per process)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, cli, write_class_folders

pytest.importorskip("jax", reason="JAX is not installed (pip install 'tfl[jax]')")
pytestmark = pytest.mark.integration


def run_python(code: str, backend: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.extended  # the default suite steps every arch on TensorFlow and runs the whole CLI on JAX
def test_every_arch_trains_one_step_on_jax():
    result = run_python("""
        import json, keras, numpy as np
        from tfl.archs import ARCHS
        from tfl.model import build_model, set_trainable_blocks
        assert keras.backend.backend() == "jax"
        report = {}
        for name, spec in ARCHS.items():
            size = max(spec.min_image_size, 32)
            model = build_model(spec, 3, size, weights="none", alpha=0.35)
            set_trainable_blocks(model, spec, 1)
            model.compile(optimizer="adam", loss="categorical_crossentropy")
            x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
            before = [np.array(w) for w in model.trainable_weights]
            loss = float(model.train_on_batch(x, keras.utils.to_categorical([0, 2], 3)))
            moved = any(not np.allclose(b, np.array(a)) for b, a in zip(before, model.trainable_weights))
            report[name] = {"loss": loss, "moved": moved, "out": list(model.predict_on_batch(x).shape)}
        print("REPORT" + json.dumps(report))
    """, "jax")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT")[-1])
    for name, row in report.items():
        assert row["moved"] and row["out"] == [2, 3] and row["loss"] == pytest.approx(row["loss"]), name


def test_finetune_cli_end_to_end_on_jax(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=6)
    result = subprocess.run(
        [sys.executable, "-m", "tfl.cli", "finetune", "--data", str(data), "--backend", "jax", "--weights", "none",
         "--alpha", "0.35", "--image-size", "32", "--batch-size", "6", "--epochs", "2,0",
         "--output", str(tmp_path / "runs"), "--name", "jaxrun"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run = tmp_path / "runs" / "jaxrun"
    # the head alone: JAX's fine-tuning stage runs in tests/test_distribute.py (two devices), which checks it
    assert "backend jax" in result.stdout and "Stage 1/1" in result.stdout
    assert "on cached features" in result.stdout, "the feature cache works on JAX too"
    assert "backend: jax" in (run / "config.yaml").read_text()
    assert (run / "model.keras").is_file() and json.loads((run / "metrics.json").read_text())["num_images"] == 3
    exported = cli("export", run, "--format", "all", "--verify-images", "3")  # in this (TensorFlow) process
    assert exported.exit_code == 0, exported.output
    assert (run / "model_float32.tflite").is_file() and (run / "export" / "saved_model" / "1" / "saved_model.pb").is_file()
    report = json.loads((run / "export_report.json").read_text())
    assert report["model_float32.tflite"]["top1_agreement"] == 1.0, "a JAX-trained run exports under TF unchanged"
