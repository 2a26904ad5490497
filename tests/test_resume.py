"""Crash safety: a real training process killed with SIGKILL resumes from its last epoch; one run per name."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import MOBILENET_035_WEIGHTS, REPO, cli, tiny_flags, write_class_folders

pytestmark = pytest.mark.integration

# Real weights when ../shared has them, so that accuracy means something; random ones otherwise.
WEIGHTS = str(MOBILENET_035_WEIGHTS) if MOBILENET_035_WEIGHTS.is_file() else "none"
TINY = tiny_flags(WEIGHTS)


def start_training(data, runs, name, epochs, config):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    command = [sys.executable, "-m", "tfl.cli", "finetune", "--data", str(data), *TINY, "--epochs", epochs,
               "--config", str(config), "--output", str(runs), "--name", name]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for_state(process, state_path, ready, timeout=240):
    """Poll the checkpoint's state.json until `ready(state)`; fail if the process ends or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"training ended before it could be killed:\n{process.stdout.read().decode()[-3000:]}")
        try:
            state = json.loads(state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = None
        if state and ready(state):
            return state
        time.sleep(0.02)
    process.kill()
    pytest.fail("training did not reach the point to kill it in time")


def kill_hard(process):
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()


def history(run):
    return list(csv.DictReader((run / "history.csv").open()))


@pytest.fixture
def long_plan(tmp_path):
    """Early stopping off, so the number of epochs is the plan's and a resumed run can be compared exactly."""
    config = tmp_path / "plan.yaml"
    config.write_text("patience: 1000\n")
    return config


@pytest.fixture
def data(tmp_path):
    return write_class_folders(tmp_path / "data", per_class=16)


def test_killed_in_stage_two_resumes_and_finishes_like_an_uninterrupted_run(data, long_plan, tmp_path):
    runs = tmp_path / "runs"
    process = start_training(data, runs, "r", "3,6", long_plan)
    state_path = runs / "r.partial" / "checkpoint" / "state.json"
    wait_for_state(process, state_path, lambda s: s["stage"] == 1 and s["stage_epochs"] >= 2)
    os.kill(process.pid, signal.SIGSTOP)  # paused mid-stage, still holding its lock

    # While it trains, the name is locked: neither a second run nor a resume may touch it.
    second = cli("finetune", "--data", data, *TINY, "--epochs", "1,0", "--output", runs, "--name", "r")
    assert second.exit_code == 1 and "being trained by another tfl process" in second.output
    assert cli("finetune", "--resume", "r", "--output", runs).exit_code == 1

    kill_hard(process)
    state = json.loads(state_path.read_text())
    assert state["stage"] == 1 and 2 <= state["stage_epochs"] < 6, "killed in the middle of stage 2"
    assert not (runs / "r").exists()

    resumed = cli("finetune", "--resume", "--output", runs)  # no name: the newest interrupted run
    assert resumed.exit_code == 0, resumed.output
    assert f"Resuming run 'r' after epoch {3 + state['stage_epochs']}" in resumed.output
    run = runs / "r"
    assert {"model.keras", "labels.txt", "config.yaml", "history.csv", "metrics.json", "splits.json",
            "data_report.json", "training_curves.png", "confusion_matrix.png"} <= {p.name for p in run.iterdir()}
    assert not (runs / "r.partial").exists() and not (run / "checkpoint").exists()
    rows = history(run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 10))
    assert [r["stage"] for r in rows] == ["head"] * 3 + ["top_blocks"] * 6
    assert [int(r["stage_epoch"]) for r in rows[3:]] == list(range(1, 7))

    uninterrupted = cli("finetune", "--data", data, *TINY, "--epochs", "3,6", "--config", long_plan,
                        "--output", runs, "--name", "u")
    assert uninterrupted.exit_code == 0, uninterrupted.output
    assert len(history(runs / "u")) == len(rows)
    resumed_metrics = json.loads((run / "metrics.json").read_text())
    plain_metrics = json.loads((runs / "u" / "metrics.json").read_text())
    print("resumed", resumed_metrics["accuracy"], "uninterrupted", plain_metrics["accuracy"])
    assert abs(resumed_metrics["accuracy"] - plain_metrics["accuracy"]) <= 0.15
    # the learning-rate schedule went on where it stopped instead of starting again
    rates = [float(r["learning_rate"]) for r in rows[3:]]
    assert rates == sorted(rates, reverse=True)
    assert rates == pytest.approx([float(r["learning_rate"]) for r in history(runs / "u")[3:]], rel=1e-4)


def test_killed_in_the_head_stage_resumes_on_the_cached_features(data, long_plan, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    process = start_training(data, runs, "h", "80,1", long_plan)
    state_path = runs / "h.partial" / "checkpoint" / "state.json"
    wait_for_state(process, state_path, lambda s: s["stage"] == 0 and s["stage_epochs"] >= 5)
    kill_hard(process)
    state = json.loads(state_path.read_text())
    assert state["stage"] == 0 and state["stage_epochs"] < 80

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a resumed run, like any run, works from any directory
    resumed = cli("finetune", "--resume", "h", "--output", runs)
    assert resumed.exit_code == 0, resumed.output
    assert "reused from" in resumed.output, "the feature cache of the killed run is reused"
    rows = history(runs / "h")
    assert [r["stage"] for r in rows] == ["head"] * 80 + ["top_blocks"]
    evaluated = cli("evaluate", runs / "h")
    assert evaluated.exit_code == 0, evaluated.output
    assert "accuracy" in evaluated.output


def test_resume_refuses_what_cannot_be_resumed(data, tmp_path):
    runs = tmp_path / "runs"
    result = cli("finetune", "--resume", "--output", runs)
    assert result.exit_code == 1 and "No interrupted run to resume" in result.output
    assert cli("finetune", "--data", data, *TINY, "--epochs", "1,0", "--output", runs, "--name", "done").exit_code == 0
    result = cli("finetune", "--resume", "done", "--output", runs)
    assert result.exit_code == 1 and "already finished" in result.output
    result = cli("finetune", "--resume", "done", "--epochs", "3,3", "--output", runs)
    assert result.exit_code == 1 and "takes no other training option" in result.output


def test_a_multilabel_run_killed_in_stage_two_resumes(long_plan, tmp_path):
    from tests.test_multilabel import striped_photos

    rows = striped_photos(tmp_path / "data" / "images", per_colour=8)
    labels = tmp_path / "data" / "labels.csv"
    labels.write_text("file,labels\n" + "".join(f'{f},"{",".join(names)}"\n' for f, names in rows))
    runs = tmp_path / "runs"
    process = start_training(labels, runs, "m", "2,40", long_plan)
    state_path = runs / "m.partial" / "checkpoint" / "state.json"
    wait_for_state(process, state_path, lambda s: s["stage"] == 1 and s["stage_epochs"] >= 2)
    kill_hard(process)
    resumed = cli("finetune", "--resume", "m", "--output", runs)
    assert resumed.exit_code == 0, resumed.output
    done = history(runs / "m")
    assert [r["stage"] for r in done] == ["head"] * 2 + ["top_blocks"] * 40 and "val_map" in done[0]
    metrics = json.loads((runs / "m" / "metrics.json").read_text())
    assert metrics["task"] == "multilabel" and (runs / "m" / "thresholds.json").is_file()
