"""Session retention: a session no write touched for longer than ``idle_ttl_s`` is gone.

Gone means read as absent, left out of listings, and its rows (a folder) or keys
(a Redis server) removed; a session written again within the TTL stays, and a
sweep never loses a write that renews a session while it runs. Each test counts
what is left in a real folder or on the real server after sleeping past a short TTL.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ctxproto.errors import ConfigError
from ctxproto.stores.redis_session_state import RedisSessionStateStore
from ctxproto.stores.session_state import (
    SessionStateStore,
    SessionStore,
    open_session_store,
    remove_expired_sessions,
)
from tests.servers_redis import RedisServer

TTL = 1.0


@pytest.fixture(params=["diskcache", "redis"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "diskcache":
        return str(tmp_path / "sessions")
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def namespace(request: pytest.FixtureRequest, location: str) -> str:
    if location.startswith("redis://"):
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.namespace()
    return "sessions"


@pytest.fixture
def store(location: str, namespace: str) -> Iterator[SessionStore]:
    opened = open_session_store(location, namespace=namespace, idle_ttl_s=TTL)
    yield opened
    opened.close()


def left_behind(location: str, namespace: str) -> list[str]:
    """What the store still holds of ``namespace``: database rows or server keys,
    expired or not."""
    if location.startswith("redis://"):
        client = redis.Redis.from_url(location)
        try:
            return sorted(k.decode() for k in client.scan_iter(match=f"ctxproto:{namespace}:*"))
        finally:
            client.close()
    with sqlite3.connect(Path(location) / "cache.db") as db:
        keys = [key for (key,) in db.execute("SELECT key FROM Cache WHERE raw = 1")]
    return sorted(k for k in keys if isinstance(k, str) and json.loads(k)[1] == namespace)


def test_a_session_idle_past_the_ttl_is_gone_and_nothing_of_it_is_left(
    store: SessionStore, location: str, namespace: str
):
    store.put("acme", "a", {"turns": 1})
    store.update("acme", "b", lambda state: {"turns": 2})
    store.put("other", "a", {"turns": 3})
    assert store.sessions("acme") == ["a", "b"]
    assert left_behind(location, namespace)
    time.sleep(TTL + 0.3)
    assert store.get("acme", "a") is None and store.get("acme", "b") is None
    assert store.sessions("acme") == [] and store.sessions("other") == []
    remove_expired_sessions(store)
    assert left_behind(location, namespace) == []


def test_a_session_written_again_within_the_ttl_stays(
    store: SessionStore, location: str, namespace: str
):
    store.put("acme", "busy", {"turn": 0})
    store.put("acme", "idle", {"turn": 0})
    for turn in range(1, 4):  # together longer than the TTL, each within it of the last
        time.sleep(TTL / 2)
        store.put("acme", "busy", {"turn": turn})
    assert store.get("acme", "busy") == {"turn": 3}
    assert store.get("acme", "idle") is None
    assert store.sessions("acme") == ["busy"]
    remove_expired_sessions(store)
    assert store.get("acme", "busy") == {"turn": 3}
    assert not any("idle" in key for key in left_behind(location, namespace))


def test_a_write_racing_the_sweep_is_never_lost(tmp_path: Path):
    """Every session rewritten while sweeps run back to back is still there after them."""
    folder = tmp_path / "sessions"
    sessions = [f"s{i}" for i in range(60)]
    writer = SessionStateStore(folder, namespace="sessions", idle_ttl_s=2 * TTL)
    sweeper = SessionStateStore(folder, namespace="sessions", idle_ttl_s=2 * TTL)
    for session in sessions:
        writer.put("acme", session, {"v": "old"})
    time.sleep(2 * TTL + 0.3)  # every one expired: the sweeps below have them all to delete
    done = threading.Event()
    removed = 0

    def sweep() -> None:
        nonlocal removed
        while not done.is_set():
            removed += sweeper.remove_expired()

    thread = threading.Thread(target=sweep)
    thread.start()
    try:
        for session in sessions:
            writer.update("acme", session, lambda state: {"v": "new", "had": state})
    finally:
        done.set()
        thread.join()
    assert [writer.get("acme", s) for s in sessions] == [{"v": "new", "had": None}] * 60
    assert writer.sessions("acme") == sorted(sessions)
    writer.close()
    sweeper.close()


def test_state_written_before_the_ttl_was_configured_expires_once_it_is(tmp_path: Path):
    folder = tmp_path / "sessions"
    forever = SessionStateStore(folder, namespace="sessions")
    forever.put("acme", "old", {"v": 1})
    forever.put("acme", "sessions", {"v": 1})  # a tenant's id can be this namespace's name
    forever.close()
    time.sleep(TTL + 0.3)
    store = SessionStateStore(folder, namespace="sessions", idle_ttl_s=TTL)
    store.put("acme", "new", {"v": 2})
    assert store.get("acme", "old") is None
    assert store.sessions("acme") == ["new"]
    assert store.remove_expired() == 2
    assert left_behind(str(folder), "sessions") == [
        json.dumps(["session", "sessions", "acme", "new"])
    ]
    store.close()


def test_an_expired_session_does_not_bring_back_its_row_from_before_namespaces(tmp_path: Path):
    import diskcache

    from ctxproto.stores.json_disk import PlainDisk

    folder = tmp_path / "sessions"
    with diskcache.Cache(str(folder), disk=PlainDisk) as cache:
        cache.set(json.dumps(["session", "acme", "s"]), json.dumps({"v": "before namespaces"}))
    assert SessionStateStore(folder, namespace="sessions").get("acme", "s") == {
        "v": "before namespaces"
    }
    store = SessionStateStore(folder, namespace="sessions", idle_ttl_s=TTL)
    assert store.get("acme", "s") is None  # a store with a TTL never reads it
    store.put("acme", "s", {"v": "now"})
    time.sleep(TTL + 0.3)
    assert store.get("acme", "s") is None
    store.remove_expired()
    assert store.get("acme", "s") is None and store.sessions("acme") == []
    store.close()


def test_a_longer_ttl_brings_back_no_expired_session_and_lists_what_reads_back(
    tmp_path: Path,
):
    """Under a TTL raised after a session expired, neither its expired row (listed while
    ``get`` said absent) nor, once swept, its row from before namespaces (read back as
    its state) counts as the session."""
    import diskcache

    from ctxproto.stores.json_disk import PlainDisk

    folder = tmp_path / "sessions"
    with diskcache.Cache(str(folder), disk=PlainDisk) as cache:
        cache.set(json.dumps(["session", "acme", "s"]), json.dumps({"v": "before namespaces"}))
    short = SessionStateStore(folder, namespace="sessions", idle_ttl_s=TTL)
    short.put("acme", "s", {"v": "expired"})
    short.put("acme", "t", {"v": "expired"})
    short.close()
    time.sleep(TTL + 0.3)
    longer = SessionStateStore(folder, namespace="sessions", idle_ttl_s=60 * TTL)
    assert longer.get("acme", "s") is None and longer.get("acme", "t") is None
    assert longer.sessions("acme") == [] and longer.sessions("acme", "t") == []
    assert longer.remove_expired() == 2
    assert longer.get("acme", "s") is None and longer.sessions("acme") == []
    longer.put("acme", "t", {"v": "new"})
    assert longer.get("acme", "t") == {"v": "new"} and longer.sessions("acme") == ["t"]
    longer.close()


def test_a_store_without_a_ttl_keeps_state_for_ever(location: str, namespace: str):
    store = open_session_store(location, namespace=namespace)
    store.put("acme", "s", {"v": 1})
    time.sleep(TTL + 0.3)
    assert remove_expired_sessions(store) == 0
    assert store.get("acme", "s") == {"v": 1} and store.sessions("acme") == ["s"]
    store.close()


def test_a_busy_tenant_does_not_grow_its_set_of_expired_session_ids(redis_server: RedisServer):
    """A client sending a new session id per request: the set keeps its live ids, and
    not every id that expired while the tenant kept writing."""
    namespace = redis_server.namespace()
    store = RedisSessionStateStore(redis_server.url, namespace=namespace, idle_ttl_s=3 * TTL)
    for i in range(100):
        store.put("acme", f"gone-{i}", {"i": i})
    time.sleep(3 * TTL + 0.3)
    for i in range(100):
        store.put("acme", f"live-{i}", {"i": i})
    client = redis.Redis.from_url(redis_server.url)
    index = client.smembers(f"ctxproto:{namespace}:sessions:acme")
    members = {m.decode() if isinstance(m, bytes) else m for m in index}
    client.close()
    assert {f"live-{i}" for i in range(100)} <= members
    assert len(members - {f"live-{i}" for i in range(100)}) < 50  # 100 written; ~6 expected
    store.close()


def test_an_id_the_listing_checks_is_encoded_as_its_key_is(redis_server: RedisServer):
    """The script that drops expired ids names each id's state key as ``key_part`` does."""
    store = RedisSessionStateStore(
        redis_server.url, namespace=redis_server.namespace(), idle_ttl_s=30
    )
    odd = ["a:b", "ユーザー", "100%", "x y/z~_.-", "[*?]"]
    for session in odd:
        store.put("t:1", session, {"v": session})
    assert store.sessions("t:1") == sorted(odd)
    store.close()


