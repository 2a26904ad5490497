"""Real transfer learning: MobileNetV2-0.35 with the shared ImageNet weights on a subset of the flowers photos (the
session's shared real run, tests/conftest.py)."""

import tfl


def test_mobilenetv2_with_shared_weights_learns_real_flowers(real_run):
    metrics = tfl.Run(real_run).metrics
    print("validation accuracy on 100 real flower photos:", metrics["accuracy"])
    assert metrics["num_images"] == 100
    assert metrics["accuracy"] >= 0.55, "chance is 0.20; ImageNet features must do far better"
    assert len(metrics["per_class"]) == 5
