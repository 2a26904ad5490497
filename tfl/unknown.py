"""'None of these': a score for photos of none of the classes, fitted on a run's own features, and the layer that
carries the decision into every artifact as one more category, `unknown`.

The score is the Mahalanobis distance (Lee et al. 2018) of a photo's pooled backbone features, L2-normalised, to the
nearest class centre, under the classes' shared spread modelled as probabilistic PCA (the top COMPONENTS directions
of the within-class covariance, the rest at the features' mean variance per direction): the full covariance of
1,280 features would be a matrix larger than the model, and keeping only its top directions loses what tells far
photos apart (they differ where training photos vary least). Measured against the softmax's own confidence, deep
nearest neighbours and the full covariance on the shared sets: benchmarks/README.md, "None of these".

The decision is one more category: the model's scores become [p_1 (1 - u), ..., p_N (1 - u), u], a distribution
over N + 1 outcomes with u = sigmoid(s - theta + log(max p)), where the statistic s = d / tau - m is the distance d
in units of tau (the spread of the validation photos' distances) less the head's largest logit m in units of its
validation spread. `unknown` wins exactly when s > theta, so a photo far from every class, or one that no class's
logit answers strongly, is unknown; theta is the quantile of s on the validation photos that keeps `keep` of them
(0.95 by default). The largest logit replaced the softmax's confidence log(max p), which detectors saved before
still use: the softmax only ranks the classes against each other, so a photo of none of them can still have one
class far ahead (benchmarks/README.md, "The head's largest logit"). MediaPipe Tasks, ONNX Runtime and TF Serving
apps see `unknown` win as they see any class win."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tfl.model import feature_extractor, get_head

UNKNOWN_FILE = "unknown.npz"  # the detector of a run, beside its model.keras
UNKNOWN_NAME = "unknown"  # the extra category's name (another, when a class has it)
LAYER_NAME = "unknown"  # the open-set model's layer that computes it (tfl/quantize.py keeps its operations in float)
COMPONENTS = 64  # directions of the within-class spread modelled one by one; 16-256 measured alike on flowers
TRAIN_SAMPLE = 1000  # at most about this many training photos' features fit the class centres and the spread
VAL_SAMPLE = 5000  # at most this many validation photos choose the threshold
MAX_SCORE = 0.999  # u is clipped here: the class scores p (1 - u) keep a sum to read p back from (class_probabilities)
# The floor of the spread of the validation photos' largest logits, in logits (trained heads measure 1-3): an
# untrained head's hardly vary, and their rounding in another runtime must not become many spreads.
MIN_LOGIT_SPREAD = 0.1
# Floors for features that hardly vary (an untrained backbone's, a class of one photo): a variance per direction
# of the unit-length features (trained ones measure about 1e-4), and one unit of the distances' spread (trained
# ones measure hundreds), so that float16's or another runtime's rounding cannot move a distance by many spreads.
MIN_VARIANCE = 1e-6
# A photo exactly at the threshold stays with its class, by a margin that float rounding cannot cross (validation
# statistics spread over several units).
TIE_MARGIN = 1e-3
NORM_EPSILON = 1e-6  # added to the squared length before normalising (trained pooled features measure 10-1,000)


def unknown_name(class_names: list[str]) -> str:
    """The extra category's name: `unknown`, unless a class is called so."""
    name = UNKNOWN_NAME
    while name in class_names:
        name = f"{name}_"
    return name


