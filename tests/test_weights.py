"""--weights: the imagenet download path (offline error, pre-filled cache), local files, and bad files."""

import h5py
import numpy as np
import pytest

from tests.conftest import require_mobilenet_weights
from tfl.archs import get_arch
from tfl.errors import TflError
from tfl.model import build_backbone


def use_keras_home(monkeypatch, folder):
    """KERAS_HOME is read when Keras is imported, so point the imported Keras at an empty folder."""
    from keras.src.backend import config as keras_config

    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(folder))


def test_imagenet_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    use_keras_home(monkeypatch, tmp_path / "keras_home")
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    with pytest.raises(TflError) as error:
        build_backbone(get_arch("resnet50"), 64, "imagenet")
    message = str(error.value)
    assert "Could not download the ImageNet weights for resnet50 from https://" in message
    assert str(tmp_path / "keras_home" / "models") in message
    assert "--weights PATH" in message


def test_imagenet_uses_a_prefilled_keras_cache_without_network(tmp_path, monkeypatch):
    """Put the real MobileNetV2-0.35 weights where Keras caches its download, then ask for 'imagenet'."""
    weights_file = require_mobilenet_weights()
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    use_keras_home(monkeypatch, tmp_path / "keras_home")
    reference = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=str(weights_file),
                                               input_shape=(128, 128, 3))
    cache = tmp_path / "keras_home" / "models"
    cache.mkdir(parents=True)
    with h5py.File(cache / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128_no_top.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)

    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("the cache was filled, so nothing may be downloaded")

    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    backbone = build_backbone(get_arch("mobilenetv2"), 128, "imagenet", alpha=0.35)
    for ours, theirs in zip(backbone.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def test_local_weights_file_loads(tmp_path):
    weights_file = require_mobilenet_weights()
    backbone = build_backbone(get_arch("mobilenetv2"), 96, str(weights_file), alpha=0.35)
    first_kernel = backbone.get_layer("Conv1").get_weights()[0]
    assert first_kernel.shape == (3, 3, 3, 16) and np.abs(first_kernel).sum() > 0


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(TflError, match="does not exist. Pass --weights imagenet, --weights none"):
        build_backbone(get_arch("mobilenetv2"), 96, str(tmp_path / "nope.weights.h5"))


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras warns per layer before the error we check
def test_weights_for_another_alpha_are_a_clear_error():
    weights_file = require_mobilenet_weights()
    with pytest.raises(TflError, match=r"Could not load the weights file .* \(alpha 1.0\).*same architecture"):
        build_backbone(get_arch("mobilenetv2"), 96, str(weights_file), alpha=1.0)
