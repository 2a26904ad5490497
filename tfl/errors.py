"""The error type for user mistakes (the CLI prints its message, never a traceback), tfl's warnings, and the
failures of the machine a user can act on (a full disk)."""

import contextlib
import errno
import warnings


class TflError(Exception):
    """A problem the user can fix (bad input, missing file, offline download); the message says how."""


class TflWarning(UserWarning):
    """Something the user should know about a run that still goes on (a setting ignored, a split made smaller)."""


def unknown(what: str, value, choices, where: str = "") -> TflError:
    """The error for a name that is not one of `choices`: 'Unknown <what> '<value>'<where>. Choose one of: ...'."""
    return TflError(f"Unknown {what} '{value}'{where}. Choose one of: {', '.join(map(str, choices))}.")


def has_control_characters(text: str) -> bool:
    """Whether `text` holds a line break, a tab or another control character (no name tfl keeps may)."""
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def warn(message: str) -> None:
    warnings.warn(message, TflWarning, stacklevel=2)


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_SIGNS = ("No space left on device", "Disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """An OSError for a full disk or quota, or a TensorFlow error that says the same in its message."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    return any(sign in str(exc) for sign in DISK_FULL_SIGNS)


@contextlib.contextmanager
def disk_full_explained(doing: str, advice):
    """A full disk while `doing` becomes a one-paragraph TflError ending with `advice()` (called then, so that it
    can say what was kept), instead of the writer's chained tracebacks."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        where = f" ('{exc.filename}')" if isinstance(exc, OSError) and exc.filename else ""
        raise TflError(f"The disk filled up while {doing}{where}: no space is left on the device. {advice()}"
                       ) from None
