"""Benchmark: the unknown category on photos of none of the classes, against the softmax's own confidence.

Open-set protocol on the shared sets: tfl's defaults train on a set with one class held out (the near-unknown: a
look-alike), then score its validation photos (in-class), the held-out class's photos, and photos of other shared
sets (far-unknown; up to 400 of each, at random). For each group: the share the unknown category takes at the
default threshold (95% of validation photos kept), and the AUROC of its statistic; beside them, the maximum-softmax
baseline of the same model at the threshold that keeps as many validation photos. Then the float32 and int8
.tflite files on the same photos (their unknown decisions against the Keras model's), and the unknown fit's share
of the run's time.

    python benchmarks/unknown.py [--sets flowers:all dogs10b:n02091134-whippet] [--out results/unknown.json]

`SET:all` holds out each class of the set in turn (a run each); the summary gives, per set, the mean over its held-out
classes beside the max-softmax baseline's, and the lowest share of far photos taken.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import RESULTS, WEIGHTS, machine, source, write_results  # sets up TF logging

import numpy as np

import tfl
from tfl.pipeline import load_image_for_predict
from tfl.unknown import auroc, class_probabilities, flagged, unknown_statistic

FAR = {"flowers": ["weather4", "potato_leaf3", "cats5"], "dogs10b": ["cats5", "flowers", "weather4"]}
PER_GROUP = 400
SUFFIXES = (".jpg", ".jpeg", ".png")


def photos(folder: Path, limit: int | None = None) -> list[str]:
    found = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    if limit and len(found) > limit:
        found = [found[i] for i in np.random.default_rng(0).permutation(len(found))[:limit]]
    return found


def scores_of(model, paths: list[str]) -> np.ndarray:
    rows = []
    for start in range(0, len(paths), 32):
        rows.append(model.scores(np.stack([load_image_for_predict(p, model.image_size) for p in paths[start:start + 32]])))
    return np.concatenate(rows)


def baseline(val: np.ndarray, other: np.ndarray, keep: float) -> dict:
    """Max-softmax: a photo is unknown when its top class probability is below the validation quantile."""
    confidence_val, confidence_other = -val.max(axis=1), -other.max(axis=1)
    threshold = np.quantile(confidence_val, keep)
    return {"flagged": round(float((confidence_other > threshold).mean()), 4),
            "auroc": round(auroc(confidence_val, confidence_other), 4)}


def other_scores(model, groups: dict, val_labels: np.ndarray, train) -> dict:
    """The scores tfl's was chosen among, on the same model's pooled features (AUROC / share flagged at 95% of the
    validation photos kept, per group): the softmax's energy, deep nearest neighbours (Sun et al. 2022: cosine, the
    10th nearest of up to 2,000 training photos), the full shared-covariance Mahalanobis distance (shrunk 10% to its
    mean variance), and tfl's distance without the softmax."""
    from tfl.model import feature_extractor, get_head
    from tfl.unknown import balanced_sample, fit_detector, normalised

    extractor, head = feature_extractor(model.model), get_head(model.model)
    features = lambda paths: np.concatenate([np.asarray(extractor.predict_on_batch(np.stack(  # noqa: E731
        [load_image_for_predict(p, model.image_size) for p in paths[i:i + 32]]).astype("float32")))
        for i in range(0, len(paths), 32)])
    chosen = balanced_sample(np.asarray(train.labels), 2000, len(model.class_names), 0)
    train_x, train_y = features([train.paths[i] for i in chosen]), np.asarray(train.labels)[chosen]
    feats = {group: features(paths) for group, paths in groups.items()}
    kernel, bias = head.get_layer("probabilities").get_weights()
    logits = lambda x: x @ kernel + bias  # noqa: E731
    softmax = lambda x: np.exp(logits(x) - logits(x).max(1, keepdims=True)) / np.exp(  # noqa: E731
        logits(x) - logits(x).max(1, keepdims=True)).sum(1, keepdims=True)
    z_train = normalised(train_x)
    centres = np.stack([z_train[train_y == c].mean(0) for c in range(len(model.class_names))])
    residual = z_train - centres[train_y]
    covariance = residual.T @ residual / len(z_train)
    covariance = 0.9 * covariance + 0.1 * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    precision = np.linalg.inv(covariance)
    val_x = feats["validation (in-class)"]
    detector = fit_detector(train_x, train_y, val_x, softmax(val_x), 0.95, model.class_names)

    def mahalanobis(x):
        diff = normalised(x)[:, None] - centres[None]
        return np.einsum("ncd,de,nce->nc", diff, precision, diff).min(1)

    scores = {"max-softmax": lambda x: -softmax(x).max(1),
              "energy": lambda x: -np.log(np.exp(logits(x)).sum(1)),
              "nearest neighbours (k=10)": lambda x: -np.sort(normalised(x) @ z_train.T, axis=1)[:, -10],
              "Mahalanobis, full covariance": mahalanobis,
              "the last features' distance alone": detector.distances,
              "the last features' (distance and softmax)": lambda x: detector.distances(x) - np.log(softmax(x).max(1))}
    table = {}
    for name, score in scores.items():
        inside = score(val_x)
        threshold = np.quantile(inside, 0.95)
        table[name] = {group: f"{auroc(inside, score(x)):.3f} / {np.mean(score(x) > threshold):.2f}"
                       for group, x in feats.items() if group != "validation (in-class)"}
    return table


