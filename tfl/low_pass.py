"""`low_pass: auto`: whether a run's model blurs its pixels, decided on its validation photos before training.

The blur (`LowPass` in tfl/model.py) keeps answers still when an app's decoder, resize or int8 rounding moves pixels
by a level or two (MediaPipe's float32 file agreed with Keras on 98.0% of cats5 with it and pixel noise in training,
95.5% without either), and costs nothing where classes differ in shape and colour. Where they differ in fine detail
(fur, ears) it costs accuracy: 3.5 points on ten dog breeds that are not shared. So each run weighs the two on its own
photos, as cheaply as it can: the backbone's features of the training and validation photos with and without the
blur (one pass over each split, each photo decoded once; the feature cache keeps them, so the head stage reuses the
ones chosen), and of the validation photos with app-like pixel noise (a seeded sample of a large set); a linear
probe fitted on each set of training features; then
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
import time
from pathlib import Path

import numpy as np

from tfl.data import ImageData

STANDARD_ERRORS = 2.0  # how far worse, in standard errors of the paired log-loss difference, the blur must be to go
# App-like pixel noise: uniform in +-2 levels, rounded, so its mean size is about 1 level: what another decoder
# (TensorFlow's fast DCT against libjpeg's accurate one: 0.79-0.97 levels) or a resize with half-pixel centres (a
# browser's canvas, Android's bitmaps: 1.6 levels on cats5's photos) does to tfl's pixels. MediaPipe Tasks now gets
# tfl's very pixels for photos under twice the model's size, and differs by about 5 levels on larger ones
# (benchmarks/README.md, "Decoder 5").
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
    from tfl.model import build_model, feature_extractor
    from tfl.precision import dtype_policy

    start = time.time()
    with dtype_policy(config.precision):
        model = build_model(get_arch(config.arch), len(data.class_names), config.image_size, config.weights,
                            config.alpha, config.dropout, low_pass=True)
    extractors = {blur: feature_extractor(model, skip=() if blur else ("low_pass",)) for blur in (True, False)}
    train, val = measured(data.train, MEASURED_TRAIN, config.seed), measured(data.val, MEASURED_VAL, config.seed)
    whole = len(train) == len(data.train) and len(val) == len(data.val)  # a sample's features are no split's cache
    kept_in = cache_dir if whole and config.feature_cache else None
    pass_ = Measurement(extractors, config, len(data.class_names), kept_in)
    (train_with, train_without), _ = pass_.features(train)
    (val_with, val_without), (noisy_with, noisy_without) = pass_.features(val, noise=np.random.default_rng(config.seed))
    verdict = paired_verdict(train_with, train_without, np.asarray(train.labels), val_with, val_without,
                             np.asarray(val.labels), noisy_with, noisy_without)
    sampled = "" if whole else (
        f"; measured on {len(train):,} training and {len(val):,} validation photos drawn at random")
    return verdict.keep, f"{verdict.reason()}{sampled} [{time.time() - start:.0f}s]"


# Larger sets are measured on a seeded sample of this many photos of each split: the probe's verdict is as clear on it
# (the shared sets, up to 3,455 training photos, are measured whole), and a million photos are not passed through the
# backbone twice before training.
MEASURED_TRAIN, MEASURED_VAL = 5_000, 2_500


def measured(split, most: int, seed: int):
    """The split, or a seeded random sample of `most` of its photos (in their order)."""
    if len(split) <= most:
        return split
    return split.subset(np.sort(np.random.default_rng(seed).choice(len(split), most, replace=False)))


@dataclasses.dataclass
class Measurement:
    """One pass over a split's photos through the backbone with and without the blur (each photo decoded once,
    batches padded so each extractor traces once); the features written to the feature cache when `cache_dir` is
    given (the head stage then reuses the ones chosen), and read from it when there."""

    extractors: dict
    config: object
    classes: int
    cache_dir: Path | None

    def features(self, split, noise: np.random.Generator | None = None):
        """((features with the blur, without), (the same of the pixels with app-like noise, or Nones))."""
        from tfl.features import load_features, store_features
        from tfl.pipeline import padded_batches

        keys = {blur: self.cache_key(split, blur) for blur in (True, False)}
        cached = {blur: load_features(self.cache_dir / key)[0] for blur, key in keys.items()
                  if self.cache_dir is not None and (self.cache_dir / key / "features.npy").is_file()}
        if len(cached) == 2 and noise is None:
            return (cached[True], cached[False]), (None, None)
        rows = {name: [] for name in ("with", "without", "noisy_with", "noisy_without", "labels")}
        for pixels, one_hot, count in padded_batches(split, self.classes, self.config.image_size,
                                                     self.config.batch_size):
            moved = None if noise is None else pixels.copy()  # the same noise for both extractors
            if moved is not None:
                noisy = pixels[:count] + noise.uniform(-PIXEL_NOISE, PIXEL_NOISE, pixels[:count].shape)
                moved[:count] = np.clip(np.round(noisy), 0, 255)
            for blur in (True, False):
                name = "with" if blur else "without"
                if blur not in cached:
                    rows[name].append(self.run(blur, pixels, count))
                if moved is not None:
                    rows["noisy_" + name].append(self.run(blur, moved, count))
            rows["labels"].append(one_hot)
        joined = {name: np.concatenate(parts) if parts else None for name, parts in rows.items()}
        for blur in (True, False):
            if blur not in cached:
                cached[blur] = joined["with" if blur else "without"]
                if self.cache_dir is not None:  # read back as stored, so a later run's verdict is the same
                    store_features(self.cache_dir / keys[blur], cached[blur], joined["labels"],
                                   self.config.batch_size)
                    cached[blur] = load_features(self.cache_dir / keys[blur])[0]
        return (cached[True], cached[False]), (joined["noisy_with"], joined["noisy_without"])

    def cache_key(self, split, blur: bool) -> str:
        from tfl.features import cache_key

        return cache_key(split, dataclasses.replace(self.config, low_pass=blur), self.config.image_size, 1)

    def run(self, blur: bool, pixels: np.ndarray, count: int) -> np.ndarray:
        return np.asarray(self.extractors[blur].predict_on_batch(pixels))[:count]
