"""The semantic cache on real diskcache, on a real Redis-protocol server, and the real embedder."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import diskcache
import numpy as np
import pytest
import redis

from ctxproto.errors import ConfigError, StoreError
from ctxproto.stores.json_disk import JSONOnlyDisk
from ctxproto.stores.semantic_cache import SemanticCache
from ctxproto.stores.semantic_cache.cache import MIRROR_FLOOR, context_fingerprint
from ctxproto.stores.semantic_cache.storage import DiskCacheStorage, open_cache_storage
from tests.servers_redis import RedisServer

FIXTURE = Path(__file__).parent.parent / "fixtures" / "semantic_cache_pairs.jsonl"


@pytest.fixture(params=["diskcache", "redis"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where this test's cache lives: a folder, or a cache name no other test uses."""
    if request.param == "diskcache":
        return str(tmp_path)
    server: RedisServer = request.getfixturevalue("redis_server")
    return f"{server.url}#{server.namespace()}"


def beside(location: str, name: str) -> str:
    """Another cache next to the one at ``location``."""
    return f"{location}-{name}" if "://" in location else str(Path(location) / name)


def entry_reads(location: str, request: pytest.FixtureRequest) -> Callable[[], int]:
    """How many reads the storage at ``location`` has answered so far: diskcache's hit
    and miss counts (switched on here, so open the cache after this), or the server's
    ``GET`` count."""
    if "://" in location:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(server.url)
        return lambda: int(client.info("commandstats")["cmdstat_get"]["calls"])
    entries = diskcache.Cache(str(Path(location) / "entries"))
    entries.stats(enable=True)
    return lambda: sum(entries.stats())


@pytest.fixture
def cache(location: str, embedder: Any) -> SemanticCache:
    return SemanticCache(beside(location, "cache"), embedder=embedder)


def test_a_paraphrase_hits_and_reports_the_matched_question(cache: SemanticCache) -> None:
    cache.put("How do I reset my password?", "Use the 'Forgot password' link.")
    hit = cache.get("I forgot my password, how can I reset it?")
    assert hit is not None
    assert hit.answer == "Use the 'Forgot password' link."
    assert hit.query == "How do I reset my password?"
    assert 0.7 <= hit.similarity <= 1.0
    assert cache.get("What is the capital of Peru?") is None


@pytest.mark.parametrize(
    ("cached", "asked"),
    [
        ("How do I turn on dark mode?", "How do I turn off dark mode?"),
        ("Can I eat sushi while pregnant?", "Should I avoid sushi while pregnant?"),
        ("What is the capital of France?", "What is the capital of Germany?"),
        ("Book a table for two at 7pm", "Book a table for four at 7pm"),
        ("What's the weather in Paris today?", "What's the weather in Paris tomorrow?"),
        ("How do I cancel this order?", "How do I cancel all my orders?"),
    ],
)
def test_hard_negatives_do_not_hit(cache: SemanticCache, cached: str, asked: str) -> None:
    cache.put(cached, "answer")
    assert cache.get(asked) is None
    assert cache.get(cached) is not None


def test_requests_that_differ_in_a_number_and_a_hex_id_never_hit(
    tmp_path: Path, embedder: Any
) -> None:
    """A hex id that starts with digits was read as a number and a word, and the pairs
    below looked like a small rewording (probability 0.97 against the 0.96 cut); read
    whole, the ids are a one-word swap of their own."""
    cache = SemanticCache(tmp_path / "cache", embedder=embedder)
    rng = random.Random(0)

    def hex_id() -> str:
        return "".join(rng.choice("0123456789abcdef") for _ in range(32))

    pairs = [
        (
            "FAIL 503 2 9a94fe0a4d09552de4da4b522736f60c",
            "FAIL 503 9 a8b8e19ed7f0ca6b955863bc4985c025",
        ),
        (
            "FAIL 503 2 9b7ec13952ad4c4d8ff02c42d3796da7",
            "FAIL 503 9 51499befd7ef45a492962ab35d3abf5f",
        ),
    ] + [(f"FAIL 503 2 {hex_id()}", f"FAIL 503 9 {hex_id()}") for _ in range(40)]
    for i, (cached, asked) in enumerate(pairs):
        cache.put(cached, "answer", namespace=f"n{i}")
        assert cache.get(asked, namespace=f"n{i}") is None, (cached, asked)


def test_a_question_about_another_order_or_code_never_hits(tmp_path: Path, embedder: Any) -> None:
    """One digit of an order number or one character of a code changed: the learned guard
    took most of these for a typo-sized rewording before identifiers were keys."""
    cache = SemanticCache(tmp_path / "cache", embedder=embedder)
    rng = random.Random(1)
    pairs = [
        ("When will order #3622531882 arrive?", "When will order #3622531880 arrive?"),
        ("Where is my order 5NZ8VP?", "Where is my order 5NZ8V0?"),
        ("Has refund 9284195158 been processed?", "Has refund 9284195157 been processed?"),
        ("Can you cancel booking 427615953?", "Can you cancel booking 427615952?"),
    ]
    for _ in range(30):
        number = "".join(rng.choice("0123456789") for _ in range(rng.randint(5, 11)))
        at = rng.randrange(len(number))
        changed = number[:at] + str((int(number[at]) + 1) % 10) + number[at + 1 :]
        pairs.append((f"Where is my order {number}?", f"Where is my order {changed}?"))
    for i, (cached, asked) in enumerate(pairs):
        cache.put(cached, "answer", namespace=f"n{i}")
        assert cache.get(asked, namespace=f"n{i}") is None, (cached, asked)


