"""A knowledge base: documents chunked, embedded and kept in a persistent vector store.

This is where chunking, the shared embedder and the vector store meet; the
``retriever`` stage and ``ctxproto index`` both go through it, so a store built
on the command line is read by a pipeline with the same chunking and embedder.
The store is a FAISS folder or, for ``postgresql://…``, a pgvector table that
every replica shares (``ctxproto.stores.vector_backend``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ctxproto.documents import Document
from ctxproto.models.embedder import Embedder, get_embedder
from ctxproto.retrieval.chunking import chunk_document
from ctxproto.retrieval.mmr import mmr_select
from ctxproto.stores.docstore import MetadataFilter
from ctxproto.stores.vector_backend import VectorBackend, open_vector_store
from ctxproto.stores.vector_index import IndexKind
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

    def add_documents(
        self,
        documents: Iterable[Document],
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Chunk, embed and add (or replace) documents; returns the chunks added.

        Every document is chunked and checked before the store changes, so a bad
        one (empty, binary, garbled) raises ``StoreError`` and adds nothing.
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
            vectors = self.embedder.embed([c.text for c in chunks])
            self.store.add(doc_id, chunks, vectors)
            added += len(chunks)
            if on_progress is not None:
                on_progress(1)
        return added

    def delete(self, doc_ids: Sequence[str]) -> int:
        """Remove documents by id; returns the chunks removed."""
        return self.store.delete(doc_ids)

    def save(self) -> None:
        self.store.save()

    def query(
        self,
        text: str,
        *,
        k: int = 5,
        fetch_k: int = 20,
        diversity: float = 0.3,
        min_score: float | None = None,
        filters: MetadataFilter | None = None,
    ) -> list[Document]:
        """The ``k`` best chunks for ``text`` (MMR over ``fetch_k`` candidates), best first."""
        vector = self.embedder.embed_one(text)
        hits = self.store.search(vector, max(k, fetch_k), min_score=min_score, filters=filters)
        if not hits:
            return []
        relevance = np.asarray([h.score for h in hits], dtype=np.float32)
        order = (
            mmr_select(
                relevance, self.store.vectors_of([h.slot for h in hits]), k, diversity=diversity
            )
            if diversity > 0
            else list(range(min(k, len(hits))))
        )
        return [hits[i].document.model_copy(update={"score": hits[i].score}) for i in order]
