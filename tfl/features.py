"""Cached backbone features for the head-only stage: pooled features computed once, the head trained on them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfl.data import Split, make_pipeline

POOL_LAYER, DROPOUT_LAYER, HEAD_LAYER = "pool", "dropout", "probabilities"


def feature_extractor(model: keras.Model) -> keras.Model:
    """pixels -> preprocessing -> frozen backbone -> pooled features, sharing the model's layers."""
    return keras.Model(model.input, model.get_layer(POOL_LAYER).output, name="feature_extractor")


def head_model(model: keras.Model) -> keras.Model:
    """features -> dropout -> softmax, the very layers of `model`: training it trains the full model's head."""
    features = keras.Input(model.get_layer(POOL_LAYER).output.shape[1:], name="features")
    probabilities = model.get_layer(HEAD_LAYER)(model.get_layer(DROPOUT_LAYER)(features))
    return keras.Model(features, probabilities, name="head")


def file_fingerprint(path: str) -> list:
    stat = os.stat(path)
    return [path, stat.st_size, stat.st_mtime_ns]


def cache_key(split: Split, arch: str, alpha: float, image_size: int, weights: str, views: int, augment: str,
              seed: int, precision: str = "float32") -> str:
    """Changes whenever the data, arch, image size, weights or the augmented views would change the features."""
    weights_id = file_fingerprint(weights) if os.path.isfile(weights) else weights
    description = {"files": [file_fingerprint(p) for p in split.paths], "labels": split.labels, "arch": arch,
                   "alpha": alpha, "image_size": image_size, "weights": weights_id, "views": views,
                   "augment": augment if views > 1 else "none", "seed": seed, "precision": precision,
                   "keras": keras.__version__}
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]


def compute_features(extractor: keras.Model, split: Split, num_classes: int, image_size: int, batch_size: int,
                     views: int = 1, augmenter=None) -> tuple[np.ndarray, np.ndarray]:
    """Features and one-hot labels of every image; `views` > 1 adds augmented copies of each image."""
    features, labels = [], []
    plain = make_pipeline(split, num_classes, image_size, batch_size, training=False)
    for view in range(views):
        dataset = plain  # the first view is the image as it is, the others randomly augmented copies
        if view > 0 and augmenter is not None:
            dataset = plain.map(lambda x, y: (augmenter(x), y), num_parallel_calls=tf.data.AUTOTUNE)
        for images, one_hot in dataset:
            features.append(np.asarray(extractor.predict_on_batch(np.asarray(images))))
            labels.append(np.asarray(one_hot))
    return np.concatenate(features).astype("float32"), np.concatenate(labels).astype("float32")


def cached_features(cache_dir: Path, key: str, compute) -> tuple[np.ndarray, np.ndarray, bool]:
    """(features, labels, reused): loaded from `cache_dir/key`, or computed and saved there atomically."""
    folder = cache_dir / key
    if (folder / "features.npy").is_file():
        return np.load(folder / "features.npy"), np.load(folder / "labels.npy"), True
    features, labels = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{key}.", suffix=".tmp"))
    np.save(tmp / "features.npy", features)
    np.save(tmp / "labels.npy", labels)
    try:
        os.replace(tmp, folder)
    except OSError:  # another run wrote the same key first
        shutil.rmtree(tmp, ignore_errors=True)
    return features, labels, False


def feature_dataset(features: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool,
                    seed: int) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices((features, labels))
    if shuffle:
        dataset = dataset.shuffle(len(features), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