def test_context_fingerprint_separates_conversations(cache: SemanticCache) -> None:
    """GPTCache issue #8: the same follow-up about two different people."""
    cache.put("How old is he?", "Bob is 41.", context="user: Tell me about Bob Dylan's early years")
    assert cache.get("How old is he?", context="user: Who is Barack Obama?") is None
    assert cache.get("How old is he?") is None
    hit = cache.get("how old is he?", context="user: Tell me about Bob Dylan's early years")
    assert hit is not None and hit.answer == "Bob is 41."
    cache.put("Summarize these", "Summary of A and B.", context=["doc-b", "doc-a"])
    assert cache.get("Summarize these", context=["doc-a", "doc-b"]) is not None
    assert cache.get("Summarize these", context=["doc-a", "doc-c"]) is None


def test_context_fingerprints_do_not_collide() -> None:
    """Regression: parts were joined with a separator, so differently split contexts matched."""
    assert context_fingerprint("docA\x1fdocB") != context_fingerprint(["docA", "docB"])
    assert context_fingerprint(["a\x1fb"]) != context_fingerprint(["a", "b"])
    assert context_fingerprint("") != context_fingerprint([])
    assert context_fingerprint("") != context_fingerprint(None)
    assert context_fingerprint(["b", "a", "a"]) == context_fingerprint(["a", "b"])


def test_tenants_never_see_each_other(cache: SemanticCache) -> None:
    cache.put("What is our refund window?", "30 days (tenant A)", namespace="tenant-a")
    assert cache.get("What is our refund window?", namespace="tenant-b") is None
    assert cache.get("What is our refund window?") is None
    cache.put("What is our refund window?", "14 days (tenant B)", namespace="tenant-b")
    a = cache.get("What is our refund window?", namespace="tenant-a")
    b = cache.get("What is our refund window?", namespace="tenant-b")
    assert a is not None and a.answer.endswith("(tenant A)")
    assert b is not None and b.answer.endswith("(tenant B)")


def test_invalidation_by_source_and_by_key(cache: SemanticCache) -> None:
    cache.put("What is the return policy?", "30 days", sources=["policy.md"])
    cache.put("Where do you ship from?", "Berlin", sources=["shipping.md", "policy.md"])
    key = cache.put("Do you accept PayPal?", "Yes")
    assert cache.invalidate(source="policy.md") == 2
    assert cache.get("What is the return policy?") is None
    assert cache.get("Where do you ship from?") is None
    assert cache.get("Do you accept PayPal?") is not None
    assert cache.invalidate(key=key) == 1
    assert cache.get("Do you accept PayPal?") is None
    assert cache.invalidate(source="never-used.md") == 0


def test_a_source_that_is_not_unicode_is_refused_and_invalidates_nothing(
    cache: SemanticCache,
) -> None:
    """A lone surrogate, what Python makes of a file name that is not UTF-8, raised a
    bare UnicodeEncodeError from both storages (a key no encoder takes), which a
    pipeline filing its answer did not catch. Now ``put`` refuses it with a
    ``StoreError`` before writing, and invalidating it drops nothing."""
    kept = cache.put("Where do you ship from?", "Berlin", sources=["shipping.md"])
    with pytest.raises(StoreError, match=r"source 'caf\\udce9\.md' is not valid Unicode"):
        cache.put("What is the return policy?", "30 days", sources=["caf\udce9.md", "x.md"])
    assert cache.get("What is the return policy?") is None
    assert len(cache) == 1
    assert cache.invalidate(source="caf\udce9.md") == 0
    assert cache.invalidate(source="caf\udce9.md", key=kept) == 1
    assert cache.put("What is the return policy?", "30 days", sources=["caf\u00e9.md"])
    assert cache.invalidate(source="caf\u00e9.md") == 1


def test_an_answer_or_namespace_that_is_not_unicode_is_stored_by_every_storage(
    cache: SemanticCache,
) -> None:
    """A lone surrogate in the answer or the namespace (a file name that is not UTF-8,
    quoted) raised a bare UnicodeEncodeError from the Redis storage's ``put``, where
    the folder's JSON disk stores the entry: both store it now, and serve it back as
    the same text, in its namespace only."""
    question = "Where is the file cafe.md kept?"
    answer = "In the folder r\udce9sum\udce9s"
    key = cache.put(question, answer, namespace="t\udce9")
    hit = cache.get(question, namespace="t\udce9")
    assert hit is not None
    assert (hit.answer, hit.query, hit.key) == (answer, question, key)
    assert cache.get(question, namespace="t\u00e9") is None
    assert cache.get(question) is None
    assert cache.invalidate(key=key) == 1


def test_a_source_lists_no_key_older_than_the_oldest_live_entry(
    location: str, embedder: Any
) -> None:
    """Regression: the keys of entries that the entry limit or the TTL removed stayed
    listed under their source for good."""
    limited = SemanticCache(beside(location, "limited"), max_entries=5, embedder=embedder)
    expiring = SemanticCache(beside(location, "expiring"), ttl=0.5, embedder=embedder)
    vectors = np.random.default_rng(0).standard_normal((60, embedder.dimension))
    for i, vector in enumerate(vectors.astype(np.float32)):
        cache = limited if i < 50 else expiring
        cache.put_embedded(f"What does section {i} say?", vector, "answer", sources=["policy.md"])
    time.sleep(0.7)
    expiring.put_embedded(
        "What does it say?", vectors[0].astype(np.float32), "a", sources=["policy.md"]
    )
    for cache, newest in ((limited, ["46", "47", "48", "49", "50"]), (expiring, ["11"])):
        storage = open_cache_storage(cache.path, max_bytes=1 << 30)
        listed = storage.drop_source("policy.md")
        assert set(newest) <= set(listed) and len(listed) <= len(newest) + 1, listed


