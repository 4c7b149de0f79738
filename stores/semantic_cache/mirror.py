"""The in-memory FAISS mirror of a semantic cache's entries, one index per key scope.

Entries are written to diskcache by any process; each process mirrors their
vectors here to search them in well under a millisecond. Entry keys are numbers
from a shared counter, so catching up means reading the keys above the last one
seen. A key's entry is written in the same step as the counter reaches it
(``CacheStorage.add``), so a key at or below the counter whose entry is missing
is gone for good: each key is read once.

With the default ``conversation`` scope nearly every answer is a scope of its
own, so a scope must cost about one vector and must go away with its last
entry: a scope is dropped once it holds no live entry, and its index is
compacted once dead slots outnumber live ones (each entry's slot stays dead
until then, as ``VectorIndex`` never reuses one). Entries that left the storage
unseen (expired, culled, evicted by another process) are dropped by ``retain``.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ctxproto.errors import StoreError
from ctxproto.stores.semantic_cache.query_slots import QuerySlots
from ctxproto.stores.vector_index import VectorIndex

__all__ = ["CacheMirror", "Candidate", "MirrorEntry", "decode_vector", "encode_vector"]

Vector = npt.NDArray[np.float32]


def encode_vector(vector: Vector) -> str:
    """float16 in base64: a quarter of JSON floats' size, cosine error below 1e-3."""
    return base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode("ascii")


def decode_vector(text: str, dimension: int) -> Vector:
    """The normalized vector ``encode_vector`` wrote; a ``StoreError`` for anything else."""
    try:
        halves = np.frombuffer(base64.b64decode(text, validate=True), dtype="<f2")
    except ValueError:  # binascii.Error is one, as is a byte count that is not even
        raise StoreError("a cache entry's vector is not float16 in base64") from None
    vector = halves.astype(np.float32)
    if vector.shape != (dimension,):
        raise StoreError(
            f"a cache entry has a vector of dimension {vector.size}, expected {dimension}: "
            "the cache was filled with another embedder"
        )
    norm = float(np.linalg.norm(vector))
    result: Vector = vector / norm if norm > 0 else vector
    return result


@dataclass(frozen=True)
class MirrorEntry:
    key: str
    namespace: str
    context: str
    query: str
    """The entry's question: a candidate is served only while its key still holds it."""
    vector: Vector
    slots: QuerySlots


@dataclass(frozen=True)
class Candidate:
    key: str
    query: str
    similarity: float
    slots: QuerySlots
    vector: Vector
    """The entry's normalized vector (a view of the index's copy: read it, never write)."""


@dataclass
class _Scope:
    name: tuple[str, str]
    """(namespace, context fingerprint)."""
    index: VectorIndex
    keys: list[str] = field(default_factory=list)
    """Entry keys by slot, dead slots included."""
    queries: list[str] = field(default_factory=list)
    slots: list[QuerySlots] = field(default_factory=list)
    live: int = 0


class CacheMirror:
    """Vectors by (namespace, context fingerprint), plus the sync position.

    One mirror serves every thread of a process (the proxy's workers, its MCP
    endpoint, an invalidation route), and a FAISS index must not be searched
    while another thread removes from it: each method holds the mirror's lock.
    """

    def __init__(self, dimension: int) -> None:
        self._lock = threading.Lock()
        self.dimension = dimension
        self.synced = 0
        """The key counter up to which every entry has been read."""
        self._scopes: dict[tuple[str, str], _Scope] = {}
        self._where: dict[str, tuple[_Scope, int]] = {}

    def __len__(self) -> int:
        """How many entries are mirrored."""
        with self._lock:
            return len(self._where)

    def add(self, entries: list[MirrorEntry], *, synced: int = 0) -> None:
        """Mirror entries read from storage (one FAISS add per scope), then record that
        every key up to ``synced`` has been read."""
        with self._lock:
            grouped: dict[tuple[str, str], list[MirrorEntry]] = {}
            for entry in entries:
                if entry.key not in self._where:
                    grouped.setdefault((entry.namespace, entry.context), []).append(entry)
            for name, group in grouped.items():
                scope = self._scopes.get(name)
                if scope is None:
                    scope = self._scopes[name] = _Scope(name, VectorIndex(self.dimension))
                slots = scope.index.add(np.stack([e.vector for e in group]))
                for entry, slot in zip(group, slots.tolist(), strict=True):
                    scope.keys.append(entry.key)
                    scope.queries.append(entry.query)
                    scope.slots.append(entry.slots)
                    self._where[entry.key] = (scope, slot)
                scope.live += len(group)
            self.synced = max(self.synced, synced)

    def forget(self, key: str) -> None:
        """Stop returning ``key``; frees its scope when it was the last live entry there."""
        with self._lock:
            found = self._where.pop(key, None)
            if found is None:
                return
            scope, slot = found
            scope.index.remove(np.asarray([slot], dtype=np.int64))
            scope.live -= 1
            if scope.live == 0:
                del self._scopes[scope.name]
            elif scope.index.slot_count - scope.live > scope.live:
                self._compact(scope)

    def retain(self, stored: Collection[str], *, through: int) -> int:
        """Forget every mirrored key up to ``through`` that is not in ``stored``; returns
        how many were forgotten.

        Keys above ``through`` stay: another thread may have mirrored them after
        ``stored`` was listed, and a key is read only once (see the module docstring).
        """
        with self._lock:
            gone = [key for key in self._where if int(key) <= through and key not in stored]
        for key in gone:
            self.forget(key)
        return len(gone)

    def search(self, namespace: str, context: str, vector: Vector, k: int) -> list[Candidate]:
        """The ``k`` most similar entries of one namespace and context, best first."""
        with self._lock:
            scope = self._scopes.get((namespace, context))
            if scope is None:
                return []
            hits = scope.index.search(vector, k)
            return [
                Candidate(
                    scope.keys[slot],
                    scope.queries[slot],
                    score,
                    scope.slots[slot],
                    scope.index.vectors[slot],
                )
                for score, slot in zip(hits.scores.tolist(), hits.slots.tolist(), strict=True)
            ]

    def _compact(self, scope: _Scope) -> None:
        """Drop the scope's dead slots; its live entries take new, dense slots."""
        alive = scope.index.alive.tolist()
        scope.index.compact()
        scope.keys = [key for key, live in zip(scope.keys, alive, strict=True) if live]
        scope.queries = [query for query, live in zip(scope.queries, alive, strict=True) if live]
        scope.slots = [slots for slots, live in zip(scope.slots, alive, strict=True) if live]
        for slot, key in enumerate(scope.keys):
            self._where[key] = (scope, slot)
