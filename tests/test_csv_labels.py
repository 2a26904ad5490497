"""Label files: CSV/TSV layouts detected or stated, rows matched to files, problems counted, splits honoured."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import CLASS_COLOURS, SHARED, make_image
from tfl.cli import main
from tfl.csv_labels import detect_layout, read_label_file, read_table
from tfl.data import load_data
from tfl.errors import TflError

CATS5 = SHARED / "datasets" / "cats5"


def flat_photos(folder: Path, per_class: int = 6, suffix: str = ".jpg") -> list[tuple[str, str]]:
    """Photos in one flat folder, as Kaggle sets come: (file name, colour label)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for c, (name, colour) in enumerate(CLASS_COLOURS.items()):
        for i in range(per_class):
            file = f"{name[0]}{i}{suffix}"
            make_image(colour, 40, seed=1000 * c + i).save(folder / file)
            rows.append((file, name))
    return rows


def write(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_bytes(newline.join(lines).encode() + newline.encode())
    return path


@pytest.mark.parametrize("header, row, expected", [
    (["id", "breed"], ["a.jpg", "Maine Coon"], "one label per row in column 'breed'"),
    (["Filenames", "labels"], ["a.jpg", "desert,sea", "desert"], "several per row separated by ','"),
    (["file", "tags"], ["a.jpg", "desert|sea", "sea"], "separated by '|'"),
    (["Filenames", "desert", "sea", "trees"], ["a.jpg", "1", "0", "1"], "one 0/1 column per label (3: desert, sea, trees)"),
    (["label", "image", "split"], ["cat", "x/a.png", "val"], "files in column 'image'; one label per row in column "
                                                               "'label'; splits from column 'split'"),
])
def test_layouts_are_detected(header, row, expected):
    """A third value in a row is another photo's label: a separator is told by parts that combine."""
    rows = [row[:len(header)], row[:len(header)]] + ([[row[0], row[2]]] if len(row) > len(header) else [])
    assert expected in detect_layout(header, rows).describe()


def test_what_cannot_be_detected_asks_for_the_flag():
    with pytest.raises(TflError, match="--label-column"):
        detect_layout(["file", "breed", "colour"], [["a.jpg", "x", "y"]], source="t.csv")
    with pytest.raises(TflError, match="--path-column"):
        detect_layout(["a", "b"], [["x", "y"]], source="t.csv")
    with pytest.raises(TflError, match="'nope' is not a column of 't.csv'; its columns are: file, breed"):
        detect_layout(["file", "breed"], [["a.jpg", "x"]], label_column="nope", source="t.csv")
    layout = detect_layout(["file", "breed", "colour"], [["a.jpg", "x", "y"]], label_column="colour")
    assert layout.label_columns == ["colour"]
    assert detect_layout(["f", "l"], [["a.jpg", "x y"]], separator=" ").separator == " "


def test_tsv_crlf_and_a_byte_order_mark_are_read(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_bytes("\ufefffile\tlabel\r\na.jpg\tcat\r\n\r\nb.jpg\tdog\r\n".encode())
    assert read_table(path) == (["file", "label"], [["a.jpg", "cat"], ["b.jpg", "dog"]])


def test_rows_are_matched_to_files_and_problems_counted_with_examples(tmp_path):
    rows = flat_photos(tmp_path / "train")
    (tmp_path / "train" / "r0.jpg").rename(tmp_path / "train" / "r0.png")  # named .jpg in the CSV
    make_image((0, 0, 0)).save(tmp_path / "train" / "twin.png")
    make_image((0, 0, 0)).save(tmp_path / "train" / "twin.jpeg")  # twin.jpg: two candidates, so not matched
    lines = ["id,colour"] + [f"{f},{label}" for f, label in rows]
    lines += [f"missing{i}.jpg,red" for i in range(12)] + ["twin.jpg,red", "g1.jpg,green", "b1.jpg,red", "g2.jpg,"]
    files = read_label_file(write(tmp_path / "labels.csv", lines, "\r\n"))
    report = files.report
    assert report["images_folder"] == str(tmp_path / "train") and "in 'train/'" in report["note"]
    problems = report["problems"]
    assert problems["file not found"]["rows"] == 13 and len(problems["file not found"]["examples"]) == 5
    assert problems["found under another extension (kept)"]["rows"] == 1
    assert problems["listed twice (the first kept)"]["rows"] == 1
    assert problems["listed twice with other labels (both skipped)"]["rows"] == 1
    assert problems["no label"]["rows"] == 1
    assert str(tmp_path / "train" / "r0.png") in files.paths
    assert str(tmp_path / "train" / "b1.jpg") not in files.paths  # blue and red: skipped
    assert len(files.paths) == len(rows) - 1 and report["matched"] == len(files.paths)


def test_a_split_column_and_train_val_files_are_honoured(tmp_path):
    rows = flat_photos(tmp_path / "photos")
    lines = ["file,label,split"] + [f"photos/{f},{label},{'val' if i % 3 == 0 else 'train'}"
                                    for i, (f, label) in enumerate(rows)]
    data = load_data(str(write(tmp_path / "all.csv", lines)), 0.2, 0)
    assert (len(data.train), len(data.val), data.test) == (12, 6, None)
    assert data.class_names == sorted(CLASS_COLOURS)

    folder = tmp_path / "kaggle"
    rows = flat_photos(folder / "images")
    write(folder / "train.csv", ["image,label"] + [f"images/{f},{l}" for f, l in rows[1::2]])
    write(folder / "val.csv", ["image,label"] + [f"images/{f},{l}" for f, l in rows[::2]])
    write(folder / "test.csv", ["image,label"] + [f"images/{f},{l}" for f, l in rows[:3]])
    data = load_data(str(folder), 0.2, 0)
    assert (len(data.train), len(data.val), len(data.test)) == (9, 9, 3)
    assert "train: train.csv" in data.report["layout"]


@pytest.mark.integration
def test_finetune_reads_a_label_file_and_resumes_from_its_splits(tmp_path):
    rows = flat_photos(tmp_path / "data" / "pics", per_class=8)
    csv_path = write(tmp_path / "data" / "train.csv", ["name;kind"] + [f"{f};{l}" for f, l in rows])
    result = CliRunner().invoke(main, ["finetune", "--data", str(csv_path), "--arch", "mobilenetv2", "--weights",
                                       "none", "--image-size", "32", "--alpha", "0.35", "--epochs", "1,0",
                                       "--batch-size", "8", "--output", str(tmp_path / "runs"), "--name", "csv"])
    assert result.exit_code == 0, result.output
    assert "Label file" in result.output and "in 'pics/'" in result.output
    run = tmp_path / "runs" / "csv"
    report = json.loads((run / "data_report.json").read_text())
    assert report["label_files"]["all"]["matched"] == 24 and report["classes"] == sorted(CLASS_COLOURS)
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["train"]["paths"]) + len(splits["val"]["paths"]) == 24


def test_several_labels_on_one_photo_make_a_multilabel_set(tmp_path):
    rows = flat_photos(tmp_path)
    lines = ["file,labels"] + [f'{f},"{l},bright"' if i < 2 else f"{f},{l}" for i, (f, l) in enumerate(rows)]
    data = load_data(str(write(tmp_path / "labels.csv", lines)), 0.2, 0)
    assert data.multilabel and data.class_names == ["blue", "bright", "green", "red"]
    assert (data.train.labels + data.val.labels).count([1, 3]) == 2  # r0 and r1: red and bright
    assert data.report["images"]["train"] + data.report["images"]["val"] == 18


def test_no_row_matching_a_file_names_the_images_flag(tmp_path):
    write(tmp_path / "labels.csv", ["file,label", "a.jpg,x", "b.jpg,y"])
    with pytest.raises(TflError, match="--images DIR"):
        load_data(str(tmp_path / "labels.csv"), 0.2, 0)


def test_cats5_as_published():
    """The shared cats5 set: 11,000 CSV rows, 1,000 photos in train/, five under another extension."""
    if not CATS5.is_dir():
        pytest.skip(f"the shared cats5 set is not at {CATS5}")
    data = load_data(str(CATS5 / "cat_labels.csv"), 0.2, 42)
    read = data.report["label_files"]["all"]
    assert read["rows"] == 11_000 and read["matched"] == 1_000 and read["images_folder"].endswith("train")
    assert read["problems"]["file not found"]["rows"] == 10_000
    assert read["problems"]["found under another extension (kept)"]["rows"] == 5
    assert len(data.class_names) == 5 and len(data.train) + len(data.val) == 1_000 - len(data.report["skipped"])


def test_unreadable_photos_and_a_label_with_one_photo(tmp_path):
    rows = flat_photos(tmp_path / "pics")
    (tmp_path / "pics" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    make_image((250, 250, 0)).save(tmp_path / "pics" / "lonely.jpg")
    lines = ["file,label"] + [f"pics/{f},{label}" for f, label in rows] + ["pics/broken.jpg,red",
                                                                            "pics/lonely.jpg,yellow"]
    with pytest.warns(UserWarning, match="yellow have no validation image"):
        data = load_data(str(write(tmp_path / "labels.csv", lines)), 0.2, 0)
    assert [item["path"] for item in data.report["skipped"]] == [str(tmp_path / "pics" / "broken.jpg")]
    assert "yellow" in data.class_names and data.report["counts"]["val"]["yellow"] == 0
    assert data.report["counts"]["train"]["yellow"] == 1


def test_bad_label_files_are_one_paragraph_and_exit_1(tmp_path):
    rows = flat_photos(tmp_path / "pics")
    csv_path = write(tmp_path / "labels.csv", ["file,label"] + [f"pics/{f},{label}" for f, label in rows])
    for extra, expected in ((["--label-column", "breed"], "--label-column 'breed' is not a column"),
                            (["--images", str(tmp_path / "nowhere")], "is not a folder"),
                            (["--task", "single", "--label-separator", "e"], "several labels")):
        result = CliRunner().invoke(main, ["finetune", "--data", str(csv_path), "--weights", "none",
                                           "--output", str(tmp_path / "runs"), *extra])
        assert result.exit_code == 1 and expected in result.output, result.output
        assert "Traceback" not in result.output and not list((tmp_path / "runs").glob("*/model.keras"))
    empty = write(tmp_path / "empty.csv", ["file,label"])
    result = CliRunner().invoke(main, ["finetune", "--data", str(empty), "--weights", "none",
                                       "--output", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "has a header and no rows" in result.output


def test_a_blank_cell_in_a_split_column_is_an_error_not_a_random_split(tmp_path):
    """Issue 41.7: one blank cell dropped the whole split column, and a random split was used without a word."""
    rows = flat_photos(tmp_path / "photos")
    lines = ["file,label,split"] + [f"photos/{f},{label},{'' if i == 4 else 'val' if i % 3 == 0 else 'train'}"
                                    for i, (f, label) in enumerate(rows)]
    with pytest.raises(TflError, match=r"Column 'split' .* on 17 row\(s\) but not on 1: row 5 after the header"):
        load_data(str(write(tmp_path / "gap.csv", lines)), 0.2, 0)
    holidays = [[f"photos/{f}", label, f"holiday {i % 2}"] for i, (f, label) in enumerate(rows)]
    assert "splits from" not in detect_layout(["file", "label", "set"], holidays).describe(), "a set, not a split"


def test_label_files_as_excel_saves_them_are_decoded(tmp_path):
    """Issue 41.6: Excel's CSV (Windows-1252: 'daisy’s' read as 'daisy\\x92s', '…' as a line break that split the
    row) and its "Unicode Text" (UTF-16: columns read as 'ÿþfile') were not decoded."""
    (tmp_path / "cp1252.csv").write_bytes("file,label\r\na.jpg,daisy’s…\r\nb.jpg,rose\r\n".encode("cp1252"))
    assert read_table(tmp_path / "cp1252.csv") == (["file", "label"], [["a.jpg", "daisy’s…"], ["b.jpg", "rose"]])
    (tmp_path / "unicode.txt").write_bytes("file\tlabel\r\na.jpg\tdaisy\r\nb.jpg\trosé\r\n".encode("utf-16"))
    assert read_table(tmp_path / "unicode.txt") == (["file", "label"], [["a.jpg", "daisy"], ["b.jpg", "rosé"]])
    (tmp_path / "quoted.csv").write_text('file,label\na.jpg,"rose\nred"\nb.jpg,tulip\n')
    assert read_table(tmp_path / "quoted.csv")[1] == [["a.jpg", "rose\nred"], ["b.jpg", "tulip"]]


def test_windows_paths_in_a_label_file_find_their_photos(tmp_path):
    """Issue 41.19: 'img\\x.jpg' (as Windows tools write paths) matched nothing, without a hint."""
    rows = flat_photos(tmp_path / "photos")
    lines = ["file,label"] + [f"photos\\{f},{label}" for f, label in rows]
    data = load_data(str(write(tmp_path / "windows.csv", lines)), 0.2, 0)
    assert len(data.train) + len(data.val) == len(rows)


def test_a_zero_one_label_column_beside_a_zero_one_flag_is_one_label():
    """Issue 41.8: `file,label,hard` with 0/1 values was read as two multi-label columns (rows 0 in both dropped)."""
    rows = [["a.jpg", "0", "1"], ["b.jpg", "1", "0"], ["c.jpg", "0", "0"]]
    assert "one label per row in column 'label'" in detect_layout(["file", "label", "hard"], rows).describe()
    assert "one 0/1 column per label" in detect_layout(["file", "cat", "dog"], rows).describe()


@pytest.mark.parametrize("values, separator, kind", [
    # a beekeeping label file: six health states, some with commas and spaces inside
    (["healthy", "ant problems", "few varrao, hive beetles", "Varroa, Small Hive Beetles", "hive being robbed",
      "missing queen"], None, "one label, not split on ','"),
    # Kaggle's best-known multi-label set writes its tags separated by spaces
    (["agriculture clear primary", "clear primary", "haze primary water", "clear primary water", "cloudy"], " ",
     "tags"),
    # 3 colours and 4 garments in 7 combinations
    (["black jeans", "black shirt", "blue shirt", "blue jeans", "red dress", "red shirt", "blue dress"], " ", "tags"),
    # cats5's breeds: a word shared, a new companion each time
    (["Abyssinian", "American Bobtail", "American Curl", "American Shorthair", "American Wirehair"], None,
     "one label, not split on ' '"),
    (["desert,mountains", "desert", "sea,sunset", "sea", "mountains,trees"], ",", "labels"),
])
def test_one_rule_tells_a_separator_from_the_words_of_one_label(values, separator, kind):
    """Issue 41.9: commas inside one label made 8 labels of 6 health states; space-separated tags were read as one
    label each. Parts of a real separator combine; parts that only come together are one label."""
    layout = detect_layout(["file", "label"], [[f"{i}.jpg", value] for i, value in enumerate(values * 2)])
    assert layout.separator == separator
    said = layout.describe()
    assert ("--label-separator none" in said) if separator else ("--label-separator" in said and "splits them" in said)
    assert detect_layout(["file", "label"], [["a.jpg", values[1]], ["b.jpg", values[2]]],
                         separator="none").separator is None
