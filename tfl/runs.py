"""Run directories: naming, atomic file writes, finding the latest run, and loading a finished run."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from tfl.errors import TflError

DEFAULT_ROOT = "saved_models"
PARTIAL_SUFFIX = ".partial"
RUN_MARKER = "model.keras"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_path(path: str | Path, force: bool = False):
    """Yield a temporary sibling path to write a file or folder into; rename it to `path` only on success."""
    path = Path(path)
    if path.exists() and not force:
        raise TflError(f"'{path}' already exists. Pass --force to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process that was killed midway
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    target = tmp / path.name  # keep the real name: some writers care about the extension
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_run_name(arch: str) -> str:
    return f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(root: str | Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Return (final run path, partial path to train into); refuse to overwrite silently."""
    root = Path(root).expanduser()
    final = root / name
    if final.exists() and not overwrite:
        raise TflError(f"A run named '{name}' already exists in '{root}'. Choose another --name, or pass "
                       "--overwrite to replace it.")
    partial = root / f"{name}{PARTIAL_SUFFIX}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir()
        probe = partial / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise TflError(f"Cannot write the run to '{root}': {exc.strerror or exc}. Pass --output with a folder "
                       "you can write to.") from None
    return final, partial


def finish_run_dir(partial: Path, final: Path) -> Path:
    """Move a completed run into place (replacing an old one only when the caller allowed it)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, final)
    return final


def is_run_dir(path: Path) -> bool:
    return (path / RUN_MARKER).is_file() and (path / "labels.txt").is_file()


def latest_run(root: str | Path = DEFAULT_ROOT) -> Path:
    root = Path(root).expanduser()
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
            and not p.name.endswith(PARTIAL_SUFFIX) and is_run_dir(p)] if root.is_dir() else []
    if not runs:
        raise TflError(f"No finished run found in '{root}'. Train one with 'tfl finetune', or name a run directory.")
    return max(runs, key=lambda p: (p / RUN_MARKER).stat().st_mtime)


def resolve_run(run: str | Path | None, root: str | Path = DEFAULT_ROOT) -> Path:
    if run is None:
        return latest_run(root)
    path = Path(run).expanduser()
    if not path.exists():
        raise TflError(f"Run directory '{path}' does not exist. Pass a folder written by 'tfl finetune'.")
    if not is_run_dir(path):
        raise TflError(f"'{path}' is not a finished tfl run (it lacks model.keras or labels.txt).")
    return path


def read_labels(path: str | Path) -> list[str]:
    return [line for line in Path(path).read_text().splitlines() if line.strip()]


def read_run_config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())
