"""Where a semantic cache keeps its entries: a diskcache folder, or a Redis server.

``SemanticCache`` searches an in-memory mirror and reads entries through this
small interface, so the rules that keep it correct while other processes
write (keys never reused, source generations; see ``cache.py``) hold on every
backend. ``open_cache_storage`` picks the backend from the location: a folder
for ``DiskCacheStorage``, a ``redis://`` URL for ``RedisCacheStorage``, which
replicas of a proxy share.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import diskcache

from ctxproto._extras import require
from ctxproto.errors import StoreError
from ctxproto.stores.json_disk import JSONOnlyDisk, PlainDisk
from ctxproto.stores.store_url import store_location

__all__ = ["CacheStorage", "DiskCacheStorage", "UnreadableEntryError", "open_cache_storage"]


class UnreadableEntryError(StoreError):
    """An entry whose stored bytes are not a JSON object: written by another program,
    edited on the server, or damaged on disk.

    ``SemanticCache`` catches it and skips the entry as a miss (a cache is an
    optimisation, a miss is always safe), so it never leaves the cache. ``reason``
    names what is wrong, never the contents.
    """

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"entry {key} {reason}")


class CacheStorage(Protocol):
    """JSON entries under keys that are never reused, with per-source invalidation."""

    where: str
    """The folder or the (password-redacted) URL, for messages."""

    def __len__(self) -> int: ...

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry, or ``None`` when it expired, was evicted or never existed;
        an ``UnreadableEntryError`` when what is stored is not a JSON object."""

    def delete(self, key: str) -> bool: ...

    def add(self, entry: dict[str, Any], ttl: float | None, sources: Sequence[str]) -> str:
        """Store ``entry`` under a fresh key, listed under each source; returns the key.

        Taking the key and writing the entry is one step for readers: once
        ``latest_key`` reaches a key, its entry is there unless it was removed since,
        so a reader reads each key at most once.
        """

    def latest_key(self) -> int:
        """The highest key handed out so far (keys are ``1, 2, ...`` as strings)."""

    def keys_between(self, after: int, latest: int) -> list[str]:
        """Keys in ``(after, latest]`` that may hold an entry, at most as many as there
        are entries: a process that starts on a long history reads only what is left."""

    def generation(self, source: str) -> int: ...

    def drop_source(self, source: str) -> list[str]:
        """Bump the source's generation, then take (and forget) the keys listed under it.

        A source lists the keys of its entries from the oldest live entry of the
        cache on: ``add`` drops the older ones, whose entries the entry limit, the
        TTL or an invalidation removed.
        """

    def evict_over(self, max_entries: int) -> list[str]:
        """Delete the oldest entries beyond ``max_entries``; returns their keys."""

    def clear(self) -> None:
        """Drop every entry and source list; the key counter and generations stay."""

    def bind_embedder(self, signature: str) -> str:
        """Record ``signature`` if none is recorded yet; returns the recorded one."""

    def ping(self) -> None:
        """A ``StoreError`` when the storage cannot answer now; one cheap read (``/health``)."""
        ...

    def close(self) -> None: ...


def open_cache_storage(location: str | Path, *, max_bytes: int) -> CacheStorage:
    """The storage at ``location``: a ``redis://`` URL or a folder (created if missing)."""
    if isinstance(location, str) and store_location(location) == "redis":
        require("redis", extra="redis")
        from ctxproto.stores.semantic_cache.redis_storage import RedisCacheStorage

        storage: CacheStorage = RedisCacheStorage(str(location))
        return storage
    return DiskCacheStorage(Path(location), max_bytes=max_bytes)


DISKCACHE_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)
"""What diskcache raises when its folder cannot be used: a ``StoreError`` here, as the
Redis storage's failures are, so the proxy answers a store error, not its own bug."""

UNDECODABLE = (zlib.error, ValueError, TypeError)
"""What diskcache's JSON disk raises on a row that is not zlib-compressed JSON text:
``zlib.error``, ``UnicodeDecodeError`` and ``JSONDecodeError`` (both ``ValueError``),
and ``TypeError`` for a value another program stored as a number or plain text."""

PRUNED_PER_ADD = 64
"""At most this many keys of removed entries leave a source's list per ``add``, so that
one ``add`` stays short after many entries expired at once; they still leave faster
than keys arrive."""


