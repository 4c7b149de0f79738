"""A semantic cache of answers that does not answer a different question.

Three rules keep it honest, each from a known failure of embedding caches:

- **Context-aware keys.** An entry carries a fingerprint of the context its
  answer depended on (a conversation summary, the retrieved document ids), and a
  lookup only sees entries with the same fingerprint: "how old is he?" asked in
  two conversations about different people does not hit (GPTCache issue #8).
- **A hard-negative guard.** Cosine similarity finds candidates; a candidate
  hits only if the guard judges that it asks the same question, so "turn on"
  never answers "turn off". ``guard="learned"`` (the default) asks the
  ``verifier``, a logistic regression over slot conflicts, content-word
  alignment, the similarity and the interaction of the two embeddings,
  tolerant of typos; ``guard="rules"`` demands that the slots (numbers, dates,
  entities, polarity, scope; see ``query_slots``) equal the query's;
  ``guard="off"`` trusts the cosine alone. The learned guard is the default
  because it lies least: on held-out near misses the rules let about one in
  seven through, the verifier under one in fifty (docs/retrieval.md).
- **Namespaces never cross.** Each tenant has its own namespace; a lookup only
  ever searches and returns its own namespace's entries.

Entries live in diskcache (SQLite, process-safe) or on a Redis server that
proxy replicas share (``storage.py``), as JSON, never pickled: TTL, a byte
limit and an entry limit with oldest-first eviction, invalidation by key and
by source document. Each process keeps an in-memory FAISS mirror of the
entry vectors, brought up to date from a shared sequence counter before every
lookup; a candidate is re-read from disk before it is returned, so an entry
that expired, was evicted or invalidated by another process is never served.

Two rules make that re-read sufficient while other processes write:

- **Keys are never reused.** They come from a counter that ``clear()`` keeps,
  so a key a process mirrored can only ever name the entry it mirrored: after
  another process clears and refills the cache, an old question cannot be
  answered with a new entry that took its number. A storage that loses the
  counter itself (a Redis server restarted from an older snapshot or failed
  over to a replica behind it, a flushed database, a folder made again) hands
  keys out again, so a candidate is served only while its key still holds the
  question the mirror matched; finding another one there rebuilds the mirror.
- **Sources carry generations.** ``invalidate(source=...)`` first bumps the
  source's generation, then deletes the entries listed under it. An entry
  records each source's generation as ``put`` read it, and ``get`` serves it
  only while every one is still current, so an entry written while an
  invalidation ran (and missed by its list) is never answered.

An entry this version cannot read (not JSON, fields it does not know how to
read, a vector that is not the cache's: another version wrote it during a
rolling upgrade, or someone edited it) is skipped as if it were not there, and
a warning names its key once per process: a miss is always safe, failing
every lookup that meets it is not. It stays stored, for the versions that read
it; ``invalidate(key=...)`` drops it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ctxproto.errors import ConfigError, StoreError
from ctxproto.models.embedder import Embedder, get_embedder
from ctxproto.stores.semantic_cache.mirror import (
    CacheMirror,
    Candidate,
    MirrorEntry,
    decode_vector,
    encode_vector,
)
from ctxproto.stores.semantic_cache.query_slots import QuerySlots, slot_conflict
from ctxproto.stores.semantic_cache.storage import UnreadableEntryError, open_cache_storage
from ctxproto.stores.semantic_cache.verifier import HitVerifier
from ctxproto.stores.storable_text import unstorable
from ctxproto.stores.store_url import store_location

__all__ = ["GUARDS", "CacheContext", "CacheHit", "Guard", "SemanticCache", "context_fingerprint"]

log = logging.getLogger(__name__)

Guard = Literal["rules", "learned", "off"]
"""How a candidate above the threshold is judged: see the module docstring."""
GUARDS: tuple[Guard, ...] = ("rules", "learned", "off")
RULES_THRESHOLD = 0.7
"""The cosine a candidate needs under ``rules`` or ``off`` unless told otherwise; the
learned guard brings its own floor (fitted with it), as it also weighs the cosine."""
MIRROR_FLOOR = 256
"""Mirrored entries up to which the mirror is never compared with the storage
(``SemanticCache._drop_gone``)."""

CacheContext = str | Sequence[str] | None
"""What an answer depended on besides the query: a text (a conversation summary) or a
set of ids (retrieved documents). ``None`` means the query alone."""


@dataclass(frozen=True)
class CacheHit:
    """A cached answer, how similar its question was, and that question."""

    answer: str
    similarity: float
    query: str
    key: str


class StoredEntry(BaseModel):
    """An entry as the storage keeps it (JSON), checked whenever it is read back.

    The storage is shared: an entry written by another version of ctxproto, or
    edited on the server, is skipped with a warning that names its key, never a
    ``KeyError`` from the middle of a lookup. Fields this version does not know
    are ignored.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    namespace: str
    context: str
    """The context fingerprint (``context_fingerprint``)."""
    query: str
    answer: str
    vector: str
    """The query's embedding (``encode_vector``)."""
    sources: dict[str, int] | list[str] = Field(default_factory=dict)
    """Each source's generation when the entry was put; a list was written before
    generations."""
    created: float = 0.0


