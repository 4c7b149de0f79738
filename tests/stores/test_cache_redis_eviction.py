"""Eviction of the semantic cache on a Redis-protocol server while other replicas add."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from ctxproto.stores.semantic_cache import redis_storage
from ctxproto.stores.semantic_cache.redis_storage import RedisCacheStorage
from tests.servers_redis import RedisServer

ENTRY = {"namespace": "default", "query": "q", "answer": "a"}


def test_an_eviction_whose_watch_every_add_cancels_gives_up_and_the_next_catches_up(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch was retried until no other replica had added between its count and
    its ``EXEC``: with four replicas adding, 50 evictions took 409 tries, one of them 26.
    Now a batch gives up after ``EVICT_ATTEMPTS``, having taken nothing, and the next
    eviction takes the whole excess, each key once."""
    location = f"{redis_server.url}#{redis_server.namespace()}"
    ours, theirs = RedisCacheStorage(location), RedisCacheStorage(location)
    for _ in range(6):
        ours.add(ENTRY, None, [])
    counted = redis.client.Pipeline.zcard
    counts = 0

    def while_counting(pipe: Any, name: str) -> Any:
        """Another replica adds between every count and its ``EXEC`` (up to 100 times)."""
        nonlocal counts
        counts += 1
        count = counted(pipe, name)
        if counts <= 100:
            theirs.add(ENTRY, None, [])
        return count

    monkeypatch.setattr(redis.client.Pipeline, "zcard", while_counting)
    assert ours.evict_over(2) == []
    assert counts == redis_storage.EVICT_ATTEMPTS
    added = 6 + counts
    assert len(ours) == added  # nothing was taken out by a cancelled try
    monkeypatch.undo()

    evicted = ours.evict_over(2)
    assert evicted == [str(key) for key in range(1, added - 1)]
    assert ours.keys_between(0, added) == [str(added - 1), str(added)]
    assert all(ours.get(key) is None for key in evicted)
    assert ours.evict_over(2) == []
