"""Training on several devices and machines: Keras' own engines per backend, the chief, batches and shards.

- TensorFlow: `tf.distribute.MirroredStrategy` (the devices of one machine) and `MultiWorkerMirroredStrategy`
  (several machines, described by the TF_CONFIG environment variable).
- JAX: `keras.distribution.DataParallel` over every device, and over several processes after
  `keras.distribution.initialize` (KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID, or what a
  cluster launcher such as SLURM sets).

Every worker trains on its own share of the training files; validation batches are split across all replicas and
the metrics summed over them, so the numbers are those of the whole validation set. Only the chief (worker 0)
writes the run; the others work in a temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import keras

from tfl.backend import start_jax
from tfl.config import DISTRIBUTE_MODES
from tfl.split import Split
from tfl.errors import TflError, unknown, warn
from tfl.keras_patches import patch_keras_distributed_fit


@dataclass
class Cluster:
    """Where training runs: one device, several on this machine, or several machines."""

    mode: str = "none"  # none | mirrored | multiworker (auto resolved)
    engine: str = "one device"
    replicas: int = 1  # devices training in sync, over every worker
    workers: int = 1
    worker_index: int = 0
    strategy: Any = None  # the tf.distribute strategy on TensorFlow
    distribution: Any = None  # the keras.distribution on JAX
    local_devices: int = 1

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    @property
    def distributed(self) -> bool:
        return self.replicas > 1 or self.workers > 1

    def scope(self):
        """Variables made inside are mirrored on every replica (TensorFlow); JAX lays them out by itself."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def global_batch(self, batch_size: int) -> int:
        """`batch_size` is per replica, as in Keras' distributed training guide."""
        return batch_size * self.replicas

    def learning_rate_scale(self) -> float:
        """Square-root scaling for Adam with a batch `replicas` times larger (Malladi et al. 2022, "On the SDEs and
        Scaling Rules for Adaptive Gradient Algorithms"); the linear rule fits SGD, not Adam."""
        return math.sqrt(self.replicas)

    def steps_per_epoch(self, images: int, batch_size: int) -> int:
        return max(1, math.ceil(images / self.global_batch(batch_size)))

    def shard(self, split: Split) -> Split:
        """This worker's training files: every `workers`-th file, so each shard keeps the class mix."""
        if self.workers == 1:
            return split
        return Split(split.paths[self.worker_index::self.workers], split.labels[self.worker_index::self.workers])

    def pipeline_batch(self, batch_size: int) -> int:
        """The batch one input pipeline yields: a replica's (TensorFlow gathers one per local replica per step),
        or all of this process's devices' (JAX)."""
        return batch_size if self.strategy is not None else batch_size * self.local_devices

    def validation_steps(self, images: int, batch_size: int) -> int | None:
        """Set for distributed validation, whose split batches have no length tf.data can tell."""
        return self.steps_per_epoch(images, batch_size) if self.distributed else None

    def fit_data(self, make_train, make_val, batch_size: int, class_weight: dict | None):
        """(training data, validation data, class weights for fit). `make_train(batch, repeat)` builds this worker's
        (x, y) training batches and `make_val(batch)` the validation batches. One device: as they are. Several: the
        training batches repeat (every worker takes the same number of steps) and carry the class weights, the
        validation batches are padded to the global batch and split over the replicas."""
        if not self.distributed:
            return make_train(batch_size, False), make_val(batch_size), class_weight
        pipeline_batch, global_batch = self.pipeline_batch(batch_size), self.global_batch(batch_size)
        train = padded_batches(make_train(pipeline_batch, True), pipeline_batch, class_weight)
        val = padded_batches(make_val(global_batch), global_batch)
        return self.training_data(train), self.validation_data(val, batch_size), None

    def training_data(self, dataset):
        """This worker's repeated, weighted training batches, handed to the engine."""
        if self.strategy is None:
            return dataset
        import tensorflow as tf

        dataset = dataset.with_options(no_auto_shard(tf))
        return self.strategy.distribute_datasets_from_function(lambda context: dataset)

    def validation_data(self, dataset, batch_size: int):
        """Padded global batches (see `padded_batches`), split so that every replica gets its part of each."""
        import tensorflow as tf

        if self.strategy is None:  # JAX: one process's share of each global batch
            return (dataset.rebatch(self.pipeline_batch(batch_size)).shard(self.workers, self.worker_index)
                    .prefetch(tf.data.AUTOTUNE))
        # TensorFlow: the per-replica parts of this worker's replicas, which come in the global order
        first = self.worker_index * self.local_devices
        keep = lambda i, _: tf.logical_and(i % self.replicas >= first,  # noqa: E731
                                           i % self.replicas < first + self.local_devices)
        local = dataset.rebatch(batch_size).enumerate().filter(keep).map(lambda i, batch: batch)
        local = local.with_options(no_auto_shard(tf)).prefetch(tf.data.AUTOTUNE)
        return self.strategy.distribute_datasets_from_function(lambda context: local)

    def wait_for_all(self, name: str) -> None:
        """A barrier for JAX processes: a worker that finished training waits for the chief to write the run, as
        JAX's shutdown barrier would otherwise time out (and abort both) while the chief evaluates."""
        if self.distribution is not None and self.workers > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)

    @contextlib.contextmanager
    def peers_explained(self):
        """A worker whose peer stopped gets a message saying so, not the collective operation's internals."""
        try:
            yield
        except Exception as exc:
            if self.workers > 1 and any(sign in str(exc) for sign in LOST_PEER_SIGNS):
                raise TflError(f"Worker {self.worker_index} lost contact with the other workers of the cluster: one "
                               "of them stopped or cannot be reached. Look at the other workers' output for the "
                               "first error, then start every worker again.") from None
            raise

    def describe(self, batch_size: int) -> str:
        if not self.distributed:
            return ""
        where = (f"{self.workers} workers x {self.local_devices} device(s)" if self.workers > 1
                 else f"{self.local_devices} devices")
        return (f"Distributed: {self.engine}, {where} = {self.replicas} replicas, this is worker {self.worker_index}"
                f"{' (chief)' if self.is_chief else ''}; global batch {self.global_batch(batch_size)} "
                f"({batch_size} per replica), learning rates x {self.learning_rate_scale():.2f} (square-root "
                f"scaling for Adam)")


