"""The retrieval store interface, and the URL switch that opens one.

Two implementations: the embedded FAISS ``VectorStore`` in a folder, and
``PgVectorStore`` on PostgreSQL with pgvector, shared by every replica. Both
keep the same semantics — replace by document id, metadata filters (tenancy is
a ``tenant`` filter), the manifest check of embedder and dimension, and changes
that become visible to other readers only on ``save``, all at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ctxproto.documents import Document
from ctxproto.stores.docstore import MetadataFilter
from ctxproto.stores.store_url import store_location
from ctxproto.stores.vector_index import IndexKind
from ctxproto.stores.vector_store import StoreHit, VectorStore

__all__ = ["VectorBackend", "open_vector_store", "vector_store_exists"]


class VectorBackend(Protocol):
    """What ``KnowledgeBase`` needs from a store of chunks and their vectors."""

    embedder: str

    @property
    def count(self) -> int:
        """Documents in the store."""
        ...

    @property
    def chunk_count(self) -> int: ...

    @property
    def index_kind(self) -> str:
        """The index a search uses now (``flat``, ``hnsw``, ...)."""
        ...

    def add(
        self, doc_id: str, chunks: Sequence[Document], vectors: npt.NDArray[np.float32]
    ) -> None: ...

    def delete(self, doc_ids: Sequence[str]) -> int: ...

    def document_ids(self) -> list[str]:
        """The ids of the documents in the store, sorted, unsaved changes included."""
        ...

    def chunks_of(self, doc_id: str) -> list[Document]:
        """The chunks stored for ``doc_id``, in order, unsaved changes included (none
        when it is not stored)."""
        ...

    def search(
        self,
        vector: npt.NDArray[np.float32],
        k: int,
        *,
        min_score: float | None = None,
        filters: MetadataFilter | None = None,
    ) -> list[StoreHit]: ...

    def lexical_search(
        self, text: str, k: int, *, filters: MetadataFilter | None = None
    ) -> list[StoreHit]:
        """The ``k`` best chunks for ``text`` by BM25, best first (hybrid retrieval)."""
        ...

    def vectors_of(self, slots: Sequence[int]) -> npt.NDArray[np.float32]: ...

    def save(self) -> None:
        """Make every change since the last save visible to other readers, atomically."""
        ...

    def refresh(self) -> bool:
        """See what other writers saved since this store was opened; ``True`` if it changed."""
        ...

    def ping(self) -> None:
        """A ``StoreError`` when the store cannot answer now; one cheap round trip."""
        ...

    def close(self) -> None:
        """Let go of what the store holds open (a PostgreSQL store's connections)."""
        ...


def open_vector_store(
    location: str | Path,
    *,
    embedder: str,
    dimension: int,
    kind: IndexKind = "auto",
    hnsw_threshold: int = 20_000,
) -> VectorBackend:
    """A folder opens the FAISS store; ``postgresql://…`` opens the pgvector store."""
    if isinstance(location, str) and store_location(location) == "postgresql":
        from ctxproto.stores.pgvector_store import PgVectorStore

        return PgVectorStore(
            location, embedder=embedder, dimension=dimension, hnsw_threshold=hnsw_threshold
        )
    return VectorStore(
        location, embedder=embedder, dimension=dimension, kind=kind, hnsw_threshold=hnsw_threshold
    )


def vector_store_exists(location: str) -> bool:
    """Whether ``location`` holds a store built by ``ctxproto index``."""
    if store_location(location) == "postgresql":
        from ctxproto.stores.pgvector_store import PgVectorStore

        return PgVectorStore.exists(location)
    return VectorStore.read_manifest(Path(location)) is not None
