"""Writing files so that readers never see half of one: atomic writes, temporary paths renamed on success, and
ordinary file modes. The bottom of the house: it imports nothing of tfl but its errors."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from tfl.errors import TflError


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask would race with other threads)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    return 0o666 & ~current_umask()  # what open() gives a new file: 0644 under the usual umask 022


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C during the block is held until the block ends, then raised: native code that writes a file (TensorFlow's
    SavedModel saver) is not cut in the middle, where it turns the interrupt into a SystemError or loses it. Only the
    main thread can take signals; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def file_to_write(path: str | Path, flag: str) -> Path:
    """`path`, checked before any work: a file can be written there (it is no folder, and no file stands where one
    of its folders must be); else an error naming `flag`."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise TflError(f"{flag} '{path}' is a folder; pass the path of a file to write, like '{path / 'out.txt'}'.")
    blocked = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocked is not None:
        raise TflError(f"{flag} '{path}' cannot be written: '{blocked}' is a file, not a folder. Pass a path in a "
                       "folder.")
    return path


def folder_to_write(path: str | Path, flag: str) -> Path:
    """`path`, checked before any work: a folder is there or can be made there; else an error naming `flag`."""
    path = Path(path).expanduser()
    blocked = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise TflError(f"{flag} '{path}' must be a folder, and '{blocked}' is a file. Pass a folder's path.")
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp makes owner-only files; a model server may run as another user
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(path: str | Path, header, rows, lineterminator: str = "\r\n") -> None:
    """A CSV file (a header, then rows of cells) written whole, atomically."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=lineterminator)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _hold(folder: Path) -> int | None:
    """An exclusive OS lock on `folder` for as long as the descriptor stays open (released by the kernel when the
    process dies), so that others can tell a temporary folder in use from one left by a killed writer; None where
    the platform or file system has no such lock, or the folder is already held."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:
        os.close(fd)
        return None


def _sweep_stale(pattern_parent: Path, pattern: str, own: Path) -> None:
    """Remove temporary folders matching `pattern` whose writer is gone (no process holds their lock)."""
    for stale in pattern_parent.glob(pattern):
        if stale == own:
            continue
        fd = _hold(stale)
        if fd is None:  # still being written by another process (or cannot be told): leave it
            continue
        try:
            shutil.rmtree(stale, ignore_errors=True)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, force: bool = False):
    """Yield a temporary sibling path to write a file or folder into; rename it to `path` only on success.

    The temporary folder is locked while it is written, and leftovers of killed writers of the same `path` are
    swept, never a folder another live process is still writing."""
    path = Path(path)
    if path.exists() and not force:
        raise TflError(f"'{path}' already exists. Pass --force to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    held = _hold(tmp)
    _sweep_stale(path.parent, f".{path.name}.*.tmp", tmp)
    target = tmp / path.name  # keep the real name: some writers care about the extension
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if held is not None:
            os.close(held)
