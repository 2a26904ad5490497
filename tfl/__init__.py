"""tfl: fine-tune a Keras 3 image classifier from a folder of photos, and export it for servers and phones."""

__version__ = "0.1.0"
