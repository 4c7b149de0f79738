"""diskcache disks that never unpickle: every diskcache-backed store opens its cache
with one of these.

diskcache's default disk pickles any key or value that is not ``bytes``/``str``/
``int``/``float`` and unpickles whatever it finds stored in pickle mode. A store
folder is often shared between workers or copied between machines, so a row someone
else planted must never run code when it is read: these disks refuse pickled keys
and values with a ``StoreError`` and refuse to write one.
"""

from __future__ import annotations

from typing import Any

import diskcache

from ctxproto.errors import StoreError

__all__ = ["JSONOnlyDisk", "PlainDisk"]


def _is_plain(value: Any) -> bool:
    """Whether diskcache stores ``value`` as it is, without pickling it."""
    kind = type(value)
    if kind is int:
        return bool(-(2**63) <= value < 2**63)
    return kind in (float, str, bytes)


class _NoPickles(diskcache.Disk):  # type: ignore[misc]
    """Refuses to load a key or value stored pickled: a tampered store must not run code."""

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise StoreError("the cache holds a pickled key; refusing to load it")
        return super().get(key, raw)

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise StoreError("the cache holds a pickled value; refusing to load it")
        return super().fetch(mode, filename, value, read)


class JSONOnlyDisk(_NoPickles, diskcache.JSONDisk):  # type: ignore[misc]
    """diskcache's JSON disk, refusing rows that would need unpickling (a tampered store)."""


class PlainDisk(_NoPickles):
    """diskcache's disk for ints, floats, strings and bytes (keys and values): never pickles."""

    def put(self, key: Any) -> Any:
        if not _is_plain(key):
            raise StoreError(f"refusing to pickle a {type(key).__name__} key into the cache")
        return super().put(key)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not (read or _is_plain(value)):
            raise StoreError(f"refusing to pickle a {type(value).__name__} into the cache")
        return super().store(value, read, key=key)
