"""Persistence backends (vector index, caches, session state), imported as ``ctxproto.stores``."""

from ctxproto.stores.atomic import atomic_write_bytes, atomic_write_text
from ctxproto.stores.pgvector_store import PgVectorStore
from ctxproto.stores.semantic_cache import CacheHit, SemanticCache
from ctxproto.stores.session_state import SessionStateStore, SessionStore, open_session_store
from ctxproto.stores.store_url import redact_url, store_location
from ctxproto.stores.vector_backend import VectorBackend, open_vector_store
from ctxproto.stores.vector_store import StoreManifest, VectorStore

__all__ = [
    "CacheHit",
    "PgVectorStore",
    "SemanticCache",
    "SessionStateStore",
    "SessionStore",
    "StoreManifest",
    "VectorBackend",
    "VectorStore",
    "atomic_write_bytes",
    "atomic_write_text",
    "open_session_store",
    "open_vector_store",
    "redact_url",
    "store_location",
]
