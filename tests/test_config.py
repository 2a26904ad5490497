import pytest

from tfl.config import TrainConfig, load_config, override_stages
from tfl.errors import TflError


def test_arch_yaml_supplies_defaults():
    config = load_config("inceptionv3")
    assert config.arch == "inceptionv3" and config.image_size is None  # auto
    assert [s.unfreeze_blocks for s in config.stages] == [0, 2, "all"]


def test_precedence_defaults_then_arch_yaml_then_user_file_then_flags(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("batch_size: 7\nlabel_smoothing: 0.0\nstages:\n  - {name: only, epochs: 2, learning_rate: 1e-3}\n")
    config = load_config("mobilenetv2", str(user), {"batch_size": 9, "augment": None})
    assert config.batch_size == 9  # flag beats file
    assert config.label_smoothing == 0.0  # file beats configs/mobilenetv2.yaml
    assert config.augment == "light"  # unset flag leaves the yaml value
    assert [(s.name, s.epochs, s.learning_rate) for s in config.stages] == [("only", 2, 1e-3)]


def test_config_file_can_choose_the_arch(tmp_path):
    user = tmp_path / "r.yaml"
    user.write_text("arch: resnet50\n")
    assert load_config(None, str(user)).arch == "resnet50"


def test_unknown_key_lists_valid_keys(tmp_path):
    user = tmp_path / "bad.yaml"
    user.write_text("batch_sise: 8\n")
    with pytest.raises(TflError, match=r"Unknown config key\(s\) batch_sise.*Valid keys:.*batch_size"):
        load_config("mobilenetv2", str(user))


def test_bad_yaml_names_the_line(tmp_path):
    user = tmp_path / "broken.yaml"
    user.write_text("batch_size: 8\nstages: [\n  {name: x\n")
    with pytest.raises(TflError, match="not valid YAML at line"):
        load_config("mobilenetv2", str(user))


def test_wrong_type_is_reported(tmp_path):
    user = tmp_path / "t.yaml"
    user.write_text("batch_size: lots\n")
    with pytest.raises(TflError, match="'batch_size'.*must be a whole number, got 'lots'"):
        load_config("mobilenetv2", str(user))


def test_image_size_below_the_arch_minimum_is_rejected():
    with pytest.raises(TflError, match="too small for inceptionv3: it needs at least 75 px"):
        load_config("inceptionv3", overrides={"image_size": 64})


def test_per_stage_flags_override_the_plan():
    config = override_stages(load_config("mobilenetv2"), "3,2,1", "1e-3,1e-4", "5")
    assert [s.epochs for s in config.stages] == [3, 2, 1]
    assert [s.learning_rate for s in config.stages][:2] == [1e-3, 1e-4]
    assert config.stages[1].unfreeze_blocks == 5


@pytest.mark.parametrize("epochs, message", [("1,2,3,4", "4 epochs given, but the plan has 3 stages"),
                                             ("a,b", "comma-separated numbers"),
                                             ("0,0,0", "nothing to train")])
def test_bad_per_stage_flags(epochs, message):
    with pytest.raises(TflError, match=message):
        override_stages(load_config("mobilenetv2"), epochs, None, None)


def test_too_many_unfreeze_blocks_is_rejected():
    with pytest.raises(TflError, match="has 11. Use at most 11"):
        override_stages(load_config("inceptionv3"), None, None, "20")


def test_defaults_without_yaml_are_a_valid_plan():
    config = TrainConfig()
    assert config.stages[0].unfreeze_blocks == 0 and config.stages[-1].unfreeze_blocks == "all"


def test_a_run_recorded_before_the_low_pass_resumes_without_it():
    import yaml

    from tfl.config import from_run_record, run_record

    record = yaml.safe_load(run_record(TrainConfig(low_pass=True), "photos", 96, "float32", "tensorflow", {}, None))
    assert from_run_record(record, "config.yaml").low_pass is True
    assert from_run_record(record | {"low_pass": False}, "config.yaml").low_pass is False
    del record["low_pass"]
    assert from_run_record(record, "config.yaml").low_pass is False, "its model was built without the blur"
    assert TrainConfig().low_pass == "auto", "decided per run (tfl/low_pass.py); a run records what it used"
