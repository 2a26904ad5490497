"""The label-error probe: backbone features of every photo, out-of-fold probabilities of a linear classifier on them
(scikit-learn), and cleanlab's confident-learning ranking of the photos whose given label those contradict most."""

from __future__ import annotations

import os
import numpy as np

from tfl.data import ImageData
from tfl.errors import TflError

from tfl.split import Split

FOLDS = 5
KEPT = 200  # label issues kept in the report, the likeliest first
# Photos the probe's regressions are fitted on. A larger set is sampled (every class or label, each in proportion,
# at least SAMPLE_FLOOR of it, fewer with many classes): the sample's photos get out-of-fold probabilities as before,
# every other photo the mean of the folds' regressions, none of which saw it. The fits then cost the same at a
# million photos as at 20,000, and the rest is a matrix product per photo (benchmarks/README.md, "A million photos").
PROBE_SAMPLE = 20_000
SAMPLE_FLOOR = 50
PREDICT_ROWS = 10_000  # rows predicted at a time: memory-mapped features are read in pieces
# Probabilities held at once (photos x classes, float32: 1 GB). Beyond, the probe checks a seeded sample of the
# photos that fits (a million photos of 1,000 classes: 250,000 of them), and says so.
PROBE_CELLS = 250_000_000


def features_of(model, split: Split, num_classes: int, image_size: int, batch_size: int, folder) -> np.ndarray:
    """Pooled backbone features of every photo of `split`, through the classifier's own feature extractor, written
    to `folder` as they are computed (held in memory when they fit, else memory-mapped: tfl/features.py)."""
    from pathlib import Path

    from tfl.features import compute_features, load_features
    from tfl.model import feature_extractor

    compute_features(feature_extractor(model), split, num_classes, image_size, batch_size, Path(folder))
    return load_features(Path(folder))[0]


