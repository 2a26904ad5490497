"""The error type for user mistakes (the CLI prints its message, never a traceback) and tfl's warnings."""

import warnings


class TflError(Exception):
    """A problem the user can fix (bad input, missing file, offline download); the message says how."""


class TflWarning(UserWarning):
    """Something the user should know about a run that still goes on (a setting ignored, a split made smaller)."""


def warn(message: str) -> None:
    warnings.warn(message, TflWarning, stacklevel=2)
