"""tfl finetune end to end on tiny generated data: the run directory, the screen, repeatability, evaluate."""

import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import cli, tiny_flags, write_class_folders
from tfl.train import auto_class_weights

TINY = [*tiny_flags(), "--augment", "light"]


def test_run_directory_is_complete(tiny_run):
    expected = {"model.keras", "labels.txt", "config.yaml", "history.csv", "metrics.json", "training_curves.png",
                "confusion_matrix.png", "reliability_diagram.png", "data_report.json", "splits.json", "logs",
                "precision_recall.png", "roc_curves.png", "report.html", "predictions.csv", "analysis.json"}
    assert expected <= {p.name for p in tiny_run.iterdir()}
    assert (tiny_run / "labels.txt").read_text().split() == ["blue", "green", "red"]
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config["image_size"] == 32 and config["backend"] == "tensorflow" and config["arch"] == "mobilenetv2"
    rows = list(csv.DictReader((tiny_run / "history.csv").open()))
    assert [(r["epoch"], r["stage"], r["stage_epoch"]) for r in rows] == [("1", "head", "1"), ("2", "head", "2"),
                                                                         ("3", "top_blocks", "1")]
    assert all(0 <= float(r["val_accuracy"]) <= 1 for r in rows)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert {"accuracy", "loss", "per_class", "confusion_matrix", "macro_f1"} <= set(metrics)
    assert np.asarray(metrics["confusion_matrix"]).sum() == metrics["num_images"] == 6
    assert set(metrics["per_class"]["red"]) == {"precision", "recall", "f1", "support"}
    best = max(float(r["val_accuracy"]) for r in rows)
    assert metrics["accuracy"] == pytest.approx(best, abs=1e-3), "the best checkpoint is the one kept"
    assert list((tiny_run / "logs").rglob("events.out.tfevents*")), "TensorBoard logs"
    assert not tiny_run.with_name("tiny.partial").exists()


@pytest.mark.integration
def test_cli_prints_plan_stage_headers_and_summary(tiny_folder, tmp_path):
    result = cli("finetune", "--data", tiny_folder, *TINY, "--epochs", "1,1", "--output", tmp_path, "--name", "r")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Data: 3 classes, 30 train / 6 val images" in out
    assert "trainable params" in out and "head only" in out and "top 16 blocks" in out
    assert "── Stage 1/2: head" in out and "── Stage 2/2: top_blocks" in out
    assert "Best validation accuracy" in out and "wall time" in out and str(tmp_path / "r") in out


