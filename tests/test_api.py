"""The Python API: the README's example as written, typed options, and one settings table behind YAML and CLI."""

import dataclasses
import os
import re
import subprocess
import sys

import keras
import pytest
import yaml

import tfl
from tests.conftest import REPO, require_mobilenet_weights, write_class_folders
from tfl.cli import finetune as finetune_command
from tfl.config import SETTINGS, TrainConfig, load_config


def readme_python_example() -> str:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- python-example[^>]*-->\n```python\n(.*?)```", readme, re.S)
    assert match, "README.md lost its marked Python example"
    return match.group(1)


@pytest.mark.integration
def test_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    weights = require_mobilenet_weights()
    write_class_folders(tmp_path / "photos", per_class=8)
    write_class_folders(tmp_path / "more_photos", per_class=3, seed=500)
    os.symlink(weights, tmp_path / weights.name)
    monkeypatch.chdir(tmp_path)
    # int8's search for operations to keep in float, tested on a real run in tests/test_quantize.py, would be half
    # of this test's time on its 24 generated photos
    monkeypatch.setattr("tfl.quantize.FALLBACKS", {})
    names: dict = {}
    exec(compile(readme_python_example(), "README.md", "exec"), names)  # noqa: S102 - the README's own code
    run, artifact, rows = names["run"], names["artifact"], names["rows"]
    assert isinstance(run, tfl.Run) and run.path.parent == tmp_path / "saved_models"
    assert 0 <= run.metrics["accuracy"] <= 1 and run.model_file.is_file()
    assert artifact == run.tflite_file("int8") and artifact.is_file()
    assert len(rows) == 9 and all(len(row["top"]) == 3 for row in rows)
    assert {label for row in rows for label, _ in row["top"]} == set(run.class_names)
    report = yaml.safe_load(run.export_report_file.read_text())  # JSON is YAML
    assert "model_int8.tflite" in report


@pytest.mark.integration
def test_custom_augmenter_and_callbacks_are_used(tmp_path):
    calls = []

    def augmenter(images):
        calls.append(images.shape)  # traced once by tf.data
        return images[:, :, ::-1]

    class EpochCounter(keras.callbacks.Callback):
        epochs = 0

        def on_epoch_end(self, epoch, logs=None):
            EpochCounter.epochs += 1

    data = write_class_folders(tmp_path / "data", per_class=6)
    run = tfl.finetune(data, weights="none", alpha=0.35, image_size=32, batch_size=8, epochs=(2, 1, 0),
                       cache_views=2, augmenter=augmenter, callbacks=[EpochCounter()], output=tmp_path / "runs",
                       name="custom", echo=lambda s: None, verbose=0)
    assert calls, "the pipeline never applied the custom augmenter"
    assert EpochCounter.epochs == 3
    shared = [p for p in (tmp_path / "runs" / ".feature_cache").iterdir() if not p.name.startswith(".")]
    assert len(shared) == 1, "views made by a caller's augmenter are not shared under the preset's cache key"
    assert run.config["stages"][1]["epochs"] == 1 and run.config["plan"] == "fixed"


def test_typed_stages_replace_the_plan():
    config = tfl.make_config(None, {"arch": "resnet50"}, stages=[tfl.Stage("only", 4, 1e-3, 0)])
    assert config.plan == "fixed" and [(s.name, s.epochs) for s in config.stages] == [("only", 4)]
    config = tfl.make_config(config, {"batch_size": 4}, learning_rates=(2e-3,))
    assert config.batch_size == 4 and config.stages[0].learning_rate == 2e-3 and config.arch == "resnet50"
    with pytest.raises(tfl.TflError, match="nothing to train"):
        tfl.make_config(None, {}, epochs=(0, 0, 0))


