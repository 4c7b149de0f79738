"""The guarded semantic cache: JSON-only entries on disk, an in-memory vector mirror
per process, and a guard (slot rules or a fitted verifier) that refuses a near
match which asks something else."""

from ctxproto.stores.semantic_cache.cache import CacheContext, CacheHit, Guard, SemanticCache

__all__ = ["CacheContext", "CacheHit", "Guard", "SemanticCache"]
