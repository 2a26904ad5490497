"""The feature cache: when a head-only stage trains on backbone features computed once, and how they are kept."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import keras
import numpy as np
import tensorflow as tf

from tfl.augment import PRESETS_VERSION
from tfl.data import ImageData, Split
from tfl.pipeline import DECODER_VERSION, make_pipeline
from tfl.distribute import Cluster
from tfl.model import feature_extractor, get_head
from tfl.fileio import atomic_path

if TYPE_CHECKING:
    from tfl.config import Stage, TrainConfig

FEATURE_CACHE_FOLDER = ".feature_cache"  # under the runs root, shared by runs on the same data and backbone



def file_fingerprint(path: str) -> list:
    stat = os.stat(path)
    return [path, stat.st_size, stat.st_mtime_ns]


def cache_key(split: Split, config: TrainConfig, image_size: int, views: int) -> str:
    """Changes whenever the data, arch, image size, weights, low-pass or the augmented views would change the
    features."""
    weights_id = file_fingerprint(config.weights) if os.path.isfile(config.weights) else config.weights
    description = {"files": [file_fingerprint(p) for p in split.paths], "labels": split.labels, "arch": config.arch,
                   "alpha": config.alpha, "image_size": image_size, "weights": weights_id, "views": views,
                   "augment": f"{config.augment} v{PRESETS_VERSION}" if views > 1 else "none", "seed": config.seed,
                   "precision": config.precision, "low_pass": config.low_pass, "keras": keras.__version__,
                   "decoder": DECODER_VERSION, "storage": STORAGE_VERSION}
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]


FEATURE_MEMORY_LIMIT_BYTES = 2 * 2**30  # larger feature caches (as float32) are streamed from disk while the head trains
# On disk: features as float16 (half the bytes; 0.05% of a value, far below what the head or the probe tells apart) and
# labels as 0/1 bytes, a quarter of float32's (a million photos of 1,000 classes: 1 GB of labels, not 4).
STORED_LABELS = "uint8"
FLOAT16_TYPICAL = 1e-3  # the median feature size below which float16's steps are coarse or zero
FLOAT16_LARGEST = 600.0  # a hundredth of float16's largest value: headroom for later photos' features
STORAGE_VERSION = 2  # 2: float16 features (where they suit it) and 0/1 byte labels; part of the cache key


def stored_dtype(first: np.ndarray) -> str:
    """float16 for features of an ordinary size (a pretrained backbone's: 0.01-10, as the first batch shows them);
    float32 for others, such as a backbone with random weights, whose features of 1e-8 float16 would flush to zero,
    or one whose features come near float16's largest value."""
    typical = float(np.median(np.abs(first[first != 0]))) if np.any(first) else 0.0
    fits = FLOAT16_TYPICAL <= typical and float(np.abs(first).max()) <= FLOAT16_LARGEST
    return "float16" if fits and np.all(np.isfinite(first)) else "float32"


def compute_features(extractor: keras.Model, split: Split, num_classes: int, image_size: int, batch_size: int,
                     folder: Path, views: int = 1, augmenter=None) -> None:
    """Write features.npy and one-hot labels.npy of every image into `folder`, batch by batch, so a set of any size
    is never held in memory whole. `views` > 1 adds randomly augmented copies of each image."""
    rows, width = len(split) * views, extractor.output_shape[-1]
    folder.mkdir(parents=True, exist_ok=True)
    features = None  # opened at the first batch, whose size chooses the stored type
    labels = np.lib.format.open_memmap(folder / "labels.npy", mode="w+", dtype=STORED_LABELS,
                                       shape=(rows, num_classes))
    plain = make_pipeline(split, num_classes, image_size, batch_size, training=False)
    row = 0
    for view in range(views):
        dataset = plain  # the first view is the image as it is, the others randomly augmented copies
        if view > 0 and augmenter is not None:
            dataset = plain.map(lambda x, y: (augmenter(x), y), num_parallel_calls=tf.data.AUTOTUNE)
        for images, one_hot in dataset:
            batch = np.asarray(extractor.predict_on_batch(np.asarray(images)))
            if features is None:
                features = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=stored_dtype(batch),
                                                     shape=(rows, width))
            features[row:row + len(one_hot)] = batch
            labels[row:row + len(one_hot)] = np.asarray(one_hot)
            row += len(one_hot)
    if features is None:  # no photo
        features = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype="float32", shape=(0, width))
    features.flush()
    labels.flush()
    del features, labels  # close the memory maps before the folder is renamed


def store_features(folder: Path, features: np.ndarray, one_hot: np.ndarray, batch_size: int) -> None:
    """Features computed elsewhere (with their one-hot labels) into the cache folder `folder`, atomically, stored as
    compute_features stores them (the type chosen on the first batch)."""
    with atomic_path(folder, force=True) as target:  # force: another run may have written the same features
        target.mkdir()
        np.save(target / "features.npy", features.astype(stored_dtype(features[:batch_size])))
        np.save(target / "labels.npy", one_hot.astype(STORED_LABELS))


