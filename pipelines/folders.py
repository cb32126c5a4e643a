"""Crash-safe file writes and the folder lock that intake and the web app share.

Intake and the clinician app both write into the drop folder; they must agree on one lock (an
exclusive flock on the folder itself, so nothing extra is written into a delivery) and on one way
of writing a file that a crash can never leave half-written (temp file, fsync, rename, fsync the
folder).
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class FolderBusy(TimeoutError):
    """Another process held the folder's lock for longer than the caller would wait."""


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, rename over it, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def folder_lock(folder: Path, timeout_s: float) -> Iterator[None]:
    """An exclusive flock on the folder itself, waiting up to `timeout_s` (FolderBusy after)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise FolderBusy(f"{folder} stayed locked for {timeout_s:g} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)   # closing the descriptor releases the lock
