"""Persistence backends (vector index, caches, session state), imported as ``ctxproto.stores``."""

from ctxproto.stores.atomic import atomic_write_bytes, atomic_write_text
from ctxproto.stores.semantic_cache import CacheHit, SemanticCache
from ctxproto.stores.session_state import SessionStateStore, SessionStore, open_session_store
from ctxproto.stores.vector_store import StoreManifest, VectorStore

__all__ = [
    "CacheHit",
    "SemanticCache",
    "SessionStateStore",
    "SessionStore",
    "StoreManifest",
    "VectorStore",
    "atomic_write_bytes",
    "atomic_write_text",
    "open_session_store",
]
