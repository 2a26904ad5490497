"""The Keras backend (TensorFlow or JAX) and the native start-up chatter: both settled before Keras is imported."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import tempfile

from tfl.errors import TflError, unknown

BACKENDS = ("tensorflow", "jax")
VERBOSE_ENV = "TFL_VERBOSE"  # set (tfl --verbose does) to see TensorFlow's, XLA's and absl's native log lines


def verbose_native_logs() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def native_stderr_held():
    """Hold what C++ code writes to file descriptor 2, and show it only if the block fails.

    TensorFlow's and XLA's start-up lines on a machine without a GPU (the cudart stub, absl's pre-init notice) are
    written before TF_CPP_MIN_LOG_LEVEL is read (tensorflow/tensorflow#100442), so only the descriptor can hide them.
    """
    if verbose_native_logs():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def use_backend(name: str, start_devices: bool = True) -> None:
    """Make Keras use `name` and import it quietly; an error if Keras already runs on another backend.

    `start_devices=False` leaves JAX's devices alone, for `jax.distributed.initialize` to come first."""
    if name not in BACKENDS:
        raise unknown("backend", name, BACKENDS)
    if name == "jax" and importlib.util.find_spec("jax") is None:
        raise TflError("The JAX backend needs JAX, which is not installed. Install it with: pip install 'tfl[jax]'.")
    if not verbose_native_logs():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ info, warning and error lines
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
    with native_stderr_held():
        tensorflow = importlib.import_module("tensorflow")  # the input pipelines use tf.data on either backend
        importlib.import_module("keras")
        # Probing for GPUs prints CUDA's "failed call to cuInit" error line on machines without one, whatever
        # TF_CPP_MIN_LOG_LEVEL a user set: probe now, held. (Physical devices only: the runtime is not started, so
        # multi-worker training can still be set up.)
        tensorflow.config.list_physical_devices()
    if not verbose_native_logs():
        tensorflow.get_logger().setLevel("ERROR")  # its Python-side notes (retracing...) are for TF developers
        if name == "jax" and start_devices:
            start_jax()


def ensure_backend() -> None:
    """Import Keras quietly on the backend KERAS_BACKEND names (TensorFlow by default) unless Keras already runs."""
    if "keras" not in sys.modules:
        wanted = os.environ.get("KERAS_BACKEND", "tensorflow")
        use_backend(wanted if wanted in BACKENDS else "tensorflow")


def start_jax() -> None:
    """Start JAX's devices quietly (XLA's CUDA probing prints when they start)."""
    import jax

    with native_stderr_held():
        jax.devices()