@pytest.mark.integration
def test_existing_run_is_not_overwritten_silently(tiny_folder, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("precious")
    result = cli("finetune", "--data", tiny_folder, *TINY, "--epochs", "1,0", "--output", tmp_path, "--name", "r")
    assert result.exit_code != 0 and "already exists" in result.output and "--overwrite" in result.output
    assert (tmp_path / "r" / "keep.txt").read_text() == "precious"
    result = cli("finetune", "--data", tiny_folder, *TINY, "--epochs", "1,0", "--output", tmp_path, "--name", "r",
                 "--overwrite")
    assert result.exit_code == 1 and "is not a tfl run" in result.output, "--overwrite replaces only runs"
    assert (tmp_path / "r" / "keep.txt").read_text() == "precious"
    (tmp_path / "r" / "model.keras").write_bytes(b"an earlier run")
    (tmp_path / "r" / "labels.txt").write_text("blue\ngreen\nred\n")
    result = cli("finetune", "--data", tiny_folder, *TINY, "--epochs", "1,0", "--output", tmp_path, "--name", "r",
                 "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "r" / "keep.txt").exists() and (tmp_path / "r" / "model.keras").stat().st_size > 1000


@pytest.mark.integration
def test_same_seed_gives_the_same_run(tiny_folder, tmp_path):
    histories = []
    for name in ("a", "b"):
        result = cli("finetune", "--data", tiny_folder, *TINY, "--epochs", "2,0", "--seed", "7",
                         "--output", tmp_path, "--name", name)
        assert result.exit_code == 0, result.output
        histories.append((tmp_path / name / "history.csv").read_text())
        assert json.loads((tmp_path / name / "splits.json").read_text())["val"]
    assert histories[0] == histories[1]
    assert len(list((tmp_path / ".scan_cache").glob("*.json"))) == 1, "the second run read the first one's scan"
    assert (json.loads((tmp_path / "a" / "splits.json").read_text())
            == json.loads((tmp_path / "b" / "splits.json").read_text()))


@pytest.mark.integration
def test_imbalanced_classes_get_balanced_weights_in_the_plan(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=4, classes={"few": (200, 40, 40)})
    write_class_folders(data, per_class=16, classes={"many": (40, 60, 200)}, seed=500)
    result = cli("finetune", "--data", data, *TINY, "--epochs", "1,0", "--output", tmp_path, "--name", "imb")
    assert result.exit_code == 0, result.output
    assert "class weights (auto, imbalanced classes): few 2.67, many 0.62" in result.output  # 3 vs 13 training images
    result = cli("finetune", "--data", data, *TINY, "--epochs", "1,0", "--class-weight", "none",
                     "--output", tmp_path, "--name", "imb2")
    assert "class weights: none" in result.output


def test_auto_class_weights_only_when_imbalanced():
    assert auto_class_weights([10, 12, 11], "auto") is None
    assert auto_class_weights([10, 40], "none") is None
    assert auto_class_weights([10, 40], "auto") == {0: 2.5, 1: 0.625}


def test_evaluate_recomputes_metrics_on_a_folder(own_run, tmp_path):
    result = cli("evaluate", own_run)
    assert result.exit_code == 0, result.output
    saved = json.loads((own_run / "metrics.json").read_text())
    assert f"accuracy {saved['accuracy']:.4f}" in result.output
    other = write_class_folders(tmp_path / "other", per_class=3, classes={"red": (200, 40, 40), "blue": (40, 60, 200)})
    result = cli("evaluate", own_run, "--data", other)
    assert result.exit_code == 0, result.output
    assert "on 6 images" in result.output and "green" in result.output
    # each evaluated set gets its own error analysis and report, beside the run's
    own, folder = own_run / "evaluations" / "val", own_run / "evaluations" / "other"
    assert f"report.html of this evaluation: {folder}" in result.output
    for written in (own, folder):
        assert {"metrics.json", "predictions.csv", "analysis.json", "confusion_matrix.png", "roc_curves.png",
                "precision_recall.png", "report.html"} <= {p.name for p in written.iterdir()}
    rows = (folder / "predictions.csv").read_text().splitlines()
    assert len(rows) == 7 and all(str(other) in row for row in rows[1:])
    analysis = json.loads((folder / "analysis.json").read_text())
    assert len(list((folder / "mistakes").glob("*.jpg"))) == len(analysis["mistakes"])
    page = (folder / "report.html").read_text()
    assert "evaluated on" in page and "6 photos" in page and "<h2>Mistakes</h2>" in page and "<h2>Plan</h2>" not in page
    result = cli("evaluate", own_run, "--data", write_class_folders(tmp_path / "x", 1, {"purple": (9, 9, 9)}))
    assert result.exit_code == 1 and "does not know" in result.output

    # a folder named val does not replace the run's own evaluation; a TIFF is listed where it is, not as the PNG
    # tfl converted it to for the evaluation's time
    held_out = write_class_folders(tmp_path / "dogs" / "val", per_class=2, classes={"red": (200, 40, 40)})
    tiff = held_out / "red" / "scan.tiff"
    Image.new("RGB", (40, 40), (200, 40, 40)).save(tiff, "TIFF")
    before = (own / "predictions.csv").read_text()
    result = cli("evaluate", own_run, "--data", held_out)
    assert result.exit_code == 0, result.output
    assert (own / "predictions.csv").read_text() == before
    rows = (own_run / "evaluations" / "dogs-val" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 4 and any(str(tiff) in row for row in rows[1:])
    assert not any("tfl_converted_" in row for row in rows)


@pytest.mark.integration
def test_auto_image_size_follows_small_photos(tiny_folder, tmp_path):
    args = [a for a in TINY if a not in ("--image-size", "32")]
    result = cli("finetune", "--data", tiny_folder, *args, "--epochs", "1,0", "--output", tmp_path, "--name", "auto")
    assert result.exit_code == 0, result.output
    assert "at 128 px (auto: photos' median short side 40 px)" in result.output
    assert yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["image_size"] == 128


@pytest.mark.integration
def test_evaluate_takes_a_label_file(own_run, tmp_path):
    """Issue 41.18: `tfl evaluate --data labels.csv` said the file did not exist."""
    data = write_class_folders(tmp_path / "more", per_class=2)
    rows = [f"{p.relative_to(data)},{p.parent.name}" for p in sorted(data.rglob("*.jpg"))]
    (data / "labels.csv").write_text("\n".join(["file,label", *rows]) + "\n")
    result = cli("evaluate", own_run, "--data", data / "labels.csv")
    assert result.exit_code == 0 and "on 6 images" in result.output, result.output
    assert json.loads((own_run / "evaluations" / "labels" / "metrics.json").read_text())["num_images"] == 6
    (data / "odd.csv").write_text("file,label\nred/red_0.jpg,purple\nred/red_1.jpg,red\n")
    result = cli("evaluate", own_run, "--data", data / "odd.csv")
    assert result.exit_code == 1 and "label(s) purple that the model does not know" in result.output
