"""diskcache disks that never unpickle: every diskcache-backed store opens its cache
with one of these.

diskcache's default disk pickles any key or value that is not ``bytes``/``str``/
``int``/``float`` and unpickles whatever it finds stored in pickle mode. A store
folder is often shared between workers or copied between machines, so a row someone
else planted must never run code when it is read: these disks refuse pickled keys
and values with a ``StoreError`` and refuse to write one.

Large values live in files that a row names relative to the folder, and
diskcache joins that name to the folder as it is: a planted row naming an
absolute path (or one through ``..`` or a link) would have ``get`` read any file
this process can read and the next ``put`` or ``delete`` of its key delete it.
These disks refuse a file name that resolves outside the cache folder.
"""

from __future__ import annotations

import os
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


class _TamperRefusingDisk(diskcache.Disk):  # type: ignore[misc]
    """Refuses what a tampered store could make diskcache do: unpickle a key or value
    (run code), or read or delete a file outside the cache folder."""

    def __init__(self, directory: str, **settings: Any) -> None:
        super().__init__(directory, **settings)
        self._real_directory = os.path.realpath(directory)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise StoreError("the cache holds a pickled key; refusing to load it")
        return super().get(key, raw)

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise StoreError("the cache holds a pickled value; refusing to load it")
        if filename is not None:
            self._check_inside(filename)
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path: str) -> None:
        self._check_inside(file_path)
        super().remove(file_path)

    def _check_inside(self, filename: str) -> None:
        """A ``StoreError`` naming the folder (never the planted name) when ``filename``
        resolves outside it."""
        resolved = os.path.realpath(os.path.join(self._real_directory, filename))
        if os.path.commonpath([resolved, self._real_directory]) != self._real_directory:
            raise StoreError(
                f"the cache in {self._directory} names a value file outside its "
                "folder; refusing to read or delete it"
            )


class JSONOnlyDisk(_TamperRefusingDisk, diskcache.JSONDisk):  # type: ignore[misc]
    """diskcache's JSON disk, refusing rows a tampered store planted."""


class PlainDisk(_TamperRefusingDisk):
    """diskcache's disk for ints, floats, strings and bytes (keys and values): never pickles."""

    def put(self, key: Any) -> Any:
        if not _is_plain(key):
            raise StoreError(f"refusing to pickle a {type(key).__name__} key into the cache")
        return super().put(key)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not (read or _is_plain(value)):
            raise StoreError(f"refusing to pickle a {type(value).__name__} into the cache")
        return super().store(value, read, key=key)