def load_features(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels): read into memory as float32 when that fits FEATURE_MEMORY_LIMIT_BYTES, else
    memory-mapped as stored (float16 features as a rule, 0/1 byte labels: streamed_feature_dataset casts each
    batch)."""
    stored = np.load(folder / "features.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy")
    if stored.size * 4 <= FEATURE_MEMORY_LIMIT_BYTES:
        return np.array(stored, np.float32), labels.astype(np.float32)  # a copy: the file is not kept mapped
    return stored, labels


def cached_features(cache_dir: Path, key: str, compute: Callable[[Path], None]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(features, labels, reused): loaded from `cache_dir/key`, or written there atomically by `compute(folder)`."""
    folder = cache_dir / key
    if (folder / "features.npy").is_file():
        return (*load_features(folder), True)
    with atomic_path(folder, force=True) as target:  # force: another run may have written the same features
        target.mkdir()
        compute(target)
    return (*load_features(folder), False)


def feature_dataset(features: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool, seed: int,
                    repeat: bool = False) -> tf.data.Dataset:
    """Batches of (features, labels): from memory, or streamed from a memory-mapped cache too large for memory.
    `repeat`: an endless stream of full batches."""
    if isinstance(features, np.memmap):
        dataset = streamed_feature_dataset(features, labels, batch_size, shuffle, seed)
        return dataset.repeat().rebatch(batch_size, drop_remainder=True) if repeat else dataset
    dataset = tf.data.Dataset.from_tensor_slices((features, labels))
    if shuffle:
        dataset = dataset.shuffle(len(features), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def streamed_feature_dataset(features: np.memmap, labels: np.ndarray, batch_size: int, shuffle: bool,
                             seed: int) -> tf.data.Dataset:
    """Each epoch reads the rows of a fresh permutation batch by batch; the OS page cache keeps what fits."""
    rng = np.random.default_rng(seed)

    def batches():
        order = rng.permutation(len(features)) if shuffle else np.arange(len(features))
        for start in range(0, len(order), batch_size):
            rows = np.sort(order[start:start + batch_size])  # sorted rows read the file in one forward sweep
            yield np.asarray(features[rows], np.float32), labels[rows].astype(np.float32)

    signature = (tf.TensorSpec((None, features.shape[1]), tf.float32),
                 tf.TensorSpec((None, labels.shape[1]), tf.float32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-len(features) // batch_size)))  # for fit
    return dataset.prefetch(tf.data.AUTOTUNE)


def uses_feature_cache(stage: Stage, config: TrainConfig) -> bool:
    """Head-only stages of 2+ epochs train on cached features; MixUp/CutMix need pixels, so they turn it off."""
    return (config.feature_cache and stage.unfreeze_blocks == 0 and stage.epochs >= 2
            and not (config.mixup or config.cutmix))


def feature_stage_data(model: keras.Model, config: TrainConfig, image_data: ImageData, image_size: int, augmenter,
                       feature_cache_dir: Path, scratch_dir: Path, echo: Callable[[str], None],
                       custom_augmenter: bool = False, cluster: Cluster | None = None,
                       class_weight: dict | None = None):
    """(head model, training data, validation data, class weights for fit, (training features, validation features))
    for a head-only stage on cached backbone features. On several workers each computes the features of its own share of the training files.

    Features are computed once (or loaded) and kept in `feature_cache_dir` for later runs on the same files. What
    cannot be fingerprinted stays in `scratch_dir` of this run: tfds splits (no files), and augmented views made by a
    caller's own augmenter (the key knows presets by name only). (Eleven parameters: what a stage of
    `tfl.train.Training` holds, passed as values so that this module does not import the training.)"""
    start = time.time()
    extractor = feature_extractor(model)
    num_classes = len(image_data.class_names)

    def features_of(split: Split, views: int, name: str, private: bool):
        compute = lambda folder: compute_features(extractor, split, num_classes, image_size,  # noqa: E731
                                                  config.batch_size, folder, views, augmenter)
        if private:
            compute(scratch_dir / name)
            return (*load_features(scratch_dir / name), False)
        key = cache_key(split, config, image_size, views)
        return cached_features(feature_cache_dir, key, compute)

    cluster = cluster or Cluster()
    private = image_data.train.source is not None or (custom_augmenter and config.cache_views > 1)
    train_x, train_y, train_reused = features_of(cluster.shard(image_data.train), config.cache_views, "train",
                                                 private)
    val_x, val_y, val_reused = features_of(image_data.val, 1, "val", image_data.val.source is not None)
    how = "reused from" if train_reused and val_reused else "computed into"
    folder = scratch_dir if private else feature_cache_dir
    held = "streamed from disk while training" if isinstance(train_x, np.memmap) else "held in memory"
    echo(f"Feature cache: {len(train_x):,} train ({config.cache_views} view(s) per image) and {len(val_x):,} "
         f"validation feature vectors of {train_x.shape[1]} values, {how} {folder} in {time.time() - start:.1f}s, "
         f"{held}")
    return (get_head(model), *cluster.fit_data(
        lambda batch, repeat: feature_dataset(train_x, train_y, batch, shuffle=True, seed=config.seed, repeat=repeat),
        lambda batch: feature_dataset(val_x, val_y, batch, shuffle=False, seed=0), config.batch_size, class_weight),
        (train_x, val_x))
