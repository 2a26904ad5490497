"""A user's mistake gets a clear one-paragraph message and a non-zero exit, never a traceback."""

import os

import pytest
from click.testing import CliRunner

from tfl.cli import main

BASE = ["finetune", "--weights", "none", "--alpha", "0.35", "--image-size", "32", "--epochs", "1,0"]


def invoke(args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result


def test_missing_data_option():
    result = invoke(["finetune"])
    assert result.exit_code == 2 and "Missing option '--data'" in result.output


def test_data_folder_does_not_exist(tmp_path):
    result = invoke(BASE + ["--data", tmp_path / "nope", "--output", tmp_path / "runs"])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_empty_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke(BASE + ["--data", tmp_path / "empty", "--output", tmp_path / "runs"])
    assert result.exit_code == 1 and "at least two class subfolders" in result.output
    assert not any((tmp_path / "runs").glob("*/model.keras"))


def test_unknown_arch(tiny_folder):
    result = invoke(BASE + ["--data", tiny_folder, "--arch", "vgg16"])
    assert result.exit_code == 2 and "'vgg16' is not one of" in result.output


def test_bad_yaml(tiny_folder, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n")
    result = invoke(BASE + ["--data", tiny_folder, "--config", bad])
    assert result.exit_code == 1 and "is not valid YAML" in result.output


def test_unknown_config_key(tiny_folder, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    result = invoke(BASE + ["--data", tiny_folder, "--config", bad])
    assert result.exit_code == 1 and "Unknown config key(s) learning_rate" in result.output


def test_image_size_too_small(tiny_folder):
    result = invoke(["finetune", "--data", tiny_folder, "--arch", "inceptionv3", "--image-size", "50"])
    assert result.exit_code == 1 and "at least 75 px" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere, so a read-only folder cannot be made")
def test_unwritable_output_non_root(tiny_folder, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = invoke(BASE + ["--data", tiny_folder, "--output", locked / "runs"])
    assert result.exit_code == 1 and "Cannot write the run" in result.output


def test_unwritable_output(tiny_folder, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = invoke(BASE + ["--data", tiny_folder, "--output", blocker / "runs"])
    assert result.exit_code == 1 and "Cannot write the run to" in result.output and "--output" in result.output


def test_evaluate_without_any_run(tmp_path):
    result = invoke(["evaluate", "--output", tmp_path])
    assert result.exit_code == 1 and "No finished run found" in result.output


def test_check_outputs_that_are_files_or_inside_files_are_one_paragraph_errors(tiny_folder, tmp_path):
    """Issue 41.15: `tfl check --output FILE` and `--json afile/r.json` ended in tracebacks."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args, message in ((["--output", afile], "must be a folder"), (["--json", afile / "r.json"], "is a file, not a"),
                          (["--exclusions", afile / "x.txt"], "--exclusions")):
        result = invoke(["check", tiny_folder, "--no-probe", "--output", tmp_path / "runs", *args])
        assert result.exit_code == 1 and message in result.output, result.output
    result = invoke(["check", tiny_folder, "--no-probe", "--json", tmp_path])
    assert result.exit_code == 2 and "is a directory" in result.output
    assert afile.read_text() == "x"


def test_check_takes_the_options_it_asks_for_and_prints_its_checks_when_the_probe_cannot_run(tmp_path):
    """Issue 41.17: `tfl check` said "Pass --label-column NAME" and then refused that option; with weights it could
    not load it printed none of the checks that need no weights."""
    from tests.conftest import write_class_folders

    photos = write_class_folders(tmp_path / "photos", per_class=4)
    rows = [f"{p.relative_to(photos)},{p.parent.name},{'big' if i % 2 else 'small'}"
            for i, p in enumerate(sorted(photos.rglob("*.jpg")))]
    (photos / "labels.csv").write_text("\n".join(["file,colour,size", *rows]) + "\n")
    asked = invoke(["check", photos / "labels.csv", "--no-probe", "--output", tmp_path / "runs"])
    assert asked.exit_code == 1 and "--label-column" in asked.output
    given = invoke(["check", photos / "labels.csv", "--no-probe", "--label-column", "colour", "--seed", "3",
                    "--val-split", "0.25", "--output", tmp_path / "runs"])
    assert given.exit_code == 0 and "3 classes" in given.output, given.output
    no_weights = invoke(["check", photos, "--weights", tmp_path / "nope.h5", "--output", tmp_path / "runs"])
    assert no_weights.exit_code == 1 and "Data: 3 classes" in no_weights.output
    assert no_weights.output.index("Data: 3 classes") < no_weights.output.index("nope.h5' does not exist")
