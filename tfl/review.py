"""The review queue: the photos of a run worth a look (labels the probe doubts, copies under two labels, validation
mistakes) and unlabelled photos in the order the model would learn most from; and the decisions taken on them so
far (tfl/corrections.py's review.csv). The web app that shows it is tfl/review_app.py."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfl.checks import groups_from_rows
from tfl.corrections import REVIEW_FILE, Decision, read_decisions, write_decisions
from tfl.errors import TflError
from tfl.runs import RunFolder

CLUSTERS = 20  # unlabelled photos are spread over this many groups of their features (at most one per 5 photos)


@dataclass
class Item:
    """One photo of the queue, as the page shows it."""

    path: str  # absolute: the user's file, which decisions name
    label: str  # its label; '' for an unlabelled photo
    kind: str  # doubted | copy | mistake | unlabelled
    reason: str
    suggested: str | None = None  # the class the probe or the model says
    scores: dict = field(default_factory=dict)  # class -> the model's score, where known
    heatmap: str | None = None  # the Grad-CAM overlay of the run's gallery, where there is one
    shown: str | None = None  # the file the page shows, when not `path` (tfl's PNG of a file browsers cannot read)


def run_queue(run: RunFolder) -> list[Item]:
    """Labels the probe doubts (most doubtful first: all of them, from label_issues.csv), each copy that another has
    under another label, then every validation mistake (most confident first, from predictions.csv); a photo once,
    at its first place."""
    report = json.loads(run.data_report_file.read_text()) if run.data_report_file.is_file() else {}
    checks = report.get("checks") or {}
    originals = {row["to"]: row["path"] for row in report.get("converted") or []}
    predictions = read_csv(run.predictions_file)
    scores = {os.path.abspath(row["path"]): {name: float(row[name]) for name in run.class_names if row.get(name)}
              for row in predictions}
    issues = read_csv(run.label_issues_file) or checks.get("label_issues") or []
    items = []
    for issue in sorted(issues, key=lambda issue: float(issue.get("probability_of_label") or 0)):
        items.append(Item(issue["path"], issue["label"], "doubted",
                          f"a probe on the backbone's features doubts this label: it says {issue['probe_says']} "
                          f"(it gives the label {float(issue.get('probability_of_label') or 0):.0%})",
                          issue["probe_says"]))
    rows = read_csv(run.checks_file)  # every group; data_report.json keeps the first REPORTED of each check
    for group in groups_from_rows(rows, "conflicting_labels") if rows else checks.get("conflicting_labels") or []:
        for path, label in zip(group["paths"], group["labels"]):
            others = [f"{os.path.basename(p)} ({l})" for p, l in zip(group["paths"], group["labels"]) if p != path]
            items.append(Item(path, label, "copy", f"the same photo is also labelled otherwise: {', '.join(others)}"))
    analysis = json.loads(run.analysis_file.read_text()) if run.analysis_file.is_file() else {}
    heatmaps = {mistake["path"]: run.mistakes_dir / f"{index}.jpg"
                for index, mistake in enumerate(analysis.get("mistakes") or [])}
    mistakes = [row for row in predictions if row.get("correct") == "0"]
    for row in sorted(mistakes, key=lambda row: -float(row["confidence"])):
        heatmap = heatmaps.get(row["path"])
        items.append(Item(row["path"], row["label"], "mistake",
                          f"a validation photo the model calls {row['predicted']} ({float(row['confidence']):.0%})",
                          row["predicted"], heatmap=str(heatmap) if heatmap and heatmap.is_file() else None))
    seen, queue = set(), []
    for item in items:
        if item.path in originals:
            item.shown, item.path = item.path, originals[item.path]
        scored = scores.get(os.path.abspath(item.shown or item.path), {})
        item.path = os.path.abspath(item.path)
        if item.path not in seen:
            seen.add(item.path)
            item.scores = item.scores or scored
            queue.append(item)
    return queue


def read_csv(path: Path) -> list[dict]:
    """The rows of one of the run's CSV files (none when it is absent)."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as rows:
        return list(csv.DictReader(rows))


