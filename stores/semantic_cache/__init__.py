"""The guarded semantic cache: JSON-only entries on disk, an in-memory vector mirror
per process, and the question-slot rules that refuse a near match which asks
something else."""

from ctxproto.stores.semantic_cache.cache import CacheContext, CacheHit, SemanticCache

__all__ = ["CacheContext", "CacheHit", "SemanticCache"]
