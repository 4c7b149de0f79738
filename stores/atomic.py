"""Atomic, durable file writes: a reader sees the old file or the new one, never a torn one.

The promise (``docs/durability.md``): once ``atomic_write_bytes`` returns, the
new file survives a process crash, ``kill -9`` and a power loss. The data is
fsynced before the rename, so the name never points at blocks that were not yet
written, and the folder is fsynced after it, so the rename itself is on disk
(POSIX leaves a rename in the page cache until its directory is synced).

The new file gets the mode a plain ``open`` would give it: the replaced file's
mode, or ``0o666`` less the umask for a new one. ``mkstemp`` creates its temp
file ``0o600`` and the rename keeps that, so a store written by ``ctxproto
index`` was otherwise unreadable to a server running as another user.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_directory"]


def _process_umask() -> int:
    """The umask, read from ``/proc`` where Linux offers it.

    Elsewhere it can only be read by setting it and setting it back, which is
    process-wide: a thread creating a file in between would get the wrong mode.
    That happens once, while this module is imported.
    """
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        status = ""  # no procfs (macOS, a sandbox): read it the portable way below
    for line in status.splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _process_umask()


def _mode_for(path: Path) -> int:
    """The permission bits ``path`` keeps when it is replaced, or a new file's."""
    try:
        return stat.S_IMODE(path.stat().st_mode) & 0o777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file in the same folder, fsync it, rename it over ``path``,
    then fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _mode_for(path))
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
