"""`low_pass: auto`: whether a run's model blurs its pixels, decided on its validation photos before training.

The blur (`LowPass` in tfl/model.py) keeps answers still when an app's decoder, resize or int8 rounding moves pixels
by a level or two (MediaPipe's float32 file agreed with Keras on 98.0% of cats5 with it and pixel noise in training,
95.5% without either), and costs nothing where classes differ in shape and colour. Where they differ in fine detail
(fur, ears) it costs accuracy: 3.5 points on ten dog breeds that are not shared. So each run weighs the two on its own
photos, as cheaply as it can: the backbone's features of the training and validation photos with and without the
blur (the feature cache keeps them, so the head stage reuses the ones chosen), and of the validation photos once more
with app-like pixel noise; a linear probe fitted on each set of training features; then
- the cost: each validation photo's log-loss under the probe with and without the blur, paired, and the share of
  photos each gets right in expectation (the mean probability of the true class);
- the gain: the share of validation photos whose answer the pixel noise moves, with and without.
The blur goes when its log-loss is worse by more than twice the standard error of the paired difference (the usual 95%
bar), and the photos it costs outnumber the answers it keeps still. Small validation sets keep it: their noise
cannot show a cost.

The photos it costs are counted in expectation, not by the probe's top answers: those moved by a few photos either
way on dogs10b's 318 (67.3% right with the blur, 65.4% without) while its log-loss was 7 standard errors worse with
it, and whole runs without the blur were more accurate three times out of three (0.679 / 0.664, 0.676 / 0.657,
0.682 / 0.651 with 16 epochs; benchmarks/README.md, "Round seven").
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from tfl.data import ImageData

STANDARD_ERRORS = 2.0  # how far worse, in standard errors of the paired log-loss difference, the blur must be to go
# App-like pixel noise: uniform in +-2 levels, rounded, so its mean size is about 1 level, the measured difference
# between TensorFlow's and MediaPipe's decoders of the same JPEGs (0.79-0.97 levels; benchmarks/README.md)
PIXEL_NOISE = 2.0


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The paired comparison: validation log-loss with and without the blur, and what it decided."""

    loss_with: float
    loss_without: float
    standard_error: float  # of the mean paired difference (with - without)
    photos: int
    accuracy_with: float
    accuracy_without: float
    moved_with: float = 0.0  # share of the answers pixel noise moves
    moved_without: float = 0.0
    expected_with: float | None = None  # the mean probability of the true class: photos right in expectation
    expected_without: float | None = None

    @property
    def keep(self) -> bool:
        # The loss alone is not enough: on photos that no feature tells apart, a probe's losses sit near
        # log(classes) with little spread, and a difference of 0.02 nats came out "significant" while both probes
        # got 38% right.
        worse = self.loss_with - self.loss_without > STANDARD_ERRORS * self.standard_error
        return not (worse and self.costs > 0 and self.costs > self.moved_without - self.moved_with)

    @property
    def costs(self) -> float:
        """The share of photos the blur costs: in expectation when measured, else by the probe's top answers."""
        if self.expected_with is not None and self.expected_without is not None:
            return self.expected_without - self.expected_with
        return self.accuracy_without - self.accuracy_with

    @property
    def expected_text(self) -> str:
        if self.expected_with is None or self.expected_without is None:
            return ""
        return f" (in expectation {self.expected_with:.1%} / {self.expected_without:.1%})"

    def reason(self) -> str:
        said = (f"validation log-loss {self.loss_with:.3f} with the blur, {self.loss_without:.3f} without "
                f"(+-{self.standard_error:.3f}); probe accuracy {self.accuracy_with:.1%} / {self.accuracy_without:.1%}"
                f"{self.expected_text}; "
                f"answers moved by pixel noise {self.moved_with:.1%} / {self.moved_without:.1%} ({self.photos} photos)")
        if self.keep:
            return f"low-pass: on: {said}: it costs less than the answers it steadies on apps' pixels"
        return (f"low-pass: off: {said}: the blur costs detail this set's classes differ in, more than the answers "
                "it steadies")