def test_an_entry_another_replica_lists_meanwhile_stays_on_its_source_list(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put reads the oldest live key before its transaction: with none live, the new
    key's own number was the floor, and a key another replica listed in between went."""
    from ctxproto.stores.semantic_cache.redis_storage import RedisCacheStorage

    location = f"{redis_server.url}#{redis_server.namespace()}"
    ours, theirs = RedisCacheStorage(location), RedisCacheStorage(location)
    entry = {"namespace": "default", "query": "q", "answer": "a"}
    looked_up = ours._oldest_live_key

    def while_looking() -> int | None:
        oldest = looked_up()  # none live yet
        theirs.add(entry, None, ["policy.md"])
        return oldest

    monkeypatch.setattr(ours, "_oldest_live_key", while_looking)
    ours.add(entry, None, ["policy.md"])
    assert sorted(ours.drop_source("policy.md")) == ["1", "2"]


WRITES = {"ZPOPMIN", "ZREM", "ZREMRANGEBYSCORE", "DEL", "UNLINK", "EVALSHA", "EVAL"}
"""The commands by which ``evict_over`` and ``clear()`` take entries away."""


class StoredKeys:
    """What the server holds for one cache: the keys ``order`` lists, and the keys
    whose entries are there."""

    def __init__(self, server: RedisServer, location: str) -> None:
        self._client: Any = redis.Redis.from_url(server.url)
        self._prefix = f"ctxproto:cache:{location.partition('#')[2]}"

    def listed(self) -> set[str]:
        return {m.decode() for m in self._client.zrange(f"{self._prefix}:order", 0, -1)}

    def present(self) -> set[str]:
        names = self._client.scan_iter(match=f"{self._prefix}:entry:*", count=1000)
        return {name.decode().rpartition(":")[2] for name in names}


@pytest.mark.parametrize(
    "interrupted",
    [lambda storage: storage.evict_over(2), lambda storage: storage.clear()],
    ids=["evict_over", "clear"],
)
def test_a_replica_cut_off_while_evicting_or_clearing_leaves_order_and_entries_agreeing(
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    interrupted: Callable[[Any], object],
) -> None:
    """Regression: eviction popped keys from ``order`` and then deleted their entries,
    and ``clear()`` deleted entries in batches and ``order`` last. A replica whose
    connection dropped (or that was killed) after the first step left entries that
    nothing counted or ever evicted, still served by mirrors that held them, or
    counted entries that were gone. Each is now one step on the server."""
    from ctxproto.stores.semantic_cache.redis_storage import RedisCacheStorage

    location = f"{redis_server.url}#{redis_server.namespace()}"
    storage = RedisCacheStorage(location)
    for _ in range(6):
        storage.add({"namespace": "default", "query": "q", "answer": "a"}, None, ["policy.md"])
    stored = StoredKeys(redis_server, location)
    assert stored.listed() == stored.present() == {"1", "2", "3", "4", "5", "6"}
    # Eviction and clear() run as MULTI/EXEC transactions, which do not go through the
    # client's execute_command: the cut is made on every way a command leaves, alone,
    # queued in a pipeline or transaction, or sent while a transaction watches its keys.
    client = storage._redis
    send = client.execute_command
    execute: Any = redis.client.Pipeline.execute
    watched: Any = redis.client.Pipeline.immediate_execute_command
    changed = False

    def cut_off_after_the_first_change(*args: Any, **options: Any) -> Any:
        nonlocal changed
        if changed:
            raise redis.ConnectionError("Connection closed by server.")
        reply = send(*args, **options)
        changed = str(args[0]).upper() in WRITES
        return reply

    def pipeline_cut_off_after_the_first_change(pipe: Any, *args: Any, **options: Any) -> Any:
        nonlocal changed
        if pipe.connection_pool is not client.connection_pool:
            return execute(pipe, *args, **options)
        if changed:
            raise redis.ConnectionError("Connection closed by server.")
        queued = {str(command[0]).upper() for command, _ in pipe.command_stack}
        reply = execute(pipe, *args, **options)
        changed = bool(queued & WRITES)
        return reply

    def watched_cut_off_after_the_first_change(pipe: Any, *args: Any, **options: Any) -> Any:
        if changed and pipe.connection_pool is client.connection_pool:
            raise redis.ConnectionError("Connection closed by server.")
        return watched(pipe, *args, **options)

    monkeypatch.setattr(client, "execute_command", cut_off_after_the_first_change)
    monkeypatch.setattr(redis.client.Pipeline, "execute", pipeline_cut_off_after_the_first_change)
    monkeypatch.setattr(
        redis.client.Pipeline, "immediate_execute_command", watched_cut_off_after_the_first_change
    )
    with contextlib.suppress(StoreError):  # the call may fail; what it left must agree
        interrupted(storage)
    assert changed, "no change went through a patched path: nothing was cut"
    assert stored.listed() == stored.present()
    assert len(stored.present()) in (0, 2)


def test_evicting_and_clearing_a_large_cache_are_short_transactions_naming_their_keys(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: ``clear()`` deleted every entry in one Lua script, which holds the
    whole server while it runs: behind a million entries another client waited over
    two seconds, and past about two million it ran over the script time limit, where
    it can no longer be stopped. Both scripts also deleted entries they built from
    arguments instead of declaring them, which proxies that route by key refuse.
    Now each step is a transaction of at most ``BATCH`` keys that it names, and a
    replica cut off between two leaves ``order`` and the entries agreeing."""
    from ctxproto.stores.semantic_cache.redis_storage import BATCH, RedisCacheStorage

    location = f"{redis_server.url}#{redis_server.namespace()}"
    storage = RedisCacheStorage(location)
    for _ in range(5000):
        storage.add({"namespace": "default", "query": "q", "answer": "a"}, None, [])
    stored = StoredKeys(redis_server, location)
    send = storage._redis.execute_command
    sent: list[str] = []

    def recording(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]).upper())
        return send(*args, **options)

    execute: Any = redis.client.Pipeline.execute
    taken: list[int] = []  # how many keys each transaction took out of ``order``
    cut_off_after: list[int] = []

    def counting(pipe: Any, *args: Any, **options: Any) -> Any:
        removes = [c for c, _ in pipe.command_stack if str(c[0]).upper() == "ZREM"]
        sent.extend(str(c[0]).upper() for c, _ in pipe.command_stack)
        if removes and cut_off_after and len(taken) == cut_off_after[0]:
            raise redis.ConnectionError("Connection closed by server.")
        reply = execute(pipe, *args, **options)
        taken.extend(len(c) - 2 for c in removes)
        return reply

    monkeypatch.setattr(storage._redis, "execute_command", recording)
    monkeypatch.setattr(redis.client.Pipeline, "execute", counting)
    evicted = storage.evict_over(1500)
    assert evicted == [str(n) for n in range(1, 3501)]
    assert taken == [BATCH, BATCH, BATCH, 500]
    assert stored.listed() == stored.present() == {str(n) for n in range(3501, 5001)}

    cut_off_after.append(len(taken) + 1)  # the second batch never reaches the server
    with pytest.raises(StoreError, match="cannot clear"):
        storage.clear()
    assert stored.listed() == stored.present() == {str(n) for n in range(4501, 5001)}
    cut_off_after.clear()
    storage.clear()
    assert taken == [BATCH, BATCH, BATCH, 500, BATCH, 500]
    assert stored.listed() == stored.present() == set()
    assert not {"EVAL", "EVALSHA", "SCRIPT"} & set(sent), set(sent)
    assert storage.add({"namespace": "default", "query": "q", "answer": "a"}, None, []) == "5001"


def test_clear_drops_an_entry_an_interrupted_eviction_left_outside_order(
    redis_server: RedisServer,
) -> None:
    """An eviction cut off before this version left an entry ``order`` no longer lists;
    ``clear()`` still drops it, and keeps what an ``add`` lists after it."""
    from ctxproto.stores.semantic_cache.redis_storage import RedisCacheStorage

    location = f"{redis_server.url}#{redis_server.namespace()}"
    storage = RedisCacheStorage(location)
    entry = {"namespace": "default", "query": "q", "answer": "a"}
    for _ in range(3):
        storage.add(entry, None, ["policy.md"])
    stored = StoredKeys(redis_server, location)
    storage._redis.zrem(f"ctxproto:cache:{location.partition('#')[2]}:order", "1")
    storage.clear()
    assert stored.listed() == stored.present() == set()
    assert storage.add(entry, None, ["policy.md"]) == "4"
    assert storage.drop_source("policy.md") == ["4"]
    assert len(storage) == 1


def test_a_source_list_of_the_former_layout_is_still_invalidated(
    location: str, embedder: Any, request: pytest.FixtureRequest
) -> None:
    """A cache written before lists were pruned kept one JSON array (diskcache) or one
    set (Redis) per source: an invalidation still drops the entries listed there."""
    cache = SemanticCache(location, embedder=embedder)
    key = cache.put("What is the return policy?", "30 days")
    if "://" in location:
        server: RedisServer = request.getfixturevalue("redis_server")
        name = location.partition("#")[2]
        redis.Redis.from_url(server.url).sadd(f"ctxproto:cache:{name}:src:policy.md", key)
    else:
        diskcache.Cache(str(Path(location) / "meta")).set("src:policy.md", json.dumps([key]))
    assert cache.invalidate(source="policy.md") == 1
    assert cache.get("What is the return policy?") is None


def test_ttl_expires_entries(location: str, embedder: Any) -> None:
    cache = SemanticCache(location, ttl=0.5, embedder=embedder)
    cache.put("What time do you open?", "9am")
    assert cache.get("What time do you open?") is not None
    time.sleep(0.7)
    assert cache.get("What time do you open?") is None


def test_entry_limit_evicts_oldest_first(location: str, embedder: Any) -> None:
    cache = SemanticCache(beside(location, "n"), max_entries=5, embedder=embedder)
    embedder.embed([f"What is item {i} made of?" for i in range(8)])
    for i in range(8):
        cache.put(f"What is item {i} made of?", f"material {i}")
    assert len(cache) == 5
    assert cache.get("What is item 0 made of?") is None
    hit = cache.get("What is item 7 made of?")
    assert hit is not None and hit.answer == "material 7"


def test_byte_limit_evicts_oldest_first(tmp_path: Path, embedder: Any) -> None:
    """diskcache only: on a server the byte limit is its ``maxmemory``."""
    sized = SemanticCache(tmp_path / "b", max_bytes=300_000, embedder=embedder)
    questions = [f"Give me report number {i}" for i in range(25)]
    embedder.embed(questions)
    for question in questions:
        sized.put(question, os.urandom(20_000).hex())
    assert len(sized) < 25
    assert sized.get(questions[-1]) is not None


def test_a_folder_past_diskcache_s_size_limit_keeps_every_source_list(
    tmp_path: Path, embedder: Any
) -> None:
    """Regression: the folder of key counters and source lists had diskcache's default
    1 GiB cap, past which it dropped the rows stored first: a source's list lost
    keys, and invalidating the source left their answers served. The cap is
    lowered here to what a few rows already take, standing in for a gigabyte."""
    cache = SemanticCache(tmp_path / "c", embedder=embedder)
    storage = cache._entries
    assert isinstance(storage, DiskCacheStorage)
    storage._meta.reset("size_limit", 1)
    questions = [f"What does clause {i} of the policy say?" for i in range(30)]
    embedder.embed(questions)
    for question in questions:
        cache.put(question, "as the policy says", sources=["policy.md"])
    assert cache.invalidate(source="policy.md") == 30
    assert len(cache) == 0


def test_a_second_instance_sees_entries_and_deletions_of_the_first(
    location: str, embedder: Any
) -> None:
    writer = SemanticCache(location, embedder=embedder)
    reader = SemanticCache(location, embedder=embedder)
    assert reader.get("How do I export my contacts?") is None
    writer.put("How do I export my contacts?", "Settings > Export")
    assert reader.get("How can I export my contacts?") is not None
    writer.invalidate(key="1")
    assert reader.get("How can I export my contacts?") is None


def test_a_clear_elsewhere_never_makes_an_old_question_hit_a_new_entry(
    location: str, embedder: Any
) -> None:
    """Regression: ``clear()`` reset the key counter, so the first entry put after a
    clear took key 1, and another process whose mirror still held key 1 for its old
    question served the new entry's answer."""
    long_lived = SemanticCache(location, embedder=embedder)
    other = SemanticCache(location, embedder=embedder)
    long_lived.put("How do I reset my password?", "Use the 'Forgot password' link.")
    assert long_lived.get("How do I reset my password?") is not None
    other.clear()
    other.put("What is the CEO's home address?", "12 Private Lane")
    assert long_lived.get("How do I reset my password?") is None
    hit = long_lived.get("What is the CEO's home address?")
    assert hit is not None and hit.answer == "12 Private Lane"


def _clear_and_put(path: str) -> None:
    """A second process (forked: it reuses the parent's embedder and its memo)."""
    cache = SemanticCache(path)
    cache.clear()
    cache.put("What is the CEO's home address?", "12 Private Lane")


def test_a_clear_in_another_process_never_makes_an_old_question_hit(
    location: str, embedder: Any
) -> None:
    long_lived = SemanticCache(location, embedder=embedder)
    embedder.embed(["What is the CEO's home address?"])
    long_lived.put("How do I reset my password?", "Use the 'Forgot password' link.")
    assert long_lived.get("How do I reset my password?") is not None
    process = multiprocessing.get_context("fork").Process(target=_clear_and_put, args=(location,))
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 0
    assert len(long_lived) == 1
    assert long_lived.get("How do I reset my password?") is None


def _lose_everything(location: str, request: pytest.FixtureRequest) -> None:
    """What a storage that loses its data does to the cache: every entry and the key
    counter gone (a Redis server restarted from an older snapshot, failed over to a
    replica behind it, or flushed; a cache folder made again)."""
    if "://" in location:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(server.url)
        name = location.partition("#")[2]
        client.delete(*client.keys(f"ctxproto:cache:{name}:*"))
    else:
        for part in ("entries", "meta"):
            diskcache.Cache(str(Path(location) / part)).clear()


def test_a_storage_that_lost_its_counter_never_makes_an_old_question_hit_a_new_entry(
    location: str, embedder: Any, request: pytest.FixtureRequest
) -> None:
    """Regression: once the storage lost its key counter, the next entry took key 1
    again; another replica whose mirror held key 1 for its old question served the
    new entry's answer to it, reported as the same question at similarity 1.0."""
    long_lived = SemanticCache(location, embedder=embedder)
    long_lived.put("What is the refund policy?", "30 days", namespace="acme")
    assert long_lived.get("What is the refund policy?", namespace="acme") is not None
    _lose_everything(location, request)
    other = SemanticCache(location, embedder=embedder)
    other.put("How do I delete my account?", "Settings > Delete account", namespace="acme")
    assert long_lived.get("What is the refund policy?", namespace="acme") is None
    hit = long_lived.get("How do I delete my account?", namespace="acme")
    assert hit is not None and hit.answer == "Settings > Delete account"


def test_a_lookup_reads_each_entry_key_at_most_once(
    location: str, embedder: Any, request: pytest.FixtureRequest
) -> None:
    """Regression: a key whose entry was missing was read again on every lookup for
    30 s, in case its writer had not written it yet; under an entry limit, after a
    ``clear()`` or in a process that had just started, that was nearly every key ever
    handed out (2,990 reads per lookup after 3,000 puts with ``max_entries=10``)."""
    reads = entry_reads(location, request)
    writer = SemanticCache(location, max_entries=10, guard="off", embedder=embedder)
    vectors = np.random.default_rng(0).standard_normal((300, embedder.dimension))
    for i, vector in enumerate(vectors.astype(np.float32)):
        writer.put_embedded(f"What is item {i} made of?", vector, f"material {i}")
    embedder.embed(["What is item 1 made of?", "What is item 2 made of?"])
    started = SemanticCache(location, guard="off", embedder=embedder)
    for cache in (writer, started):
        before = reads()
        cache.get("What is item 1 made of?")  # mirrors the 10 live entries
        cache.get("What is item 2 made of?")
        assert reads() - before < 40
    writer.clear()
    writer.put("What is item 1 made of?", "wood")
    before = reads()
    for cache in (writer, started):
        hit = cache.get("What is item 1 made of?")
        assert hit is not None and hit.answer == "wood"
    assert reads() - before < 20


def test_entries_gone_from_the_storage_leave_the_mirror(location: str, embedder: Any) -> None:
    """Regression: an entry that left the storage unseen (a TTL, the byte limit, another
    replica's entry limit) stayed in every mirror until a lookup met it as a candidate,
    which in a conversation-scoped cache no lookup does: a reader beside a writer
    limited to 50 entries mirrored all 2,000 the writer ever put, one vector each."""
    writer = SemanticCache(location, max_entries=50, guard="off", embedder=embedder)
    reader = SemanticCache(location, guard="off", embedder=embedder)
    vectors = np.random.default_rng(0).standard_normal((2000, embedder.dimension))
    question = "Which cable fits the router?"
    for i, vector in enumerate(vectors.astype(np.float32)):
        writer.put_embedded(f"Question {i}?", vector, f"answer {i}", context=f"chat {i}")
        if i % 50 == 49:
            reader.get(question)  # mirrors the 50 entries the writer holds now
    assert len(writer) == 50
    assert len(reader._mirror) <= MIRROR_FLOOR + 50
    writer.put(question, "the blue one", context="chat x")
    hit = reader.get(question, context="chat x")  # what is still stored is still found
    assert hit is not None and hit.answer == "the blue one"


def _put_many(path: str, worker: int, vectors: Any, questions: list[str]) -> None:
    cache = SemanticCache(path)
    for question, vector in zip(questions, vectors, strict=True):
        cache.put_embedded(question, vector, f"answer {worker}", sources=["policy.md"])


def _invalidate_until(path: str, stop: Any) -> None:
    cache = SemanticCache(path)
    while not stop.is_set():
        cache.invalidate(source="policy.md")


def test_an_entry_put_while_its_source_is_invalidated_is_never_served(
    location: str, embedder: Any
) -> None:
    """Regression: ``put`` listed the key under its source before writing the entry, so
    an invalidation between the two dropped nothing and the entry was served forever.
    Two writer processes race an invalidating one; after a last ``invalidate`` no entry
    of that source answers."""
    questions = [
        [f"What does section {w}.{i} of the policy say about refunds?" for i in range(60)]
        for w in range(2)
    ]
    vectors = [embedder.embed(q) for q in questions]
    fork = multiprocessing.get_context("fork")
    stop = fork.Event()
    invalidator = fork.Process(target=_invalidate_until, args=(location, stop))
    writers = [
        fork.Process(target=_put_many, args=(location, w, vectors[w], questions[w]))
        for w in range(2)
    ]
    invalidator.start()
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    stop.set()
    invalidator.join(timeout=60)
    assert [p.exitcode for p in (*writers, invalidator)] == [0, 0, 0]
    cache = SemanticCache(location, embedder=embedder)
    cache.invalidate(source="policy.md")
    served = [q for w in range(2) for q in questions[w] if cache.get(q) is not None]
    assert served == []
    cache.put("What does the new policy say about refunds?", "60 days", sources=["policy.md"])
    assert cache.get("What does the new policy say about refunds?") is not None


def test_bad_inputs_are_clear_errors(cache: SemanticCache, tmp_path: Path, embedder: Any) -> None:
    """The caller's mistakes are ``ConfigError`` naming the argument (a 400 from the proxy);
    they were ``StoreError``, the class of a store that failed (a 500)."""
    for bad in ("", "   "):
        with pytest.raises(ConfigError, match="query"):
            cache.put(bad, "answer")
        with pytest.raises(ConfigError, match="query"):
            cache.get(bad)
    with pytest.raises(ConfigError, match="answer"):
        cache.put("question?", None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="namespace"):
        cache.put("question?", "a", namespace="")
    with pytest.raises(ConfigError, match="source or a key"):
        cache.invalidate()
    with pytest.raises(ConfigError, match="dimension"):
        cache.put_embedded("question?", np.ones(7, dtype=np.float32), "a")
    with pytest.raises(ConfigError, match="threshold"):
        SemanticCache(tmp_path / "x", threshold=2.0, embedder=embedder)
    assert len(cache) == 0


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("ttl", float("inf")),
        ("ttl", float("nan")),
        ("max_bytes", 0),
        ("candidates", 0),
        ("candidates", -1),
    ],
)
def test_options_no_cache_can_keep_are_config_errors_naming_them(
    location: str, embedder: Any, option: str, value: float
) -> None:
    """An infinite or NaN TTL failed every ``put`` to a Redis server with a bare
    OverflowError or ValueError (the folder kept the entries for ever); a byte limit
    of 0 culled every entry as it was put, and no candidate at all made every
    lookup miss, both silently. Each is refused when the cache is opened."""
    options: dict[str, Any] = {option: value}
    with pytest.raises(ConfigError, match=f"key '{option}'"):
        SemanticCache(beside(location, "options"), embedder=embedder, **options)


