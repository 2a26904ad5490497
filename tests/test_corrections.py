"""A review's decisions (tfl/corrections.py): the review.csv format, and `--corrections` applying them to class
folders and label files (relabel, exclude, newly labelled photos), counted in the data report."""

import os

import pytest

from tfl.corrections import Decision, read_decisions, write_decisions
from tfl.data import load_data
from tfl.errors import TflError

from .conftest import cli, make_image, write_class_folders


@pytest.fixture
def folder(tmp_path):
    return write_class_folders(tmp_path / "data", per_class=8)


def labels_of(data) -> dict[str, str]:
    return {os.path.abspath(path): data.class_names[label] for split in (data.train, data.val)
            for path, label in zip(split.paths, split.labels)}


def test_decisions_are_written_whole_and_read_back_the_last_row_of_a_photo_winning(tmp_path):
    review = tmp_path / "review.csv"
    write_decisions(review, [Decision(str(tmp_path / "a.jpg"), "relabel", "red"),
                             Decision(str(tmp_path / "b, c.jpg"), "exclude", "ignored"),
                             Decision(str(tmp_path / "a.jpg"), "keep")])
    assert review.read_text().splitlines()[0] == "path,decision,label"
    read = {d.path: d for d in read_decisions(review)}
    assert read[str(tmp_path / "a.jpg")].decision == "keep"  # the later row replaces the earlier
    assert read[str(tmp_path / "b, c.jpg")] == Decision(str(tmp_path / "b, c.jpg"), "exclude", "")
    (tmp_path / "relative.csv").write_text("path,decision,label\nsub/x.jpg,label,red\n")
    assert read_decisions(tmp_path / "relative.csv")[0].path == str(tmp_path / "sub" / "x.jpg")


@pytest.mark.parametrize("content, said", [
    ("file,what\n", "does not start with the header path,decision,label"),
    ("path,decision,label\na.jpg,delete,\n", "line 2: decision 'delete' is none of"),
    ("path,decision,label\na.jpg,relabel,\n", "line 2: a 'relabel' decision needs a label"),
    ("path,decision,label\na.jpg,keep\n", "line 2: it has 2 cells, not 3"),
])
def test_a_file_that_is_no_review_is_a_clear_error(tmp_path, content, said):
    (tmp_path / "review.csv").write_text(content)
    with pytest.raises(TflError, match=said):
        read_decisions(tmp_path / "review.csv")
    with pytest.raises(TflError, match="is not a file"):
        read_decisions(tmp_path / "missing.csv")


def test_corrections_relabel_exclude_and_add_labelled_photos_to_training(folder, tmp_path):
    new = tmp_path / "unlabelled"
    new.mkdir()
    make_image((40, 60, 200), seed=99).save(new / "blue_new.jpg")
    moved = folder / "red" / "red_0.jpg"  # a blue photo filed under red, say
    dropped = folder / "green" / "green_1.jpg"
    review = tmp_path / "review.csv"
    write_decisions(review, [Decision(str(moved), "relabel", "blue"), Decision(str(dropped), "exclude"),
                             Decision(str(folder / "red" / "red_2.jpg"), "keep"),
                             Decision(str(new / "blue_new.jpg"), "label", "blue"),
                             Decision(str(tmp_path / "gone.jpg"), "exclude")])
    before = load_data(str(folder), 0.25, 0)
    after = load_data(str(folder), 0.25, 0, corrections=review)
    labels = labels_of(after)
    assert labels[str(moved)] == "blue" and str(dropped) not in labels
    assert labels_of(before)[str(moved)] == "red" and str(dropped) in labels_of(before)
    assert str(new / "blue_new.jpg") in [os.path.abspath(p) for p in after.train.paths]  # training only
    assert str(new / "blue_new.jpg") not in [os.path.abspath(p) for p in after.val.paths]
    fixes = after.report["corrections"]
    assert (fixes["relabelled"], fixes["excluded"], fixes["labelled"], fixes["unmatched"]) == (1, 1, 1, 1)
    assert len(after.train) + len(after.val) == len(before.train) + len(before.val)  # one out, one in
    assert (folder / "green" / "green_1.jpg").is_file()  # the user's folder is never changed


def test_corrections_are_applied_after_the_split_so_every_photo_stays_on_its_side(folder, tmp_path):
    review = tmp_path / "review.csv"
    moved = [str(folder / "red" / f"red_{i}.jpg") for i in range(4)]
    write_decisions(review, [Decision(path, "relabel", "green") for path in moved[:3]] + [Decision(moved[3], "exclude")])
    before, after = load_data(str(folder), 0.25, 0), load_data(str(folder), 0.25, 0, corrections=review)
    assert set(after.val.paths) == set(before.val.paths) - {moved[3]}
    assert set(after.train.paths) == set(before.train.paths) - {moved[3]}
    fixes = after.report["corrections"]  # counted over both sides: some of the four are validation photos
    assert (fixes["relabelled"], fixes["excluded"], fixes["unmatched"]) == (3, 1, 0)
    assert any(path in before.val.paths for path in moved)


def test_corrections_apply_to_label_files_too(folder, tmp_path):
    rows = [f"{name}/{name}_{i}.jpg,{name}" for name in ("red", "green", "blue") for i in range(8)]
    (folder / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    review = tmp_path / "review.csv"
    write_decisions(review, [Decision(str(folder / "blue" / "blue_3.jpg"), "relabel", "green"),
                             Decision(str(folder / "red" / "red_5.jpg"), "exclude")])
    data = load_data(str(folder / "labels.csv"), 0.25, 0, corrections=review)
    labels = labels_of(data)
    assert labels[str(folder / "blue" / "blue_3.jpg")] == "green" and str(folder / "red" / "red_5.jpg") not in labels
    assert data.report["corrections"]["relabelled"] == 1 and data.report["corrections"]["excluded"] == 1


def test_corrections_naming_a_class_the_data_lacks_or_for_tfds_are_clear_errors(folder, tmp_path):
    review = tmp_path / "review.csv"
    write_decisions(review, [Decision(str(folder / "red" / "red_0.jpg"), "relabel", "purple")])
    with pytest.raises(TflError, match="names label\\(s\\) 'purple', which the data has no class for"):
        load_data(str(folder), 0.25, 0, corrections=review)
    with pytest.raises(TflError, match="a tfds dataset has none"):
        load_data("tfds:mnist", 0.25, 0, corrections=review)


def test_tfl_check_counts_the_corrections_on_screen(folder, tmp_path):
    review = tmp_path / "review.csv"
    write_decisions(review, [Decision(str(folder / "red" / "red_0.jpg"), "relabel", "blue")])
    output = cli("check", str(folder), "--no-probe", "--corrections", review).output
    assert "1 photo(s) relabelled, 0 left out, 0 newly labelled added to training" in output
