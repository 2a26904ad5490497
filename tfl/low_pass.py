"""`low_pass: auto`: whether a run's model blurs its pixels, decided on its validation photos before training.

The blur (`LowPass` in tfl/model.py) makes answers that an app's decoder, resize or int8 rounding moves by a level or
two stay put (MediaPipe's float32 file agreed with Keras on 98.0% of cats5 with it, 95.5% without), and costs nothing
where classes differ in shape and colour. Where they differ in fine detail (fur, ears) it costs: on ten dog breeds
that are not shared, 3.5 points. So both are measured, as cheaply as the run allows: the backbone's features of the
training and validation photos with and without the blur (the run's feature cache keeps the ones chosen, so the head
stage reuses them), a linear probe fitted on each, and each validation photo's log-loss under both. The blur goes only
when its log-loss is worse by more than twice the standard error of the paired difference (the usual 95% bar) and
its probe gets fewer validation photos right: small validation sets keep it, since their noise cannot show a cost.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
import numpy as np

from tfl.data import ImageData

STANDARD_ERRORS = 2.0  # how far worse, in standard errors of the paired log-loss difference, the blur must be to go


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The paired comparison: validation log-loss with and without the blur, and what it decided."""

    loss_with: float
    loss_without: float
    standard_error: float  # of the mean paired difference (with - without)
    photos: int
    accuracy_with: float
    accuracy_without: float

    @property
    def keep(self) -> bool:
        # Both: on photos that no feature tells apart, a probe's losses sit near log(classes) with little spread,
        # so a difference of 0.02 nats came out "significant" while both probes got 38% right.
        worse = self.loss_with - self.loss_without > STANDARD_ERRORS * self.standard_error
        return not (worse and self.accuracy_with < self.accuracy_without)

    def reason(self) -> str:
        said = (f"validation log-loss {self.loss_with:.3f} with the blur, {self.loss_without:.3f} without "
                f"(+-{self.standard_error:.3f}; probe accuracy {self.accuracy_with:.1%} / {self.accuracy_without:.1%}, "
                f"{self.photos} photos)")
        if self.keep:
            return f"low-pass: on: {said}; it costs no more than noise, and steadies answers on apps' pixels"
        return (f"low-pass: off: {said}; the blur costs detail this set's classes differ in (worse by more than "
                f"{STANDARD_ERRORS:.0f} standard errors, and fewer photos right)")


def paired_verdict(train_with: np.ndarray, train_without: np.ndarray, train_labels: np.ndarray,
                   val_with: np.ndarray, val_without: np.ndarray, val_labels: np.ndarray) -> Verdict:
    """A logistic regression on unit-length features (as the label probe, tfl/probe.py) fitted on each set of
    training features, and each validation photo's log-loss under it."""
    losses, accuracies = [], []
    for train, val in ((train_with, val_with), (train_without, val_without)):
        probabilities = probe_probabilities(train, train_labels, val)
        given = np.where(val_labels < probabilities.shape[1], val_labels, 0)  # a class no training photo has
        chosen = np.where(val_labels < probabilities.shape[1],
                          np.clip(probabilities[np.arange(len(val_labels)), given], 1e-7, 1.0), 1e-7)
        losses.append(-np.log(chosen))
        accuracies.append(float((probabilities.argmax(axis=1) == val_labels).mean()))
    difference = losses[0] - losses[1]
    error = float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else float("inf")
    return Verdict(float(losses[0].mean()), float(losses[1].mean()), error, len(val_labels), *accuracies)


def probe_probabilities(train: np.ndarray, labels: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Class probabilities of the validation features (a column for every class up to the largest label seen),
    from a regression fitted on the training ones."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    classifier = make_pipeline(Normalizer(), LogisticRegression(C=1.0, max_iter=500)).fit(train, labels)
    probabilities = np.zeros((len(val), int(labels.max()) + 1))
    probabilities[:, classifier.classes_] = classifier.predict_proba(val)
    return probabilities


def why_not(config, data: ImageData, distributed: bool) -> str | None:
    """Why the rule cannot decide for this run (the blur is then kept), or None when it can."""
    if data.multilabel:
        return "several labels per photo"
    if config.weights == "none":
        return "random weights: their features say nothing of detail"
    if distributed:
        return "training on several devices"
    if data.train.source is not None or data.val.source is not None or not len(data.val):
        return "no validation files to compare on"
    if len(set(data.train.labels)) < 2:
        return "a single class"
    return None


def decide(config, data: ImageData, cache_dir: Path, distributed: bool) -> tuple[bool, str]:
    """(blur or not, the plan line saying why) for a config whose `low_pass` is "auto", its image size and
    precision resolved."""
    reason = why_not(config, data, distributed)
    if reason is not None:
        return True, f"low-pass: on (auto, not measured: {reason})"
    from tfl.archs import get_arch
    from tfl.features import cache_key, cached_features, compute_features, feature_extractor
    from tfl.model import build_model
    from tfl.precision import dtype_policy

    with dtype_policy(config.precision):
        model = build_model(get_arch(config.arch), len(data.class_names), config.image_size, config.weights,
                            config.alpha, config.dropout, low_pass=True)
    features = {}
    for blur in (True, False):
        extractor = feature_extractor(model, skip=() if blur else ("low_pass",))
        settings = dataclasses.replace(config, low_pass=blur)
        for name, split in (("train", data.train), ("val", data.val)):
            compute = lambda folder, split=split: compute_features(  # noqa: E731
                extractor, split, len(data.class_names), config.image_size, config.batch_size, folder)
            features[blur, name] = cached_features(cache_dir, cache_key(split, settings, config.image_size, 1),
                                                   compute)[0]
    labels = {name: np.asarray(split.labels) for name, split in (("train", data.train), ("val", data.val))}
    verdict = paired_verdict(features[True, "train"], features[False, "train"], labels["train"],
                             features[True, "val"], features[False, "val"], labels["val"])
    return verdict.keep, verdict.reason()
