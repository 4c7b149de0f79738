"""The ``forget`` tool through the real in-memory ``Client``, on a folder and on Redis:
what it removes is no longer recalled, paged, summarized or counted, for its tenant only."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from ctxproto.mcp import ContextService, create_mcp_server
from ctxproto.pipeline import Pipeline
from ctxproto.serve.config import McpConfig
from ctxproto.serve.flow import ContextFlow
from ctxproto.stages.recency_window import RecencyWindow
from ctxproto.stores.redis_session_state import RedisSessionStateStore
from ctxproto.stores.session_state import SessionStateStore, SessionStore, open_session_store
from tests.mcp.conftest import text_of

FACT = "Hi, my order number is ORD-551203 and it never arrived."


@pytest.fixture(params=["folder", "redis"])
def session_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    """A folder, or a namespace of its own on the test server."""
    if request.param == "folder":
        store: SessionStore = SessionStateStore(tmp_path / "sessions")
    else:
        server = request.getfixturevalue("redis_server")
        store = RedisSessionStateStore(server.url, namespace=server.namespace())
    yield store
    store.close()


@pytest.fixture
def service(session_store: SessionStore) -> Iterator[ContextService]:
    flow = ContextFlow(Pipeline([RecencyWindow(max_turns=2)]), store=session_store)
    service = ContextService(flow, McpConfig(tool_output_tokens={"recall": 400}))
    yield service
    service.close()


async def _call(client: Client, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(name, arguments)
    assert not result.is_error, text_of(result)
    out: dict[str, Any] = result.structured_content or {}
    return out


async def _history(client: Client, session: str) -> list[str]:
    read = await client.read_resource(f"ctxproto://sessions/{session}/history")
    return [e["text"] for e in json.loads(read.contents[0].text)["entries"]]  # type: ignore[union-attr]


def _rows_holding(store: SessionStore, tenant: str, text: str) -> list[str]:
    """Every row of ``tenant``, in the memory's namespace and the summarizer's (and the
    pipelines' summarizer's, where an older version kept it), holding ``text``.

    An entry's embedding (``vector``) is left out: its floats are no text, and
    written out they may hold any run of digits ("keep me"'s held "4821")."""
    found = []
    summaries = [
        open_session_store(store.location, namespace=namespace)
        for namespace in ("mcp-summaries", "summaries")
    ]
    for namespace_store in (store, *summaries):
        for row_id in namespace_store.sessions(tenant):
            row = namespace_store.get(tenant, row_id) or {}
            if text in json.dumps({k: v for k, v in row.items() if k != "vector"}):
                found.append(row_id)
    return found


def test_forget_one_entry_by_its_id(service: ContextService) -> None:
    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            ids = [
                (await _call(client, "remember", {"session_id": "f-1", "text": text}))["id"]
                for text in ("keep me", "my PIN is 4821", "keep me too")
            ]
            gone = await _call(client, "forget", {"session_id": "f-1", "entry_id": ids[1]})
            assert gone == {
                "session_id": "f-1",
                "removed": 1,
                "remaining": 2,
                "summary_dropped": False,
            }
            recalled = await _call(client, "recall", {"session_id": "f-1", "query": "PIN"})
            assert [e["text"] for e in recalled["entries"]] == ["keep me", "keep me too"]
            assert recalled["total_entries"] == 2
            assert await _history(client, "f-1") == ["keep me", "keep me too"]
            again = await _call(client, "forget", {"session_id": "f-1", "entry_id": ids[1]})
            assert again["removed"] == 0 and again["remaining"] == 2  # asked twice: no error

    anyio.run(run)
    assert _rows_holding(service.memory.store, "default", "4821") == []


def test_a_tenant_never_forgets_another_tenants_entries(service: ContextService) -> None:
    async def run() -> None:
        async with (
            Client(create_mcp_server(service, tenant="alice")) as alice,
            Client(create_mcp_server(service, tenant="mallory")) as mallory,
        ):
            stored = await _call(alice, "remember", {"session_id": "shared", "text": "Alice's"})
            await _call(mallory, "remember", {"session_id": "shared", "text": "Mallory's"})
            by_id = {"session_id": "shared", "entry_id": stored["id"]}
            assert (await _call(mallory, "forget", by_id))["removed"] == 0
            everything = {"session_id": "shared", "all_entries": True}
            assert (await _call(mallory, "forget", everything))["removed"] == 1  # its own
            assert await _history(alice, "shared") == ["Alice's"]

    anyio.run(run)


def test_forget_a_whole_session_removes_its_entries_summary_and_stats(
    service: ContextService,
) -> None:
    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            messages = [{"role": "user", "content": "Hello there, how are you today?"}]
            for session in ("f-2", "other"):
                await _call(
                    client, "assemble_context", {"session_id": session, "messages": messages}
                )
            for text in ("a note", "another note"):
                await _call(client, "remember", {"session_id": "f-2", "text": text})
            await _call(
                client, "remember", {"session_id": "f-2", "kind": "summary", "text": "Notes."}
            )
            before = await _call(client, "context_stats", {"session_id": "f-2"})
            assert before["sessions"] == 2 and before["session"]["calls"] == 1
            gone = await _call(client, "forget", {"session_id": "f-2", "all_entries": True})
            assert (gone["removed"], gone["remaining"]) == (3, 0)
            recall = await client.call_tool("recall", {"session_id": "f-2"})
            assert recall.is_error and "no session 'f-2'" in text_of(recall)
            with pytest.raises(Exception, match="no session 'f-2'"):
                await client.read_resource("ctxproto://sessions/f-2/summary")
            after = await _call(client, "context_stats", {"session_id": "f-2"})
            assert after["sessions"] == 1 and after["session"]["calls"] == 0
            assert after["overall"]["calls"] == 1  # the other session's
            await _call(client, "assemble_context", {"session_id": "f-2", "messages": messages})
            again = await _call(client, "context_stats", {"session_id": "f-2"})
            assert again["session"]["calls"] == 1  # counted anew, not from a total kept

    anyio.run(run)


def test_a_summary_that_folded_a_forgotten_turn_is_dropped_and_folded_again(
    service: ContextService,
) -> None:
    turns = [("user", FACT)]
    for i in range(15):
        turns.append(("assistant", f"Checking the carrier records, step {i}."))
        turns.append(("user", f"Still waiting on update number {i}, thanks."))

    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            ids = []
            for role, text in turns:
                arguments = {"session_id": "fold", "kind": "turn", "role": role, "text": text}
                ids.append((await _call(client, "remember", arguments))["id"])
            before = await _call(client, "recall", {"session_id": "fold"})
            assert "ORD-551203" in before["summary"]
            newest = await _call(client, "forget", {"session_id": "fold", "entry_id": ids[-1]})
            assert newest["summary_dropped"] is False  # kept verbatim, never folded
            gone = await _call(client, "forget", {"session_id": "fold", "entry_id": ids[0]})
            assert gone["summary_dropped"] is True and gone["remaining"] == len(turns) - 2
            after = await _call(client, "recall", {"session_id": "fold"})
            assert after["summary"] and "ORD-551203" not in after["summary"]
            assert "Checking the carrier records, step 0." in after["summary"]  # folded again
            await _call(client, "forget", {"session_id": "fold", "all_entries": True})

    anyio.run(run)
    for text in ("ORD-551203", "Checking the carrier records"):
        assert _rows_holding(service.memory.store, "default", text) == []


def test_a_summary_written_after_its_turn_was_forgotten_is_never_returned(
    service: ContextService,
) -> None:
    """Another server process's fold may have read the turn before it was forgotten."""
    store = service.memory.store
    for i in range(16):
        service.remember("default", "late", f"{FACT} Turn {i}.", "turn", "user")
    assert "ORD-551203" in (service.recall("default", "late", None, None).summary or "")
    (row_id,) = [s for s in store.sessions("default") if "summary" in s and s.endswith("/late")]
    folded = store.get("default", row_id)
    assert folded is not None
    first = service.history("default", "late", None).entries[0]
    service.forget("default", "late", first.id, False)
    service.recall("default", "late", None, None)  # waits for the fold of the turns left
    store.put("default", row_id, folded)  # the other process's fold lands now
    assert "Turn 0." not in (service.recall("default", "late", None, None).summary or "")


def test_an_entry_forgotten_before_its_embedding_is_written_stays_forgotten(
    service: ContextService,
) -> None:
    """The background embedding must not write a forgotten entry's row back."""
    release = threading.Event()
    service.memory._background.submit(release.wait)  # the embedding queues behind this
    try:
        entry = service.remember("default", "race", "my PIN is 4821", "note", None)
        assert service.forget("default", "race", entry.id, False).removed == 1
    finally:
        release.set()
    service.memory.close()  # waits for the embedding
    assert _rows_holding(service.memory.store, "default", "4821") == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "key 'entry_id': give the id of one entry, or all_entries=true"),
        (
            {"entry_id": "00000000000000000001-000000000000", "all_entries": True},
            "not both",
        ),
        ({"entry_id": "../../other-session"}, "entry_id"),
    ],
)
def test_forget_needs_one_id_or_all_entries(
    service: ContextService, arguments: dict[str, Any], message: str
) -> None:
    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            await _call(client, "remember", {"session_id": "f-3", "text": "still here"})
            bad = await client.call_tool("forget", {"session_id": "f-3", **arguments})
            assert bad.is_error and message in text_of(bad)
            assert await _history(client, "f-3") == ["still here"]

    anyio.run(run)
