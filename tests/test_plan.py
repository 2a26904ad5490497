"""plan: auto: the stages chosen from the data, what is printed and saved, the warmup, and early stopping."""

import csv

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from tfl.archs import auto_image_size, get_arch
from tfl.checkpoint import StageTracker, TrainingState
from tfl.cli import main
from tfl.config import Stage, load_config, override_stages
from tfl.plan import DataStats, auto_plan
from tfl.train import learning_rate_schedule

MOBILENET = get_arch("mobilenetv2")


def plan_for(images, classes):
    return auto_plan(load_config("mobilenetv2"), MOBILENET, DataStats(images, classes))


def test_small_sets_fine_tune_fewer_blocks_more_gently_than_large_ones():
    small, small_reasons = plan_for(200, 2)
    large, large_reasons = plan_for(20_000, 10)
    for config in (small, large):
        head, tune = config.stages
        assert (head.unfreeze_blocks, head.learning_rate) == (0, 1e-3) and head.epochs >= 50 and head.patience >= 5
        assert tune.warmup_epochs >= 1 and config.plan == "fixed"
    small_tune, large_tune = small.stages[1], large.stages[1]
    assert small_tune.unfreeze_blocks < large_tune.unfreeze_blocks <= MOBILENET.tunable_blocks
    assert small_tune.learning_rate <= large_tune.learning_rate
    # a step budget: 200 images are few steps per epoch, so more epochs; 20,000 images need fewer
    assert small_tune.epochs > large_tune.epochs >= 3
    assert "200 training images in 2 classes (100 per class)" in small_reasons[1]
    assert f"top {large_tune.unfreeze_blocks} of 18 blocks" in large_reasons[1]


@pytest.mark.parametrize("arch", ["mobilenetv2", "resnet50", "inceptionv3"])
def test_the_stem_stays_frozen_however_large_the_set(arch):
    spec = get_arch(arch)
    config, reasons = auto_plan(load_config(arch), spec, DataStats(100_000, 10))
    assert config.stages[1].unfreeze_blocks == spec.num_blocks - spec.stem_blocks
    assert f"top {spec.tunable_blocks} of {spec.num_blocks} blocks" in reasons[1] and "above the stem" in reasons[1]


def test_a_tiny_set_per_class_moves_fewest_blocks():
    tiny, _ = plan_for(60, 6)
    assert tiny.stages[1].unfreeze_blocks <= plan_for(200, 2)[0].stages[1].unfreeze_blocks
    assert tiny.stages[1].learning_rate < 1e-4


def test_stage_flags_or_written_stages_switch_the_auto_plan_off(tmp_path):
    auto = load_config("mobilenetv2", overrides={"plan": "auto"})
    assert auto.plan == "auto"
    assert override_stages(auto, "5,5,0", None, None).plan == "fixed"
    written = tmp_path / "mine.yaml"
    written.write_text("stages:\n  - {name: only, epochs: 2, learning_rate: 1e-3}\n")
    assert load_config("mobilenetv2", str(written)).plan == "fixed"


def test_tiny_photos_are_enlarged_and_small_ones_kept():
    assert auto_image_size(MOBILENET, 32) == 128  # CIFAR-sized photos
    assert auto_image_size(get_arch("inceptionv3"), 28) == 128
    assert auto_image_size(MOBILENET, 128) == 128
    assert auto_image_size(MOBILENET, 150) == 160
    assert auto_image_size(MOBILENET, 3000) == 224


def test_warmup_rises_linearly_then_decays():
    schedule = learning_rate_schedule(Stage("t", epochs=10, learning_rate=1e-4, unfreeze_blocks=4,
                                            warmup_epochs=2), steps_per_epoch=5)
    rates = [float(schedule(step)) for step in range(50)]
    assert rates[0] == 0.0 and rates[5] == pytest.approx(5e-5) and rates[10] == pytest.approx(1e-4)
    assert all(b <= a for a, b in zip(rates[10:], rates[11:])) and rates[-1] < 2e-5
    plain = learning_rate_schedule(Stage("h", epochs=10, learning_rate=1e-3), steps_per_epoch=5)
    assert float(plain(0)) == pytest.approx(1e-3)


class FakeCheckpoint:
    def end_epoch(self, state, model):
        pass


class FakeModel:
    stop_training = False

    class optimizer:
        learning_rate = 1e-3


def track(epochs, patience):
    state = TrainingState()
    tracker = StageTracker(FakeCheckpoint(), state, "head", patience)
    tracker.set_model(FakeModel())
    for epoch, (accuracy, loss) in enumerate(epochs):
        tracker.on_epoch_end(epoch, {"val_accuracy": accuracy, "val_loss": loss, "loss": 1.0, "accuracy": 0.5})
        if tracker.model.stop_training:
            break
    return state


