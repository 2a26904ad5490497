"""Benchmark: `tfl check` on data with planted faults. A shared set is linked into a temporary folder (no photo is
copied into the repo), then faults are planted: photos copied into another class (conflicting labels), photos
re-encoded at another size into their own class (near duplicates), and a share of labels flipped (photos moved into
another class). Reported: how many planted faults each list finds, and how many of its top entries are planted.

    python benchmarks/checks.py [--dataset weather4] [--flip 0.03] [--out benchmarks/results/checks.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, WEIGHTS, machine, write_results  # sets up TF logging

import numpy as np
from PIL import Image

import tfl

DATASETS = REPO.parent / "shared" / "datasets"


def plant(source: Path, target: Path, flip: float, copies: int, near: int, seed: int = 0) -> dict:
    """The linked set with its planted faults, and where they are."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    photos = [(c, p) for c in classes for p in sorted((source / c).iterdir()) if p.is_file()]
    for c in classes:
        (target / c).mkdir(parents=True)
    order = rng.permutation(len(photos))
    flipped = set(order[:int(round(flip * len(photos)))].tolist())
    planted = {"flipped": [], "conflicts": [], "near": []}
    for index, (c, photo) in enumerate(photos):
        label = c
        if index in flipped:
            label = classes[(classes.index(c) + 1 + rng.integers(len(classes) - 1)) % len(classes)]
        link = target / label / photo.name
        if link.exists() or link.is_symlink():  # flowers files some names under two classes
            link = target / label / f"{c}_{photo.name}"
        link.symlink_to(photo)
        if index in flipped:
            planted["flipped"].append(str(link))
    rest = order[len(flipped):]
    for index in rest[:copies]:  # the same file under a second class
        c, photo = photos[index]
        other = classes[(classes.index(c) + 1) % len(classes)]
        (target / other / f"copy_{photo.name}").symlink_to(photo)
        planted["conflicts"].append({str(target / c / photo.name), str(target / other / f"copy_{photo.name}")})
    for index in rest[copies:copies + near]:  # re-encoded at 80% of its size, in its own class
        c, photo = photos[index]
        with Image.open(photo) as image:
            image = image.convert("RGB")
            image.resize((max(8, image.width * 4 // 5), max(8, image.height * 4 // 5))).save(
                target / c / f"near_{photo.stem}.jpg", quality=85)
        planted["near"].append({str(target / c / photo.name), str(target / c / f"near_{photo.stem}.jpg")})
    return planted


def measure(dataset: str, flip: float, copies: int, near: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / dataset
        planted = plant(DATASETS / dataset, data, flip, copies, near)
        start = time.time()
        report = tfl.check(data, alpha=0.35, weights=str(WEIGHTS), output=Path(tmp) / "runs", echo=print)
        wall = round(time.time() - start, 1)
    checks = report["checks"]
    conflict_groups = [set(g["paths"]) for g in checks["conflicting_labels"]]
    near_groups = [set(g["paths"]) for g in checks["near_duplicates"]]
    issues = [item["path"] for item in checks["label_issues"]]
    flipped = set(planted["flipped"])

    def found(planted_pairs, groups):
        return sum(any(pair <= group for group in groups) for pair in planted_pairs)

    def top(k):
        return sum(path in flipped for path in issues[:k])

    k = len(flipped)
    return {
        "dataset": dataset, "photos": report["checks"]["photos"], "wall_seconds": wall,
        "seconds": checks.get("seconds"),
        "conflicts": {"planted": len(planted["conflicts"]), "found": found(planted["conflicts"], conflict_groups),
                      "listed": len(conflict_groups),
                      "listed_with_a_flipped_photo": sum(bool(group & flipped) for group in conflict_groups)},
        "near_duplicates": {"planted": len(planted["near"]), "found": found(planted["near"], near_groups),
                            "listed": len(near_groups)},
        "flipped_labels": {"planted": k, "flagged_by_cleanlab": checks.get("label_issues_found"),
                           f"in_top_{k}": top(k), f"in_top_{2 * k}": top(2 * k),
                           "in_all_flagged_kept": sum(path in flipped for path in issues)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["weather4", "flowers"])
    parser.add_argument("--flip", type=float, default=0.03, help="share of labels flipped")
    parser.add_argument("--copies", type=int, default=20, help="photos copied into another class")
    parser.add_argument("--near", type=int, default=20, help="photos re-encoded into their own class")
    parser.add_argument("--out", default=str(RESULTS / "checks.json"))
    args = parser.parse_args()
    results = [measure(name, args.flip, args.copies, args.near) for name in args.datasets]
    print(f"\n{machine()}")
    for r in results:
        f = r["flipped_labels"]
        k = f["planted"]
        print(f"{r['dataset']}: {r['photos']} photos, {r['wall_seconds']} s; conflicts {r['conflicts']['found']}/"
              f"{r['conflicts']['planted']} found ({r['conflicts']['listed']} listed, "
              f"{r['conflicts']['listed_with_a_flipped_photo']} of them a flipped photo's copy); near duplicates "
              f"{r['near_duplicates']['found']}/{r['near_duplicates']['planted']} ({r['near_duplicates']['listed']} "
              f"listed); flipped labels: {f[f'in_top_{k}']}/{k} in the top {k}, {f[f'in_top_{2 * k}']} in the top "
              f"{2 * k}, cleanlab flagged {f['flagged_by_cleanlab']}")
    write_results(args.out, {"machine": machine(), "flip": args.flip, "results": results})


if __name__ == "__main__":
    main()