def held_out(name: str, held: str, work: Path, compare: bool = False) -> dict:
    root = source(name)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    label_file = work / f"{name}_without_{held}.csv"
    label_file.write_text("path,label\n" + "".join(f"{p},{c}\n" for c in classes if c != held
                                                    for p in photos(root / c)))
    start = time.time()
    run = tfl.finetune(label_file, alpha=0.35, weights=WEIGHTS, output=work / "runs", name=f"{name}-{held}",
                       verbose=0, echo=lambda s: None)
    wall = time.time() - start
    model = tfl.load(run.path)
    groups = {"validation (in-class)": run.splits["val"].paths, f"held out: {held}": photos(root / held, PER_GROUP)}
    for other in FAR[name]:
        where = source(other)
        groups[f"far: {other}"] = photos(where if where.is_dir() else where.parent, PER_GROUP)
    scores = {group: scores_of(model, paths) for group, paths in groups.items()}
    val = scores["validation (in-class)"]
    keep = run.metrics["unknown"]["keep"]
    labels = np.asarray(run.splits["val"].labels)
    rows = {}
    for group, group_scores in scores.items():
        row = {"photos": len(group_scores), "flagged": round(float(flagged(group_scores).mean()), 4)}
        if group_scores is not val:
            row["auroc"] = round(auroc(unknown_statistic(val), unknown_statistic(group_scores)), 4)
            row["max_softmax"] = baseline(class_probabilities(val), class_probabilities(group_scores), keep)
        rows[group] = row
    if compare:
        rows["other scores"] = other_scores(model, groups, labels, run.splits["train"])
    kept = ~flagged(val)
    correct = class_probabilities(val).argmax(axis=1) == labels
    run.export("tflite", "none,int8", echo=lambda s: None)
    report = json.loads(run.export_report_file.read_text())
    artifacts = {}
    for file in ("model_float32.tflite", "model_int8.tflite"):
        lite = tfl.load(run.path / file)
        agreement = {group: round(float((flagged(scores_of(lite, paths)) == flagged(scores[group])).mean()), 4)
                     for group, paths in groups.items()}
        artifacts[file] = {"unknown_agreement": agreement,
                           "mediapipe_top1_agreement": report[file].get("mediapipe_top1_agreement"),
                           "mediapipe_unknown_agreement": report[file].get("mediapipe_unknown_agreement")}
    return {"set": name, "held_out": held, "classes": len(classes) - 1, "train": len(run.splits["train"]),
            "val_accuracy": round(float(correct.mean()), 4), "val_accuracy_of_kept": round(float(correct[kept].mean()), 4),
            "wall_seconds": round(wall, 1), "unknown_seconds": run.metrics["unknown"]["seconds"],
            "groups": rows, "artifacts": artifacts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["flowers:all", "dogs10b:n02091134-whippet"])
    parser.add_argument("--out", default=str(RESULTS / "unknown.json"))
    parser.add_argument("--compare", action="store_true", help="also the scores tfl's was chosen among")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as work:
        chosen = [(name, held) for name, pick in (item.split(":") for item in args.sets)
                  for held in (sorted(p.name for p in source(name).iterdir() if p.is_dir()) if pick == "all" else [pick])]
        for name, held in chosen:
            results.append(held_out(name, held, Path(work), args.compare))
            write_results(args.out, {"machine": machine(), "rows": results})  # a long run keeps its finished rows
            row = results[-1]
            print(f"\n{name} without {held}: {row['classes']} classes, val accuracy {row['val_accuracy']:.3f} "
                  f"({row['val_accuracy_of_kept']:.3f} of the photos kept); the unknown fit took "
                  f"{row['unknown_seconds']}s of the run's {row['wall_seconds']}s")
            print(f"{'photos':<28} {'n':>5} | {'tfl unknown':>11} {'AUROC':>6} | {'max-softmax':>11} {'AUROC':>6}")
            for group, cells in row["groups"].items():
                if group == "other scores":
                    continue
                base = cells.get("max_softmax", {})
                print(f"{group:<28} {cells['photos']:>5} | {cells['flagged']:>11.1%} {cells.get('auroc', float('nan')):>6.3f} | "
                      f"{base.get('flagged', float('nan')):>11.1%} {base.get('auroc', float('nan')):>6.3f}")
            for score, cells in row["groups"].get("other scores", {}).items():
                print(f"  {score:<30} " + "  ".join(f"{group}: {cell}" for group, cell in cells.items()))
            for file, measured in row["artifacts"].items():
                print(f"  {file}: unknown decisions as Keras's on "
                      + ", ".join(f"{share:.1%}" for share in measured["unknown_agreement"].values())
                      + f"; MediaPipe on the verification photos: top-1 (of N + 1) {measured['mediapipe_top1_agreement']}, "
                      f"unknown decisions {measured['mediapipe_unknown_agreement']}")
    summary = {}
    for name in dict.fromkeys(row["set"] for row in results):
        rows = [row for row in results if row["set"] == name]
        held = [next(cells for group, cells in row["groups"].items() if group.startswith("held out")) for row in rows]
        far = [cells["flagged"] for row in rows for group, cells in row["groups"].items() if group.startswith("far")]
        summary[name] = {"held_out_classes": len(rows),
                         "held_out_flagged": round(float(np.mean([c["flagged"] for c in held])), 4),
                         "held_out_auroc": round(float(np.mean([c["auroc"] for c in held])), 4),
                         "max_softmax_flagged": round(float(np.mean([c["max_softmax"]["flagged"] for c in held])), 4),
                         "max_softmax_auroc": round(float(np.mean([c["max_softmax"]["auroc"] for c in held])), 4),
                         "far_flagged_lowest": min(far) if far else None,
                         "val_accuracy": round(float(np.mean([row["val_accuracy"] for row in rows])), 4)}
        cells = summary[name]
        print(f"\n{name}, {len(rows)} class(es) held out in turn: held out taken {cells['held_out_flagged']:.1%} "
              f"(AUROC {cells['held_out_auroc']:.3f}) against max-softmax {cells['max_softmax_flagged']:.1%} "
              f"({cells['max_softmax_auroc']:.3f}); far photos taken at least {cells['far_flagged_lowest']:.1%}")
    write_results(args.out, {"machine": machine(), "rows": results, "summary": summary})


if __name__ == "__main__":
    main()
