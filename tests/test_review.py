"""`tfl review` (tfl/review.py, tfl/review_app.py): the queue of a run, decisions saved at once and resumed, the web
app's answers to good and bad requests, the labelling order, and the page driven by keyboard in a real browser
(Playwright on Debian's Chromium) through a killed server and a resume."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tfl.corrections import Decision, read_decisions, write_decisions
from tfl.errors import TflError
from tfl.review import Review, learning_order
from tfl.runs import RunFolder

from .conftest import CLASS_COLOURS, make_image

CLASSES = ["blue", "green", "<b>red</b>"]  # a class name that would be markup if the page did not escape it


@pytest.fixture
def run(tmp_path):
    """A run folder as training leaves it, written by hand: two doubted labels, two copies under two labels, two
    validation mistakes (one with a heatmap), their scores."""
    data = tmp_path / "data"
    folder = tmp_path / "runs" / "review-me"
    (folder / "mistakes").mkdir(parents=True)
    paths = {}
    for index, (name, colour) in enumerate(CLASS_COLOURS.items()):
        (data / name).mkdir(parents=True)
        for i in range(3):
            paths[f"{name}{i}"] = str(data / name / f"{name}_{i}.jpg")
            make_image(colour, 48, seed=10 * index + i).save(paths[f"{name}{i}"])
    (folder / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    (folder / "model.keras").write_bytes(b"")  # a finished run's mark (model_scores=False reads no model)
    checks = {"label_issues": [
        {"path": paths["red1"], "label": "<b>red</b>", "probe_says": "blue", "probability_of_label": 0.30},
        {"path": paths["green0"], "label": "green", "probe_says": "blue", "probability_of_label": 0.01}],
        "conflicting_labels": [{"paths": [paths["blue0"], paths["blue1"]], "labels": ["blue", "green"],
                                "splits": ["train", "train"]}]}
    (folder / "data_report.json").write_text(json.dumps({"checks": checks}))
    mistakes = [{"path": paths["red2"], "label": "<b>red</b>", "predicted": "green", "confidence": 0.9},
                {"path": paths["green0"], "label": "green", "predicted": "blue", "confidence": 0.8}]
    (folder / "analysis.json").write_text(json.dumps({"mistakes": mistakes}))
    make_image((90, 90, 90), 48).save(folder / "mistakes" / "0.jpg")
    (folder / "predictions.csv").write_text("path,label,predicted,confidence,correct,blue,green,<b>red</b>\n"
                                            f"{paths['red2']},<b>red</b>,green,0.9,0,0.05,0.9,0.05\n")
    return folder, paths


def test_the_queue_puts_the_most_doubtful_labels_first_then_copies_then_mistakes_each_photo_once(run):
    folder, paths = run
    queue = Review(RunFolder(folder), model_scores=False).queue
    assert [item.path for item in queue] == [paths["green0"], paths["red1"], paths["blue0"], paths["blue1"],
                                             paths["red2"]]
    assert [item.kind for item in queue] == ["doubted", "doubted", "copy", "copy", "mistake"]
    assert "blue_1.jpg (green)" in queue[2].reason and "blue_0.jpg (blue)" in queue[3].reason
    assert queue[4].heatmap and queue[4].scores == {"blue": 0.05, "green": 0.9, "<b>red</b>": 0.05}


def test_each_decision_is_saved_at_once_undone_and_resumed(run):
    folder, paths = run
    review = Review(RunFolder(folder), model_scores=False)
    review.decide(0, "relabel", "blue")
    review.decide(1, "exclude")
    review.decide(2, "relabel", "blue")  # its own label: keep
    assert [(d.decision, d.label) for d in read_decisions(folder / "review.csv")] == [
        ("relabel", "blue"), ("exclude", ""), ("keep", "")]
    assert review.undo() == 2 and len(read_decisions(folder / "review.csv")) == 2
    review.decide(1, "relabel", "green")  # changed its mind: undo brings the exclusion back
    assert review.undo() == 1
    assert [(d.decision, d.label) for d in read_decisions(folder / "review.csv")] == [("relabel", "blue"),
                                                                                      ("exclude", "")]
    again = Review(RunFolder(folder), model_scores=False)  # a new server on the same run
    assert again.first_undecided() == 2 and again.state()["done"] == 2
    with pytest.raises(ValueError, match="not a class"):
        again.decide(2, "relabel", "purple")
    with pytest.raises(ValueError, match="no photo at position 9"):
        again.decide(9, "keep")


@pytest.fixture
def client(run):
    from tfl.review_app import create_app

    app = create_app(Review(RunFolder(run[0]), model_scores=False))
    return app.test_client()


def test_the_app_serves_the_queue_and_its_photos_only_and_answers_bad_requests_with_an_error(client, run):
    folder, paths = run
    state = client.get("/api/state").get_json()
    assert state["total"] == 5 and state["classes"] == CLASSES and "path" not in state["items"][0]
    assert client.get("/photo/0").data == open(paths["green0"], "rb").read()
    assert client.get("/heatmap/4").status_code == 200 and client.get("/heatmap/0").status_code == 404
    for url in ("/photo/5", "/photo/-1", "/photo/..%2f..%2fetc%2fpasswd", "/photo/../../etc/passwd",
                "/../labels.txt", "/review.csv"):
        answer = client.get(url)
        assert answer.status_code == 404, url
        assert b"Traceback" not in answer.data and answer.is_json, url
    for body in (b"not json", b"[]", json.dumps({"position": "0", "decision": "keep"}).encode(),
                 json.dumps({"position": 0, "decision": "delete"}).encode(),
                 json.dumps({"position": 0, "decision": "relabel", "label": 3}).encode()):
        answer = client.post("/api/decide", data=body, content_type="application/json")
        assert answer.status_code == 400 and "error" in answer.get_json(), body
    assert not (folder / "review.csv").exists()  # nothing written by a bad request
    answer = client.post("/api/decide", json={"position": 0, "decision": "relabel", "label": "<b>red</b>"})
    assert answer.get_json() == {"decided": {"decision": "relabel", "label": "<b>red</b>"}, "done": 1, "next": 1}
    assert client.post("/api/undo", json={}).get_json() == {"position": 0, "done": 0}
    assert client.post("/api/undo", json={}).get_json() == {"position": None, "done": 0}


def test_the_app_refuses_other_sites_and_other_host_names_and_never_lets_photos_be_cached(client):
    """Another site's page can post a form or a plain request without the browser asking: such posts are refused,
    and so is a request naming another host (DNS rebinding); position N is another photo after a restart."""
    client.post("/api/decide", json={"position": 0, "decision": "keep"})
    assert client.post("/api/undo").status_code == 403  # not JSON: a cross-site form or no-cors fetch
    assert client.post("/api/undo", json={}, headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.get("/api/state", headers={"Host": "evil.example:80"}).status_code == 403
    assert client.get("/api/state").get_json()["done"] == 1  # nothing was undone
    photo = client.get("/photo/0")
    assert photo.headers["Cache-Control"] == "no-store" and photo.headers["X-Content-Type-Options"] == "nosniff"


def test_a_converted_photo_is_shown_as_converted_and_decided_under_its_own_name(run):
    folder, paths = run
    report = json.loads((folder / "data_report.json").read_text())
    converted = str(folder / "converted" / "abc_green_0.png")
    report["checks"]["label_issues"][1]["path"] = converted  # the file tfl read in place of green_0 (a HEIC, say)
    report["converted"] = [{"path": paths["green0"], "to": converted}]
    (folder / "data_report.json").write_text(json.dumps(report))
    first = Review(RunFolder(folder), model_scores=False).queue[0]
    assert (first.path, first.shown) == (paths["green0"], converted)


def test_a_run_of_several_labels_per_photo_is_a_clear_error(run):
    folder, _ = run
    (folder / "thresholds.json").write_text(json.dumps({name: 0.5 for name in CLASSES}))
    with pytest.raises(TflError, match="several labels per photo"):
        Review(RunFolder(folder))


def test_a_run_trained_with_corrections_starts_its_review_from_them_and_one_server_serves_a_run(run, tmp_path):
    folder, paths = run
    earlier = tmp_path / "earlier.csv"  # the review the run trained with: green0 relabelled red by it
    write_decisions(earlier, [Decision(paths["blue2"], "exclude"), Decision(paths["green0"], "relabel", "green")])
    (folder / "config.yaml").write_text(f"corrections: {earlier}\n")
    review = Review(RunFolder(folder), model_scores=False)
    assert review.first_undecided() == 1  # green0 (position 0) was decided then: not asked again
    review.decide(0, "keep")  # its label as this run has it, which the earlier review gave: still that relabel
    review.decide(1, "exclude")
    assert [(d.path, d.decision, d.label) for d in read_decisions(folder / "review.csv")] == [
        (paths["blue2"], "exclude", ""), (paths["green0"], "relabel", "green"), (paths["red1"], "exclude", "")]
    from tfl.runs import review_lock

    with review_lock(folder):
        with pytest.raises(TflError, match="Another tfl review is serving run"):
            with review_lock(folder):
                pass


def test_the_labelling_order_takes_uncertain_photos_first_spread_over_the_groups():
    rng = np.random.default_rng(0)
    group = np.repeat(np.arange(18), 5)  # 90 photos in 18 far-apart groups of 5 (k-means takes 90 / 5 groups)
    features = np.eye(18)[group] * 5 + rng.normal(0, 0.05, (90, 18))
    scores = np.tile([0.9, 0.05, 0.05], (90, 1)) + rng.uniform(0, 0.01, (90, 3))
    scores[[5, 6, 7, 8]] = [[0.34, 0.33, 0.33], [0.45, 0.4, 0.15], [0.5, 0.4, 0.1], [0.5, 0.45, 0.05]]  # group 1
    scores[45] = [0.6, 0.3, 0.1]  # group 9's least sure
    order = learning_order(scores, features)
    assert sorted(order) == list(range(90))
    assert order[:2] == [5, 45]  # the most uncertain of all, then the next group's, before group 1's runners-up
    assert sorted(group[order[:18]]) == list(range(18))  # one of each group first
    assert order.index(6) == 18  # the runner-up of group 1 opens the second round


def review_server(folder, port=0):
    """`tfl review RUN --no-browser` in its own process, and the URL it printed."""
    process = subprocess.Popen([sys.executable, "-m", "tfl.cli", "review", str(folder), "--no-browser", "--port",
                                str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, seen = time.time() + 120, ""
    while time.time() < deadline:
        line = process.stdout.readline()
        seen += line
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if found:
            return process, found.group(0)
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError(f"tfl review printed no URL:\n{seen}")


@pytest.mark.integration
def test_the_page_takes_decisions_by_keyboard_survives_a_killed_server_and_resumes(run, tiny_run):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("the browser test needs Debian's Chromium (apt-get install chromium); not installed here")
    folder, paths = run
    for name in ("model.keras", "unknown.npz"):  # a trained model of three classes scores the photos
        shutil.copy(tiny_run / name, folder / name)
    process, url = review_server(folder)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#position:has-text('1 of 5')")
            assert page.inner_text("#label") == "labelled green"
            assert "<b>red</b>" in page.inner_text("#classes") and page.locator("#classes b").count() == 0
            assert page.locator("#scores tr").count() == 3  # the model's scores of a training photo
            page.keyboard.press("3")  # the third class
            page.wait_for_selector("#position:has-text('2 of 5')")
            page.keyboard.press("x")
            page.wait_for_selector("#position:has-text('3 of 5')")
            page.keyboard.press("Enter")
            page.wait_for_selector("#progress:has-text('3 done, 2 left')")
            page.keyboard.press("z")  # undo the keep
            page.wait_for_selector("#progress:has-text('2 done, 3 left')")
            assert page.inner_text("#position").startswith("3 of 5")
            page.keyboard.press("1")
            page.wait_for_selector("#progress:has-text('3 done, 2 left')")
            decisions = [(d.path, d.decision, d.label) for d in read_decisions(folder / "review.csv")]
            assert decisions == [(paths["green0"], "relabel", "<b>red</b>"), (paths["red1"], "exclude", ""),
                                 (paths["blue0"], "keep", "")]  # blue0's label is blue: its own again
            process.send_signal(signal.SIGKILL)  # killed: nothing but what was saved survives
            process.wait(30)
            assert len(read_decisions(folder / "review.csv")) == 3
            process, url = review_server(folder)
            page.goto(url)
            page.wait_for_selector("#position:has-text('4 of 5')")  # the first undecided photo
            page.keyboard.press("k")
            page.wait_for_selector("#progress:has-text('4 done, 1 left')")
            browser.close()
    finally:
        process.kill()
    assert len(read_decisions(folder / "review.csv")) == 4


@pytest.mark.integration
def test_unlabelled_photos_join_the_queue_in_learning_order_and_take_labels(tiny_run, tmp_path):
    unlabelled = tmp_path / "new"
    unlabelled.mkdir()
    for i, colour in enumerate([*CLASS_COLOURS.values()] * 4):
        make_image(colour, 40, seed=500 + i).save(unlabelled / f"photo_{i}.jpg")
    (unlabelled / "notes.txt").write_text("not a photo")
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    review = Review(RunFolder(copy), unlabelled)
    new = [item for item in review.queue if item.kind == "unlabelled"]
    assert len(new) == 12 and all(item.label == "" and len(item.scores) == 3 for item in new)
    margins = [sorted(item.scores.values())[-1] - sorted(item.scores.values())[-2] for item in new]
    assert margins[0] == min(margins)
    position = review.queue.index(new[0])
    assert review.decide(position, "relabel", "red").decision == "label"
    with pytest.raises(ValueError, match="takes a label or is left out"):
        review.decide(position, "keep")
    assert [d.decision for d in read_decisions(copy / "review.csv")] == ["label"]
    assert os.path.dirname(read_decisions(copy / "review.csv")[0].path) == str(unlabelled)