@dataclass
class Part:
    """One layer's share of the distance: its class centres, the top directions of its classes' spread and their
    weights, all scaled so that the in-model arithmetic stays near 1 (float16 and int8 files compute it too)."""

    centres: np.ndarray  # [classes, features]: class means of the normalised features, times `scale`, less `origin`
    basis: np.ndarray  # [features, components]: the top directions of the within-class spread
    weights: np.ndarray  # [components]: sigma2 / lambda - 1 (negative: those directions count less)
    scale: float  # multiplies the normalised features: 1 / sqrt(sigma2), then in units of the distances' spread
    # [features]: the mean of the class means (times `scale`), subtracted from a photo's scaled features before its
    # squared length is taken: a length of 1 / sqrt(sigma2) squared next to differences of a few units would lose
    # them to float32's rounding (features that hardly vary: 1e-3 apart between Keras and a .tflite file)
    origin: np.ndarray

    def distances(self, features: np.ndarray) -> np.ndarray:
        """The scaled distance of each row of pooled features to the nearest centre (numpy, float64: the reference
        the layer is tested against), as the layer computes it: squared lengths and products, never a [rows,
        classes, features] array (5 GB at 5,000 photos and 100 classes), in chunks of rows."""
        centres, basis = self.centres.astype(np.float64), self.basis.astype(np.float64)
        along_centres = centres @ basis
        rows = []
        for start in range(0, len(features), 1024):
            z = normalised(features[start:start + 1024].astype(np.float64)) * self.scale - self.origin
            iso = (z ** 2).sum(1)[:, None] - 2 * z @ centres.T + (centres ** 2).sum(1)[None]
            along = (z @ basis)[:, None, :] - along_centres[None]  # [rows, classes, components]
            rows.append((iso + (along ** 2 * self.weights).sum(-1)).min(axis=1))
        return np.concatenate(rows) if rows else np.zeros(0)

    def rescaled(self, factor: float) -> Part:
        """The same part with its distances times factor ** 2."""
        return Part(self.centres * factor, self.basis, self.weights, self.scale * factor, self.origin * factor)


@dataclass
class Detector:
    """A fitted unknown score: one Part per layer read (the model's pooled features first, then the pooled
    activations of the backbone's `layers`), each in units of its validation photos' spread, summed; the sum in
    units of its own spread times tau; and the threshold."""

    parts: list[Part]
    threshold: float  # theta, on the statistic s
    keep: float  # the share of validation photos kept as known when theta was chosen
    name: str = UNKNOWN_NAME
    tau: float = 1.0  # in units of the validation distances' spread (a record: the parts' scales hold it)
    layers: tuple[str, ...] = ()  # the backbone layers whose pooled activations parts[1:] read
    # The head's kernel [features, classes] and bias, over the spread of the validation photos' largest logits: s
    # subtracts the largest of pooled features @ logit_kernel + logit_bias. None (a detector saved before): s
    # subtracts log(max p) instead.
    logit_kernel: np.ndarray | None = None
    logit_bias: np.ndarray | None = None

    def distances(self, features) -> np.ndarray:
        """d / tau of each photo: `features` is the model's pooled features (an array), or a list of them and the
        pooled activations of `layers`, as the extractor of open_set_model gives them."""
        return sum(part.distances(x) for part, x in zip(self.parts, as_parts(features, len(self.parts))))

    def confidence(self, features, probabilities: np.ndarray) -> np.ndarray:
        """What s subtracts from the distance: the largest logit in units of its spread, or log(max p)."""
        if self.logit_kernel is None:
            return log_confidence(probabilities)
        pooled = as_parts(features, len(self.parts))[0].astype(np.float64)
        return (pooled @ self.logit_kernel.astype(np.float64) + self.logit_bias.astype(np.float64)).max(axis=1)

    def statistic(self, features, probabilities: np.ndarray) -> np.ndarray:
        """s of each photo: unknown when above the threshold."""
        return self.distances(features) - self.confidence(features, probabilities)

    def scores(self, features, probabilities: np.ndarray) -> np.ndarray:
        """The N + 1 scores the artifacts give, in numpy."""
        if self.logit_kernel is None:  # s + log(max p) is the distance itself
            odds = self.distances(features) - self.threshold
        else:
            odds = self.statistic(features, probabilities) - self.threshold + log_confidence(probabilities)
        u = np.minimum(1 / (1 + np.exp(-odds)), MAX_SCORE)
        return np.concatenate([probabilities * (1 - u)[:, None], u[:, None]], axis=1)

    def save(self, path: Path) -> None:
        from tfl.fileio import atomic_path

        arrays = {f"{key}_{k}": np.asarray(getattr(part, key), np.float32) for k, part in enumerate(self.parts)
                  for key in ("centres", "basis", "weights", "origin")}
        if self.logit_kernel is not None:
            arrays |= {"logit_kernel": np.asarray(self.logit_kernel, np.float32),
                       "logit_bias": np.asarray(self.logit_bias, np.float32)}
        with atomic_path(path, force=True) as tmp:
            with open(tmp, "wb") as out:
                np.savez(out, **arrays, scales=np.array([part.scale for part in self.parts]),
                         numbers=np.array([self.threshold, self.keep, self.tau]), name=np.array(self.name),
                         layers=np.array(self.layers, dtype=str))

    @classmethod
    def load(cls, path: Path) -> Detector | None:
        if not path.is_file():
            return None
        with np.load(path) as saved:
            if "centres" in saved:  # a run of tfl 0.1's first unknown category: the pooled features alone
                threshold, scale, keep, tau = (float(x) for x in saved["numbers"])
                part = Part(saved["centres"], saved["basis"], saved["weights"], scale, no_origin(saved["basis"]))
                return cls([part], threshold, keep, str(saved["name"]), tau)
            threshold, keep, tau = (float(x) for x in saved["numbers"])
            parts = [Part(saved[f"centres_{k}"], saved[f"basis_{k}"], saved[f"weights_{k}"], float(scale),
                          saved[f"origin_{k}"] if f"origin_{k}" in saved else no_origin(saved[f"basis_{k}"]))
                     for k, scale in enumerate(saved["scales"])]
            logits = (saved["logit_kernel"], saved["logit_bias"]) if "logit_kernel" in saved else (None, None)
            return cls(parts, threshold, keep, str(saved["name"]), tau, tuple(str(n) for n in saved["layers"]),
                       *logits)