@pytest.mark.parametrize("ttl", [0, -1.0, math.inf, math.nan, True, "60"])
def test_a_ttl_that_keeps_nothing_or_is_no_number_is_refused(tmp_path: Path, ttl: object):
    with pytest.raises(ConfigError, match="idle_ttl_s"):
        SessionStateStore(tmp_path, idle_ttl_s=ttl)  # type: ignore[arg-type]


def listed_as_read(store: SessionStore, tenant: str, sessions: list[str]) -> bool:
    """Whether the tenant's listing names exactly those of ``sessions`` that ``get`` reads."""
    return store.sessions(tenant) == sorted(s for s in sessions if store.get(tenant, s))


def test_turning_a_ttl_on_never_hides_a_session_stored_before_it(redis_server: RedisServer):
    """A session stored without a TTL gets one when a store opens with it: it goes with
    the tenant's set, where the set expired and the session lived on, read but unlisted."""
    namespace = redis_server.namespace()
    forever = RedisSessionStateStore(redis_server.url, namespace=namespace)
    forever.put("acme", "old", {"v": 1})
    forever.close()
    store = RedisSessionStateStore(redis_server.url, namespace=namespace, idle_ttl_s=TTL)
    store.put("acme", "new", {"v": 2})
    assert listed_as_read(store, "acme", ["old", "new"]) and store.sessions("acme") == [
        "new",
        "old",
    ]
    time.sleep(TTL + 0.3)
    assert store.get("acme", "old") is None
    assert listed_as_read(store, "acme", ["old", "new"])
    assert left_behind(redis_server.url, namespace) == []
    store.close()


