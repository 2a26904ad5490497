"""Run folders: the latest finished run is found, partial runs are ignored, and files are written atomically."""

import os

import pytest

from tfl.errors import TflError
from tfl.fileio import atomic_path, atomic_write_text
from tfl.runs import latest_run, prepare_run_dir, resolve_run


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
