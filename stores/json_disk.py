"""diskcache disks that never unpickle: every diskcache-backed store opens its cache
with one of these.

diskcache's default disk pickles any value that is not ``bytes``/``str``/``int``/
``float`` and unpickles whatever it finds stored in pickle mode. A store folder is
often shared between workers or copied between machines, so a row someone else
planted must never run code when it is read: these disks refuse pickled rows with a
``StoreError`` and refuse to write one.
"""

from __future__ import annotations

from typing import Any

import diskcache

from ctxproto.errors import StoreError

__all__ = ["JSONOnlyDisk", "PlainDisk"]


class _NoPickledValues(diskcache.Disk):  # type: ignore[misc]
    """Refuses to load a value stored pickled: a tampered store must not run code."""

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise StoreError("the cache holds a pickled value; refusing to load it")
        return super().fetch(mode, filename, value, read)


class JSONOnlyDisk(_NoPickledValues, diskcache.JSONDisk):  # type: ignore[misc]
    """diskcache's JSON disk, refusing rows that would need unpickling (a tampered store)."""

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise StoreError("the cache holds a pickled key; refusing to load it")
        return super().get(key, raw)


class PlainDisk(_NoPickledValues):
    """diskcache's disk for the counter and source index: ints and strings, never pickles."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not (read or isinstance(value, int | float | str | bytes)):
            raise StoreError(f"refusing to pickle a {type(value).__name__} into the cache")
        return super().store(value, read, key=key)