def no_origin(basis: np.ndarray) -> np.ndarray:
    """The origin of a part saved before parts had one: its centres are absolute."""
    return np.zeros(basis.shape[0], np.float32)


def as_parts(features, count: int | None = None) -> list[np.ndarray]:
    """The features of each part: a list as it is, an array as the one part."""
    parts = list(features) if isinstance(features, (list, tuple)) else [features]
    if count is not None and len(parts) != count:
        raise ValueError(f"{len(parts)} kinds of features for a detector of {count} parts")
    return parts


def take(features, rows):
    """The chosen rows of an array of features, or of each array of a list."""
    return [x[rows] for x in features] if isinstance(features, (list, tuple)) else features[rows]


def normalised(features: np.ndarray) -> np.ndarray:
    """Unit length; features near zero (float16 rounds an untrained backbone's to 0) stay near zero."""
    return features / np.sqrt((features ** 2).sum(axis=-1, keepdims=True) + NORM_EPSILON)


# tau, in units of the validation photos' spread of distances, tried against background photos when there are
# some; without them 1 (a photo one spread further from every class weighs as much as softmax odds e times lower).
TAU_CHOICES = (0.25, 0.5, 1.0, 2.0, 4.0)


def fit_part(features: np.ndarray, labels: np.ndarray) -> Part:
    """Centres and spread of one layer's training features (scaled by 1 / sqrt(sigma2))."""
    z = normalised(features.astype(np.float64))
    present = np.unique(labels)  # a class without training photos has no centre (the minimum needs none)
    centres = np.stack([z[labels == c].mean(axis=0) for c in present])
    residuals = z - centres[np.searchsorted(present, labels)]
    values, vectors = np.linalg.eigh(residuals.T @ residuals / max(1, len(z)))
    components = max(1, min(COMPONENTS, len(values) - 1))
    # The directions beyond the top ones count at the features' mean variance per direction (trace / features), not
    # their own: where training photos hardly vary, float16's and int8's rounding would become many spreads of
    # distance (block 6's part, before this and the origin, moved the small real run's int8 decisions on 17% of its
    # photos), and far photos stand out as well at the mean (benchmarks/README.md, "Three layers with a floor").
    sigma2 = max(float(values.mean()), MIN_VARIANCE)
    top = np.maximum(values[-components:], sigma2)
    origin = centres.mean(axis=0) / math.sqrt(sigma2)
    return Part(centres / math.sqrt(sigma2) - origin, vectors[:, -components:], sigma2 / top - 1.0,
                1 / math.sqrt(sigma2), origin)