def learning_order(scores: np.ndarray, features: np.ndarray, seed: int = 0) -> list[int]:
    """Unlabelled photos, the ones the model would learn most from first: uncertain (a small margin between its top
    two scores) and spread over the feature space (cluster-margin, Citovsky et al. 2021: the photos are grouped by
    k-means on their features, and each round takes the most uncertain photo left of each group, rounds in order of
    margin), so that the first to label are not ten copies of one hard case."""
    if not len(scores):
        return []
    top = np.sort(scores, axis=1)
    margin = top[:, -1] - (top[:, -2] if scores.shape[1] > 1 else 0)
    groups = min(CLUSTERS, max(1, len(scores) // 5))
    if groups > 1:
        from sklearn.cluster import KMeans

        unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        cluster = KMeans(groups, n_init=3, random_state=seed).fit_predict(unit)
    else:
        cluster = np.zeros(len(scores), int)
    rank_in_cluster = np.zeros(len(scores), int)
    for c in np.unique(cluster):
        members = np.flatnonzero(cluster == c)
        rank_in_cluster[members[np.argsort(margin[members], kind="stable")]] = np.arange(len(members))
    return [int(i) for i in np.lexsort((margin, rank_in_cluster))]


def unlabelled_queue(predictor, folder: str | Path, batch_size: int = 32) -> list[Item]:
    """The photos below `folder` (those that decode), in learning order, with the model's scores (`predictor`:
    the run's Keras model)."""
    from tfl.model import feature_extractor, get_head
    from tfl.pipeline import readable_batches
    from tfl.data import photos_below

    files = photos_below(folder, "--unlabelled", kind="photos to label")
    extractor, head = feature_extractor(predictor.model), get_head(predictor.model)
    paths, features = [], []
    for names, pixels in readable_batches(files, predictor.image_size, batch_size):
        paths += names
        features.append(np.asarray(extractor.predict_on_batch(pixels.astype("float32"))))
    if not paths:
        raise TflError(f"--unlabelled '{folder}' holds no image tfl can read. Pass a folder of photos to label.")
    features = np.concatenate(features)
    scores = np.asarray(head.predict_on_batch(features))
    names = predictor.class_names
    return [Item(os.path.abspath(paths[i]), "", "unlabelled",
                 f"unlabelled: the model is unsure ({names[int(np.argmax(scores[i]))]} "
                 f"{float(np.max(scores[i])):.0%})", names[int(np.argmax(scores[i]))],
                 {name: round(float(s), 4) for name, s in zip(names, scores[i])})
            for i in learning_order(scores, features)]


def add_model_scores(predictor, items: list[Item], batch_size: int = 32) -> None:
    """The model's scores of the photos the run's files give none (its training photos), so that every photo
    shows the model's answer beside its label."""
    from tfl.pipeline import readable_batches

    wanted = {item.shown or item.path: item for item in items if not item.scores}
    for names, pixels in readable_batches(list(wanted), predictor.image_size, batch_size):
        for name, row in zip(names, predictor.predict_pixels(pixels.astype("float32"))):
            wanted[name].scores = {label: round(float(score), 4) for label, score in zip(predictor.class_names, row)}


class Review:
    """A run's queue and the decisions taken on it, each written to RUN/review.csv at once (the whole file,
    replaced atomically); decisions already there are resumed. A run trained with --corrections starts from
    those decisions, so that its review.csv holds every decision so far. `model_scores`: the run's model scores
    the photos its files give no scores (off: no model is loaded)."""

    def __init__(self, run: RunFolder, unlabelled: str | Path | None = None, model_scores: bool = True):
        if run.thresholds is not None:
            raise TflError(f"Run '{run.path}' gives several labels per photo, and tfl review relabels photos of one "
                           "label. Fix such labels in the label file itself (data_report.json lists the ones the "
                           "probe doubts).")
        self.run, self.file = run, run.path / REVIEW_FILE
        self.class_names = run.class_names
        queue = run_queue(run)
        listed = {item.path for item in queue}
        if model_scores or unlabelled:
            from tfl.predict import load_predictor

            predictor = load_predictor(run.path)
            add_model_scores(predictor, queue)
        if unlabelled:  # a photo of the data is reviewed as such, not as unlabelled
            queue += [item for item in unlabelled_queue(predictor, unlabelled) if item.path not in listed]
        self.queue = queue
        self.index = {item.path: i for i, item in enumerate(self.queue)}
        earlier_file = self.file if self.file.is_file() else (
            run.config.get("corrections") if run.config_file.is_file() else None)
        try:
            earlier = read_decisions(earlier_file) if earlier_file and Path(earlier_file).is_file() else []
        except TflError as error:
            raise TflError(f"{error} (It is this run's review file: move it aside to start the review afresh.)") \
                from None
        self.decisions = [d for d in earlier if d.path in self.index]  # resumed: not asked again
        self.others = [d for d in earlier if d.path not in self.index]  # of photos not in this queue: kept
        self.history: list[tuple[str, Decision | None]] = []  # (photo, its decision before), for undo

    @property
    def decided(self) -> dict[str, Decision]:
        return {d.path: d for d in self.decisions}

    def first_undecided(self) -> int:
        decided = self.decided
        return next((i for i, item in enumerate(self.queue) if item.path not in decided), len(self.queue))

    def decide(self, position: int, decision: str, label: str = "") -> Decision:
        """Record a decision on the photo at `position` (replacing an earlier one on it); ValueError when it is no
        decision this photo can take."""
        if not 0 <= position < len(self.queue):
            raise ValueError(f"no photo at position {position} (the queue has {len(self.queue)})")
        item = self.queue[position]
        if label and label not in self.class_names:
            raise ValueError(f"'{label}' is not a class of this run")
        if item.kind == "unlabelled":
            if decision in ("relabel", "label"):
                decision = "label"
            elif decision != "exclude":
                raise ValueError("an unlabelled photo takes a label or is left out")
        elif decision == "relabel" and label == item.label:
            decision = "keep"  # its own label again
        prior = self.decided.get(item.path)
        if decision == "keep" and prior is not None and prior.decision in ("relabel", "label") \
                and prior.label == item.label:  # the label this run trained with came from an earlier review
            decision, label = prior.decision, prior.label
        made = Decision(item.path, decision, label if decision in ("relabel", "label") else "")
        self.history.append((item.path, self.decided.get(item.path)))
        self.decisions = [d for d in self.decisions if d.path != item.path] + [made]
        self.save()
        return made

    def undo(self) -> int | None:
        """Take back the last decision (the one it replaced, if any, comes back; after a restart, the last one in
        the file goes); the position of its photo, or None when there was none."""
        if self.history:
            path, before = self.history.pop()
        elif self.decisions:
            path, before = self.decisions[-1].path, None
        else:
            return None
        self.decisions = [d for d in self.decisions if d.path != path] + ([before] if before else [])
        self.save()
        return self.index[path]

    def save(self) -> None:
        decided = self.decided
        write_decisions(self.file, [d for d in self.others if d.path not in decided] + self.decisions)

    def state(self) -> dict:
        """What the page shows: the classes, every photo of the queue with its decision, and the progress."""
        decided = self.decided
        items = []
        for position, item in enumerate(self.queue):
            row = asdict(item) | {"position": position, "name": os.path.basename(item.path),
                                  "has_heatmap": item.heatmap is not None}
            row.pop("path"), row.pop("heatmap"), row.pop("shown")
            made = decided.get(item.path)
            row["decision"] = None if made is None else {"decision": made.decision, "label": made.label}
            items.append(row)
        return {"run": self.run.name, "classes": self.class_names, "items": items, "done": len(decided),
                "total": len(self.queue), "first_undecided": self.first_undecided(), "file": str(self.file)}
