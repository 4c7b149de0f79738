"""A knowledge base: documents chunked, embedded and kept in a persistent vector store.

This is where chunking, the shared embedder and the vector store meet; the
``retriever`` stage and ``ctxproto index`` both go through it, so a store built
on the command line is read by a pipeline with the same chunking and embedder.
The store is a FAISS folder or, for ``postgresql://…``, a pgvector table that
every replica shares (``ctxproto.stores.vector_backend``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ctxproto.documents import Document
from ctxproto.errors import ConfigError
from ctxproto.models.embedder import Embedder, get_embedder
from ctxproto.retrieval.chunking import chunk_document
from ctxproto.retrieval.fusion import relative_score_fusion
from ctxproto.retrieval.mmr import mmr_select
from ctxproto.stores.docstore import MetadataFilter
from ctxproto.stores.vector_backend import VectorBackend, open_vector_store
from ctxproto.stores.vector_index import IndexKind
from ctxproto.stores.vector_store import StoreHit
from ctxproto.tokens import TokenCounter, get_counter

__all__ = ["KnowledgeBase"]


class KnowledgeBase:
    """Add, delete and query documents of one store (a folder or a PostgreSQL URL)."""

    def __init__(
        self,
        path: str | Path,
        *,
        embedder: Embedder | None = None,
        counter: TokenCounter | None = None,
        chunk_tokens: int = 256,
        overlap_tokens: int = 32,
        kind: IndexKind = "auto",
    ) -> None:
        self.embedder = embedder or get_embedder()
        self.counter = counter or get_counter()
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens
        self.store: VectorBackend = open_vector_store(
            path, embedder=self.embedder.name, dimension=self.embedder.dimension, kind=kind
        )
        self.chunks_past_window = 0
        """Chunks added through this object that run past the embedder's window
        (``Embedder.window_tokens``): only their start is embedded, so a question
        about their end may not find them. ``ctxproto index`` reports it."""
        self.unchanged_documents = 0
        """Documents given to ``add_documents`` that were stored already as they are:
        not embedded again (``ctxproto index`` reports them)."""
        self._searching = threading.Lock()
        """Held from the store's refresh to the last read of its slots: a refresh by
        another thread's query swaps the index and the chunk records."""

    def add_documents(
        self,
        documents: Iterable[Document],
        *,
        on_progress: Callable[[int], None] | None = None,
        reembed: bool = False,
    ) -> int:
        """Chunk, embed and add (or replace) documents; returns the chunks added.

        Every document is chunked and checked before the store changes, so a bad
        one (empty, binary, garbled) raises ``StoreError`` and adds nothing. A
        document whose chunks are stored already, each as it is now (same text,
        metadata and source, chunked the same way), is left as stored and counted
        in ``unchanged_documents``: embedding is nearly all of an index run's time,
        and re-indexing a folder after one file changed embedded every file again.
        The store's embedder is the one it was built with (its manifest names it),
        so the stored vectors are the ones a new embedding would give, unless the
        model's weights changed under the same name (a local folder retrained in
        place): ``reembed=True`` then embeds every document again.
        """
        chunked = [
            (
                d.id,
                chunk_document(
                    d,
                    self.counter,
                    max_tokens=self.chunk_tokens,
                    overlap_tokens=self.overlap_tokens,
                ),
            )
            for d in documents
        ]
        added = 0
        for doc_id, chunks in chunked:
            if not reembed and _as_stored(chunks) == _as_stored(self.store.chunks_of(doc_id)):
                self.unchanged_documents += 1
                if on_progress is not None:
                    on_progress(1)
                continue
            texts = [c.text for c in chunks]
            vectors = self.embedder.embed(texts)
            self.store.add(doc_id, chunks, vectors)
            self.chunks_past_window += self.embedder.past_window(texts)
            added += len(chunks)
            if on_progress is not None:
                on_progress(1)
        return added

    def delete(self, doc_ids: Sequence[str]) -> int:
        """Remove documents by id; returns the chunks removed.

        No ids, no call: a PostgreSQL store begins its write transaction (and takes
        the table's writer lock) on a change, even one that removes nothing.
        """
        return self.store.delete(doc_ids) if doc_ids else 0

    def prune(self, keep: Collection[str], *, keep_under: Collection[str] = ()) -> list[str]:
        """Delete every document whose id is not in ``keep`` nor under a folder id of
        ``keep_under`` (``"a/b"`` keeps ``"a/b/c.md"``); returns the ids deleted.

        Re-indexing a source only adds and replaces, so a file deleted from the
        source folder kept being retrieved; pruning to the ids the source still
        holds makes the store mirror it (at ``save``, with the new documents).
        A folder that could not be listed is no folder emptied: ``keep_under``.
        """
        prefixes = tuple(f"{folder}/" for folder in keep_under)
        stale = [
            doc_id
            for doc_id in self.store.document_ids()
            if doc_id not in keep and not doc_id.startswith(prefixes)
        ]
        self.delete(stale)
        return stale

    def save(self) -> None:
        self.store.save()

    def close(self) -> None:
        """Close the store: a PostgreSQL store holds a pool of connections until then."""
        self.store.close()

    def query(
        self,
        text: str,
        *,
        k: int = 5,
        fetch_k: int = 20,
        diversity: float = 0.3,
        min_score: float | None = None,
        filters: MetadataFilter | None = None,
        lexical_weight: float = 0.0,
    ) -> list[Document]:
        """The ``k`` best chunks for ``text`` (MMR over ``fetch_k`` candidates), best first.

        With ``lexical_weight`` above 0 the search is hybrid: the ``fetch_k``
        nearest chunks and the ``fetch_k`` best by BM25 are the candidates,
        ranked by ``relative_score_fusion`` of their cosine and BM25 scores, and
        each returned chunk's ``score`` is that fused score. ``min_score`` is a
        cosine floor either way.

        The sizes and weights are checked as the ``retriever`` stage checks its
        parameters: unchecked, ``k=-1`` returned all candidates but one and a
        ``diversity`` above 1 ranked the least relevant chunks first.
        """
        for key, size in (("k", k), ("fetch_k", fetch_k)):
            if size < 1:
                raise ConfigError(f"must be at least 1, got {size}", key=key)
        for key, weight in (("diversity", diversity), ("lexical_weight", lexical_weight)):
            if not 0.0 <= weight <= 1.0:
                raise ConfigError(f"must be between 0 and 1, got {weight}", key=key)
        vector = self.embedder.embed_one(text)
        with self._searching:
            self.store.refresh()  # a re-index by another process is searched at once
            wanted = max(k, fetch_k)
            hits = self.store.search(vector, wanted, min_score=min_score, filters=filters)
            if lexical_weight > 0:
                lexical = self.store.lexical_search(text, wanted, filters=filters)
                hits, relevance = self._fuse(vector, hits, lexical, lexical_weight, min_score)
            else:
                relevance = np.asarray([h.score for h in hits], dtype=np.float32)
            if not hits:
                return []
            if diversity > 0:
                vectors = self.store.vectors_of([h.slot for h in hits])
                order = mmr_select(relevance, vectors, k, diversity=diversity)
            else:
                order = [int(i) for i in np.argsort(-relevance, kind="stable")[:k]]
            scored = [(hits[i].document, float(relevance[i])) for i in order]
        return [document.model_copy(update={"score": score}) for document, score in scored]

    def _fuse(
        self,
        vector: npt.NDArray[np.float32],
        dense: list[StoreHit],
        lexical: list[StoreHit],
        lexical_weight: float,
        min_score: float | None,
    ) -> tuple[list[StoreHit], npt.NDArray[np.float32]]:
        """Both searches' candidates, each once, and their fused scores.

        A chunk found by BM25 alone gets its true cosine (one dot product) and
        meets the same ``min_score``; a chunk found by the vectors alone gets a
        BM25 score of 0, as Weaviate's hybrid search does for a result missing
        from one of the two searches.
        """
        seen = {h.slot for h in dense}
        extra = [h for h in lexical if h.slot not in seen]
        if extra:
            cosines = self.store.vectors_of([h.slot for h in extra]) @ vector
            extra = [
                replace(h, score=float(c))
                for h, c in zip(extra, cosines.tolist(), strict=True)
                if min_score is None or c >= min_score
            ]
        candidates = dense + extra
        bm25 = {h.slot: h.score for h in lexical}
        return candidates, relative_score_fusion(
            np.asarray([h.score for h in candidates], dtype=np.float32),
            np.asarray([bm25.get(h.slot, 0.0) for h in candidates], dtype=np.float32),
            lexical_weight,
        )


def _as_stored(chunks: Sequence[Document]) -> list[Any]:
    """``chunks`` as a store keeps them, to compare with what it gives back: JSON values
    (a tuple in the metadata is read back as a list), ``true`` never ``1`` (Python's
    ``True == 1`` took ``public: True`` over a stored ``public: 1`` as unchanged, and
    the stores' filters keep the two apart), and a number by its value as
    PostgreSQL's ``numeric`` keeps it (``1e20`` comes back as the integer
    ``100000000000000000000``, ``-0.0`` as ``0``), or a document with such metadata
    never counted as unchanged on pgvector."""
    return [_canonical(chunk.model_dump(mode="json")) for chunk in chunks]


def _canonical(value: Any) -> Any:
    """``value`` with each number a ``Decimal`` and each boolean tagged, compared by ``==``."""
    if isinstance(value, bool):
        return ("bool", value)  # no JSON value is a tuple: never equal to a number or list
    if isinstance(value, int | float):
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value