def test_a_falling_loss_counts_as_progress_while_accuracy_stalls():
    state = track([(0.8, 1.0), (0.8, 0.9), (0.8, 0.8), (0.8, 0.7), (0.8, 0.75), (0.8, 0.76)], patience=2)
    assert state.stopped and state.epochs_done == 6
    assert state.best == {"epoch": 4, "stage": 0, "value": 0.8, "loss": 0.7}, "a tie in accuracy goes to the lower loss"


def test_a_loss_creeping_down_by_thousandths_is_no_progress():
    """The end of a cosine schedule: the loss still falls, by less than 1% an epoch, and accuracy stalls."""
    state = track([(0.9, 0.50), (0.9, 0.45), (0.9, 0.449), (0.9, 0.448), (0.9, 0.4475), (0.9, 0.447)], patience=3)
    assert state.stopped and state.epochs_done == 5  # progress last at epoch 2


def test_a_stage_that_stops_says_whether_it_beat_the_one_before():
    from tfl.config import Stage
    from tfl.report import early_stop_line

    stages = [Stage("head", 100, 1e-3, 0), Stage("top_blocks", 10, 1e-4, 9)]
    state = TrainingState(stage=1, stage_epochs=6, stopped=True, best={"epoch": 16, "stage": 0, "value": 0.66})
    line = early_stop_line(stages[1], state, stages)
    assert "stopped after 6 of 10 epochs" in line and "never beat head's best epoch (16)" in line
    state.best = {"epoch": 20, "stage": 1, "value": 0.7}
    assert "its epoch 20 is the run's best" in early_stop_line(stages[1], state, stages)


def test_the_fine_tuning_budget_caps_steps_and_epochs():
    from tfl.plan import FINE_TUNE_EPOCHS, FINE_TUNE_STEPS

    for images in (300, 877, 3_455, 50_000):
        tune = plan_for(images, 4)[0].stages[1]
        steps = tune.epochs * -(-images // 32)
        assert FINE_TUNE_EPOCHS[0] <= tune.epochs <= FINE_TUNE_EPOCHS[1]
        assert steps >= FINE_TUNE_STEPS or tune.epochs == FINE_TUNE_EPOCHS[1]  # the budget, unless epochs cap it
        assert (tune.epochs - 1) * -(-images // 32) < FINE_TUNE_STEPS or tune.epochs == FINE_TUNE_EPOCHS[0]


def test_accuracy_decides_the_best_epoch():
    state = track([(0.7, 0.5), (0.9, 0.6), (0.8, 0.4), (0.8, 0.45), (0.8, 0.5)], patience=2)
    assert state.best["epoch"] == 2 and state.stopped and state.epochs_done == 5


@pytest.mark.integration
def test_the_auto_plan_is_printed_saved_and_warms_up(tiny_folder, tmp_path):
    result = CliRunner().invoke(main, ["finetune", "--data", str(tiny_folder), "--weights", "none", "--alpha", "0.35",
                                       "--image-size", "32", "--batch-size", "8", "--plan", "auto",
                                       "--output", str(tmp_path), "--name", "auto"])
    assert result.exit_code == 0, result.output
    assert "chosen from the data:" in result.output
    assert "30 training images in 3 classes (10 per class): top 4 of 18 blocks" in result.output
    config = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert config["plan"] == "fixed" and len(config["plan_reasons"]) == 3  # the head, the top blocks, the low-pass
    assert config["low_pass"] is True and "low-pass: on (auto, not measured: random weights" in result.output
    assert config["stages"][1]["warmup_epochs"] >= 1
    rows = [r for r in csv.DictReader((tmp_path / "auto" / "history.csv").open()) if r["stage"] == "top_blocks"]
    rates = np.asarray([float(r["learning_rate"]) for r in rows])
    warmup = config["stages"][1]["warmup_epochs"]
    assert np.all(np.diff(rates[:warmup]) > 0), "the rate rises through the warmup"


def test_the_curves_star_the_epoch_each_stage_kept(tmp_path):
    from tfl.plots import kept_epochs, plot_training_curves

    def row(epoch, stage, val_accuracy, val_loss):
        return {"epoch": epoch, "stage": stage, "loss": 1.0, "accuracy": 0.8, "val_loss": val_loss,
                "val_accuracy": val_accuracy}
    history = [row(1, "head", 0.70, 1.0), row(2, "head", 0.72, 0.9), row(3, "head", 0.72, 0.8),
               row(4, "head", 0.71, 0.7), row(5, "top_blocks", 0.69, 1.0), row(6, "top_blocks", 0.75, 0.9)]
    assert kept_epochs(history) == {"head": 3, "top_blocks": 6}  # equal accuracy: the lower loss wins
    plot_training_curves(history, tmp_path / "curves.png", cached_stages={"head"})
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
