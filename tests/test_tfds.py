"""--data tfds:NAME, on tensorflow-datasets' mock data (no download)."""

import json

import pytest
import tensorflow_datasets as tfds
from click.testing import CliRunner

from tfl.cli import main
from tfl.data import load_tfds
from tfl.errors import TflError


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def test_tfds_dataset_gives_class_names_and_splits(mock_tfds):
    data = load_tfds("beans")
    assert data.class_names == ["angular_leaf_spot", "bean_rust", "healthy"]
    assert len(data.train) == 12 and data.train.source is not None
    assert data.report["source"] == "tfds:beans"


@pytest.mark.integration
def test_finetune_on_tfds_end_to_end(mock_tfds, tmp_path):
    result = CliRunner().invoke(main, ["finetune", "--data", "tfds:tf_flowers", "--weights", "none", "--alpha", "0.35",
                                       "--image-size", "32", "--batch-size", "6", "--epochs", "1,0",
                                       "--output", str(tmp_path), "--name", "t"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Data: 5 classes" in result.output
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["class_names"] == ["dandelion", "daisy", "tulips", "sunflowers", "roses"]


def test_unknown_tfds_name_is_a_clear_error():
    with pytest.raises(TflError, match="Could not load the tensorflow-datasets dataset 'no_such_dataset_xyz'"):
        load_tfds("no_such_dataset_xyz")