def context_fingerprint(context: CacheContext) -> str:
    """A short stable digest of ``context``; ids are order-insensitive.

    The digest is taken over JSON of a typed value (``["text", ...]`` or
    ``["ids", [...]]``), never over joined strings, so no text equals a set of ids
    and no id list equals another split differently ("a\x1fb" vs "a", "b").
    """
    if context is None:
        return ""
    typed = ["text", context] if isinstance(context, str) else ["ids", sorted(set(context))]
    encoded = json.dumps(typed, ensure_ascii=True).encode("ascii")
    return hashlib.blake2b(encoded, digest_size=12).hexdigest()


class SemanticCache:
    """Answers keyed by question meaning, context fingerprint and namespace."""

    def __init__(
        self,
        path: str | Path,
        *,
        threshold: float | None = None,
        ttl: float | None = None,
        max_entries: int | None = None,
        max_bytes: int = 1 << 30,
        guard: Guard | bool = "learned",
        candidates: int = 8,
        embedder: Embedder | None = None,
    ) -> None:
        guard = resolve_guard(guard)
        self._verifier = HitVerifier.load() if guard == "learned" else None
        if threshold is None:
            threshold = RULES_THRESHOLD if self._verifier is None else self._verifier.min_similarity
        if not -1.0 <= threshold <= 1.0:
            raise ConfigError(f"must be a cosine in [-1, 1], got {threshold}", key="threshold")
        # Not finite, a TTL is no number of seconds: the folder kept such entries for
        # ever, and every put to a Redis server failed on a bare OverflowError or ValueError.
        if ttl is not None and not (math.isfinite(ttl) and ttl > 0):
            raise ConfigError(f"must be positive, finite seconds or None, got {ttl}", key="ttl")
        if max_entries is not None and max_entries <= 0:
            raise ConfigError(f"must be positive or None, got {max_entries}", key="max_entries")
        if max_bytes <= 0:  # diskcache culled every entry as it was put
            raise ConfigError(f"must be positive, got {max_bytes}", key="max_bytes")
        if candidates <= 0:  # no candidate was ever searched: nothing hit, silently
            raise ConfigError(f"must be at least 1, got {candidates}", key="candidates")
        on_server = isinstance(path, str) and store_location(path) == "redis"
        self.path = path if on_server else Path(path)
        """The folder, or the ``redis://`` URL (as given) of a server replicas share."""
        self.threshold = threshold
        self.ttl = ttl
        self.max_entries = max_entries
        self.guard: Guard = guard
        self.candidates = candidates
        self.embedder = embedder or get_embedder()
        if self._verifier is not None and self._verifier.embedder != self.embedder.name:
            raise ConfigError(
                f"the learned guard was fitted on the embedder '{self._verifier.embedder}' and "
                f"cannot judge vectors of '{self.embedder.name}': use guard 'rules' or 'off'",
                key="guard",
            )
        self._entries = open_cache_storage(path, max_bytes=max_bytes)
        self._mirror = CacheMirror(self.embedder.dimension)
        self._check_mirror_over = MIRROR_FLOOR
        """The mirror's size past which ``_drop_gone`` next compares it with the storage."""
        self._check_embedder()

    def __len__(self) -> int:
        return len(self._entries)

    def put(
        self,
        query: str,
        answer: str,
        *,
        context: CacheContext = None,
        namespace: str = "default",
        sources: Iterable[str] = (),
    ) -> str:
        """Store ``answer`` for ``query``; returns the entry key (for ``invalidate(key=...)``)."""
        _check_entry(query, answer, namespace)
        vector = self.embedder.embed_one(query)
        return self._store(query, vector, answer, context, namespace, sources)

    def put_embedded(
        self,
        query: str,
        vector: npt.NDArray[np.float32],
        answer: str,
        *,
        context: CacheContext = None,
        namespace: str = "default",
        sources: Iterable[str] = (),
    ) -> str:
        """``put`` for a caller that already holds the query's normalized embedding."""
        _check_entry(query, answer, namespace)
        if np.shape(vector) != (self.embedder.dimension,):
            raise ConfigError(
                f"a query vector of shape {np.shape(vector)} does not fit this cache's "
                f"embedder (dimension {self.embedder.dimension})",
                key="vector",
            )
        return self._store(query, vector, answer, context, namespace, sources)

    def _store(
        self,
        query: str,
        vector: npt.NDArray[np.float32],
        answer: str,
        context: CacheContext,
        namespace: str,
        sources: Iterable[str],
    ) -> str:
        """Write a checked entry and evict down to the limits.

        A source that is not valid Unicode (a lone surrogate: a file name that is
        not UTF-8) is refused before anything is written: no storage can key a list
        by it, and the answer cached without it would outlive its invalidation. A
        ``StoreError``, not the caller's ``ConfigError``: the source is the
        knowledge base's, and a pipeline keeps the answer it gave (``after_answer``).
        """
        listed = sorted(set(sources))
        for source in listed:
            if unstorable(source):
                raise StoreError(
                    f"source {source!r} is not valid Unicode text (a lone surrogate, as a "
                    f"file name that is not UTF-8 gives); the answer was not cached in "
                    f"{self._entries.where}"
                )
        generations = {source: self._generation(source) for source in listed}
        entry = StoredEntry(
            namespace=namespace,
            context=context_fingerprint(context),
            query=query,
            answer=answer,
            vector=encode_vector(vector),
            sources=generations,
            created=time.time(),
        )
        key = self._entries.add(entry.model_dump(), self.ttl, list(generations))
        self._evict_over_limit()
        return key

    def get(
        self, query: str, *, context: CacheContext = None, namespace: str = "default"
    ) -> CacheHit | None:
        """The cached answer to a question that means the same in the same context, or ``None``."""
        _check_text(query, "query")
        self._sync()
        fingerprint = context_fingerprint(context)
        vector = self.embedder.embed_one(query)
        slots = QuerySlots.of(query)
        for candidate in self._mirror.search(namespace, fingerprint, vector, self.candidates):
            if candidate.similarity < self.threshold:
                break
            if not self._guard_accepts(slots, vector, candidate):
                continue
            entry = self._read(candidate.key)
            if entry is not None and entry.query != candidate.query:
                # The key was handed out again: every mirrored key may name another entry.
                self._mirror = CacheMirror(self.embedder.dimension)
                entry = None
            if entry is not None and not self._sources_current(entry):
                self._entries.delete(candidate.key)
                entry = None
            if entry is None or entry.namespace != namespace or entry.context != fingerprint:
                self._mirror.forget(candidate.key)
                continue
            return CacheHit(entry.answer, candidate.similarity, entry.query, candidate.key)
        return None

    def invalidate(self, *, source: str | None = None, key: str | None = None) -> int:
        """Drop the entries built on ``source`` and/or the entry ``key``; returns how many."""
        if source is None and key is None:
            raise ConfigError("invalidate needs a source or a key")
        keys = [key] if key is not None else []
        if source is not None and not unstorable(source):  # else nothing was built on it
            # The generation moves before the list is read: see the module docstring.
            keys += self._entries.drop_source(source)
        dropped = 0
        for entry_key in keys:
            dropped += bool(self._entries.delete(entry_key))
            self._mirror.forget(entry_key)
        return dropped

    def clear(self) -> None:
        """Drop every entry of every namespace.

        The key counter and source generations stay: a key is never reused (see
        the module docstring), and other processes' mirrors drop the cleared keys
        when their entries are found gone.
        """
        self._entries.clear()
        self._mirror = CacheMirror(self.embedder.dimension)

    def ping(self) -> None:
        """A ``StoreError`` when the entries' storage cannot answer now (``/health``)."""
        self._entries.ping()

    def close(self) -> None:
        self._entries.close()

    def _guard_accepts(
        self, query: QuerySlots, vector: npt.NDArray[np.float32], candidate: Candidate
    ) -> bool:
        if self._verifier is not None:
            return self._verifier.accepts(
                query, candidate.slots, candidate.similarity, vector, candidate.vector
            )
        return self.guard == "off" or slot_conflict(query, candidate.slots) is None

    def _check_embedder(self) -> None:
        """Vectors of two embedders are not comparable: a cache is bound to the first one."""
        signature = f"{self.embedder.name}:{self.embedder.dimension}"
        stored = self._entries.bind_embedder(signature)
        if stored != signature:
            raise StoreError(
                f"the cache at {self._entries.where} was filled with embedder '{stored}'; "
                f"it cannot be used with '{signature}': use another path or clear it"
            )

    def _generation(self, source: str) -> int:
        return self._entries.generation(source)

    def _sources_current(self, entry: StoredEntry) -> bool:
        """False when a source the entry was built on was invalidated after it was read."""
        sources = entry.sources
        if isinstance(sources, list):  # written before generations: no generation to compare
            sources = dict.fromkeys(sources, 0)
        return all(self._generation(s) == g for s, g in sources.items())

    def _read(self, key: str) -> StoredEntry | None:
        """The entry under ``key``, checked; ``None`` when it is gone or unreadable."""
        try:
            raw = self._entries.get(key)
        except UnreadableEntryError as exc:
            self._skip_unreadable(key, exc.reason)
            return None
        if raw is None:
            return None
        try:
            return StoredEntry.model_validate(raw)
        except ValidationError as exc:  # the fields, never the contents
            fields = sorted({".".join(map(str, e["loc"])) or "the entry" for e in exc.errors()})
            self._skip_unreadable(key, f"is not one this version reads (check {', '.join(fields)})")
            return None

    def _skip_unreadable(self, key: str, reason: str) -> None:
        """Treat the entry under ``key`` as missing, and say so once per key and process.

        The entry stays: during a rolling upgrade the version that wrote it still
        reads it. Dropping it is the operator's call, which the warning names.
        """
        marker = (self._entries.where, key)
        with _REPORTED_LOCK:
            if marker in _REPORTED_UNREADABLE:
                return
            _REPORTED_UNREADABLE.add(marker)
        log.warning(
            "entry %s of the cache at %s %s; lookups skip it: drop it with "
            "invalidate(key='%s'), or clear the cache",
            key,
            self._entries.where,
            reason,
            key,
        )

    def _sync(self) -> None:
        """Bring the in-memory mirror up to the shared sequence counter.

        Only keys above the last sync are read, each once: a key whose entry is gone
        by then was evicted, expired or invalidated, never still being written.
        """
        latest = self._entries.latest_key()
        mirror = self._mirror
        if latest < mirror.synced:  # the folder was deleted and recreated under us
            mirror = self._mirror = CacheMirror(self.embedder.dimension)
        if latest == mirror.synced:
            return
        found = []
        for key in self._entries.keys_between(mirror.synced, latest):
            entry = self._read(key)
            if entry is None:
                continue
            try:
                vector = decode_vector(entry.vector, self.embedder.dimension)
            except StoreError as exc:  # never mirrored, so never a candidate
                self._skip_unreadable(key, f"has a vector this cache cannot use ({exc})")
                continue
            slots = QuerySlots.of(entry.query)
            found.append(
                MirrorEntry(key, entry.namespace, entry.context, entry.query, vector, slots)
            )
        mirror.add(found, synced=latest)
        self._drop_gone(mirror)

    def _drop_gone(self, mirror: CacheMirror) -> None:
        """Forget the mirrored entries the storage no longer holds, once the mirror holds
        over twice as many entries as the storage.

        Entries leave the storage without this process knowing: their TTL ran out,
        the byte limit culled them, another replica evicted them over its entry
        limit. A mirrored entry was forgotten only when a lookup met it as a
        candidate, and with the ``conversation`` scope nearly every entry is a scope
        no lookup asks again: with a TTL of 0.2 s the storage held 600 entries and
        the mirror every one of the 3,000 ever put, one vector each, for as long as
        the process ran. Compared only when the mirror has doubled since the last
        comparison, so lookups pay one listing of the stored keys per doubling.
        """
        size = len(mirror)
        if size <= self._check_mirror_over:
            return
        if size > 2 * len(self._entries):
            through = mirror.synced
            mirror.retain(set(self._entries.keys_between(0, through)), through=through)
        self._check_mirror_over = max(2 * len(mirror), MIRROR_FLOOR)

    def _evict_over_limit(self) -> None:
        """Oldest-first eviction down to ``max_entries`` (diskcache itself enforces bytes)."""
        if self.max_entries is None:
            return
        for oldest in self._entries.evict_over(self.max_entries):
            self._mirror.forget(oldest)


_REPORTED_UNREADABLE: set[tuple[str, str]] = set()
"""(storage, key) of the unreadable entries already warned about in this process: a
lookup meets a skipped entry on every sync of a new mirror, the log only once."""
_REPORTED_LOCK = threading.Lock()


def resolve_guard(guard: Guard | bool) -> Guard:
    """``guard`` as a name; ``True`` / ``False`` (the former switch) are ``rules`` / ``off``."""
    if guard is True:
        return "rules"
    if guard is False:
        return "off"
    if guard not in GUARDS:
        raise ConfigError(f"must be one of {', '.join(GUARDS)}, got {guard!r}", key="guard")
    return guard


def _check_entry(query: object, answer: object, namespace: object) -> None:
    """The checks of ``put`` and ``put_embedded``, before anything is embedded or written.

    These are the caller's mistakes, so a ``ConfigError`` naming the argument (the
    proxy answers 400), never the ``StoreError`` of a store that failed.
    """
    _check_text(query, "query")
    if not isinstance(answer, str):
        raise ConfigError(f"must be a string, got {type(answer).__name__}", key="answer")
    _check_text(namespace, "namespace")


def _check_text(text: object, argument: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"must be a non-empty string, got {text!r}", key=argument)