def paired_verdict(train_with: np.ndarray, train_without: np.ndarray, train_labels: np.ndarray,
                   val_with: np.ndarray, val_without: np.ndarray, val_labels: np.ndarray,
                   noisy_with: np.ndarray | None = None, noisy_without: np.ndarray | None = None) -> Verdict:
    """A logistic regression on unit-length features (as the label probe, tfl/probe.py) fitted on each set of
    training features; each validation photo's log-loss under it, and (given the features of the same photos with
    pixel noise) how many of its answers the noise moves."""
    losses, accuracies, moved, expected = [], [], [], []
    for train, val, noisy in ((train_with, val_with, noisy_with), (train_without, val_without, noisy_without)):
        classifier = probe(train, train_labels)
        probabilities = probabilities_of(classifier, val, val_labels)
        known = val_labels < probabilities.shape[1]  # a class no training photo has counts as a miss
        chosen = probabilities[np.arange(len(val_labels)), np.where(known, val_labels, 0)]
        losses.append(-np.log(np.where(known, np.clip(chosen, 1e-7, 1.0), 1e-7)))
        expected.append(float(np.where(known, chosen, 0.0).mean()))
        accuracies.append(float((probabilities.argmax(axis=1) == val_labels).mean()))
        moved.append(0.0 if noisy is None else
                     float((classifier.predict(noisy) != classifier.predict(val)).mean()))
    difference = losses[0] - losses[1]
    error = float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else float("inf")
    return Verdict(float(losses[0].mean()), float(losses[1].mean()), error, len(val_labels), *accuracies, *moved,
                   *expected)


def probe(train: np.ndarray, labels: np.ndarray):
    """The label probe's classifier (tfl/probe.py), fitted on `train`."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    from tfl.probe import linear_probe

    return make_pipeline(Normalizer(), linear_probe()).fit(train, labels)


def probabilities_of(classifier, val: np.ndarray, val_labels: np.ndarray) -> np.ndarray:
    """The probe's class probabilities, a column for every class up to the largest label in either set."""
    columns = max(int(val_labels.max()), int(classifier.classes_.max())) + 1
    probabilities = np.zeros((len(val), columns))
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
    from tfl.features import cache_key, cached_features, compute_features
    from tfl.model import build_model, feature_extractor
    from tfl.precision import dtype_policy

    start = time.time()
    if not config.feature_cache:  # the user keeps no features: they go with the measurement
        with tempfile.TemporaryDirectory(prefix="tfl_low_pass_") as scratch:
            return decide(dataclasses.replace(config, feature_cache=True), data, Path(scratch), distributed)
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
        features[blur, "noisy"] = noisy_features(extractor, data, config)
    labels = {name: np.asarray(split.labels) for name, split in (("train", data.train), ("val", data.val))}
    verdict = paired_verdict(features[True, "train"], features[False, "train"], labels["train"],
                             features[True, "val"], features[False, "val"], labels["val"],
                             features[True, "noisy"], features[False, "noisy"])
    return verdict.keep, f"{verdict.reason()} [{time.time() - start:.0f}s]"


def noisy_features(extractor, data: ImageData, config) -> np.ndarray:
    """Features of the validation photos with PIXEL_NOISE added to their pixels (the same noise for both
    extractors: a fixed seed), as an app's own decoder and resize would give them."""
    from tfl.pipeline import make_pipeline

    rng = np.random.default_rng(config.seed)
    rows = []
    for images, _ in make_pipeline(data.val, len(data.class_names), config.image_size, config.batch_size,
                                   training=False):
        pixels = np.asarray(images)
        moved = np.clip(np.round(pixels + rng.uniform(-PIXEL_NOISE, PIXEL_NOISE, pixels.shape)), 0, 255)
        rows.append(np.asarray(extractor.predict_on_batch(moved.astype(np.float32))))
    return np.concatenate(rows)
