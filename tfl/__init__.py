"""tfl: fine-tune a Keras 3 image classifier from a folder of photos, and export it for servers and phones.

    import tfl
    run = tfl.finetune("photos/", arch="mobilenetv2", alpha=0.35, weights="...", epochs=(3, 10, 0))
    run.metrics["accuracy"]; run.evaluate("more_photos/")
    artifact = run.export("tflite", quantize="int8")
    tfl.load(artifact).predict(["a.jpg", "b.png"], top_k=3)
"""

from tfl.api import Run, check, finetune, load, make_config, open_run, resume  # noqa: E402
from tfl.config import Stage, TrainConfig  # noqa: E402
from tfl.errors import TflError, TflWarning  # noqa: E402
from tfl.version import __version__  # noqa: E402

__all__ = ["finetune", "check", "resume", "open_run", "load", "make_config", "Run", "TrainConfig", "Stage", "Predictor",
           "TflError", "TflWarning", "__version__"]


def __getattr__(name: str):
    if name == "Predictor":  # tfl.predict imports TensorFlow, which must wait until the backend is chosen
        from tfl.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'tfl' has no attribute '{name}'")
