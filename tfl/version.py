"""tfl's version, in a leaf module: any module can read it without importing the package root (no import cycle)."""

__version__ = "0.1.0"
