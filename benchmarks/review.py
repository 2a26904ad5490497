"""Benchmark: the review loop (`tfl review`, `--corrections`) on a shared set, against answers known in advance.

1. Planted faults: a fifth of the set is held out as a clean test folder; the rest is linked into a temporary folder
   (no photo is copied into the repo) with labels flipped and photos copied under a second class (benchmarks/
   checks.py's `plant`). tfl trains on it; a simulated user goes through the whole review queue, deciding each photo
   from its true class (a flipped photo relabelled, the wrong one of two copies excluded, the others kept) through
   the app's own requests (the keys post the same ones: tests/test_review.py drives them in Chromium); tfl trains
   again with `--corrections`. Reported: the faults left in the data and test accuracy before and after.
2. Labelling order: from a fifth of the pool labelled, the next tenth is labelled in `tfl review --unlabelled`'s
   order or at random (labels from the known answers, added with `--corrections` `label` rows), retrained, and
   scored on the same test folder; several seeds.

    python benchmarks/review.py [--dataset flowers] [--seeds 3] [--parts faults,order] [--rounds 1] [--flip 0.04]
                                [--out results/review.json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import RESULTS, WEIGHTS, machine, source, write_results  # sets up TF logging

import numpy as np

import tfl
from tfl.corrections import Decision, write_decisions
from tfl.review import Review
from tfl.runs import RunFolder

from checks import plant

SUFFIXES = (".jpg", ".jpeg", ".png")


def truth_of(path: str) -> str:
    """The true class of a linked photo: the class folder of the file it links to."""
    return Path(os.path.realpath(path)).parent.name


def link_split(root: Path, work: Path, test_share: float, seed: int) -> tuple[Path, Path]:
    """The set split once into a pool and a clean test folder, both of links."""
    rng = np.random.default_rng(seed)
    pool, test = work / "pool", work / "test"
    for c in sorted(p.name for p in root.iterdir() if p.is_dir()):
        photos = sorted(p for p in (root / c).iterdir() if p.suffix.lower() in SUFFIXES)
        chosen = set(rng.permutation(len(photos))[:int(round(test_share * len(photos)))].tolist())
        for i, photo in enumerate(photos):
            target = (test if i in chosen else pool) / c
            target.mkdir(parents=True, exist_ok=True)
            (target / photo.name).symlink_to(photo)
    return pool, test


def train(data: str | Path, work: Path, name: str, seed: int, **settings) -> tfl.Run:
    return tfl.finetune(data, alpha=0.35, weights=WEIGHTS, output=work / "runs", name=name, seed=seed, verbose=0,
                        echo=lambda s: None, **settings)


def accuracy(run: tfl.Run, test: Path) -> float:
    return round(float(run.evaluate(test)["accuracy"]), 4)


def faults_in(run: tfl.Run) -> dict:
    """Photos of the run's data whose label is not their true class, and groups of copies under two labels."""
    splits = run.splits
    wrong = sum(truth_of(path) != run.class_names[label] for split in ("train", "val")
                for path, label in zip(splits[split].paths, splits[split].labels))
    return {"wrong_labels": int(wrong), "copies_under_two_labels": len(run.data_report["checks"]["conflicting_labels"])}


def simulated_review(run: tfl.Run) -> dict:
    """Every photo of the queue decided from its true class, through the app's requests."""
    from tfl.review_app import create_app

    review = Review(RunFolder(run.path))
    client = create_app(review).test_client()
    copies = {path for group in run.data_report["checks"]["conflicting_labels"] for path in group["paths"]}
    counts = {"keep": 0, "relabel": 0, "exclude": 0}
    for position, item in enumerate(review.queue):
        truth = truth_of(item.path)
        if item.label == truth:
            decision = {"decision": "keep"}
        elif item.path in copies:
            decision = {"decision": "exclude"}  # the wrong one of two copies
        else:
            decision = {"decision": "relabel", "label": truth}
        answer = client.post("/api/decide", json={"position": position, **decision})
        assert answer.status_code == 200, answer.get_json()
        counts[answer.get_json()["decided"]["decision"]] += 1
    return {"queue": len(review.queue), **counts, "file": str(review.file)}