def test_a_refused_put_embeds_nothing(cache: SemanticCache, embedder: Any) -> None:
    """Every check of an entry runs before its question is embedded or anything written."""
    before = embedder.memo_entries
    question = "Is this question embedded when its entry is refused?"
    with pytest.raises(ConfigError, match="answer"):
        cache.put(question, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="namespace"):
        cache.put(question, "answer", namespace=" ")
    assert embedder.memo_entries == before
    assert len(cache) == 0


def test_a_cache_of_another_embedder_is_refused(location: str, embedder: Any) -> None:
    SemanticCache(location, embedder=embedder).put("What is the plan?", "plan")

    class OtherEmbedder:
        name = "another-model"
        dimension = 768

    with pytest.raises(StoreError, match="another-model"):
        SemanticCache(location, guard="off", embedder=OtherEmbedder())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"guard.*fitted on the embedder 'all-minilm-l6-v2'"):
        SemanticCache(location, embedder=OtherEmbedder())  # type: ignore[arg-type]


def test_a_pickled_row_is_refused_not_loaded(tmp_path: Path, embedder: Any) -> None:
    cache = SemanticCache(tmp_path, embedder=embedder)
    cache.put("What is the plan?", "plan")
    cache.close()
    with sqlite3.connect(tmp_path / "entries" / "cache.db") as db:
        db.execute("UPDATE Cache SET mode = 4")  # diskcache's MODE_PICKLE
    reopened = SemanticCache(tmp_path, embedder=embedder)
    with pytest.raises(StoreError, match="pickled"):
        reopened.get("What is the plan?")


