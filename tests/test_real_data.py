"""Real transfer learning: MobileNetV2-0.35 with the shared ImageNet weights on a subset of the flowers photos."""

import pytest

import tfl
from tests.conftest import flowers_subset, require_mobilenet_weights

pytestmark = pytest.mark.slow


def test_mobilenetv2_with_shared_weights_learns_real_flowers(tmp_path):
    weights = require_mobilenet_weights()
    data = flowers_subset(tmp_path / "flowers", train_per_class=40, val_per_class=20)
    run = tfl.finetune(data, alpha=0.35, weights=weights, image_size=128, batch_size=20, epochs=(10, 2, 0),
                       learning_rates=(3e-3, 2e-4), output=tmp_path / "runs", name="flowers", echo=print, verbose=0)
    metrics = run.metrics
    print("validation accuracy on 100 real flower photos:", metrics["accuracy"])
    assert metrics["num_images"] == 100
    assert metrics["accuracy"] >= 0.55, "chance is 0.20; ImageNet features must do far better"
    assert len(metrics["per_class"]) == 5
