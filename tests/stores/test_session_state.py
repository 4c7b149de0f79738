import multiprocessing
from pathlib import Path

import diskcache
import pytest

from ctxproto.errors import ConfigError, StoreError
from ctxproto.stores import SessionStateStore


def test_round_trip_and_restart(tmp_path: Path):
    store = SessionStateStore(tmp_path / "state")
    store.put("acme", "s1", {"summary": "User: my code is 42", "folded": 4})
    store.close()
    reopened = SessionStateStore(tmp_path / "state")
    assert reopened.get("acme", "s1") == {"summary": "User: my code is 42", "folded": 4}
    assert reopened.get("acme", "s2") is None


def test_tenants_never_see_each_other(tmp_path: Path):
    store = SessionStateStore(tmp_path)
    store.put("acme", "shared-id", {"owner": "acme"})
    store.put("globex", "shared-id", {"owner": "globex"})
    assert store.get("acme", "shared-id") == {"owner": "acme"}
    assert store.get("globex", "shared-id") == {"owner": "globex"}
    assert store.get("initech", "shared-id") is None
    assert store.sessions("acme") == ["shared-id"]
    assert store.delete("acme", "shared-id")
    assert store.get("globex", "shared-id") == {"owner": "globex"}
    assert not store.delete("acme", "shared-id")


def test_ids_that_could_collide_stay_apart(tmp_path: Path):
    store = SessionStateStore(tmp_path)
    store.put("a:b", "c", {"v": 1})
    store.put("a", "b:c", {"v": 2})
    assert store.get("a:b", "c") == {"v": 1}
    assert store.get("a", "b:c") == {"v": 2}


def test_bad_input_is_a_clear_error_and_changes_nothing(tmp_path: Path):
    store = SessionStateStore(tmp_path)
    store.put("t", "s", {"ok": True})
    with pytest.raises(StoreError, match="JSON-serializable"):
        store.put("t", "s", {"bad": object()})
    with pytest.raises(StoreError, match="JSON-serializable"):
        store.put("t", "s", {"nan": float("nan")})
    with pytest.raises(ConfigError, match="tenant_id"):
        store.get("", "s")
    assert store.get("t", "s") == {"ok": True}


def test_corrupt_value_is_reported_not_unpickled(tmp_path: Path):
    store = SessionStateStore(tmp_path)
    store.put("t", "s", {"ok": True})
    raw = diskcache.Cache(str(tmp_path))
    raw.set('["session", "t", "s"]', "not json {")
    raw.close()
    with pytest.raises(StoreError, match="not a JSON object"):
        store.get("t", "s")


def _writer(path: str, worker: int, count: int) -> None:
    store = SessionStateStore(path)
    for i in range(count):
        store.put("tenant", f"w{worker}-s{i}", {"worker": worker, "i": i})
    store.close()


def test_concurrent_processes_lose_nothing(tmp_path: Path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(tmp_path), w, 25)) for w in range(3)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    store = SessionStateStore(tmp_path)
    assert len(store.sessions("tenant")) == 75
    assert store.get("tenant", "w2-s24") == {"worker": 2, "i": 24}


def test_default_store_is_a_private_temporary_folder():
    first, second = SessionStateStore(), SessionStateStore()
    first.put("t", "s", {"v": 1})
    assert second.get("t", "s") is None
    assert first.path != second.path
