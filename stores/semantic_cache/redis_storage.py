"""Semantic-cache entries on a Redis-protocol server, shared by every replica of a proxy.

The layout follows the diskcache storage rule for rule, in Redis types (all
keys under ``ctxproto:cache:{name}``, ``name`` from the URL's fragment,
``redis://host/0#answers``, default ``semantic-cache``):

- ``seq``: the key counter, never reset, so a key is never reused and each
  process's in-memory mirror catches up by reading the keys above the last one
  it saw (``mirror.py``);
- ``entry:{key}``: the entry as JSON text, with a ``PX`` expiry when the cache
  has a TTL, so the server itself drops expired answers;
- ``order``: a sorted set of live keys scored by key number, oldest first, for
  the entry limit (``ZPOPMIN``);
- ``listed:{source}``: a sorted set of the keys built on a source, scored by key
  number, ``gen:{source}`` its generation counter, for invalidation. Each ``add``
  drops the keys below the oldest live entry's, so the keys of entries that the
  entry limit or the TTL removed do not pile up (``src:{source}``, a plain set,
  is the list of a cache written before that, read once by an invalidation).

An entry, its place in ``order``, its source lists and the counter's step to
its key are written in one ``MULTI``/``EXEC`` (with ``WATCH`` on the counter),
so no reader sees an entry that is half written, nor a key whose entry is
still to come. Eviction and ``clear()`` take keys out of ``order`` and delete
their entries in ``MULTI``/``EXEC`` transactions of at most ``BATCH`` keys: a
replica killed, or cut off, in the middle can neither leave an entry that
``order`` no longer counts (and so that nothing ever evicts, while mirrors
still serve it) nor count entries that are gone. Eviction counts the excess
under ``WATCH`` on ``order``, so two replicas evicting at once never both take
the same excess; as every other replica's ``add`` cancels that watch, a batch is
tried at most ``EVICT_ATTEMPTS`` times and what is left goes at the next
``put``, so the cache may hold a few entries over ``max_entries`` for a moment.
No step holds the server for long (one script over a million
entries kept every other client waiting for seconds, and past the script time
limit could not be stopped), and every key a step touches is one the client
names, as proxies that route by key require, except in ``clear()``, which finds
the source lists and stray entries with ``SCAN MATCH``. The byte limit is the
server's ``maxmemory`` (with ``volatile-lru``, or ``allkeys-lru`` on a server
of the cache's own), not ours: see docs/deploy.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import redis

from ctxproto.stores.redis_connection import RedisConnection, glob_escape, key_part
from ctxproto.stores.semantic_cache.storage import UnreadableEntryError

__all__ = ["RedisCacheStorage"]

DEFAULT_NAME = "semantic-cache"

BATCH = 1000
"""Most keys one eviction or clearing transaction takes out: a step of about a
millisecond on the server, however large the cache."""

EVICT_ATTEMPTS = 8
"""Most tries of one eviction batch whose ``WATCH`` on ``order`` another replica's
write cancelled; what is then left over goes at the next ``put``."""


class RedisCacheStorage:
    """The ``CacheStorage`` of one semantic cache on the server at ``url``."""

    def __init__(self, url: str) -> None:
        url, _, name = url.partition("#")
        self._connection = RedisConnection(url)
        # redis-py types every reply as a union of all reply shapes; ours are known.
        self._redis: Any = self._connection.client
        self.where = f"{self._connection.name}#{name or DEFAULT_NAME}"
        self._prefix = f"ctxproto:cache:{key_part(name or DEFAULT_NAME)}"

    def __len__(self) -> int:
        with self._reporting("cannot count entries"):
            self._oldest_live_key()  # drops expired keys from ``order``
            return int(self._redis.zcard(self._order))

    def get(self, key: str) -> dict[str, Any] | None:
        with self._reporting(f"cannot read entry {key}"):
            raw = self._redis.get(self._entry(key))
        if raw is None:
            return None
        try:
            entry = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            entry = None
        if not isinstance(entry, dict):
            raise UnreadableEntryError(key, "is not a JSON object")
        return entry

    def delete(self, key: str) -> bool:
        with self._reporting(f"cannot delete entry {key}"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(self._entry(key))
            pipe.zrem(self._order, key)
            removed, _ = pipe.execute()
        return bool(removed)

    def add(self, entry: dict[str, Any], ttl: float | None, sources: Sequence[str]) -> str:
        data = _entry_bytes(entry)
        expiry = None if ttl is None else max(int(ttl * 1000), 1)
        with self._reporting("cannot store an entry"):
            # Keys only grow, so a floor read before the transaction is low enough: the
            # oldest live key, or with none live, past every key numbered when looked.
            # (Not the new key's own number: keys other writers add meanwhile are live.)
            below = 0
            if sources:
                numbered = int(self._redis.get(self._seq) or 0)
                oldest = self._oldest_live_key()
                below = numbered + 1 if oldest is None else oldest

            def write(pipe: Any) -> str:
                """Runs again from the start when another writer moved the counter first."""
                number = int(pipe.get(self._seq) or 0) + 1
                key = str(number)
                pipe.multi()
                pipe.incr(self._seq)
                pipe.set(self._entry(key), data, px=expiry)
                pipe.zadd(self._order, {key: number})
                for source in sources:
                    pipe.zadd(self._listed(source), {key: number})
                    pipe.zremrangebyscore(self._listed(source), "-inf", f"({below}")
                return key

            key: str = self._redis.transaction(write, self._seq, value_from_callable=True)
        return key

    def latest_key(self) -> int:
        with self._reporting("cannot read the key counter"):
            return int(self._redis.get(self._seq) or 0)

    def keys_between(self, after: int, latest: int) -> list[str]:
        with self._reporting("cannot list entries"):
            found = self._redis.zrangebyscore(self._order, f"({after}", latest)
        return [key.decode() for key in found]

    def generation(self, source: str) -> int:
        with self._reporting(f"cannot read the generation of source '{source}'"):
            return int(self._redis.get(f"{self._prefix}:gen:{key_part(source)}") or 0)

    def drop_source(self, source: str) -> list[str]:
        with self._reporting(f"cannot invalidate source '{source}'"):
            self._redis.incr(f"{self._prefix}:gen:{key_part(source)}")
            older = f"{self._prefix}:src:{key_part(source)}"  # see the module docstring
            pipe = self._redis.pipeline(transaction=True)
            pipe.zrange(self._listed(source), 0, -1)
            pipe.smembers(older)
            pipe.delete(self._listed(source), older)
            listed, listed_before, _ = pipe.execute()
        return sorted({m.decode() for m in (*listed, *listed_before)}, key=int)

    def evict_over(self, max_entries: int) -> list[str]:
        """Take out the oldest entries beyond ``max_entries``, in batches of ``BATCH``.

        Each batch is counted under ``WATCH`` on ``order`` and tried at most
        ``EVICT_ATTEMPTS`` times: every other replica's ``add`` cancels the watch,
        and with a few adding at once an uncapped retry took dozens of attempts.
        A batch still cancelled after that is left to the next ``put``'s
        eviction, which counts the excess afresh; meanwhile the cache holds a few
        entries over ``max_entries``.
        """
        evicted: list[str] = []
        with self._reporting("cannot evict entries"):
            self._oldest_live_key()  # drops expired keys from ``order``
            while True:
                taken = self._take_oldest(max_entries)
                if taken is None:
                    return evicted
                evicted += [key.decode() for key in taken]
                if len(taken) < BATCH:
                    return evicted

    def clear(self) -> None:
        """Entries and their keys in ``order`` go in transactions of ``BATCH`` keys, up to
        the key counter as it stood when clearing began: keys above it are later
        ``add``'s, which stay (and so clearing ends while others add). Each batch
        names its keys, so no ``WATCH`` is needed: whatever else changed them
        meanwhile, a batch leaves each of its keys gone from both.

        Then what ``order`` does not list: the source lists, down to the keys ``add``
        listed since, the lists of the former layout, and entries an eviction cut off
        before it was one step left outside ``order``. Stopping in between leaves
        lists naming deleted keys, which every reader already takes as gone."""
        with self._reporting("cannot clear the cache"):
            cleared = int(self._redis.get(self._seq) or 0)
            while keys := self._redis.zrangebyscore(self._order, "-inf", cleared, 0, BATCH):
                pipe = self._redis.pipeline(transaction=True)
                self._take_out(pipe, keys)
                pipe.execute()
            pipe = self._redis.pipeline(transaction=False)
            for listed in self._scan("listed"):
                pipe.zremrangebyscore(listed, "-inf", cleared)
            pipe.execute()
            strays = [name for name in self._scan("entry") if _numbered_up_to(name, cleared)]
            names = strays + self._scan("src")
            for start in range(0, len(names), 1000):
                self._redis.delete(*names[start : start + 1000])

    def bind_embedder(self, signature: str) -> str:
        with self._reporting("cannot read the cache's embedder"):
            self._redis.set(f"{self._prefix}:embedder", signature, nx=True)
            stored = self._redis.get(f"{self._prefix}:embedder")
        return stored.decode("utf-8") if isinstance(stored, bytes) else str(stored)

    def ping(self) -> None:
        self._connection.ping()

    def close(self) -> None:
        self._connection.close()

    @property
    def _seq(self) -> str:
        return f"{self._prefix}:seq"

    @property
    def _order(self) -> str:
        return f"{self._prefix}:order"

    def _entry(self, key: str) -> str:
        return f"{self._prefix}:entry:{key}"

    def _listed(self, source: str) -> str:
        return f"{self._prefix}:listed:{key_part(source)}"

    def _take_oldest(self, max_entries: int) -> list[bytes] | None:
        """One batch of the oldest keys beyond ``max_entries``, taken out; ``None`` when
        ``order`` changed between counting and ``EXEC`` on each of ``EVICT_ATTEMPTS``
        tries (then nothing was taken: a cancelled ``EXEC`` runs nothing)."""
        with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(EVICT_ATTEMPTS):
                try:
                    pipe.watch(self._order)
                    excess = min(int(pipe.zcard(self._order)) - max_entries, BATCH)
                    if excess <= 0:  # a write since is another put's, which evicts in turn
                        return []
                    keys: list[bytes] = pipe.zrange(self._order, 0, excess - 1)
                    pipe.multi()
                    self._take_out(pipe, keys)
                    pipe.execute()
                    return keys
                except redis.WatchError:
                    pipe.reset()
        return None

    def _take_out(self, pipe: Any, keys: Sequence[bytes]) -> None:
        """Queue taking ``keys`` out of ``order`` and deleting their entries, in the
        transaction of ``pipe``: both happen, or neither."""
        if keys:
            pipe.zrem(self._order, *keys)
            pipe.delete(*(self._entry(key.decode()) for key in keys))

    def _scan(self, part: str) -> list[bytes]:
        """The names of every key under ``{prefix}:{part}:``."""
        pattern = glob_escape(f"{self._prefix}:{part}:") + "*"
        return list(self._redis.scan_iter(match=pattern, count=1000))

    def _oldest_live_key(self) -> int | None:
        """The oldest key in ``order`` whose entry the server still holds, or ``None``;
        the keys of expired entries met on the way leave ``order``."""
        while True:
            oldest = [key.decode() for key in self._redis.zrange(self._order, 0, 63)]
            if not oldest:
                return None
            pipe = self._redis.pipeline(transaction=False)
            for key in oldest:
                pipe.exists(self._entry(key))
            present = dict(zip(oldest, pipe.execute(), strict=True))
            gone = [key for key in oldest if not present[key]]
            if gone:
                self._redis.zrem(self._order, *gone)
            if len(gone) < len(oldest):
                return next(int(key) for key in oldest if present[key])

    def _reporting(self, what: str) -> AbstractContextManager[None]:
        return self._connection.reporting(f"{what} of the semantic cache")


def _entry_bytes(entry: dict[str, Any]) -> bytes:
    """``entry`` as UTF-8 JSON; text holding a lone surrogate as JSON's ``\\u`` escapes.

    No UTF-8 encoder takes a lone surrogate (what Python makes of a byte that is
    not UTF-8, ``caf\\udce9``), and an answer or a namespace holding one failed the
    ``put`` with a bare ``UnicodeEncodeError``, where the folder's JSON disk, which
    escapes everything that is not ASCII, stores it. Escaped, it is ASCII JSON that
    reads back as the same text; every other entry keeps the shorter UTF-8.
    """
    try:
        return json.dumps(entry, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(entry, allow_nan=False).encode("ascii")


def _numbered_up_to(name: bytes, latest: int) -> bool:
    """Whether the entry named ``name`` has a key no later than ``latest`` (or no number)."""
    number = name.rpartition(b":")[2]
    return not number.isdigit() or int(number) <= latest
