"""`Split`: one split of a dataset, image files and their labels (or a tf.data source). Light: no TensorFlow, so
that the run folder can read and write its splits.json as Splits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Split:
    """One split of a dataset: image files with integer labels, or a tf.data source of (image, label)."""

    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    source: Any = None  # tfds: a tf.data.Dataset of decoded uint8 images, with no files

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: str):
        """split["paths"] and split["labels"], as splits.json spells them (for code written against its dicts)."""
        if key not in ("paths", "labels"):
            raise KeyError(key)
        return getattr(self, key)

    def present(self) -> Split:
        """The files that are still where they were, with their labels."""
        kept = [i for i, path in enumerate(self.paths) if os.path.isfile(path)]
        return Split([self.paths[i] for i in kept], [self.labels[i] for i in kept])

    def subset(self, indices) -> Split:
        """These rows (of a tfds source too: its elements at these positions)."""
        labels = [self.labels[i] for i in indices]
        if self.source is None:
            return Split([self.paths[i] for i in indices], labels)
        import tensorflow as tf  # only here: this module is read without TensorFlow

        wanted = tf.constant(sorted(int(i) for i in indices), tf.int64)
        picked = self.source.enumerate().filter(lambda i, _: tf.reduce_any(tf.equal(i, wanted))).map(lambda _, x: x)
        return Split([], [self.labels[i] for i in sorted(indices)], picked)
