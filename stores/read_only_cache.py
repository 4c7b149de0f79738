"""Reading a diskcache folder that this process may not write to.

diskcache writes its settings table every time it opens a folder, so a store on
a read-only mount, or owned by another user, fails before its first read with a
bare ``sqlite3.OperationalError``. A store that only needs to read opens the
folder's SQLite file read-only instead and decodes rows with the same disk class
as its writers, so the refusal of pickled rows holds here too.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ctxproto.errors import StoreError

__all__ = ["ReadOnlyCache", "select_rows", "text_keys_from"]

DATABASE = "cache.db"  # diskcache's file name inside its folder


class ReadOnlyCache:
    """``get`` and ``iterkeys`` of a diskcache folder, without writing a byte."""

    def __init__(self, directory: Path, disk: type[Any]) -> None:
        self.directory = directory
        self._connection = _connect_read_only(directory / DATABASE)
        self._disk = disk(str(directory))
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        """The live value stored under ``key``, or ``None``."""
        db_key, raw = self._disk.put(key)
        with self._lock:
            row = self._connection.execute(
                "SELECT mode, filename, value, expire_time FROM Cache WHERE key = ? AND raw = ?",
                (db_key, raw),
            ).fetchone()
        if row is None:
            return None
        mode, filename, value, expire_time = row
        if expire_time is not None and expire_time < time.time():
            return None
        return self._disk.fetch(mode, filename, value, False)

    def iterkeys(self) -> Iterator[Any]:
        with self._lock:
            rows = self._connection.execute("SELECT key, raw FROM Cache ORDER BY rowid").fetchall()
        for key, raw in rows:
            yield self._disk.get(key, bool(raw))

    def execute(self, statement: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The rows of one read-only SQL statement over the folder's database."""
        with self._lock:
            return self._connection.execute(statement, parameters).fetchall()

    def close(self) -> None:
        self._connection.close()


def text_keys_from(
    cache: Any, start: str, *, where: str = "", parameters: tuple[Any, ...] = ()
) -> list[str]:
    """The text keys of ``cache`` (a ``diskcache.Cache`` or a ``ReadOnlyCache``) that
    start with ``start``, in order, read through the table's key index; with
    ``where``, only the rows that SQL condition (with ``parameters``) holds for.

    diskcache lists keys only whole (``iterkeys`` reads every row); one range of
    the index reads only the keys wanted. Text compares as UTF-8 bytes, and no
    character's bytes sort after U+10FFFF's, so the range ends there.
    """
    statement = "SELECT key FROM Cache WHERE key >= ? AND key < ? AND raw = 1"
    if where:
        statement += f" AND ({where})"
    rows = select_rows(
        cache, statement + " ORDER BY key", (start, start + "\U0010ffff", *parameters)
    )
    return [key for (key,) in rows if isinstance(key, str)]


def select_rows(cache: Any, statement: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The rows of one SQL statement over the table of ``cache`` (a ``diskcache.Cache`` or
    a ``ReadOnlyCache``): what diskcache's API does not ask, such as when a row was stored."""
    if isinstance(cache, ReadOnlyCache):
        return cache.execute(statement, parameters)
    # diskcache runs it on this thread's connection, retrying while a writer holds it
    rows: list[tuple[Any, ...]] = cache._sql(statement, parameters).fetchall()
    return rows


def _connect_read_only(database: Path) -> sqlite3.Connection:
    """A read-only connection; ``immutable`` when SQLite cannot even create its WAL index.

    In WAL mode a reader needs the ``-shm`` file; in a folder it cannot write to
    and that no writer holds open, that file does not exist and cannot be made,
    so the database is read as an immutable snapshot.
    """
    if not database.is_file():
        raise StoreError(f"{database.parent} holds no store ({DATABASE} is missing)")
    uri = database.resolve().as_uri() + "?mode=ro"
    last_error: sqlite3.Error | None = None
    for suffix in ("", "&immutable=1"):
        connection = sqlite3.connect(uri + suffix, uri=True, check_same_thread=False)
        try:
            connection.execute("SELECT COUNT(*) FROM Cache").fetchone()
        except sqlite3.Error as exc:
            connection.close()
            last_error = exc
            continue
        return connection
    raise StoreError(f"cannot read the store in {database.parent}: {last_error}")