class DiskCacheStorage:
    """Entries in one diskcache (JSON only, byte limit), counters and source lists in another.

    A source's list is one row per key, ``listed:{n}:{source}`` for ``n`` from
    ``listed-first:{source}`` up to ``listed-end:{source}``, so an ``add`` writes one
    row and drops the oldest rows whose entries are gone, instead of rewriting the
    list. Keys enter lists in key order (under the counter's transaction), and
    entries leave oldest first, so the rows to drop are at the front.
    """

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.where = str(path)
        try:
            self._entries: Any = diskcache.Cache(
                str(path / "entries"),
                disk=JSONOnlyDisk,
                size_limit=max_bytes,
                eviction_policy="least-recently-stored",
            )
            # The key counter and the sources' lists: never culled at diskcache's
            # default 1 GiB cap, as the entries are at ``max_bytes``.
            self._meta: Any = diskcache.Cache(
                str(path / "meta"), disk=PlainDisk, eviction_policy="none"
            )
        except DISKCACHE_ERRORS as exc:
            # diskcache writes its settings on open, so even a reader needs write access.
            raise StoreError(
                f"cannot open the semantic cache at {path}: it must be a folder this "
                f"process can write ({exc})"
            ) from exc

    def __len__(self) -> int:
        with self._reporting("cannot count entries"):
            return len(self._entries)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._reporting(f"cannot read entry {key}"):
            try:
                entry: object = self._entries.get(key)
            except UNDECODABLE as exc:
                reason = f"is not zlib-compressed JSON ({type(exc).__name__})"
                raise UnreadableEntryError(key, reason) from None
        if entry is not None and not isinstance(entry, dict):
            raise UnreadableEntryError(key, "is not a JSON object")
        return entry

    def delete(self, key: str) -> bool:
        with self._reporting(f"cannot delete entry {key}"):
            return bool(self._entries.delete(key))

    def add(self, entry: dict[str, Any], ttl: float | None, sources: Sequence[str]) -> str:
        # The counter's transaction commits after the entry is written, so no reader
        # sees the new key before its entry (see ``CacheStorage.add``).
        with self._reporting("cannot store an entry"), self._meta.transact():
            key = str(self._meta.incr("seq"))
            self._entries.set(key, entry, expire=ttl)
            oldest = self._oldest_key(default=int(key)) if sources else 0
            for source in sources:
                self._list_under(source, key, oldest)
        return key

    def latest_key(self) -> int:
        with self._reporting("cannot read the key counter"):
            return int(self._meta.get("seq", 0))

    def keys_between(self, after: int, latest: int) -> list[str]:
        with self._reporting("cannot list entries"):
            if latest - after <= len(self._entries):
                return [str(number) for number in range(after + 1, latest + 1)]
            return [key for key in self._entries.iterkeys() if after < int(key) <= latest]

    def generation(self, source: str) -> int:
        with self._reporting(f"cannot read the generation of source '{source}'"):
            return int(self._meta.get(f"gen:{source}", 0))

    def drop_source(self, source: str) -> list[str]:
        with self._reporting(f"cannot invalidate source '{source}'"):
            self._meta.incr(f"gen:{source}")
            with self._meta.transact():
                first = int(self._meta.pop(f"listed-first:{source}", default=0))
                end = int(self._meta.pop(f"listed-end:{source}", default=0))
                rows = [f"listed:{n}:{source}" for n in range(first, end)]
                keys: list[str] = [self._meta.pop(row) for row in rows]
                # A list written before lists were rows: one JSON array.
                older: list[str] = json.loads(self._meta.pop(f"src:{source}", default="[]"))
        return older + keys

    def evict_over(self, max_entries: int) -> list[str]:
        evicted = []
        with self._reporting("cannot evict entries"):
            while len(self._entries) > max_entries:
                oldest = self._oldest_stored()
                if oldest is None:
                    break
                self._entries.delete(oldest)
                evicted.append(oldest)
        return evicted

    def clear(self) -> None:
        with self._reporting("cannot clear the cache"):
            self._entries.clear()
            with self._meta.transact():  # a put never sees half the lists gone
                for name in list(self._meta.iterkeys()):
                    if name.startswith(("listed", "src:")):
                        self._meta.delete(name)

    def bind_embedder(self, signature: str) -> str:
        with self._reporting("cannot read the cache's embedder"):
            self._meta.add("embedder", signature)
            return str(self._meta.get("embedder"))

    def _oldest_key(self, *, default: int) -> int:
        """The key of the oldest entry (stored first), or ``default`` when none is."""
        oldest = self._oldest_stored()
        return default if oldest is None else int(oldest)

    def _oldest_stored(self) -> str | None:
        """The key of the entry stored first (expired or not), or ``None`` when none is.

        Read from the keys alone, in the order diskcache stored them: its
        ``peekitem`` decodes the value too, so one unreadable oldest entry (which
        lookups skip, see ``UnreadableEntryError``) would fail every ``add`` with
        sources and every eviction instead of being evicted like any other.
        """
        return next(iter(self._entries), None)

    def _list_under(self, source: str, key: str, oldest: int) -> None:
        """Append ``key`` to the source's list, dropping listed keys below ``oldest``."""
        end = int(self._meta.incr(f"listed-end:{source}"))
        self._meta.set(f"listed:{end - 1}:{source}", key)
        first = int(self._meta.get(f"listed-first:{source}", 0))
        stop = min(end - 1, first + PRUNED_PER_ADD)
        while first < stop and int(self._meta.get(f"listed:{first}:{source}")) < oldest:
            self._meta.delete(f"listed:{first}:{source}")
            first += 1
        self._meta.set(f"listed-first:{source}", first)

    def ping(self) -> None:
        with self._reporting("cannot read the key counter"):
            self._meta.get("seq")

    def close(self) -> None:
        self._entries.close()
        self._meta.close()

    @contextmanager
    def _reporting(self, what: str) -> Iterator[None]:
        """diskcache's failures inside the block as a ``StoreError`` naming the folder."""
        try:
            yield
        except DISKCACHE_ERRORS as exc:
            raise StoreError(f"{what} of the semantic cache at {self.where}: {exc}") from exc
