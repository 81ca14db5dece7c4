"""The paths a command writes: checked before any work, so that a path that cannot be used is
refused at once (:class:`~cmpdata.errors.UsageError`), creating nothing; and a write that
fails during the work (disk full) turned into one line saying what to do next."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from cmpdata.errors import RunStopped, UsageError


def _existing_parent(path: Path) -> Path:
    return next(p for p in path.absolute().parents if p.exists())


def _check_writable_folder(path: Path, folder: Path) -> None:
    """Refuse ``path`` unless ``folder`` (itself, or the nearest existing folder above it) is
    a directory this process can create files in: proved by creating one and removing it,
    which also gives the system's reason (e.g. a read-only file system)."""
    what = "not writable" if folder == path else f"cannot be created: {folder} is not writable"
    if not folder.is_dir():
        raise UsageError(f"{path}: cannot be created: {folder} is not a directory")
    try:
        handle, name = tempfile.mkstemp(prefix=".cmp-write-test-", dir=folder)
    except OSError as exc:
        raise UsageError(f"{path}: {what} ({exc.strerror})") from None
    os.close(handle)
    os.unlink(name)


def check_output_dir(path: str | Path) -> Path:
    """``path`` as a directory the caller may create or write into: an existing writable
    directory, or a new one whose nearest existing parent is a writable directory. Returns it
    as a Path; creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: exists and is not a directory; choose another output folder")
    _check_writable_folder(path, path if path.exists() else _existing_parent(path))
    return path


def check_output_file(path: str | Path, suffixes: Sequence[str] = ()) -> Path:
    """``path`` as a file the caller may write (replacing a file there): not a directory, with
    one of ``suffixes`` when given, in a folder that exists or can be created, and is
    writable. Returns it as a Path."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; give a file name")
    if path.exists() and not path.is_file():
        raise UsageError(f"{path}: exists and is not a regular file")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UsageError(f"{path}: expected a {' or '.join(suffixes)} file name")
    parent = path.absolute().parent
    _check_writable_folder(path, parent if parent.exists() else _existing_parent(parent))
    return path


@contextlib.contextmanager
def stopped_by_failed_write(path: str | Path, advice: str) -> Iterator[None]:
    """Turn a failed write inside the block (disk full, file-size limit, I/O error) into a
    :class:`~cmpdata.errors.RunStopped` naming ``path`` and the reason, then ``advice`` (what
    was kept and how to finish). The writers used inside should be atomic, leaving no partial
    file behind."""
    try:
        yield
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise RunStopped(f"{path}: cannot write ({reason}); {advice}") from exc