def no_auto_shard(tf):
    """tfl shards by file itself; the engine must not shard again."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def padded_batches(dataset, batch_size: int, class_weight: dict[int, float] | None = None):
    """(x, y) batches -> (x, y, weight) batches of exactly `batch_size`: a short last batch is padded with
    weight-0 rows, so that every replica gets a part of every step and the padding counts for nothing."""
    import tensorflow as tf

    weights = None if class_weight is None else tf.constant([class_weight[i] for i in sorted(class_weight)],
                                                            tf.float32)

    def pad(x, y):
        n = tf.shape(x)[0]
        w = tf.ones([n]) if weights is None else tf.gather(weights, tf.argmax(y, axis=-1))
        extra = batch_size - n
        x = tf.concat([x, tf.zeros(tf.concat([[extra], tf.shape(x)[1:]], 0), x.dtype)], 0)
        y = tf.concat([y, tf.zeros(tf.concat([[extra], tf.shape(y)[1:]], 0), y.dtype)], 0)
        w = tf.concat([w, tf.zeros([extra])], 0)
        return x, y, w

    return dataset.map(pad, num_parallel_calls=tf.data.AUTOTUNE)


LOST_PEER_SIGNS = ("Collective ops is aborted", "Socket closed", "heartbeat timeout", "Connection reset by peer",
                   "failed to connect to all addresses")

_CLUSTERS: dict[tuple[str, str], Cluster] = {}  # a process joins a cluster once; TensorFlow allows no second time


def connect(mode: str, backend: str | None = None) -> Cluster:
    """The cluster for `mode` on the current backend; call it before TensorFlow runs anything (multiworker)."""
    backend = backend or keras.backend.backend()
    if mode not in DISTRIBUTE_MODES:
        raise unknown("--distribute", mode, DISTRIBUTE_MODES)
    key = (mode, backend)
    if key not in _CLUSTERS:
        _CLUSTERS[key] = (tf_cluster if backend == "tensorflow" else jax_cluster)(mode)
    cluster = _CLUSTERS[key]
    if cluster.distribution is not None:
        keras.distribution.set_distribution(cluster.distribution)
    return cluster


def disconnect(cluster: Cluster) -> None:
    """Leaves the JAX distribution set by `connect` (so that the process can build plain models again)."""
    if cluster.distribution is not None:
        keras.distribution.set_distribution(None)


# --- TensorFlow: tf.distribute ----------------------------------------------------------------------------------

def tf_cluster(mode: str) -> Cluster:
    import tensorflow as tf

    if mode == "multiworker":
        return tf_multi_worker_cluster()
    gpus = tf.config.list_logical_devices("GPU")  # starts TensorFlow's runtime: too early for multiworker
    if mode == "auto":
        mode = "mirrored" if len(gpus) > 1 else "none"
    if mode == "none":
        return Cluster()
    if mode == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        if len(devices) < 2:
            warn(f"--distribute mirrored: this machine shows one device ({devices[0].name}), so training runs on "
                 "it alone.")
            return Cluster()
        patch_keras_distributed_fit()
        strategy = tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
        return Cluster("mirrored", "tf.distribute.MirroredStrategy", len(devices), strategy=strategy,
                       local_devices=len(devices))


def tf_multi_worker_cluster() -> Cluster:
    import tensorflow as tf

    workers, index = read_tf_config()
    patch_keras_distributed_fit()
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as exc:
        if "program startup" in str(exc):
            raise TflError("--distribute multiworker must be set up before TensorFlow runs anything in this "
                           "process: start tfl finetune (or call tfl.finetune) before any other TensorFlow work."
                           ) from None
        raise
    replicas = strategy.num_replicas_in_sync
    return Cluster("multiworker", "tf.distribute.MultiWorkerMirroredStrategy", replicas, workers, index, strategy,
                   local_devices=max(1, replicas // workers))


def read_tf_config() -> tuple[int, int]:
    """(number of workers, this worker's index, the chief being 0) from TF_CONFIG, with errors a user can act on."""
    raw = os.environ.get("TF_CONFIG")
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
               '"index": 0}}\'')
    if not raw:
        raise TflError("--distribute multiworker on the TensorFlow backend needs the TF_CONFIG environment variable, "
                       f"which lists every worker and says which one this is, for example {example} on the first "
                       "machine and index 1 on the second (see the README).")
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        chiefs, others = list(cluster.get("chief", [])), list(cluster.get("worker", []))
        workers = len(chiefs) + len(others)
        index = int(task["index"]) + (len(chiefs) if task["type"] == "worker" else 0)
        if task["type"] not in ("worker", "chief") or not 0 <= index < workers:
            raise ValueError(f"task {task} is not one of the cluster's {workers} workers")
    except (ValueError, KeyError, TypeError) as exc:
        raise TflError(f"TF_CONFIG is not a usable cluster description ({exc}). It must look like {example}."
                       ) from None
    return workers, index