class RawValueDisk(JSONOnlyDisk):
    """Keys as the cache writes them, values stored as the bytes given: a row that
    another program or a damaged disk left."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        return diskcache.Disk.store(self, value, read, key=key)


def overwrite_entry(
    location: str, key: str, written: object, request: pytest.FixtureRequest
) -> None:
    """Put ``written`` under entry ``key``: JSON of a value, or bytes as they are."""
    if "://" in location:
        server: RedisServer = request.getfixturevalue("redis_server")
        data = written if isinstance(written, bytes) else json.dumps(written)
        name = location.partition("#")[2]
        redis.Redis.from_url(server.url).set(f"ctxproto:cache:{name}:entry:{key}", data)
    else:
        disk = RawValueDisk if isinstance(written, bytes) else JSONOnlyDisk
        diskcache.Cache(str(Path(location) / "entries"), disk=disk).set(key, written)


UNREADABLE = [
    {"answer": "30 days", "format": 9},  # another version's fields
    {"namespace": "default", "context": "", "query": "q", "answer": "a", "vector": "!!"},
    [1, 2],  # JSON, not an object
    b"\x78\x9c\x01 not zlib",  # on Redis: not UTF-8 either
    zlib.compress(b'{"answer": "30 da'),  # on Redis: not UTF-8 either
]


@pytest.mark.parametrize("written", UNREADABLE)
def test_an_entry_this_version_cannot_read_is_skipped_and_named_once(
    location: str,
    embedder: Any,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    written: object,
) -> None:
    """Regression: an entry without the fields this version reads was a ``KeyError``
    from the middle of every lookup, then a ``StoreError`` from every lookup that met
    it (a 500 for each cached request during a rolling upgrade) until someone dropped
    it. Now it is a miss: the lookup goes on to the next candidate, and one warning
    per process names the key and how to drop it. The entry stays for the versions
    that read it."""
    cache = SemanticCache(location, embedder=embedder)
    key = cache.put("What is the return policy?", "30 days")
    cache.put("Where do you ship from?", "Berlin")
    overwrite_entry(location, key, written, request)
    started = SemanticCache(location, embedder=embedder)
    with caplog.at_level("WARNING", logger="ctxproto.stores.semantic_cache.cache"):
        for lookup in (started, started, cache):
            assert lookup.get("What is the return policy?") is None
        hit = started.get("Where do you ship from?")
        assert hit is not None and hit.answer == "Berlin"
        newer = cache.put("What is the return policy?", "60 days")
        hit = started.get("What is the return policy?")
        assert hit is not None and (hit.key, hit.answer) == (newer, "60 days")
    warnings = [r.getMessage() for r in caplog.records if f"entry {key} " in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert location in warnings[0]
    assert f"invalidate(key='{key}')" in warnings[0]
    assert "30 da" not in warnings[0]  # the fields, never the contents
    assert len(started) == 3
    assert started.invalidate(key=key) == 1
    assert len(started) == 2


@pytest.mark.parametrize("written", UNREADABLE)
def test_an_unreadable_oldest_entry_fails_no_put_and_is_evicted_like_any_other(
    location: str, embedder: Any, request: pytest.FixtureRequest, written: object
) -> None:
    """Regression: in a folder, a put with sources and an eviction over
    ``max_entries`` decoded the oldest entry to learn its key, so an unreadable
    oldest entry (one lookups skip) failed every such put with a raw
    ``JSONDecodeError`` or ``zlib.error``: in the proxy a 500 after the upstream
    answered. Now the put is stored, and eviction drops that entry first."""
    cache = SemanticCache(location, embedder=embedder)
    key = cache.put("What is the return policy?", "30 days", sources=["policy.md"])
    cache.put("Where do you ship from?", "Berlin", sources=["policy.md"])
    overwrite_entry(location, key, written, request)
    listed = cache.put("How long is shipping?", "3 days", sources=["policy.md"])
    limited = SemanticCache(location, embedder=embedder, max_entries=3)
    newest = limited.put("Do you ship abroad?", "yes")
    assert len(limited) == 3
    assert limited.invalidate(key=key) == 0  # evicted, the oldest
    hit = limited.get("How long is shipping?")
    assert hit is not None and (hit.key, hit.answer) == (listed, "3 days")
    hit = limited.get("Do you ship abroad?")
    assert hit is not None and hit.key == newest
    assert limited.invalidate(source="policy.md") == 2


WRITER = textwrap.dedent(
    """
    import sys
    from ctxproto.stores.semantic_cache import SemanticCache
    cache = SemanticCache(sys.argv[1])
    worker = sys.argv[2]
    count = int(sys.argv[3])
    cache.embedder.embed([f"Worker {worker} question {i}" for i in range(count)])
    for i in range(count):
        cache.put(f"Worker {worker} question {i}", f"answer {worker}-{i}", namespace=f"w{worker}")
    """
)


@pytest.mark.slow
def test_concurrent_writer_processes_lose_no_entry(location: str, embedder: Any) -> None:
    per_worker = 20
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen([sys.executable, "-c", WRITER, location, str(w), str(per_worker)], env=env)
        for w in range(3)
    ]
    assert [w.wait(timeout=240) for w in workers] == [0, 0, 0]
    cache = SemanticCache(location, embedder=embedder)
    assert len(cache) == 3 * per_worker
    for w in range(3):
        for i in range(per_worker):
            hit = cache.get(f"Worker {w} question {i}", namespace=f"w{w}")
            assert hit is not None and hit.answer == f"answer {w}-{i}"


def _evaluate(cache: SemanticCache, split: str) -> dict[str, tuple[int, int]]:
    """Per category: (hits, pairs) when ``a`` is cached and ``b`` is asked."""
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    rows = [r for r in rows if r["split"] == split]
    cache.embedder.embed([r["a"] for r in rows] + [r["b"] for r in rows])  # one batch, memoized
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for n, row in enumerate(rows):
        namespace = f"{split}-{n}"
        cache.put(row["a"], "cached", namespace=namespace)
        hits[row["category"]] += cache.get(row["b"], namespace=namespace) is not None
        totals[row["category"]] += 1
    return {c: (hits[c], totals[c]) for c in totals}


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize(("guard", "min_recall"), [("rules", 0.80), ("learned", 0.50)])
def test_older_hard_negatives_false_hits_at_most_2_percent(
    location: str, embedder: Any, split: str, guard: str, min_recall: float
) -> None:
    """The older hand-written pairs: both guards refuse their near misses. The rules
    recall more of them (their slots were written for this set); the learned guard
    trades that recall for refusing the newer set's near misses (docs/retrieval.md)."""
    cache = SemanticCache(beside(location, guard), guard=guard, embedder=embedder)  # type: ignore[arg-type]
    result = _evaluate(cache, split)
    recall = result["paraphrase"][0] / result["paraphrase"][1]
    negatives = [v for c, v in result.items() if c != "paraphrase"]
    false_hits = sum(h for h, _ in negatives) / sum(n for _, n in negatives)
    assert set(result) == {"paraphrase", "negation", "entity", "number", "date", "scope"}
    assert sum(n for _, n in negatives) >= 60
    assert recall >= min_recall, result
    assert false_hits <= 0.02, result


