"""The error type for user mistakes: the CLI prints its message, never a traceback."""


class TflError(Exception):
    """A problem the user can fix (bad input, missing file, offline download); the message says how."""