def test_turning_a_ttl_off_keeps_new_sessions_listed(redis_server: RedisServer):
    """A write without a TTL clears the expiry of the tenant's set, which otherwise
    expired with the last write under the TTL and took the new session's id with it."""
    namespace = redis_server.namespace()
    with_ttl = RedisSessionStateStore(redis_server.url, namespace=namespace, idle_ttl_s=TTL)
    with_ttl.put("acme", "under-the-ttl", {"v": 1})
    with_ttl.close()
    store = RedisSessionStateStore(redis_server.url, namespace=namespace)
    store.put("acme", "kept", {"v": 2})
    time.sleep(TTL + 0.3)
    assert store.get("acme", "kept") == {"v": 2} and store.get("acme", "under-the-ttl") is None
    assert store.sessions("acme") == ["kept"]
    store.close()


def test_a_store_without_a_ttl_needs_no_scripting_on_the_server(redis_server: RedisServer):
    """Listing ran the script that drops expired ids with or without a TTL: an ACL user
    without scripting, enough for a store before TTLs, failed every ``sessions`` call
    (MCP recall, history, exists) with "no permissions to run the 'eval' command"."""
    namespace = redis_server.namespace()
    admin = redis.Redis.from_url(redis_server.url)
    user = f"noscript-{namespace}"
    admin.acl_setuser(
        user,
        enabled=True,
        passwords=["+pw"],
        keys=[f"ctxproto:{namespace}:*"],
        commands=["+@all", "-@scripting"],
    )
    url = redis_server.url.replace("redis://", f"redis://{user}:pw@")
    store = RedisSessionStateStore(url, namespace=namespace)
    try:
        store.put("acme", "a", {"v": 1})
        store.update("acme", "b", lambda state: {"v": 2})
        store.put("acme", "expired", {"v": 3})
        admin.delete(store.key("acme", "expired"))  # as if written under a TTL, and gone
        assert store.get("acme", "a") == {"v": 1}
        assert store.sessions("acme") == ["a", "b"] and store.sessions("acme", "b") == ["b"]
        assert store.delete("acme", "a") and store.sessions("acme") == ["b"]
    finally:
        store.close()
        admin.acl_deluser(user)
        admin.close()


def scans(client: redis.Redis) -> int:
    """How many ``SCAN`` commands the server has run."""
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


def test_a_store_opened_with_a_ttl_scans_the_server_once(redis_server: RedisServer):
    """Opening gave the namespace's keys without an expiry the TTL in two full ``SCAN``\\s
    of the server (one for state keys, one for sets): each walks every key the server
    holds, 0.4 s per million, for each of a proxy's three stores. One does it."""
    namespace = redis_server.namespace()
    client = redis.Redis.from_url(redis_server.url)
    unrelated = [f"ctxproto:cache:{namespace}:entry:{i}" for i in range(3000)]
    client.mset(dict.fromkeys(unrelated, b"x"))
    forever = RedisSessionStateStore(redis_server.url, namespace=namespace)
    forever.put("acme", "old", {"v": 1})
    forever.close()
    try:
        before = scans(client)
        list(client.scan_iter(match="nothing:*", count=1000))
        full_scan = scans(client) - before
        before = scans(client)
        store = RedisSessionStateStore(redis_server.url, namespace=namespace, idle_ttl_s=60)
        assert scans(client) - before < 2 * full_scan
        state_key, index = store.key("acme", "old"), f"ctxproto:{namespace}:sessions:acme"
        assert 0 < client.pttl(state_key) <= 60_000 and 0 < client.pttl(index) <= 60_000
        store.close()
    finally:
        client.delete(*unrelated)
        client.close()
