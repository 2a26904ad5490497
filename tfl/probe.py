"""The label-error probe: backbone features of every photo, out-of-fold probabilities of a linear classifier on them
(scikit-learn), and cleanlab's confident-learning ranking of the photos whose given label those contradict most."""

from __future__ import annotations

import os
import numpy as np

from tfl.data import ImageData
from tfl.errors import TflError

from tfl.pipeline import make_pipeline
from tfl.split import Split

FOLDS = 5
KEPT = 200  # label issues kept in the report, the likeliest first
PROBE_LIMIT = 20_000  # photos: above, tfl finetune leaves the probe (seconds per thousand photos) to tfl check


def features_of(model, split: Split, num_classes: int, image_size: int, batch_size: int = 64) -> np.ndarray:
    """Pooled backbone features of every photo of `split`, through the classifier's own feature extractor."""
    from tfl.model import feature_extractor

    extractor = feature_extractor(model)
    pipeline = make_pipeline(split, num_classes, image_size, batch_size, training=False)
    return np.concatenate([np.asarray(extractor.predict_on_batch(np.asarray(images))) for images, _ in pipeline])


def linear_probe():
    """The probe's regression, on features scaled to unit length (a Normalizer before it). Unit-length features,
    C=1: on flowers with 3% of labels flipped, 56 of the 130 flips ranked in the top 130, against 35 with
    standardised features at C=0.1 (benchmarks/README.md)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=500)


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each photo's class probabilities from a logistic regression that did not see it (5 folds); with multi-hot
    rows as labels, each label's probability from its own one-against-the-rest regression."""
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline as sk_pipeline
    from sklearn.preprocessing import Normalizer

    regression = linear_probe()
    if labels.ndim > 1:
        classifier = sk_pipeline(Normalizer(), OneVsRestClassifier(regression))
        folds = KFold(min(FOLDS, len(labels)), shuffle=True, random_state=seed)
    else:
        classifier = sk_pipeline(Normalizer(), regression)
        count = min(FOLDS, int(np.bincount(labels).min()))
        if count < 2:
            return classifier.fit(features, labels).predict_proba(features)  # too few photos for folds: in-sample
        folds = StratifiedKFold(count, shuffle=True, random_state=seed)
    # the folds side by side, one per core: 3.9 s down to 2.3 s on flowers' 4,317 photos on 2 cores, same answers
    return cross_val_predict(classifier, features, labels, method="predict_proba", cv=folds, n_jobs=-1)


def label_issues(data: ImageData, model, image_size: int) -> list[dict]:
    """The photos whose label(s) the probe doubts, likeliest errors first (cleanlab's find_label_issues ranked by
    self-confidence, the probability the probe gives the given label)."""
    everything = Split([p for s in (data.train, data.val, data.test) if s is not None for p in s.paths],
                       [y for s in (data.train, data.val, data.test) if s is not None for y in s.labels])
    if not varied(everything.labels):
        return []
    return doubted(features_of(model, everything, len(data.class_names), image_size), everything, data.class_names)


def varied(labels: list) -> bool:
    """Whether the labels differ at all (a probe needs two kinds)."""
    return len({tuple(y) if isinstance(y, list) else y for y in labels}) > 1


def doubted(features: np.ndarray, photos: Split, class_names: list[str]) -> list[dict]:
    """label_issues on features already computed, one row per photo of `photos`. With several labels per photo, a
    row's labels are joined by commas, and its probability is the lowest the probe gives any of its label decisions
    (present or absent)."""
    from cleanlab.filter import find_label_issues

    multilabel = bool(photos.labels) and isinstance(photos.labels[0], list)
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


def probe_cached(train_features: np.ndarray, val_features: np.ndarray, data: ImageData) -> list[dict] | None:
    """The label probe inside `tfl finetune`, on the features the head's feature cache holds (the training photos'
    un-augmented view first, then validation's): every doubted photo, likeliest first (issue_fields make the
    report's of them), or None when the set is too big for a quick probe (then `tfl check` runs it)."""
    if len(train_features) + len(val_features) > PROBE_LIMIT or isinstance(train_features, np.memmap):
        return None
    photos = Split(data.train.paths + data.val.paths, list(data.train.labels) + list(data.val.labels))
    features = np.concatenate([train_features[:len(data.train)], val_features])
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
    from tfl.model import build_model

    start = time.time()
    image_data = load_data(data, config.val_split, config.seed, scan_cache_dir=scan_cache_dir,
                           csv=CsvOptions.of(config), exclude=config.exclude, corrections=config.corrections)
    report = image_data.report
    report["checks"]["seconds"] = {"scan_and_checks": round(time.time() - start, 1)}
    if probe:
        start = time.time()
        spec = get_arch(config.arch)
        size = config.image_size or auto_image_size(spec, report.get("median_short_side"))
        echo(f"Label probe: {config.arch} features at {size} px, a logistic regression in {FOLDS} folds, cleanlab")
        try:
            model = build_model(spec, len(image_data.class_names), size, config.weights, config.alpha,
                                low_pass=config.low_pass is not False)  # auto: as most runs keep it
        except TflError as exc:  # weights it cannot load (offline): the checks above stand without them
            report["checks"]["label_probe_error"] = str(exc)
            return report
        issues = label_issues(image_data, model, size)
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
