"""Mixed precision: choosing the Keras dtype policy (float32, mixed_float16, mixed_bfloat16 or auto)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from tfl.config import PRECISIONS
from tfl.errors import TflError


def has_gpu() -> bool:
    if keras.backend.backend() == "jax":
        import jax

        return any(device.platform != "cpu" for device in jax.devices())
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def cpu_has_bfloat16() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.is_file() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


@contextlib.contextmanager
def dtype_policy(policy: str):
    """Use `policy` for the models built inside; the policy is process-wide, so restore it after."""
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def steps_per_second(build_model: Callable[[], keras.Model], policy: str, image_size: int, steps: int = 3) -> float:
    """Training steps per second of the real model under `policy` (batch 8, after one warm-up step)."""
    with dtype_policy(policy):
        model = build_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    pixels = np.random.default_rng(0).uniform(0, 255, (8, image_size, image_size, 3)).astype("float32")
    labels = np.eye(model.output_shape[-1], dtype="float32")[np.arange(8) % model.output_shape[-1]]
    model.train_on_batch(pixels, labels)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(pixels, labels)
    return steps / (time.perf_counter() - start)


def resolve_precision(precision: str, build_model: Callable[[], keras.Model], image_size: int) -> tuple[str, str]:
    """(policy, why): auto picks float16 on a GPU, bfloat16 on a CPU where it measures faster, else float32."""
    if precision not in PRECISIONS:
        raise TflError(f"Unknown precision '{precision}'. Choose one of: {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision, "as asked"
    if has_gpu():
        return "mixed_float16", "auto: a GPU is present"
    if not cpu_has_bfloat16():
        return "float32", "auto: this CPU has no native bfloat16"
    float32_speed = steps_per_second(build_model, "float32", image_size)
    bfloat16_speed = steps_per_second(build_model, "mixed_bfloat16", image_size)
    ratio = bfloat16_speed / float32_speed
    if ratio > 1.1:
        return "mixed_bfloat16", f"auto: bfloat16 measured {ratio:.2f}x float32 here"
    return "float32", f"auto: bfloat16 measured {ratio:.2f}x float32 here, not faster"


def float32_copy(model: keras.Model) -> keras.Model:
    """The same model computing in float32 (for export), whatever policy it was trained under."""
    if all(layer.dtype_policy.name == "float32" for layer in _all_layers(model)):
        return model

    def clone_layer(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def _all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