# --- JAX: keras.distribution --------------------------------------------------------------------------------------

JAX_CLUSTER_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                         "KERAS_DISTRIBUTION_PROCESS_ID")


def jax_cluster(mode: str) -> Cluster:
    import jax

    if mode == "auto":
        mode = "mirrored" if len([d for d in jax.devices() if d.platform == "gpu"]) > 1 else "none"
    if mode == "none":
        return Cluster()
    if mode == "multiworker":
        if not all(os.environ.get(name) for name in JAX_CLUSTER_VARIABLES) and "SLURM_JOB_ID" not in os.environ:
            raise TflError("--distribute multiworker on the JAX backend needs the cluster's coordinates: set "
                           "KERAS_DISTRIBUTION_JOB_ADDRESSES (host:port of process 0, or every process's, comma "
                           "separated), KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID on every "
                           "machine (or start tfl under a launcher JAX detects, such as SLURM). See the README.")
        keras.distribution.initialize()
    start_jax()
    devices = jax.devices()
    processes, index = jax.process_count(), jax.process_index()
    if len(devices) < 2:
        warn(f"--distribute {mode}: JAX shows one device ({devices[0]}), so training runs on it alone (for several "
             "CPU devices: XLA_FLAGS=--xla_force_host_platform_device_count=N).")
        return Cluster()
    distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    return Cluster(mode, "keras.distribution.DataParallel (JAX)", len(devices), processes, index,
                   distribution=distribution, local_devices=jax.local_device_count())

