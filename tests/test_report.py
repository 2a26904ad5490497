"""report.html: written by every run, rebuilt by `tfl report`, self-contained, and rendered by a real browser."""

import json
import re
import shutil
import subprocess

from click.testing import CliRunner

from tests.test_export import chromium_binary
from tfl.cli import main


def test_every_run_writes_a_self_contained_report(tiny_run):
    page = (tiny_run / "report.html").read_text()
    for section in ("Data", "Plan", "Training", "Per class", "Mistakes", "Calibration", "Exports"):
        assert f"<h2>{section}</h2>" in page
    assert "Run tiny" in page and ".partial" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page), "nothing is fetched from elsewhere"
    assert page.count("data:image/png;base64,") >= 4  # curves, confusion matrix, precision-recall, reliability
    assert (tiny_run / "precision_recall.png").stat().st_size > 1000
    analysis = json.loads((tiny_run / "analysis.json").read_text())
    rows = (tiny_run / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("path,label,predicted,confidence,correct") and len(rows) == 1 + analysis[
        "mistakes_total"] + sum(1 for row in rows[1:] if row.split(",")[4] == "1")
    assert len(list((tiny_run / "mistakes").glob("*.jpg"))) == len(analysis["mistakes"])
    assert set(analysis["per_class"]) == {"blue", "green", "red"}


def test_tfl_report_rebuilds_it_with_the_exports(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.tflite", "*.onnx", "export*", "report.html"))
    result = CliRunner().invoke(main, ["export", str(run), "--format", "tflite", "--verify-images", "4"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 0 and "report.html" in result.output
    assert "model_float32.tflite" in (run / "report.html").read_text()


def test_the_report_renders_in_a_browser_without_errors(tiny_run, tmp_path):
    browser = chromium_binary()
    page = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", (tiny_run / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    assert 'data-rendered="yes"' in page.stdout, page.stderr[-2000:]
    assert re.search(r'<pre id="errors"></pre>', page.stdout), "a script error was reported on the page"
    assert page.stdout.count("<img") >= 3