def spread(values: np.ndarray) -> float:
    """The standard deviation of validation distances, at least one unit (features that hardly vary)."""
    return max(float(values.std()), 1.0) if len(values) else 1.0


def fit_detector(train_features, train_labels: np.ndarray, val_features, val_probabilities: np.ndarray, keep: float,
                 class_names: list[str], background: tuple | None = None, layers: tuple[str, ...] = (),
                 head_weights: tuple[np.ndarray, np.ndarray] | None = None) -> Detector:
    """Centres and spread of each layer from the training features (an array, or a list: the pooled features,
    then the pooled activations of `layers`), tau and theta from the validation ones (whose calibrated
    probabilities the model gives); with `background` (features and probabilities of photos of none of the
    classes), the tau of TAU_CHOICES that flags most of them at the same share of validation photos kept.
    `head_weights`: the head's (kernel, bias), whose largest logit the statistic uses (without: log(max p))."""
    val_parts = as_parts(val_features)
    parts = [fit_part(x, train_labels) for x in as_parts(train_features, len(val_parts))]
    parts = [part.rescaled(1 / math.sqrt(spread(part.distances(x)))) for part, x in zip(parts, val_parts)]
    logits = (None, None)
    if head_weights is not None:
        kernel, bias = (np.asarray(w, np.float64) for w in head_weights)
        largest = (val_parts[0].astype(np.float64) @ kernel + bias).max(axis=1)
        unit_spread = max(float(largest.std()), MIN_LOGIT_SPREAD) if len(largest) else 1.0
        logits = (kernel / unit_spread, bias / unit_spread)
    unit = Detector(parts, 0.0, keep, unknown_name(class_names), layers=layers)
    whole = spread(unit.distances(val_parts))

    def with_tau(tau: float) -> Detector:
        detector = Detector([part.rescaled(1 / math.sqrt(whole * tau)) for part in parts], 0.0, keep, unit.name,
                            tau, layers, *logits)
        statistic = detector.statistic(val_parts, val_probabilities)
        detector.threshold = (float(np.quantile(statistic, keep)) if len(statistic) else 0.0) + TIE_MARGIN
        return detector

    tau = 1.0
    if background is not None and len(as_parts(background[0])[0]):
        flagged_share = {tau: float(flagged(with_tau(tau).scores(*background)).mean()) for tau in TAU_CHOICES}
        tau = max(TAU_CHOICES, key=lambda tau: (flagged_share[tau], -abs(math.log(tau))))
    detector = with_tau(tau)
    detector.parts = [Part(*(a.astype(np.float32) for a in (p.centres, p.basis, p.weights)), p.scale,
                           p.origin.astype(np.float32)) for p in detector.parts]
    if detector.logit_kernel is not None:
        detector.logit_kernel, detector.logit_bias = (w.astype(np.float32) for w in logits)
    return detector


def log_confidence(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(probabilities.max(axis=1), 1e-12))


def flagged(scores: np.ndarray) -> np.ndarray:
    """Which rows of N + 1 scores the unknown category wins."""
    return scores.argmax(axis=1) == scores.shape[1] - 1


