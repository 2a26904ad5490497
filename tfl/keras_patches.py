"""Fixes to Keras internals that tfl needs until Keras has them: each names its upstream issue, and
tests/test_keras_patches.py fails once Keras no longer needs it, so that it can be dropped."""

from __future__ import annotations

UPSTREAM_ISSUE = "keras-team/keras#20585"


def patch_keras_distributed_fit() -> None:
    """Two fixes to Keras 3's TensorFlow trainer that tf.distribute needs (keras-team/keras#20585, still open and
    still failing with TF 2.21 / Keras 3.15):
    - `_maybe_symbolic_build` reduces the first input batch across replicas only to learn its shapes. The
      collective reduce of MultiWorkerMirroredStrategy rejects that ("Attempt to convert a value (PerReplica...)"),
      and under MirroredStrategy an (x, y, weight) batch comes back as one mangled value: take this replica's part
      instead;
    - `reduce_per_replica` reduces scalar metrics along axis 0 ("Invalid reduction dimension 0"): reduce the
      values across replicas only. The metrics themselves are summed over every replica already (their variables
      aggregate by sum), so every worker sees the same numbers.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_tfl_multi_worker_patch", False):
        return
    build, reduce = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica

    def local_part(strategy, value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or iterator is None:
            return build(self, iterator, data_batch)
        if built(self):  # taking a batch would cost validation with a fixed number of steps its last batch
            return
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(lambda v: local_part(strategy, v), next(batches))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def built(model) -> bool:
        return (all(layer.built for layer in model._flatten_layers())
                and all(part is None or part.built for part in (model._compile_metrics, model._compile_loss,
                                                                model.optimizer)))

    def reduce_per_replica(values, strategy, reduction):
        if trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean"):
            return tf.nest.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None)
                if isinstance(v, tf.distribute.DistributedValues) else v, values)
        return reduce(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    trainer._tfl_multi_worker_patch = True