def other_value(field: dataclasses.Field):
    """A valid value of a setting that is not its default."""
    meta, default = field.metadata, field.default
    if meta["choices"]:
        return next(choice for choice in meta["choices"] if choice != default)
    if meta["kind"] is bool:
        return not default
    special = {"image_size": 96, "weights": "none", "alpha": 0.5, "images": "photos/", "exclude": "bad.txt",
               "path_column": "file", "label_column": "breed", "label_separator": ";", "background": "others/",
               "corrections": "review.csv", "data_service": "grpc://localhost:5050"}
    if field.name in special:
        return special[field.name]
    if meta["kind"] is int:
        return default + 1
    if meta["kind"] is float:
        return round((meta["low"] or 0) + 0.25, 2) if meta["high"] else default + 0.5
    raise AssertionError(f"no test value for setting '{field.name}' of kind {meta['kind']}")


def cli_settings(args: list[str]) -> dict:
    context = finetune_command.make_context("finetune", args)
    return {k: v for k, v in context.params.items() if k in SETTINGS}


def test_every_setting_is_accepted_by_the_cli_the_yaml_and_python(tmp_path):
    fields = [f for f in dataclasses.fields(TrainConfig) if f.name not in ("data", "stages")]
    generic = {p.name for p in finetune_command.params} - {"data", "config_file", "epochs", "lr", "unfreeze_blocks",
                                                           "name", "output", "overwrite", "resume"}
    assert generic == {f.name for f in fields}, "each CLI training option is one TrainConfig field, and back"
    helps = {p.name: p.help for p in finetune_command.params}
    assert helps["alpha"].endswith("[default: 1.0]") and helps["mixup"].endswith("[default: 0.0]")
    assert helps["feature_cache"].endswith("[default: on]") and helps["image_size"].endswith("[default: auto]")
    for field in fields:
        value = other_value(field)
        flag = "--" + field.name.replace("_", "-")
        args = [flag if value else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)]
        from_cli = tfl.make_config(None, cli_settings(args))
        user_file = tmp_path / f"{field.name}.yaml"
        user_file.write_text(yaml.safe_dump({field.name: value}))
        from_yaml = load_config(config_file=str(user_file))
        from_python = tfl.make_config(None, {field.name: value})
        assert getattr(from_cli, field.name) == getattr(from_yaml, field.name) == getattr(from_python, field.name) \
            == value, field.name
        assert field.metadata["help"], f"setting '{field.name}' has no help text"


def test_bad_python_values_are_one_paragraph_errors():
    with pytest.raises(tfl.TflError, match="Unknown augment 'heavy' in the keyword arguments of tfl.finetune. "
                                           "Choose one of: none, light, strong"):
        tfl.make_config(None, {"augment": "heavy"})
    with pytest.raises(tfl.TflError, match="Dropout in the keyword arguments of tfl.finetune must be between 0 and "
                                           "0.999, got 1.5"):
        tfl.make_config(None, {"dropout": 1.5})
    with pytest.raises(tfl.TflError, match=r"Unknown config key\(s\) epochz"):
        tfl.make_config(None, {"epochz": 3})


def test_arch_yamls_hold_only_what_differs_from_the_defaults():
    defaults = TrainConfig()
    for path in sorted((REPO / "configs").glob("*.yaml")):
        values = yaml.safe_load(path.read_text())
        same = [k for k, v in values.items() if k not in ("arch", "stages") and getattr(defaults, k) == v]
        assert not same, f"{path.name} repeats shared defaults: {same}"


def test_import_is_light_and_commands_are_quiet(tiny_run, tmp_path):
    code = "import sys, tfl; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], "import tfl must not fix the Keras backend"
    image = next((tiny_run.parent.parent / "data" / "red").glob("*.jpg"))
    for level in (None, "2"):  # unset, or a user's own setting that lets error lines through
        env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFL_VERBOSE")}
        env |= {"TF_CPP_MIN_LOG_LEVEL": level} if level else {}
        result = subprocess.run([sys.executable, "-m", "tfl.cli", "predict", str(tiny_run), str(image)],
                                capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        noise = [line for line in result.stderr.splitlines()
                 if re.match(r"[IWE]\d{4} |WARNING: All log messages", line) or "cudart" in line or "cuInit" in line]
        assert not noise, f"native log lines on a normal run with TF_CPP_MIN_LOG_LEVEL={level}: {noise[:3]}"


def test_precision_defaults_to_auto_so_a_gpu_gets_mixed_precision_without_a_flag():
    assert TrainConfig().precision == "auto"