def planted_faults(root: Path, work: Path, flip: float, copies: int, seed: int, rounds: int = 1) -> dict:
    """Train on the faulty set, review, train with the corrections; `rounds` times (a later round reviews the
    corrected run, whose review.csv carries the earlier decisions)."""
    pool, test = link_split(root, work / "faults", 0.2, seed)
    faulty = work / "faults" / "faulty"
    planted = plant(pool, faulty, flip, copies, near=0, seed=seed)
    start = time.time()
    run = train(faulty, work, "faulty", seed)
    result = {"planted": {"flipped": len(planted["flipped"]), "copies": len(planted["conflicts"])},
              "before": {"accuracy": accuracy(run, test), **faults_in(run)}, "rounds": []}
    for round_ in range(1, rounds + 1):
        decided = simulated_review(run)
        run = train(faulty, work, f"corrected_{round_}", seed, corrections=decided["file"])
        result["rounds"].append({"review": {k: v for k, v in decided.items() if k != "file"},
                                 "after": {"accuracy": accuracy(run, test), **faults_in(run),
                                           "corrections": run.data_report["corrections"]}})
    result["review"], result["after"] = result["rounds"][0]["review"], result["rounds"][0]["after"]
    result["seconds"] = round(time.time() - start)
    return result


def labelling_order(root: Path, work: Path, seed: int) -> dict:
    """Start from a fifth of the pool; add the next tenth in tfl's order, or at random."""
    folder = work / f"order_{seed}"
    pool, test = link_split(root, folder, 0.2, 0)  # the same test folder for every seed
    photos = sorted(str(p) for p in pool.rglob("*") if p.suffix.lower() in SUFFIXES)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(photos))
    start, tenth = order[:len(photos) // 5], len(photos) // 10
    labelled = folder / "labelled"
    for i in start:
        target = labelled / truth_of(photos[i])
        target.mkdir(parents=True, exist_ok=True)
        (target / Path(photos[i]).name).symlink_to(os.path.realpath(photos[i]))
    unlabelled = folder / "unlabelled"
    unlabelled.mkdir()
    rest = order[len(start):]
    for i in rest:  # numbered: flowers has a few file names in two classes
        (unlabelled / f"{i}_{Path(photos[i]).name}").symlink_to(os.path.realpath(photos[i]))
    base = train(labelled, work, f"base_{seed}", seed)
    queue = [item.path for item in Review(RunFolder(base.path), unlabelled).queue if item.kind == "unlabelled"]
    chosen = {"tfl": queue[:tenth], "random": [str(unlabelled / f"{i}_{Path(photos[i]).name}") for i in rest[:tenth]]}
    row = {"seed": seed, "start": len(start), "added": tenth, "base": accuracy(base, test)}
    for how, paths in chosen.items():
        review = folder / f"{how}.csv"
        write_decisions(review, [Decision(os.path.abspath(p), "label", truth_of(p)) for p in paths])
        run = train(labelled, work, f"{how}_{seed}", seed, corrections=str(review))
        row[how] = accuracy(run, test)
        row[f"{how}_classes_added"] = {c: sum(truth_of(p) == c for p in paths) for c in base.class_names}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="flowers")
    parser.add_argument("--flip", type=float, default=0.04)
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="review and retrain this many times")
    parser.add_argument("--parts", default="faults,order", help="faults, order, or both")
    parser.add_argument("--out", default=str(RESULTS / "review.json"))
    args = parser.parse_args()
    parts = args.parts.split(",")
    root = source(args.dataset)
    results = {"dataset": args.dataset}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        if "faults" in parts:
            results["planted_faults"] = faults = planted_faults(root, work, args.flip, args.copies, 0, args.rounds)
            print(f"planted: {faults['planted']}; before: {faults['before']}", flush=True)
            for number, row in enumerate(faults["rounds"], start=1):
                print(f"round {number}: review {row['review']}; after {row['after']}", flush=True)
        if "order" not in parts:
            write_results(args.out, {"machine": machine(), **results})
            return
        results["labelling_order"] = rows = []
        for seed in range(args.seeds):
            rows.append(labelling_order(root, work, seed))
            print(f"seed {seed}: from {rows[-1]['start']} photos {rows[-1]['base']:.3f}; +{rows[-1]['added']} in "
                  f"tfl's order {rows[-1]['tfl']:.3f}, at random {rows[-1]['random']:.3f}", flush=True)
        gains = np.array([row["tfl"] - row["random"] for row in rows])
        results["tfl_minus_random"] = {"mean": round(float(gains.mean()), 4), "per_seed": gains.round(4).tolist()}
        print(f"tfl's order minus random: {gains.mean():+.4f} (per seed {gains.round(4).tolist()})")
    write_results(args.out, {"machine": machine(), **results})


if __name__ == "__main__":
    main()
