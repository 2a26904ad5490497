"""The scan cache: unchanged files are not decoded again, changed and new ones are; a damaged cache is rebuilt."""

import os

import pytest

import tfl.scan as scan_module
from tests.conftest import make_image, write_class_folders
from tfl.data import load_image_folder
from tfl.scan import SCAN_CACHE_FOLDER, ScanCache, scan_cache_file


@pytest.fixture
def decoded(monkeypatch):
    """The paths scan_file decodes, in order."""
    calls = []
    real = scan_module.scan_file

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(scan_module, "scan_file", counting)
    return calls


def test_a_second_scan_decodes_only_new_or_changed_files(tmp_path, decoded):
    root = write_class_folders(tmp_path / "photos", per_class=6, classes={"a": (200, 0, 0), "b": (0, 0, 200)})
    caches = tmp_path / "runs" / SCAN_CACHE_FOLDER
    first = load_image_folder(root, val_split=0.25, seed=0, scan_cache_dir=caches)
    assert len(decoded) == 12 and scan_cache_file(caches, root).is_file()

    decoded.clear()
    again = load_image_folder(root, val_split=0.25, seed=0, scan_cache_dir=caches)
    assert decoded == []  # every file unchanged: a stat each, no decode
    assert (again.train.paths, again.val.paths, again.report) == (first.train.paths, first.val.paths, first.report)

    # One photo overwritten with garbage (new size and time), one touched (same bytes, new time), one added.
    broken, touched = sorted((root / "a").iterdir())[:2]
    broken.write_text("no longer a photo")
    stat = os.stat(touched)
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    make_image((0, 0, 200), seed=7).save(root / "b" / "new.jpg")
    decoded.clear()
    third = load_image_folder(root, val_split=0.25, seed=0, scan_cache_dir=caches)
    assert sorted(decoded) == sorted([str(broken), str(touched), str(root / "b" / "new.jpg")])
    assert [item["path"] for item in third.report["skipped"]] == [str(broken)]
    assert len(third.train) + len(third.val) == 12  # 12 - the broken one + the new one


def test_a_file_replaced_by_one_of_the_same_size_is_scanned_again(tmp_path, decoded):
    """Size alone is not the key: the modification time catches a same-size rewrite (a re-encoded photo)."""
    root = write_class_folders(tmp_path / "photos", per_class=3, classes={"a": (200, 0, 0), "b": (0, 0, 200)})
    cache = ScanCache.load(tmp_path / "scan.json")
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    cache.scan(paths)
    cache.save()
    target = paths[0]
    size = os.path.getsize(target)
    with open(target, "r+b") as handle:  # same length, damaged content, a later time
        handle.seek(size // 2)
        handle.write(b"\x00" * (size - size // 2))
    os.utime(target, ns=(os.stat(target).st_atime_ns, os.stat(target).st_mtime_ns + 10**9))
    decoded.clear()
    results = ScanCache.load(tmp_path / "scan.json").scan(paths)
    assert decoded == [target] and os.path.getsize(target) == size
    assert results[0].problem is None or "unreadable" in results[0].problem  # decoded again, whatever it says now


def test_a_damaged_or_old_cache_file_means_a_full_scan_not_an_error(tmp_path, decoded):
    root = write_class_folders(tmp_path / "photos", per_class=3, classes={"a": (200, 0, 0), "b": (0, 0, 200)})
    caches = tmp_path / "caches"
    load_image_folder(root, val_split=0.34, seed=0, scan_cache_dir=caches)
    cache_file = scan_cache_file(caches, root)
    for damage in ("{not json", '{"version": 0, "files": {}}', '["a list"]'):
        cache_file.write_text(damage)
        decoded.clear()
        data = load_image_folder(root, val_split=0.34, seed=0, scan_cache_dir=caches)
        assert len(decoded) == 6 and len(data.train) + len(data.val) == 6
        assert ScanCache.load(cache_file).entries  # rewritten whole


def test_worker_processes_scan_exactly_like_threads(tmp_path, monkeypatch):
    """Large folders are scanned by one `python -m tfl.scan` process per core; a small limit sends these few
    files there, bad ones included, and a worker that cannot start leaves the work to threads."""
    root = write_class_folders(tmp_path / "photos", per_class=5, classes={"a": (200, 0, 0), "b": (0, 0, 200)})
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "text.jpg").write_text("not a photo")
    make_image((0, 200, 0), seed=3).save(root / "b" / "scan.tiff", "TIFF")
    good = root / "b" / "b_0.jpg"
    (root / "b" / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    paths = sorted(str(p) for p in root.rglob("*.*"))
    expected = scan_module.scan_in_threads(paths)
    assert sum(1 for r in expected if r.problem) == 3 and any(r.needs_conversion for r in expected)

    monkeypatch.setattr(scan_module, "PROCESS_POOL_MIN_FILES", 1)
    monkeypatch.setattr(scan_module.os, "cpu_count", lambda: 3)
    started = []
    real_start = scan_module.start_scan_worker
    monkeypatch.setattr(scan_module, "start_scan_worker", lambda share: started.append(share) or real_start(share))
    assert scan_module.scan_files(paths) == expected
    assert len(started) == 3 and sorted(sum(started, [])) == paths

    monkeypatch.setattr(scan_module.sys, "executable", str(tmp_path / "no-python-here"))
    assert scan_module.scan_files(paths) == expected


def test_a_large_file_that_is_no_image_is_not_read_into_memory(tmp_path):
    """Issue 41.11: a 1 GiB video in a class folder took tfl check from 854 MB to 1,882 MB."""
    import tracemalloc

    from tfl.scan import scan_file

    video = tmp_path / "clip.mp4"
    with open(video, "wb") as handle:
        handle.write(b"\x00\x00\x00\x18ftypmp42")
        handle.truncate(256 * 2**20)  # 256 MiB, sparse
    tracemalloc.start()
    try:
        result = scan_file(str(video))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.problem == "not an image" and peak < 16 * 2**20, peak
