"""Real transfer learning: MobileNetV2-0.35 with the shared ImageNet weights on a subset of the flowers photos (the
session's shared real run, tests/conftest.py)."""

import tfl


def test_mobilenetv2_with_shared_weights_learns_real_flowers(real_run):
    metrics = tfl.Run(real_run).metrics
    print("validation accuracy on 100 real flower photos:", metrics["accuracy"])
    assert metrics["num_images"] == 100
    assert metrics["accuracy"] >= 0.55, "chance is 0.20; ImageNet features must do far better"
    assert len(metrics["per_class"]) == 5


def test_the_real_run_measured_its_low_pass_on_its_validation_photos(real_run):
    """low_pass: auto with real features: a paired comparison, recorded as a plain on/off (a resume reads it)."""
    config = tfl.Run(real_run).config
    assert isinstance(config["low_pass"], bool)
    said = [reason for reason in config["plan_reasons"] if reason.startswith("low-pass:")]
    assert len(said) == 1 and "validation log-loss" in said[0] and "100 photos" in said[0], said
