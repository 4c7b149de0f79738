"""An in-memory FAISS index over slots, with tombstones and a size-chosen index kind.

Every vector gets a *slot* (its row number, never reused until ``compact``).
Deleting marks the slot dead instead of calling ``remove_ids``, because HNSW
cannot remove vectors; searches skip dead slots through a FAISS ``IDSelector``,
the same mechanism that applies metadata filters. The vectors are also kept as
a plain array, so MMR can compare candidates and the index can be rebuilt in
another kind without re-embedding.

Kinds: ``flat`` (exact inner product) below ``hnsw_threshold`` vectors, ``hnsw``
above it (graph search, sub-millisecond on 100k vectors), ``ivf`` on request.
``auto`` switches from flat to HNSW when the collection grows past the threshold.
A GPU copy of a flat index is used for unfiltered searches when a faiss GPU build
and a GPU are present; every index of the process shares one set of GPU resources
(each ``StandardGpuResources`` reserves its own scratch memory and streams, and a
semantic cache holds an index per conversation), and since FAISS does not allow
two threads to use one set at a time, GPU searches take turns.

Storage grows by doubling from the first batch's size, not from a fixed minimum:
most indexes of a semantic cache hold one or two vectors.

HNSW parameters (M=32, efConstruction=80, efSearch=96): with 100k random
vectors around real questions, M=16/efConstruction=40 put the true neighbour
in the top 8 for only 84% of queries at efSearch 64, against 99% here
(``docs/benchmarks.md``); a cache that misses its own entry costs a model call.

A filter (or tombstones) that allows a fraction ``s`` of the slots starves a
graph search: HNSW and IVF keep allowed vectors only among the candidates they
visit, so at efSearch 96 a filter allowing 20 of 30k random vectors recalled
27% of the true top 5, and one query in five came back empty. Small allowed
sets are therefore scored exactly (one inner product each, cheaper than the
graph walk that would find them); larger ones search HNSW with efSearch raised
by ``1/s``, so the walk still meets about 96 allowed candidates. pgvector's
iterative scans solve the same problem there.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ctxproto._extras import require
from ctxproto.errors import ConfigError, StoreError

__all__ = ["IndexKind", "SearchHits", "VectorIndex", "checked_vectors"]

IndexKind = Literal["auto", "flat", "hnsw", "ivf"]
Vectors = npt.NDArray[np.float32]
Slots = npt.NDArray[np.int64]

HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 96
IVF_PROBES = 16
IVF_MIN_VECTORS = 16
"""The fewest vectors IVF's 4·√n lists can be trained on (n ≥ 4·√n from n = 16).
Below it an ``ivf`` index is flat, searched exactly, and it becomes IVF once it
holds this many: refused, a store's first document (``ctxproto index`` adds one
document at a time) and a save that compacted to fewer vectors both failed."""
EXACT_SEARCH_ROWS = 4096
"""Allowed sets up to this size are always scored exactly: a few thousand inner
products take well under a millisecond, less than a filtered graph walk."""

_gpu_lock = threading.Lock()
"""Held while a GPU copy is made or searched: see the module docstring."""


class SearchHits:
    """Scores (inner products, higher is better) and slots of one query, best first."""

    __slots__ = ("scores", "slots")

    def __init__(self, scores: npt.NDArray[np.float32], slots: Slots) -> None:
        self.scores = scores
        self.slots = slots


class VectorIndex:
    """Normalized vectors in a FAISS index; see the module docstring for the design."""

    def __init__(
        self, dimension: int, *, kind: IndexKind = "auto", hnsw_threshold: int = 20_000
    ) -> None:
        if dimension <= 0:
            raise ConfigError(f"must be positive, got {dimension}", key="dimension")
        self.faiss: Any = require("faiss", extra="embed")
        self.dimension = dimension
        self.requested_kind: IndexKind = kind
        self.hnsw_threshold = hnsw_threshold
        self._vectors: Vectors = np.empty((0, dimension), dtype=np.float32)
        self._alive: npt.NDArray[np.bool_] = np.empty(0, dtype=bool)
        self._size = 0
        self.kind: str = self._wanted_kind(0)  # an ivf index is flat until it can train
        self._index: Any = self._new_index(self.kind, 0)
        self._gpu_index: Any = None

    def __len__(self) -> int:
        return int(self.alive.sum())

    @property
    def slot_count(self) -> int:
        return self._size

    @property
    def vectors(self) -> Vectors:
        """Vectors by slot (dead slots included)."""
        return self._vectors[: self._size]

    @property
    def alive(self) -> npt.NDArray[np.bool_]:
        """Whether each slot is live."""
        return self._alive[: self._size]

    def add(self, vectors: Vectors) -> Slots:
        """Add normalized vectors; returns their slots."""
        vectors = self._checked(vectors)
        start, end = self._size, self._size + len(vectors)
        if end > len(self._vectors):
            capacity = max(end, 2 * len(self._vectors))
            self._vectors = np.resize(self._vectors, (capacity, self.dimension))
            self._alive = np.resize(self._alive, capacity)
        # Rows past ``_size`` are invisible: a build that raises leaves the index as
        # it was, and the size is committed only once the FAISS index holds the new
        # vectors too.
        self._vectors[start:end] = vectors
        wanted = self._wanted_kind(end)
        if wanted != self.kind or not self._index.is_trained or self._lists_outgrown(end):
            self.kind, self._index = wanted, self._built(wanted, self._vectors[:end])
        else:
            self._index.add(vectors)
        self._alive[start:end] = True
        self._size = end
        self._gpu_index = None
        return np.arange(start, end, dtype=np.int64)

    def remove(self, slots: Slots) -> None:
        """Mark ``slots`` dead; they are never returned again."""
        self.alive[slots] = False

    def compact(self) -> Slots:
        """Drop dead slots and rebuild; returns, for each old slot, its new slot or -1."""
        mapping = np.full(self.slot_count, -1, dtype=np.int64)
        mapping[self.alive] = np.arange(int(self.alive.sum()), dtype=np.int64)
        vectors = np.ascontiguousarray(self.vectors[self.alive])
        kind = self._wanted_kind(len(vectors))
        index = self._built(kind, vectors)  # may raise: nothing has changed yet
        self._vectors, self._size = vectors, len(vectors)
        self._alive = np.ones(self._size, dtype=bool)
        self.kind, self._index, self._gpu_index = kind, index, None
        return mapping

    def search(
        self, query: Vectors, k: int, *, allowed: npt.NDArray[np.bool_] | None = None
    ) -> SearchHits:
        """The ``k`` best live slots for ``query`` (one vector), optionally within ``allowed``.

        Equal scores come lowest slot (oldest vector) first, whichever search ran:
        FAISS's flat search returned them newest first and the exact search
        oldest first, so a duplicated chunk's document flipped once anything was
        deleted, and differed from the PostgreSQL store's. Which of several
        vectors tied at the ``k``-th score make the cut is the oldest ones on the
        exact search; FAISS's own search picks among them as it finds them.
        """
        query = self._checked(query.reshape(1, -1))
        mask = self.alive if allowed is None else (self.alive & allowed)
        live = int(mask.sum())
        k = min(k, live)
        if k <= 0:
            return SearchHits(np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64))
        if live == self.slot_count:
            scores, slots = self._search_all(query, k)
        elif self._scores_exactly(live, k):
            return self._exact_search(query[0], k, mask)
        else:
            bitmap = np.packbits(mask, bitorder="little")
            selector = self.faiss.IDSelectorBitmap(len(mask), self.faiss.swig_ptr(bitmap))
            params = self._search_parameters(selector, live, k)
            scores, slots = self._index.search(query, k, params=params)
        found = slots[0] >= 0
        return _best_first(scores[0][found], slots[0][found].astype(np.int64))

    def to_bytes(self) -> bytes:
        """The FAISS index serialized by FAISS itself (no pickle); ``StoreError`` when it
        does not hold every slot, since ``restore`` would refuse it."""
        if self._index.ntotal != self._size:
            raise StoreError(
                f"the FAISS index holds {self._index.ntotal} vectors for {self._size} slots"
            )
        return bytes(self.faiss.serialize_index(self._index).tobytes())

    @classmethod
    def restore(
        cls,
        vectors: Vectors,
        alive: npt.NDArray[np.bool_],
        index_bytes: bytes,
        *,
        kind: IndexKind,
        hnsw_threshold: int,
    ) -> VectorIndex:
        """Rebuild from saved parts; a corrupt or inconsistent index is a ``StoreError``."""
        index = cls(vectors.shape[1], kind=kind, hnsw_threshold=hnsw_threshold)
        try:
            raw = index.faiss.deserialize_index(np.frombuffer(index_bytes, dtype=np.uint8))
        except RuntimeError as exc:  # FAISS quotes the bytes it did not expect: not shown
            raise StoreError("the FAISS index file is corrupt") from exc
        if raw.ntotal != len(vectors) or raw.d != vectors.shape[1] or len(alive) != len(vectors):
            raise StoreError("the FAISS index does not match the stored vectors")
        index._vectors, index._alive, index._index = vectors, alive.copy(), raw
        index._size = len(vectors)
        index.kind = _kind_of(index.faiss, raw)
        return index

    def _checked(self, vectors: Vectors) -> Vectors:
        return checked_vectors(vectors, self.dimension)

    def _wanted_kind(self, size: int) -> str:
        if self.requested_kind == "ivf":
            return "ivf" if size >= IVF_MIN_VECTORS else "flat"
        if self.requested_kind != "auto":
            return self.requested_kind
        return "hnsw" if size >= self.hnsw_threshold else "flat"

    def _lists_outgrown(self, size: int) -> bool:
        """Whether an IVF index, trained when it was smaller, has half the lists its
        size now asks for: it is trained again then, at each fourfold growth, so the
        rebuilds cost O(n) over all adds. Trained once, a store indexed a document
        at a time kept the 16 lists of its first 16 vectors, each search probing
        every one of them."""
        return self.kind == "ivf" and _ivf_lists(size) >= 2 * self._index.nlist

    def _new_index(self, kind: str, size: int) -> Any:
        faiss = self.faiss
        if kind == "flat":
            return faiss.IndexFlatIP(self.dimension)
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dimension, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = HNSW_EF_SEARCH
            return index
        if kind == "ivf":
            quantizer = faiss.IndexFlatIP(self.dimension)
            lists = _ivf_lists(size)
            index = faiss.IndexIVFFlat(quantizer, self.dimension, lists, faiss.METRIC_INNER_PRODUCT)
            index.nprobe = IVF_PROBES
            return index
        raise ConfigError(f"unknown index kind '{kind}'", key="kind")

    def _built(self, kind: str, vectors: Vectors) -> Any:
        """A new index of ``kind`` holding ``vectors``; changes nothing on this object."""
        index = self._new_index(kind, len(vectors))
        if kind == "ivf" and len(vectors):
            if len(vectors) < index.nlist:
                raise StoreError(f"an IVF index needs at least {index.nlist} vectors to train")
            index.train(vectors)
        if len(vectors):
            index.add(vectors)
        return index

    def _filtered_ef_search(self, live: int, k: int) -> int:
        """efSearch for a graph walk in which only ``live`` of the slots may be returned.

        The walk keeps the allowed nodes among those it visits, so it is widened by
        the inverse of the allowed fraction to still collect ``HNSW_EF_SEARCH``
        allowed candidates (FAISS never searches with efSearch below ``k``).
        """
        return -(-max(HNSW_EF_SEARCH, k) * self.slot_count // live)

    def _scores_exactly(self, live: int, k: int) -> bool:
        """Whether scoring the ``live`` allowed vectors one by one is the cheaper search.

        Exact scoring costs ``live`` inner products; a filtered HNSW walk about
        ``HNSW_NEIGHBOURS`` per visited node, and it visits ``_filtered_ef_search``
        nodes. Above ``EXACT_SEARCH_ROWS``, IVF and flat indexes keep FAISS's filtered
        search (exact on a flat index)."""
        if live <= EXACT_SEARCH_ROWS:
            return True
        return self.kind == "hnsw" and live <= HNSW_NEIGHBOURS * self._filtered_ef_search(live, k)

    def _exact_search(self, query: Vectors, k: int, mask: npt.NDArray[np.bool_]) -> SearchHits:
        """The true ``k`` best slots within ``mask``, by inner product with every allowed vector."""
        allowed = np.flatnonzero(mask)
        scores = _inner_products(self.vectors[allowed], query)
        if k < len(scores):  # every score tied with the k-th too, so the oldest of them win
            kth = np.partition(scores, len(scores) - k)[len(scores) - k]
            best = np.flatnonzero(scores >= kth)
        else:
            best = np.arange(len(scores))
        hits = _best_first(scores[best], allowed[best].astype(np.int64))
        return SearchHits(hits.scores[:k], hits.slots[:k])

    def _search_parameters(self, selector: Any, live: int, k: int) -> Any:
        faiss = self.faiss
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = self._filtered_ef_search(live, k)
        elif self.kind == "ivf":
            params = faiss.SearchParametersIVF()
            params.nprobe = IVF_PROBES
        else:
            params = faiss.SearchParameters()
        params.sel = selector
        return params

    def _search_all(self, query: Vectors, k: int) -> tuple[Any, Any]:
        """An unfiltered search, on the GPU copy of a flat index when a GPU faiss build has one."""
        faiss = self.faiss
        on_gpu = self.kind == "flat" and hasattr(faiss, "StandardGpuResources")
        if not on_gpu or faiss.get_num_gpus() == 0:
            scores, slots = self._index.search(query, k)
            return scores, slots
        with _gpu_lock:
            if self._gpu_index is None:
                resources = _shared_gpu_resources(faiss)
                self._gpu_index = faiss.index_cpu_to_gpu(resources, 0, self._index)
            scores, slots = self._gpu_index.search(query, k)
            return scores, slots


def _ivf_lists(size: int) -> int:
    """IVF's list count for ``size`` vectors: 4·√n, at most 4,096."""
    return max(1, min(4096, int(4 * np.sqrt(max(size, 1)))))