def unknown_statistic(scores: np.ndarray) -> np.ndarray:
    """log(u / best class score): above 0 exactly where the unknown category wins; what ranks photos by it."""
    return np.log(np.maximum(scores[:, -1], 1e-30)) - np.log(np.maximum(scores[:, :-1].max(axis=1), 1e-30))


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """The chance that a photo of none of the classes ranks above one of them (scikit-learn's ROC AUC)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def class_probabilities(scores: np.ndarray) -> np.ndarray:
    """The classes' own probabilities back from N + 1 scores: each over their sum, which is 1 - u (a quantized file
    rounds each score apart: dividing by its own 1 - u could give more than 1)."""
    known = scores[:, :-1]
    return known / np.maximum(known.sum(axis=1, keepdims=True), 1e-12)


class UnknownScores(keras.layers.Layer):
    """[pooled features, (pooled activations of the detector's layers,) class probabilities] -> the N + 1 scores
    (the Detector's arithmetic as layers: per part a normalisation, two small matrix products, a minimum over the
    classes; their sum; the head's largest logit again)."""

    def __init__(self, detector: Detector, **kwargs):
        super().__init__(**kwargs)
        self.detector = detector

    def build(self, input_shape):
        self.constants = [[self.constant(getattr(part, key), f"{key}_{k}")
                           for key in ("centres", "basis", "weights", "origin")]
                          for k, part in enumerate(self.detector.parts)]
        self.logits = (None if self.detector.logit_kernel is None else
                       [self.constant(getattr(self.detector, key), key) for key in ("logit_kernel", "logit_bias")])

    def constant(self, value: np.ndarray, name: str):
        """A non-trainable float32 weight holding `value` (saved with the model, as the converters read it)."""
        value = np.asarray(value, np.float32)
        weight = self.add_weight(shape=value.shape, initializer="zeros", trainable=False, name=name)
        weight.assign(value)
        return weight

    def call(self, inputs):
        ops = keras.ops
        *features, probabilities = inputs
        distance = 0.0
        for x, part, (centres, basis, weights, origin) in zip(features, self.detector.parts, self.constants):
            x = ops.cast(x, "float32")
            # a product with rsqrt, not a division: int8 TFLite has no division that takes a quantized zero
            z = x * (ops.rsqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + NORM_EPSILON) * part.scale) - origin
            # |z - c|^2 as |z|^2 - 2 z.c + |c|^2: [batch, classes], where the differences would be [batch, classes,
            # features] (164 MB for a batch of 32 with 1,000 classes)
            iso = (ops.sum(ops.square(z), axis=-1, keepdims=True) - 2.0 * ops.matmul(z, ops.transpose(centres))
                   + ops.expand_dims(ops.sum(ops.square(centres), axis=-1), 0))
            along = ops.expand_dims(ops.matmul(z, basis), 1) - ops.expand_dims(ops.matmul(centres, basis), 0)
            distance = distance + ops.min(iso + ops.sum(ops.square(along) * weights, axis=-1), axis=1, keepdims=True)
        odds = distance - self.detector.threshold
        if self.logits is not None:  # s + log(max p) - theta, s = d - the largest logit (over its spread)
            kernel, bias = self.logits
            largest = ops.max(ops.matmul(ops.cast(features[0], "float32"), kernel) + bias, axis=-1, keepdims=True)
            confidence = ops.log(ops.maximum(ops.max(probabilities, axis=-1, keepdims=True), 1e-12))
            odds = odds - largest + confidence
        u = ops.minimum(ops.sigmoid(odds), MAX_SCORE)
        return ops.concatenate([probabilities * (1.0 - u), u], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[-1][0], input_shape[-1][1] + 1)


def open_set_model(model: keras.Model, detector: Detector) -> keras.Model:
    """The classifier with the unknown category: pixels in, N + 1 scores out (the model's own layers, shared)."""
    from tfl.errors import TflError

    other_run = (f"it belongs to another run. Put back the run's own {UNKNOWN_FILE}, or delete it to use the model "
                 "without the unknown category.")
    try:
        extractor = feature_extractor(model, extra=detector.layers)
    except ValueError:
        raise TflError(f"The run's {UNKNOWN_FILE} reads the backbone layers {', '.join(detector.layers)}, which its "
                       f"model lacks: {other_run}") from None
    sizes = [int(shape[-1]) for shape in output_shapes(extractor)]
    if sizes != [part.basis.shape[0] for part in detector.parts]:
        fitted = " + ".join(str(part.basis.shape[0]) for part in detector.parts)
        raise TflError(f"The run's {UNKNOWN_FILE} was fitted on {fitted} features, and its model gives "
                       f"{' + '.join(map(str, sizes))}: {other_run}")
    classes = int(get_head(model).output_shape[-1])
    if detector.logit_kernel is not None and detector.logit_kernel.shape != (sizes[0], classes):
        raise TflError(f"The run's {UNKNOWN_FILE} reads a head of {detector.logit_kernel.shape[1]} classes, and its "
                       f"model has {classes}: {other_run}")
    pixels = keras.Input(model.input_shape[1:], name="pixels")
    features = as_parts(extractor(pixels))
    probabilities = get_head(model)(features[0])
    scores = UnknownScores(detector, name=LAYER_NAME)([*features, probabilities])
    return keras.Model(pixels, scores, name=f"{model.name}_open_set")


@dataclass
class Validation:
    """The finished model's pooled features of the validation photos (in order), their labels, the calibrated
    probabilities it gives them, and their paths: computed once, for the calibration and for the unknown category."""

    features: np.ndarray | list[np.ndarray]  # the pooled features, or a list: they and the detector layers' (as_parts)
    labels: np.ndarray  # class indices
    probabilities: np.ndarray
    paths: list[str]


def fit_for_run(extractor: keras.Model, head: keras.Model, train, val: Validation, keep: float,
                class_names: list[str], image_size: int, batch_size: int, seed: int,
                background: list[str] | None = None, layers: tuple[str, ...] = ()) -> tuple[Detector, dict]:
    """The detector of a finished model (`extractor`: its pixels to pooled features, and the pooled activations of
    the backbone's `layers`, traced by the validation pass; `head`: features to calibrated probabilities): features of a sample of its training photos (one pass; and
    of the background photos, when given), its validation photos' (`val`), and what it measured for metrics.json.
    (Nine parameters: the run's settings it needs, passed as values so that this module does not import training.)"""
    start = time.time()
    chosen_train = balanced_sample(np.asarray(train.labels), TRAIN_SAMPLE, len(class_names), seed)
    chosen_val = np.sort(np.random.default_rng(seed).permutation(len(val.labels))[:VAL_SAMPLE])
    train_x, train_hot = features_of(extractor, train.subset(chosen_train), len(class_names), image_size, batch_size)
    train_y = train_hot.argmax(axis=1)
    val_x, val_y, val_p = take(val.features, chosen_val), val.labels[chosen_val], val.probabilities[chosen_val]
    outliers = None
    if background:
        chosen = np.random.default_rng(seed).permutation(len(background))[:VAL_SAMPLE]
        outliers_x = pixel_features(extractor, [background[i] for i in chosen], image_size, batch_size)
        if len(as_parts(outliers_x)[0]):  # (checked before training: some file decodes)
            outliers = (outliers_x, np.asarray(head.predict_on_batch(as_parts(outliers_x)[0])))
    detector = fit_detector(train_x, train_y, val_x, val_p, keep, class_names, outliers, layers,
                            head.get_layer("probabilities").get_weights())
    val_scores = detector.scores(val_x, val_p)
    val_flagged = flagged(val_scores)
    val_paths = [val.paths[i] for i in chosen_val] if val.paths else []
    likeliest = [i for i in np.argsort(-unknown_statistic(val_scores)) if val_flagged[i]][:8]
    report = {"method": f"Mahalanobis distance to the nearest class ({COMPONENTS} components) of the pooled "
                        f"features{''.join(', ' + layer for layer in layers)}, less the head's largest logit, as one "
                        "more category",
              "name": detector.name, "keep": keep, "threshold": round(detector.threshold, 4),
              "fitted_on": {"train_photos": int(len(train_y)), "val_photos": int(len(val_y))},
              "val_flagged": round(float(val_flagged.mean()), 4) if len(val_y) else None,
              "val_accuracy_of_kept": (round(float((val_p.argmax(1) == val_y)[~val_flagged].mean()), 4)
                                       if (~val_flagged).any() else None),
              "val_flagged_examples": [val_paths[i] for i in likeliest] if val_paths else [],
              "tau": detector.tau, "seconds": round(time.time() - start, 1)}
    if outliers is not None:
        report["background"] = {"photos": int(len(outliers[1])),
                                "flagged": round(float(flagged(detector.scores(*outliers)).mean()), 4)}
    return detector, report


def balanced_sample(labels: np.ndarray, total: int, classes: int, seed: int) -> np.ndarray:
    """Indices of up to max(5, total / classes) photos of each class, at random, in order."""
    per_class = max(5, math.ceil(total / max(1, classes)))
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(classes)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, int)


def features_of(extractor: keras.Model, split, num_classes: int, image_size: int, batch_size: int):
    """(pooled features, one-hot or multi-hot label rows) of a split, in its order: the features an array, or a
    list of arrays when the extractor has several outputs. Every batch is padded to `batch_size`, so that the
    extractor is traced once (a last, smaller batch traced it again: a second or two)."""
    from tfl.pipeline import padded_batches

    features, labels = [], []
    for padded, one_hot, count in padded_batches(split, num_classes, image_size, batch_size):
        features.append([np.asarray(x)[:count] for x in as_parts(extractor.predict_on_batch(padded))])
        labels.append(one_hot)
    return stacked(extractor, features), (np.concatenate(labels) if labels else np.zeros((0, num_classes), np.float32))


def pixel_features(extractor: keras.Model, paths: list[str], image_size: int, batch_size: int):
    """Features of the image files that decode (as predict decodes them; an array, or a list of arrays as
    features_of gives them); the others are left out."""
    from tfl.pipeline import readable_batches

    return stacked(extractor, [[np.asarray(x) for x in as_parts(extractor.predict_on_batch(pixels.astype("float32")))]
                               for _, pixels in readable_batches(paths, image_size, batch_size)])


def stacked(extractor: keras.Model, batches: list[list[np.ndarray]]):
    """Batches of each output of the extractor, one array per output (the array alone for one output)."""
    outputs = [np.concatenate([batch[k] for batch in batches]) if batches else
               np.zeros((0, shape[-1]), np.float32) for k, shape in enumerate(output_shapes(extractor))]
    return outputs if len(outputs) > 1 else outputs[0]


def output_shapes(model: keras.Model) -> list[tuple]:
    shape = model.output_shape
    return list(shape) if isinstance(shape, list) or isinstance(shape[0], (tuple, list)) else [shape]


def unknown_background(folder: str | None, check_only: bool = False) -> list[str] | None:
    """The files of --background, or an error saying what is wrong with it (`check_only`: before training, when one
    of its first files must also decode as an image)."""
    from tfl.data import photos_below
    from tfl.errors import TflError
    from tfl.pipeline import readable_batches

    if folder is None:
        return None
    advice = "(they tune the unknown category; they are never a class), or leave the option out"
    files = photos_below(folder, "--background", advice)
    if check_only:
        if not any(True for _ in readable_batches(files[:50], 32, 1)):
            raise TflError(f"--background '{folder}': none of its first {min(50, len(files))} files is an image tfl "
                           f"can read. Pass a folder of photos of none of the classes {advice}.")
        return None
    return files
