"""The data checks and splits of every shared set are those recorded before the checks were rewritten to scale
(issue 40): the same duplicate groups, conflicts, leaks, unusable photos and the same photos in each split."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.conftest import SHARED
from tfl.data import CsvOptions, load_data

DATASETS = SHARED / "datasets"
SETS = {"flowers": "flowers", "weather4": "weather4", "potato_leaf3": "potato_leaf3",
        "cats5": "cats5/cat_labels.csv", "dogs10b": "dogs10b", "miml_scenes": "miml_scenes/labels.csv"}
RECORDED = Path(__file__).parent / "data" / "shared_checks.json"


def relative(path: str) -> str:
    return os.path.relpath(os.path.realpath(path), os.path.realpath(DATASETS))


def digest(rows) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(name: str) -> dict:
    """What the checks found and how the photos were split, with paths relative to the datasets folder."""
    data = load_data(str(DATASETS / SETS[name]), 0.2, 42, csv=CsvOptions())
    checks = data.report["checks"]
    groups = lambda key: sorted(sorted(relative(p) for p in g["paths"]) for g in checks[key])  # noqa: E731
    splits = {split: sorted([relative(p), str(label)] for p, label in zip(s.paths, s.labels))
              for split, s in (("train", data.train), ("val", data.val), ("test", data.test)) if s is not None}
    return {"exact_duplicates": groups("exact_duplicates"), "near_duplicates": groups("near_duplicates"),
            "conflicting_labels": groups("conflicting_labels"), "leaks_across_splits": groups("leaks_across_splits"),
            "unusable": sorted([relative(u["path"]), u["issues"]] for u in checks["unusable"]),
            "imbalance": checks["imbalance"], "photos": checks["photos"],
            "split_sizes": {split: len(rows) for split, rows in splits.items()},
            "splits": digest(splits), "kept_together": data.report.get("split_keeps_copies_together")}


@pytest.mark.parametrize("name", list(SETS))
def test_shared_set_checks_as_recorded(name):
    if not (DATASETS / SETS[name]).exists():
        pytest.skip(f"{DATASETS / SETS[name]} is absent (the shared datasets folder beside the repo)")
    recorded = json.loads(RECORDED.read_text())[name]
    assert fingerprint(name) == recorded
