"""Choosing the Keras backend (TensorFlow or JAX), which must happen before Keras is imported."""

from __future__ import annotations

import importlib.util
import os
import sys

from tfl.errors import TflError

BACKENDS = ("tensorflow", "jax")


def use_backend(name: str) -> None:
    """Make Keras use `name`; an error if Keras already runs on another backend in this process."""
    if name not in BACKENDS:
        raise TflError(f"Unknown backend '{name}'. Choose one of: {', '.join(BACKENDS)}.")
    if name == "jax" and importlib.util.find_spec("jax") is None:
        raise TflError("The JAX backend needs JAX, which is not installed. Install it with: pip install 'tfl[jax]'.")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the screen
    if "keras" in sys.modules:
        import keras

        current = keras.backend.backend()
        if current != name:
            raise TflError(
                f"Keras is already running on the '{current}' backend in this process, so it cannot switch to "
                f"'{name}'. Set KERAS_BACKEND={name} before Python imports Keras, or start a new process."
            )
        return
    os.environ["KERAS_BACKEND"] = name