@pytest.mark.parametrize(
    ("guard", "hits_the_near_miss"), [("rules", False), ("learned", False), ("off", True)]
)
def test_the_guard_decides_whether_a_near_miss_hits(
    tmp_path: Path, embedder: Any, guard: str, hits_the_near_miss: bool
) -> None:
    cache = SemanticCache(tmp_path, guard=guard, embedder=embedder)  # type: ignore[arg-type]
    cache.put("How do I turn on dark mode?", "Settings > Display > Dark")
    assert (cache.get("How do I turn off dark mode?") is not None) is hits_the_near_miss
    assert cache.get("How do I turn on dark mode?") is not None


def test_guard_names_the_old_switch_and_its_thresholds(tmp_path: Path, embedder: Any) -> None:
    from ctxproto.stores.semantic_cache.verifier import HitVerifier

    assert SemanticCache(tmp_path / "a", guard=True, embedder=embedder).guard == "rules"
    assert SemanticCache(tmp_path / "b", guard=False, embedder=embedder).guard == "off"
    default = SemanticCache(tmp_path / "c", embedder=embedder)
    assert default.guard == "learned"
    assert default.threshold == HitVerifier.load().min_similarity
    assert SemanticCache(tmp_path / "d", guard="rules", embedder=embedder).threshold == 0.7
    pinned = SemanticCache(tmp_path / "e", guard="learned", threshold=0.8, embedder=embedder)
    assert pinned.threshold == 0.8
    with pytest.raises(ConfigError, match="guard"):
        SemanticCache(tmp_path / "f", guard="strict", embedder=embedder)  # type: ignore[arg-type]


