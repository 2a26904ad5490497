"""Run folders: the latest finished run is found, partial runs are ignored, and files are written atomically."""

import os

import pytest

from tfl.errors import TflError
from tfl.fileio import atomic_path, atomic_write_text
from tfl.runs import check_run_name, claimed_run_name, latest_run, prepare_run_dir, resolve_run


def fake_run(root, name, mtime):
    run = root / name
    run.mkdir(parents=True)
    (run / "labels.txt").write_text("a\nb\n")
    (run / "model.keras").write_bytes(b"x")
    os.utime(run / "model.keras", (mtime, mtime))
    return run


def test_latest_run_is_the_newest_finished_one(tmp_path):
    fake_run(tmp_path, "old", 1_000)
    newest = fake_run(tmp_path, "new", 3_000)
    fake_run(tmp_path, "newer.partial", 5_000)  # still training
    (tmp_path / "empty").mkdir()
    assert latest_run(tmp_path) == newest
    assert resolve_run(None, tmp_path) == newest


def test_resolve_run_rejects_folders_that_are_not_runs(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(TflError, match="is not a finished tfl run"):
        resolve_run(tmp_path / "x")


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "artifact"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "half").write_text("partial")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_whole_files(tmp_path):
    atomic_write_text(tmp_path / "f.txt", "one")
    atomic_write_text(tmp_path / "f.txt", "two")
    assert (tmp_path / "f.txt").read_text() == "two" and len(list(tmp_path.iterdir())) == 1


def test_prepare_run_dir_refuses_an_existing_run(tmp_path):
    fake_run(tmp_path, "r", 1)
    with pytest.raises(TflError, match="already exists.*--overwrite"):
        prepare_run_dir(tmp_path, "r")
    final, partial = prepare_run_dir(tmp_path, "r", overwrite=True)
    assert final == tmp_path / "r" and partial.name == "r.partial" and (final / "model.keras").exists()


def test_overwrite_replaces_only_a_run_and_names_stay_inside_the_output(tmp_path):
    """Issue 41.1: --overwrite deleted whatever folder had the run's name (the training photos, with --output . --name
    photos), --name . moved the whole output folder aside, and --name ../x wrote outside --output."""
    photos = tmp_path / "photos"
    (photos / "red").mkdir(parents=True)
    (photos / "red" / "a.jpg").write_bytes(b"jpeg")
    with pytest.raises(TflError, match="is not a tfl run.*only runs"):
        prepare_run_dir(tmp_path, "photos", overwrite=True)
    (tmp_path / "mine.partial").mkdir()
    (tmp_path / "mine.partial" / "notes.txt").write_text("mine")
    with pytest.raises(TflError, match="is not a tfl run"):
        prepare_run_dir(tmp_path, "mine", overwrite=True)
    assert (photos / "red" / "a.jpg").read_bytes() == b"jpeg" and (tmp_path / "mine.partial" / "notes.txt").is_file()
    for name in (".", "..", "../x", "a/b", "a\\b", "", ".hidden", "x.partial", "bell\x07"):
        with pytest.raises(TflError, match="plain folder name"):
            check_run_name(name)
    assert check_run_name("flowers-v2 (final)") == "flowers-v2 (final)"


def test_finetune_refuses_to_overwrite_the_photos_and_writes_nothing(tmp_path, monkeypatch):
    from tests.conftest import cli, tiny_flags, write_class_folders

    monkeypatch.chdir(tmp_path)
    write_class_folders(tmp_path / "photos", per_class=4)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = cli("finetune", "--data", "photos", *tiny_flags(), "--output", ".", "--name", "photos", "--overwrite")
    assert result.exit_code == 1 and "is not a tfl run" in result.output
    result = cli("finetune", "--data", "photos", *tiny_flags(), "--output", "runs", "--name", "../escaped")
    assert result.exit_code == 1 and "plain folder name" in result.output
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not p.name.endswith(".lock"))
    assert [p for p in after if p.parts[0] != "runs"] == before, "the photos are untouched, nothing escaped"


def test_runs_started_in_the_same_second_get_different_default_names(tmp_path, monkeypatch):
    """Issue 41.20: two runs started in one second took one default name, and the second stopped."""
    import tfl.runs

    monkeypatch.setattr(tfl.runs, "default_run_name", lambda arch: f"{arch}-20261206-120000")
    fake_run(tmp_path, "mobilenetv2-20261206-120000", 1)
    with claimed_run_name(tmp_path, None, "mobilenetv2") as first:
        with claimed_run_name(tmp_path, None, "mobilenetv2") as second:  # the first still holds its lock
            assert (first, second) == ("mobilenetv2-20261206-120000-2", "mobilenetv2-20261206-120000-3")
    with claimed_run_name(tmp_path, "mine", "mobilenetv2") as given:
        assert given == "mine"
        with pytest.raises(TflError, match="being trained by another"):
            with claimed_run_name(tmp_path, "mine", "mobilenetv2"):
                pass


def test_a_run_made_from_a_string_path_has_a_path_its_files_join_to(tmp_path):
    import tfl

    run = tfl.Run(str(tmp_path))  # the class itself, as users type it; tfl.open_run also checks the folder
    assert run.path == tmp_path and run.export_report_file == tmp_path / "export_report.json"
    assert run == tfl.Run(tmp_path)