class Rows:
    """The rows of several feature arrays (in memory or memory-mapped) as one, read only where indexed."""

    def __init__(self, *parts):
        self.parts = parts
        self.starts = np.cumsum([0, *(len(part) for part in parts)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        out = np.empty((len(rows), self.parts[0].shape[1]), np.float32)
        for k, part in enumerate(self.parts):
            inside = (rows >= self.starts[k]) & (rows < self.starts[k + 1])
            out[inside] = part[rows[inside] - self.starts[k]]
        return out


class Picked:
    """Some rows of a feature array (or of Rows), read only where indexed."""

    def __init__(self, features, rows: np.ndarray):
        self.features, self.rows = features, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.features[self.rows[np.asarray(rows)]], np.float32)


def linear_probe():
    """The probe's regression, on features scaled to unit length (a Normalizer before it). Unit-length features,
    C=1: on flowers with 3% of labels flipped, 56 of the 130 flips ranked in the top 130, against 35 with
    standardised features at C=0.1 (benchmarks/README.md)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=500)


def out_of_fold_probabilities(features, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each photo's class probabilities from a logistic regression that did not see it (5 folds); with multi-hot
    rows as labels, each label's probability from its own one-against-the-rest regression. Above PROBE_SAMPLE
    photos the regressions are fitted on a sample (see PROBE_SAMPLE). `features`: an array, a memory map or Rows."""
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline as sk_pipeline
    from sklearn.preprocessing import Normalizer

    regression = linear_probe()
    sample = probe_sample(labels, seed)
    if labels.ndim > 1:
        classifier = sk_pipeline(Normalizer(), OneVsRestClassifier(regression))
        folds = KFold(min(FOLDS, len(sample)), shuffle=True, random_state=seed)
    else:
        classifier = sk_pipeline(Normalizer(), regression)
        count = min(FOLDS, int(np.unique(labels[sample], return_counts=True)[1].min()))
        if count < 2:  # a class of one photo: no folds; a regression fitted on the sample answers for every photo
            fitted = classifier.fit(np.asarray(features[sample], np.float32), labels[sample])
            return predicted([fitted], features, np.arange(len(labels)), len(fitted.classes_))
        folds = StratifiedKFold(count, shuffle=True, random_state=seed)
    if len(sample) == len(labels):
        # the folds side by side, one per core: 3.9 s down to 2.3 s on flowers' 4,317 photos on 2 cores, same answers
        return cross_val_predict(classifier, np.asarray(features[np.arange(len(labels))]), labels,
                                 method="predict_proba", cv=folds, n_jobs=-1)
    return sampled_probabilities(classifier, folds, features, labels, sample)


def probe_sample(labels: np.ndarray, seed: int) -> np.ndarray:
    """The sorted rows the regressions are fitted on: all of them up to PROBE_SAMPLE; else a seeded sample of about
    that size, each class in proportion and at least a floor of it (all of a smaller class): SAMPLE_FLOOR, less with
    so many classes that the floors would outgrow the sample. With several labels per photo, a random sample, then
    photos of each label too rare in it up to the floor (a label absent from the sample would make every photo
    that has it look mislabelled)."""
    if len(labels) <= PROBE_SAMPLE:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = labels.shape[1] if labels.ndim > 1 else len(np.unique(labels))
    floor = min(SAMPLE_FLOOR, max(2, PROBE_SAMPLE // (2 * classes)))
    if labels.ndim > 1:
        chosen = np.zeros(len(labels), bool)
        chosen[rng.choice(len(labels), PROBE_SAMPLE, replace=False)] = True
        for column in range(classes):
            having = np.flatnonzero(labels[:, column] > 0)
            missing = min(floor, len(having)) - int(chosen[having].sum())
            if missing > 0:
                chosen[rng.choice(having[~chosen[having]], missing, replace=False)] = True
        return np.flatnonzero(chosen)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = min(len(members), max(floor, round(len(members) * PROBE_SAMPLE / len(labels))))
        chosen.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(chosen))


def predicted(models, features, rows: np.ndarray, columns: int, into: np.ndarray | None = None) -> np.ndarray:
    """The mean of `models`' probabilities for `rows` of `features`, read PREDICT_ROWS at a time (into `into`, a
    matrix of every row, when given)."""
    into = np.zeros((len(rows), columns), np.float32) if into is None else into
    for start in range(0, len(rows), PREDICT_ROWS):
        part = rows[start:start + PREDICT_ROWS]
        x = np.asarray(features[part], np.float32)
        into[part] = np.mean([model.predict_proba(x) for model in models], axis=0)
    return into


def sampled_probabilities(classifier, folds, features, labels: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Out-of-fold probabilities on `sample`; the mean of the fold regressions' on every other row."""
    from sklearn.utils.parallel import Parallel, delayed  # joblib, as scikit-learn configures it
    from sklearn.base import clone

    x, y = np.asarray(features[sample], np.float32), labels[sample]
    splits = list(folds.split(x, y if y.ndim == 1 else None))
    models = Parallel(n_jobs=-1)(delayed(clone(classifier).fit)(x[train], y[train]) for train, _ in splits)
    columns = labels.shape[1] if labels.ndim > 1 else len(models[0].classes_)
    probabilities = np.zeros((len(labels), columns), np.float32)
    for model, (_, held_out) in zip(models, splits):
        probabilities[sample[held_out]] = model.predict_proba(x[held_out])
    return predicted(models, features, np.setdiff1d(np.arange(len(labels)), sample), columns, probabilities)


def label_issues(data: ImageData, model, image_size: int, scratch=None) -> list[dict]:
    """The photos whose label(s) the probe doubts, likeliest errors first (cleanlab's find_label_issues ranked by
    self-confidence, the probability the probe gives the given label). The features go to a temporary folder in
    `scratch` (the runs folder: not a memory-backed /tmp) while they are needed."""
    everything = Split([p for s in (data.train, data.val, data.test) if s is not None for p in s.paths],
                       [y for s in (data.train, data.val, data.test) if s is not None for y in s.labels])
    if not varied(everything.labels):
        return []
    import tempfile
    from pathlib import Path

    from tfl.errors import disk_full_explained

    if scratch is not None:
        Path(scratch).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tfl_probe_", dir=scratch) as folder, disk_full_explained(
            "computing the label probe's features", lambda: "Free some space, or pass --no-probe."):
        features = features_of(model, everything, len(data.class_names), image_size, 64, folder)
        return doubted(features, everything, data.class_names)


def varied(labels: list) -> bool:
    """Whether the labels differ at all (a probe needs two kinds)."""
    return len({tuple(y) if isinstance(y, list) else y for y in labels}) > 1


def doubted(features: np.ndarray, photos: Split, class_names: list[str]) -> list[dict]:
    """label_issues on features already computed, one row per photo of `photos`. With several labels per photo, a
    row's labels are joined by commas, and its probability is the lowest the probe gives any of its label decisions
    (present or absent)."""
    from cleanlab.filter import find_label_issues

    multilabel = bool(photos.labels) and isinstance(photos.labels[0], list)
    fits = PROBE_CELLS // max(1, len(class_names))
    if len(photos) > fits:  # a seeded sample of the photos whose probabilities fit in memory is checked
        from tfl.errors import warn

        warn(f"The label probe checks {fits:,} of the {len(photos):,} photos, chosen at random: the probabilities "
             f"of every photo for {len(class_names):,} classes would not fit in memory.")
        picked = np.sort(np.random.default_rng(0).choice(len(photos), fits, replace=False))
        features, photos = Picked(features, picked), photos.subset(picked)
    if multilabel:
        from cleanlab.multilabel_classification.filter import find_label_issues as find_multilabel_issues

        from tfl.multilabel import multi_hot

        truth = multi_hot(photos.labels, len(class_names)).astype(int)
        probabilities = out_of_fold_probabilities(features, truth)
        ranked = find_multilabel_issues(photos.labels, probabilities, return_indices_ranked_by="self_confidence")
        given = np.where(truth > 0, probabilities, 1 - probabilities).min(axis=1)
        names = lambda row: ", ".join(class_names[k] for k in np.flatnonzero(row)) or "none"  # noqa: E731
        said = [names(truth[i]) for i in range(len(truth))]
        says = [names(probabilities[i] >= 0.5) for i in range(len(truth))]
    else:
        labels = np.asarray(photos.labels)
        probabilities = out_of_fold_probabilities(features, labels)
        ranked = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence")
        given = probabilities[np.arange(len(labels)), labels]
        said = [class_names[y] for y in labels]
        says = [class_names[int(row.argmax())] for row in probabilities]
    return [{"path": photos.paths[i], "label": said[i], "probe_says": says[i],
             "probability_of_label": round(float(given[i]), 4)} for i in ranked]


def probe_cached(train_features: np.ndarray, val_features: np.ndarray, data: ImageData) -> list[dict]:
    """The label probe inside `tfl finetune`, on the features the head's feature cache holds (the training photos'
    un-augmented view first, then validation's), read where they are (in memory or memory-mapped): every doubted
    photo, likeliest first (issue_fields make the report's of them)."""
    photos = Split(data.train.paths + data.val.paths, list(data.train.labels) + list(data.val.labels))
    features = Rows(train_features[:len(data.train)], val_features)
    return doubted(features, photos, data.class_names) if varied(photos.labels) else []


def issue_fields(issues: list[dict], seconds: float) -> dict:
    """The checks' label_issues fields: the KEPT likeliest (the run's label_issues.csv lists all), the count, time."""
    return {"label_issues": issues[:KEPT], "label_issues_found": len(issues), "label_probe_seconds": round(seconds, 1)}


def write_issues_csv(path, issues: list[dict]) -> None:
    """Every doubted photo, likeliest first, one row each (what `tfl review` goes through)."""
    from tfl.fileio import atomic_write_csv

    columns = ("path", "label", "probe_says", "probability_of_label")
    atomic_write_csv(path, columns, ([issue[key] for key in columns] for issue in issues), lineterminator="\n")


def check_data(config, data: str, scan_cache_dir=None, probe: bool = True,
               echo=print) -> dict:
    """`tfl check`: the photos read as `tfl finetune` reads them (same split), the data checks, and, with `probe`,
    the label-error probe on the config's backbone and weights; the report data_report.json would hold."""
    import time

    from tfl.archs import auto_image_size, get_arch
    from tfl.data import CsvOptions, load_data

    start = time.time()
    image_data = load_data(data, config.val_split, config.seed, scan_cache_dir=scan_cache_dir,
                           csv=CsvOptions.of(config), exclude=config.exclude, corrections=config.corrections)
    report = image_data.report
    report.setdefault("checks", {})["seconds"] = {"scan_and_checks": round(time.time() - start, 1)}  # tfds: none
    if probe:
        start = time.time()
        spec = get_arch(config.arch)
        size = config.image_size or auto_image_size(spec, report.get("median_short_side"))
        echo(f"Label probe: {config.arch} features at {size} px, a logistic regression in {FOLDS} folds, cleanlab")
        from tfl.model import build_model

        try:
            model = build_model(spec, len(image_data.class_names), size, config.weights, config.alpha,
                                low_pass=config.low_pass is not False)  # auto: as most runs keep it
        except TflError as exc:  # weights it cannot load (offline): the checks above stand without them
            report["checks"]["label_probe_error"] = str(exc)
            return report
        issues = label_issues(image_data, model, size, scratch=scan_cache_dir.parent if scan_cache_dir else None)
        report["checks"]["label_issues"], report["checks"]["label_issues_found"] = issues[:KEPT], len(issues)
        report["checks"]["seconds"]["label_probe"] = round(time.time() - start, 1)
    return report


def exclusions_text(report: dict) -> str:
    """An exclusion list to edit (`tfl finetune --exclude FILE`): every photo the checks doubt, each line commented
    out with the reason. Uncomment the lines of the photos to leave out; nothing is excluded as written."""
    checks = report["checks"]
    lines = ["# Photos tfl check doubts. Remove the '# ' before a path to leave that photo out of training",
             "# (tfl finetune --exclude THIS_FILE); nothing is deleted or moved in your folder.", ""]
    for group in checks.get("conflicting_labels", []):  # absolute paths: the list is read from its own folder
        lines.append(f"# copies under different labels: {', '.join(group['labels'])}")
        lines += [f"# {os.path.abspath(path)}" for path in group["paths"]]
    for item in checks.get("unusable", []):
        lines.append(f"# {os.path.abspath(item['path'])}  # {'; '.join(item['issues'])}")
    for item in checks.get("label_issues", []):
        lines.append(f"# {os.path.abspath(item['path'])}  # labelled {item['label']}, looks like "
                     f"{item['probe_says']} ({item['probability_of_label']:.3f})")
    return "\n".join(lines) + "\n"