def _best_first(scores: npt.NDArray[np.float32], slots: Slots) -> SearchHits:
    """Hits by descending score, equal scores by ascending slot."""
    order = np.lexsort((slots, -scores))
    return SearchHits(scores[order], slots[order])


@functools.cache
def _shared_gpu_resources(faiss: Any) -> Any:
    """The process's one ``StandardGpuResources``; called under ``_gpu_lock``."""
    return faiss.StandardGpuResources()


def _kind_of(faiss: Any, index: Any) -> str:
    if isinstance(index, faiss.IndexHNSWFlat):
        return "hnsw"
    if isinstance(index, faiss.IndexIVFFlat):
        return "ivf"
    return "flat"


def _inner_products(vectors: Vectors, query: Vectors) -> npt.NDArray[np.float32]:
    """The inner product of each row of ``vectors`` with ``query``, each row summed alike.

    A matrix-vector product (``vectors @ query``) goes to BLAS, whose kernels sum
    rows in blocks of several and the rest one by one, so two copies of one
    vector (a footer, a chunk copied into several documents) scored a few ulps
    apart by where they fell: the equal scores that are to come oldest first,
    as FAISS's and PostgreSQL's searches give them, came in the order of that
    noise, and a newer copy could make the cut at the ``k``-th place.
    ``einsum`` sums every row with the same loop.
    """
    scores: npt.NDArray[np.float32] = np.einsum("ij,j->i", vectors, query)
    return scores


def checked_vectors(vectors: Vectors, dimension: int) -> Vectors:
    """``vectors`` as a contiguous float32 matrix, or ``StoreError`` before anything changes.

    Every vector store checks here, so a bad batch is refused the same way by each.
    """
    array = np.asarray(vectors)
    if array.ndim != 2 or array.shape[1] != dimension:
        raise StoreError(
            f"vectors of shape {array.shape} do not fit an index of dimension {dimension}"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise StoreError("vectors contain NaN or infinite values")
    return array