def test_the_learned_guard_on_a_sample_of_held_out_pairs(tmp_path: Path, embedder: Any) -> None:
    """A smoke test on every sixth test-split pair (the full figures: ``bench cache``).

    On this sample it measures 46/71 hits and 0/63 false hits (its operating
    point is chosen out-of-fold at <= 1% false hits); the bounds leave margin
    for embedder noise, not for a verifier that stopped telling pairs apart.
    """
    from ctxproto.bench.cache_pairs import load_pairs

    cache = SemanticCache(tmp_path, guard="learned", embedder=embedder)
    rows = load_pairs("test")[::6]
    embedder.embed([str(r["a"]) for r in rows] + [str(r["b"]) for r in rows])
    hits: Counter[bool] = Counter()
    totals: Counter[bool] = Counter()
    for n, row in enumerate(rows):
        cache.put(str(row["a"]), "cached", namespace=f"pair-{n}")
        hits[bool(row["hit"])] += cache.get(str(row["b"]), namespace=f"pair-{n}") is not None
        totals[bool(row["hit"])] += 1
    assert totals[False] >= 60 and totals[True] >= 60
    assert hits[False] / totals[False] <= 0.05, hits
    assert hits[True] / totals[True] >= 0.55, hits


def test_a_cache_folder_that_went_away_is_a_store_error_naming_it(
    tmp_path: Path, embedder: Any
) -> None:
    """Regression: diskcache's own errors (``sqlite3.OperationalError``, ``OSError``)
    came through as they were, and the proxy answered them as its own bug."""
    folder = tmp_path / "cache"
    cache = SemanticCache(folder, embedder=embedder)
    key = cache.put("What is the plan?", "plan")
    embedder.embed(["What is the long plan?"])
    for part in ("entries", "meta"):
        shutil.rmtree(folder / part)
        (folder / part).write_text("")
    with pytest.raises(StoreError, match=re.escape(str(folder))):  # written as a file
        cache.put("What is the long plan?", os.urandom(40_000).hex())
    calls: list[Callable[[], object]] = [
        lambda: cache.get("What is the plan?"),
        lambda: cache.put("What is the plan?", "plan"),
        lambda: cache.invalidate(key=key),
        lambda: cache.invalidate(source="plan.md"),
        lambda: len(cache),
    ]
    with ThreadPoolExecutor(1) as thread:  # a new thread opens its own connections
        for call in calls:
            with pytest.raises(StoreError, match=re.escape(str(folder))):
                thread.submit(call).result()


READ_ONLY_OPEN = """
import sys
from ctxproto.errors import StoreError
from ctxproto.stores.semantic_cache import SemanticCache
try:
    SemanticCache(sys.argv[1])
except StoreError as exc:
    print("refused", exc)
"""


def test_a_read_only_cache_folder_is_a_store_error_naming_it(unprivileged: Any) -> None:
    folder = unprivileged.folder / "cache"
    SemanticCache(folder).close()
    unprivileged.make_read_only(folder)
    result = unprivileged.run(READ_ONLY_OPEN, str(folder))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused") and str(folder) in result.stdout
