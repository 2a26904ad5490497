"""Mixed precision: choosing the Keras dtype policy (float32, mixed_float16, mixed_bfloat16 or auto)."""

from __future__ import annotations

import contextlib

import keras

from tfl.config import PRECISIONS
from tfl.errors import unknown


def has_gpu() -> bool:
    if keras.backend.backend() == "jax":
        import jax

        return any(device.platform != "cpu" for device in jax.devices())
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


@contextlib.contextmanager
def dtype_policy(policy: str):
    """Use `policy` for the models built inside; the policy is process-wide, so restore it after."""
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def resolve_precision(precision: str) -> tuple[str, str]:
    """(policy, why): auto is mixed float16 on a GPU and float32 on a CPU.

    On a CPU auto does not try bfloat16: on this project's AVX512-BF16 CPU it trained at 0.73-0.91x float32's speed,
    and an earlier auto that measured both before each run chose differently between identical runs (so their
    feature caches and figures differed). `mixed_bfloat16` stays available for CPUs where it pays (AMX)."""
    if precision not in PRECISIONS:
        raise unknown("precision", precision, PRECISIONS)
    if precision != "auto":
        return precision, "as asked"
    if has_gpu():
        return "mixed_float16", "auto: a GPU is present"
    return "float32", "auto: no GPU"


def float32_copy(model: keras.Model) -> keras.Model:
    """The same model computing in float32 (for export), whatever policy it was trained under."""
    if all(_is_float32(layer) for layer in _all_layers(model)):
        return model

    def clone_layer(layer):
        if _is_float32(layer):  # as it is; so are the plain operations a functional model holds (MobileNetV3's
            return layer  # `x + 3.0`), which have no dtype policy and whose constructors take no dtype
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def _is_float32(layer) -> bool:
    policy = getattr(layer, "dtype_policy", None)
    return policy is None or policy.name == "float32"


def _all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
