"""Persistence backends (vector index, caches, session state), imported as ``ctxproto.stores``."""

from ctxproto.stores.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["atomic_write_bytes", "atomic_write_text"]
