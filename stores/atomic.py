"""Atomic, durable file writes: a reader sees the old file or the new one, never a torn one.

The promise (``docs/durability.md``): once ``atomic_write_bytes`` returns, the
new file survives a process crash, ``kill -9`` and a power loss. The data is
fsynced before the rename, so the name never points at blocks that were not yet
written, and the folder is fsynced after it, so the rename itself is on disk
(POSIX leaves a rename in the page cache until its directory is synced).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_directory"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file in the same folder, fsync it, rename it over ``path``,
    then fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # whatever stopped the write, leave no temp file; re-raised
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """``atomic_write_bytes`` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_directory(folder: Path) -> None:
    """Make renames and deletions in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
