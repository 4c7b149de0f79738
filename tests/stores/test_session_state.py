import functools
import gc
import multiprocessing
import pathlib
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache
import pytest
import redis

from ctxproto.errors import ConfigError, StoreError
from ctxproto.stores import SessionStateStore, SessionStore, open_session_store
from ctxproto.stores.json_disk import PlainDisk
from ctxproto.stores.read_only_cache import ReadOnlyCache, text_keys_from
from ctxproto.stores.redis_session_state import RedisSessionStateStore
from ctxproto.stores.session_state import sessions_with_prefix
from tests.conftest import Unprivileged
from tests.servers_redis import RedisServer

Opener = Callable[[str], SessionStore]
"""Opens the store called ``name``: the same name reopens the same state."""


@pytest.fixture(params=["diskcache", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where this test's stores live: a folder, or a namespace-private part of the server."""
    if request.param == "diskcache":
        return str(tmp_path)
    server: RedisServer = request.getfixturevalue("redis_server")
    return f"{server.url}#{server.namespace()}"


@pytest.fixture
def open_store(backend: str) -> Iterator[Opener]:
    opened: list[SessionStore] = []

    def open_named(name: str) -> SessionStore:
        if backend.startswith("redis://"):
            url, namespace = backend.split("#")
            store = open_session_store(url, namespace=f"{namespace}-{name}")
        else:
            store = open_session_store(Path(backend) / name, namespace="unused")
        opened.append(store)
        return store

    yield open_named
    for store in opened:
        store.close()


def test_round_trip_and_restart(open_store: Opener):
    store = open_store("state")
    store.put("acme", "s1", {"summary": "User: my code is 42", "folded": 4})
    store.close()
    reopened = open_store("state")
    assert reopened.get("acme", "s1") == {"summary": "User: my code is 42", "folded": 4}
    assert reopened.get("acme", "s2") is None


def test_namespaces_at_one_location_never_share_a_session(backend: str):
    """A chatbot whose history_path is its summarizer's state_path, or a proxy whose
    summarizer shares its session store: one key each overwrote the other's state,
    and a client naming its session ``proxy:X`` reached the history of session X."""
    if backend.startswith("redis://"):
        url, prefix = backend.split("#")
        location: str | Path = url
        names = [f"{prefix}-sessions", f"{prefix}-summaries"]
    else:
        location, names = Path(backend) / "shared", ["sessions", "summaries"]
    histories, summaries = (open_session_store(location, namespace=name) for name in names)
    histories.put("acme", "proxy:X", {"messages": ["the history of X"]})
    assert summaries.get("acme", "proxy:X") is None
    summaries.put("acme", "proxy:X", {"summary": "a checkpoint"})
    assert histories.get("acme", "proxy:X") == {"messages": ["the history of X"]}
    assert summaries.sessions("acme") == ["proxy:X"] == histories.sessions("acme")
    assert summaries.delete("acme", "proxy:X")
    assert histories.get("acme", "proxy:X") == {"messages": ["the history of X"]}
    for store in (histories, summaries):
        store.close()


def test_state_written_before_namespaces_is_read_until_replaced(tmp_path: Path):
    old = diskcache.Cache(str(tmp_path), disk=PlainDisk)
    old.set('["session", "acme", "s1"]', '{"history": ["kept"]}')
    old.close()
    store = SessionStateStore(tmp_path)
    assert store.get("acme", "s1") == {"history": ["kept"]}
    assert store.sessions("acme") == ["s1"]

    def add_turn(state: dict[str, Any] | None) -> dict[str, Any]:
        assert state is not None
        return {"history": [*state["history"], "new"]}

    assert store.update("acme", "s1", add_turn) == {"history": ["kept", "new"]}
    assert store.get("acme", "s1") == {"history": ["kept", "new"]}
    assert store.delete("acme", "s1")
    assert store.get("acme", "s1") is None and store.sessions("acme") == []


def test_tenants_never_see_each_other(open_store: Opener):
    store = open_store("state")
    store.put("acme", "shared-id", {"owner": "acme"})
    store.put("globex", "shared-id", {"owner": "globex"})
    assert store.get("acme", "shared-id") == {"owner": "acme"}
    assert store.get("globex", "shared-id") == {"owner": "globex"}
    assert store.get("initech", "shared-id") is None
    assert store.sessions("acme") == ["shared-id"]
    assert store.delete("acme", "shared-id")
    assert store.get("globex", "shared-id") == {"owner": "globex"}
    assert not store.delete("acme", "shared-id")


def test_ids_that_could_collide_stay_apart(open_store: Opener):
    store = open_store("state")
    store.put("a:b", "c", {"v": 1})
    store.put("a", "b:c", {"v": 2})
    store.put("a%3Ab", "c", {"v": 3})
    store.put("a*", "[x]", {"v": 4})
    assert store.get("a:b", "c") == {"v": 1}
    assert store.get("a", "b:c") == {"v": 2}
    assert store.get("a%3Ab", "c") == {"v": 3}
    assert store.sessions("a") == ["b:c"]
    assert store.sessions("a:b") == ["c"]
    assert store.sessions("a*") == ["[x]"]
    assert store.sessions("a?") == []


def test_sessions_by_prefix_list_only_the_ids_that_start_with_it(open_store: Opener):
    store = open_store("state")
    ids = ["mem/a/1", "mem/a/2", "mem/ab/1", "mem/a*/1", "mem/[a]/1", "other", "mem/\u00e9/1"]
    for session in ids:
        store.put("acme", session, {"s": session})
    store.put("globex", "mem/a/3", {"s": "not acme's"})
    assert store.sessions("acme", "mem/a/") == ["mem/a/1", "mem/a/2"]
    assert store.sessions("acme", "mem/a*/") == ["mem/a*/1"]  # read as text, not a pattern
    assert store.sessions("acme", "mem/[a]/") == ["mem/[a]/1"]
    assert store.sessions("acme", "mem/\u00e9/") == ["mem/\u00e9/1"]
    assert store.sessions("acme", "nothing") == []
    assert store.sessions("acme") == sorted(ids)


def test_a_prefix_that_is_not_unicode_starts_no_session_id(open_store: Opener):
    """A lone surrogate (a file name that is not UTF-8) starts no stored id, since
    ``check_ids`` refuses such ids: the Redis store raised a bare UnicodeEncodeError
    encoding it for its pattern, where the diskcache store listed none."""
    store = open_store("state")
    store.put("acme", "caf\u00e9/1", {"s": 1})
    assert store.sessions("acme", "caf\udce9") == []
    assert store.sessions("acme", "caf") == ["caf\u00e9/1"]


def test_sessions_by_prefix_in_a_folder_from_before_namespaces_and_read_only(tmp_path: Path):
    old = diskcache.Cache(str(tmp_path), disk=PlainDisk)
    old.set('["session", "acme", "mem/a/0"]', "{}")  # before namespaces
    old.set('["session", "acme", "globex", "mem/a/9"]', "{}")  # namespace acme, tenant globex
    old.close()
    store = SessionStateStore(tmp_path, namespace="mcp")
    store.put("acme", "mem/a/1", {})
    assert store.sessions("acme", "mem/a/") == ["mem/a/0", "mem/a/1"]
    store.close()
    reader = ReadOnlyCache(tmp_path, PlainDisk)  # what a folder this process cannot write opens
    start = '["session", "mcp", "acme", "mem/'
    assert text_keys_from(reader, start) == ['["session", "mcp", "acme", "mem/a/1"]']
    reader.close()


def test_sessions_by_prefix_in_a_namespace_named_like_the_tenant(tmp_path: Path):
    store = SessionStateStore(tmp_path, namespace="alice")
    store.put("alice", "zzz", {})
    store.put("alice", "alpha", {})
    assert store.sessions("alice", "al") == ["alpha"]  # "zzz" read as an old row of "alice"
    assert store.sessions("alice") == ["alpha", "zzz"]
    store.close()


def test_bad_input_is_a_clear_error_and_changes_nothing(open_store: Opener):
    store = open_store("state")
    store.put("t", "s", {"ok": True})
    with pytest.raises(StoreError, match="JSON-serializable"):
        store.put("t", "s", {"bad": object()})
    with pytest.raises(StoreError, match="JSON-serializable"):
        store.put("t", "s", {"nan": float("nan")})
    with pytest.raises(ConfigError, match="tenant_id"):
        store.get("", "s")
    with pytest.raises(ConfigError, match="session_id"):
        store.put("t", "bad \udc80 id", {"ok": False})
    assert store.get("t", "s") == {"ok": True}
    assert store.sessions("t") == ["s"]


def _appended(state: dict[str, Any] | None, *, item: list[int]) -> dict[str, Any]:
    return {"items": [*(state or {}).get("items", []), item]}


def test_updates_written_at_once_all_stay(open_store: Opener):
    """Six writers, each with a connection of its own, append 20 items to one state."""
    stores = [open_store("shared") for _ in range(6)]

    def append(store: SessionStore, writer: int) -> None:
        for i in range(20):
            store.update("acme", "s1", functools.partial(_appended, item=[writer, i]))

    threads = [threading.Thread(target=append, args=(s, w)) for w, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    state = stores[0].get("acme", "s1")
    assert state is not None and len(state["items"]) == 120
    assert stores[0].sessions("acme") == ["s1"]


def test_corrupt_value_is_reported_not_unpickled(tmp_path: Path):
    store = SessionStateStore(tmp_path)
    store.put("t", "s", {"ok": True})
    raw = diskcache.Cache(str(tmp_path))
    raw.set('["session", "history", "t", "s"]', "not json {")
    raw.close()
    with pytest.raises(StoreError, match="not a JSON object"):
        store.get("t", "s")


class _TouchOnUnpickle:
    """Unpickling this creates ``marker``: planted in a store, it shows whether code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[pathlib.Path]]:
        return (pathlib.Path.touch, (self.marker,))


def test_a_pickled_value_is_refused_without_running_it(tmp_path: Path):
    folder, marker = tmp_path / "state", tmp_path / "ran"
    SessionStateStore(folder).close()
    planted = diskcache.Cache(str(folder))  # the default disk pickles objects
    planted.set('["session", "t", "s"]', _TouchOnUnpickle(marker))
    planted.close()
    store = SessionStateStore(folder)
    with pytest.raises(StoreError, match=r"pickled.*|.*session 's'.*pickled") as raised:
        store.get("t", "s")
    assert "session 's'" in str(raised.value) and str(folder) in str(raised.value)
    assert not marker.exists()


def test_a_pickled_key_is_never_run(tmp_path: Path):
    folder, marker = tmp_path / "state", tmp_path / "ran"
    store = SessionStateStore(folder)
    store.put("t", "s", {"ok": True})
    planted = diskcache.Cache(str(folder))
    planted.set(_TouchOnUnpickle(marker), "{}")
    planted.close()
    assert store.sessions("t") == ["s"]  # listing reads text keys only: the pickle stays unread
    assert not marker.exists()
    assert store.get("t", "s") == {"ok": True}
    whole = diskcache.Cache(str(folder), disk=PlainDisk)
    with pytest.raises(StoreError, match="pickled key"):  # and read whole, it is refused
        list(whole.iterkeys())
    whole.close()
    assert not marker.exists()


def test_a_lone_surrogate_is_a_store_error_naming_the_session(open_store: Opener):
    store = open_store("state")
    store.put("t", "s", {"ok": True})
    with pytest.raises(StoreError, match="session 's'"):
        store.put("t", "s", {"summary": "broken \ud800 text"})
    assert store.get("t", "s") == {"ok": True}


READ_ONLY_CHECK = textwrap.dedent(
    """
    import sys
    from ctxproto.errors import StoreError
    from ctxproto.stores import SessionStateStore

    store = SessionStateStore(sys.argv[1])
    print("read", store.get("t", "s"), store.sessions("t"))
    for write in (lambda: store.put("t", "s", {"v": 2}), lambda: store.delete("t", "s")):
        try:
            write()
        except StoreError as exc:
            print("refused", exc)
    """
)


def test_a_read_only_folder_reads_and_refuses_writes_naming_it(unprivileged: Unprivileged):
    folder = unprivileged.folder / "state"
    store = SessionStateStore(folder)
    store.put("t", "s", {"v": 1})
    store.close()
    unprivileged.make_read_only(folder)
    result = unprivileged.run(READ_ONLY_CHECK, str(folder))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "read {'v': 1} ['s']"
    assert len(lines) == 3
    assert all(line.startswith("refused") and str(folder) in line for line in lines[1:])
    assert "read-only" in lines[1]


def _writer(location: str, namespace: str, worker: int, count: int) -> None:
    store = open_session_store(location, namespace=namespace)
    for i in range(count):
        store.put("tenant", f"w{worker}-s{i}", {"worker": worker, "i": i})
        store.put("tenant", "shared", {"last": [worker, i]})
    store.close()


@pytest.mark.parametrize(("kind", "per_worker"), [("diskcache", 25), ("redis", 100)])
def test_concurrent_processes_lose_nothing(
    kind: str, per_worker: int, tmp_path: Path, request: pytest.FixtureRequest
):
    location, namespace = str(tmp_path), "unused"
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        location, namespace = server.url, server.namespace()
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_writer, args=(location, namespace, w, per_worker)) for w in range(3)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    store = open_session_store(location, namespace=namespace)
    assert len(store.sessions("tenant")) == 3 * per_worker + 1
    last = per_worker - 1
    assert store.get("tenant", f"w2-s{last}") == {"worker": 2, "i": last}
    final = store.get("tenant", "shared")
    assert final is not None and final["last"][1] == last
    store.close()


def test_default_store_is_a_private_temporary_folder():
    first, second = SessionStateStore(), SessionStateStore()
    first.put("t", "s", {"v": 1})
    assert second.get("t", "s") is None
    assert first.path != second.path


def test_open_session_store_picks_the_backend_from_the_location(
    tmp_path: Path, redis_server: RedisServer
):
    on_disk = open_session_store(tmp_path / "state", namespace="history")
    on_server = open_session_store(redis_server.url, namespace=redis_server.namespace())
    assert isinstance(on_disk, SessionStateStore)
    assert isinstance(on_server, RedisSessionStateStore)
    on_disk.close()
    on_server.close()


def test_a_corrupt_value_on_the_server_is_reported(redis_server: RedisServer):
    store = RedisSessionStateStore(redis_server.url, namespace=redis_server.namespace())
    store.put("t", "s", {"ok": True})
    raw = redis.Redis.from_url(redis_server.url)
    for planted in (b"not json {", b"[1, 2]", b"\xff\xfe"):
        raw.set(store.key("t", "s"), planted)
        with pytest.raises(StoreError, match=r"session 's'.*not a JSON object"):
            store.get("t", "s")
    raw.close()
    store.close()


def test_a_temporary_store_removes_its_folder_when_closed():
    store = SessionStateStore()
    store.put("t", "s", {"v": 1})
    folder = store.path
    assert folder.is_dir()
    store.close()
    assert not folder.exists()
    store.close()  # a second close is harmless


def test_a_temporary_store_nobody_closes_removes_its_folder_when_dropped():
    """A proxy without a configured store never closes it: collection (or exit) does."""
    store = SessionStateStore()
    store.put("t", "s", {"v": 1})
    folder = store.path
    del store
    gc.collect()
    assert not folder.exists()


def test_closing_a_store_in_a_given_folder_keeps_the_folder(tmp_path: Path):
    store = SessionStateStore(tmp_path / "state")
    store.put("t", "s", {"v": 1})
    store.close()
    assert SessionStateStore(tmp_path / "state").get("t", "s") == {"v": 1}


def test_a_store_written_before_listing_took_a_prefix_is_still_listed_by_prefix(tmp_path: Path):
    class OlderStore:
        """A custom store with the one-argument ``sessions`` of the earlier protocol."""

        def __init__(self) -> None:
            self.inner = SessionStateStore(tmp_path)

        def sessions(self, tenant_id: str) -> list[str]:
            return self.inner.sessions(tenant_id)

    class Wrapper:
        """A store wrapping another, passing every argument on."""

        def __init__(self, inner: SessionStateStore) -> None:
            self.inner = inner

        def sessions(self, *args: Any) -> list[str]:
            return self.inner.sessions(*args)

    class OtherName:
        def __init__(self, inner: SessionStateStore) -> None:
            self.inner = inner

        def sessions(self, tenant_id: str, start: str) -> list[str]:
            return self.inner.sessions(tenant_id, start)

    older = OlderStore()
    for session in ("mem/a/2", "mem/a/1", "mem/b/1"):
        older.inner.put("t", session, {})
    assert sessions_with_prefix(older, "t", "mem/a/") == ["mem/a/1", "mem/a/2"]  # type: ignore[arg-type]
    assert sessions_with_prefix(older.inner, "t", "mem/b/") == ["mem/b/1"]
    for wrapped in (Wrapper(older.inner), OtherName(older.inner)):  # the prefix passed on
        assert sessions_with_prefix(wrapped, "t", "mem/a/") == ["mem/a/1", "mem/a/2"]  # type: ignore[arg-type]
    older.inner.close()


def test_a_folder_past_diskcache_s_size_limit_loses_no_session(tmp_path: Path):
    # diskcache caps a folder at 1 GiB by default and then drops the rows stored
    # first: a proxy's oldest sessions went, without a word, from a store the
    # docs say keeps state until it is deleted. The cap is lowered here to what a
    # folder of a few rows already holds, standing in for a gigabyte of sessions.
    store = SessionStateStore(tmp_path / "s")
    store._cache.reset("size_limit", 1)
    for n in range(40):
        store.put("t", f"s{n}", {"turn": n})
    assert [store.get("t", f"s{n}") for n in range(40)] == [{"turn": n} for n in range(40)]
