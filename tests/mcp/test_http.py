"""The MCP server over streamable HTTP at /mcp inside ``ctxproto serve``: the real
client, bearer-key tenants, and the same stores as the proxy."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from ctxproto.serve import (
    ContextFlow,
    ProxyState,
    RemoteUpstream,
    ServerThread,
    create_app,
    load_serve_config,
)
from ctxproto.serve.config import LimitsConfig, McpConfig, TenantConfig
from ctxproto.serve.envelope import APIError
from ctxproto.serve.tenancy import Tenants
from ctxproto.stores.session_state import SessionStateStore
from tests.mcp.conftest import build_knowledge, text_of


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("mcp-http")
    config = {
        "pipeline": {"stages": [{"type": "recency_window", "init_parameters": {"max_turns": 2}}]},
        # Never called: MCP clients bring their own model.
        "upstream": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
        "tenants": [
            {"id": "tenant-a", "key": "key-a"},
            {"id": "tenant-b", "key": "key-b"},
            {"id": "tenant-c", "key": "key-c", "max_concurrent_requests": 1},
        ],
        "sessions": {"store": str(root / "sessions")},
        "mcp": {
            "knowledge": build_knowledge(root / "knowledge", embedder),
            "cache": str(root / "cache"),
            "tool_output_tokens": {"search_knowledge": 40},
        },
    }
    path = root / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    state = ProxyState.from_config(load_serve_config(path), source=str(path))
    with ServerThread(create_app(state)) as running:
        running.state = state  # type: ignore[attr-defined]
        yield running


@asynccontextmanager
async def connect(server: ServerThread, key: str) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key}"}
    # A long read timeout, as the SDK's own client: a response stream may stay open.
    timeout = httpx2.Timeout(30.0, read=300.0)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        transport = streamable_http_client(f"{server.base_url}/mcp", http_client=http)
        async with Client(transport) as client:
            yield client


def test_tools_over_http_and_the_proxy_routes_still_answer(server: ServerThread) -> None:
    async def run() -> None:
        async with connect(server, "key-a") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"assemble_context", "recall", "search_knowledge"} <= names
            messages = [{"role": "user", "content": f"turn {i} " * 30} for i in range(5)]
            got = await client.call_tool(
                "assemble_context", {"session_id": "s", "messages": messages}
            )
            assert got.structured_content["saved_tokens"] > 0
            capped = await client.call_tool(
                "search_knowledge", {"session_id": "s", "query": "deploy", "k": 5}
            )
            assert capped.structured_content["tokens"] <= 40  # the configured per-tool cap

    anyio.run(run)
    models = httpx.get(f"{server.url}/models", headers={"Authorization": "Bearer key-a"})
    assert models.status_code == 200


def test_a_missing_or_unknown_key_is_refused_before_mcp(server: ServerThread) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer nope"}):
        answer = httpx.post(f"{server.base_url}/mcp", json=body, headers=headers)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "invalid_api_key"


def test_calls_count_against_the_tenants_concurrency_limit(server: ServerThread) -> None:
    tenants = server.state.tenants  # type: ignore[attr-defined]
    tenant_c = tenants.authenticate("Bearer key-c")
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Authorization": "Bearer key-c"}
    tenants.enter(tenant_c)  # one call of tenant-c in flight: the limit
    try:
        busy = httpx.post(f"{server.base_url}/mcp", json=body, headers=headers)
        assert busy.status_code == 429 and busy.headers["retry-after"]
    finally:
        tenants.leave(tenant_c)

    async def run() -> None:
        async with connect(server, "key-c") as client:
            assert (await client.list_tools()).tools

    anyio.run(run)
    # The slot is free again once every call left: the client's closing request (the
    # session's DELETE) may still be finishing on the server's thread when it returns.
    deadline = time.monotonic() + 10
    while True:
        try:
            tenants.enter(tenant_c)
            break
        except APIError:
            assert time.monotonic() < deadline, "a call of tenant-c never left"
            time.sleep(0.05)
    tenants.leave(tenant_c)


def test_tenants_never_see_each_others_memory_cache_or_documents(server: ServerThread) -> None:
    async def run() -> None:
        async with connect(server, "key-a") as a, connect(server, "key-b") as b:
            stored = await a.call_tool(
                "remember", {"session_id": "shared-name", "text": "A's secret 1234"}
            )
            entry_id = stored.structured_content["id"]
            await a.call_tool(
                "store_answer",
                {"session_id": "x", "question": "What is the code name?", "answer": "Bluefin"},
            )
            mine = await a.call_tool("recall", {"session_id": "shared-name"})
            assert mine.structured_content["entries"][0]["text"] == "A's secret 1234"

            theirs = await b.call_tool("recall", {"session_id": "shared-name"})
            assert theirs.is_error and "no session 'shared-name'" in text_of(theirs)
            for forget in ({"entry_id": entry_id}, {"all_entries": True}):
                erased = await b.call_tool("forget", {"session_id": "shared-name", **forget})
                assert erased.structured_content["removed"] == 0
            kept = await a.call_tool("recall", {"session_id": "shared-name"})
            assert kept.structured_content["total_entries"] == 1
            cached = await b.call_tool(
                "cached_answer", {"session_id": "x", "question": "What is the code name?"}
            )
            assert cached.structured_content["hit"] is False
            found = await a.call_tool(
                "search_knowledge", {"session_id": "x", "query": "launch code name"}
            )
            assert "Bluefin" in found.structured_content["chunks"][0]["text"]
            no_store = await b.call_tool(
                "search_knowledge", {"session_id": "x", "query": "launch code name"}
            )
            assert no_store.is_error and "no knowledge store" in text_of(no_store)
            with pytest.raises(Exception, match="no session"):
                await b.read_resource("ctxproto://sessions/shared-name/history")
            stats_b = await b.call_tool("context_stats", {"session_id": "x"})
            assert stats_b.structured_content["overall"]["cache_hits"] == 0

    anyio.run(run)


def test_two_http_clients_writing_one_session_lose_nothing(server: ServerThread) -> None:
    async def writer(name: str) -> None:
        async with connect(server, "key-a") as client:
            for i in range(25):
                got = await client.call_tool(
                    "remember", {"session_id": "busy", "text": f"{name}{i}"}
                )
                assert not got.is_error

    async def run() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(writer, "x")
            group.start_soon(writer, "y")
        async with connect(server, "key-a") as client:
            texts: list[str] = []
            uri = "ctxproto://sessions/busy/history"
            while uri:
                page = (await client.read_resource(uri)).contents[0]
                data = json.loads(page.text)  # type: ignore[union-attr]
                texts.extend(e["text"] for e in data["entries"])
                cursor = data["next_cursor"]
                uri = f"ctxproto://sessions/busy/history?cursor={cursor}" if cursor else ""
            assert sorted(texts) == sorted(
                [f"x{i}" for i in range(25)] + [f"y{i}" for i in range(25)]
            )

    anyio.run(run)


def test_the_runtime_model_server_has_no_mcp_endpoint() -> None:
    state = ProxyState(
        flow=ContextFlow(None), upstream=RemoteUpstream("http://127.0.0.1:9/v1", model="m")
    )
    with_mcp = {getattr(r, "path", None) for r in create_app(state).routes}
    without = {getattr(r, "path", None) for r in create_app(state, mcp_server=False).routes}
    assert "/mcp" in with_mcp and "/mcp" not in without


_RAW_MCP = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"}
"""The headers an MCP client sends with every request over raw HTTP."""


def _initialize(url: str, headers: dict[str, str]) -> httpx.Response:
    """The answer to an ``initialize`` over raw HTTP, which opens a session when it may."""
    client = {"name": "t", "version": "0"}
    hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": client}
    return httpx.post(
        url,
        headers={**headers, **_RAW_MCP},
        json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello},
    )


def _open_session(url: str, headers: dict[str, str]) -> dict[str, str]:
    """The headers of a new MCP session opened over raw HTTP, ``headers`` among them."""
    opened = _initialize(url, headers)
    headers = {**headers, **_RAW_MCP, "mcp-session-id": opened.headers["mcp-session-id"]}
    httpx.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return headers


def _call_and_hang_up(url: str, headers: dict[str, str], text: str) -> None:
    """Call ``remember`` and leave half a second later, as a client that times out does."""
    call = {"name": "remember", "arguments": {"session_id": "s", "text": text}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            url,
            headers=headers,
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call},
            timeout=httpx.Timeout(10, read=0.5),
        )


class _GatedStore(SessionStateStore):
    """A session store whose writes, once armed, wait until the test lets them through."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.armed = False
        self.writing = threading.Event()
        self.go_on = threading.Event()
        self.written: list[tuple[str, str]] = []

    def put(self, tenant_id: str, session_id: str, state: dict[str, Any]) -> None:
        if self.armed:
            self.written.append((tenant_id, session_id))
            self.writing.set()
            self.go_on.wait(10)
        super().put(tenant_id, session_id, state)


def test_a_call_whose_client_left_finishes_before_the_stores_close(
    tmp_path: Path, embedder: Any
) -> None:
    """Stopping the server closed the service's stores before the MCP sessions: a
    ``remember`` still running (its client gone) wrote its row, then failed on the
    stopped background worker, so the entry was never embedded."""
    store = _GatedStore(tmp_path / "sessions")
    state = ProxyState(
        flow=ContextFlow(None, store=store),
        upstream=RemoteUpstream("http://127.0.0.1:9/v1", model="m"),
    )
    server = ServerThread(create_app(state)).start()
    url = f"{server.base_url}/mcp"
    try:
        headers = _open_session(url, {})
        store.armed = True
        _call_and_hang_up(url, headers, "the code is 4711")
        assert store.writing.wait(10)
    finally:
        # The write goes on once the server is stopping: before, the stores closed under it.
        threading.Timer(1.0, store.go_on.set).start()
        server.close()
        store.close()
    ((tenant, row_id),) = store.written
    reopened = SessionStateStore(tmp_path / "sessions")
    row = reopened.get(tenant, row_id)
    reopened.close()
    assert row is not None and row["text"] == "the code is 4711"
    assert row.get("vector"), "the work that follows the write did not run"


def test_a_call_whose_client_hung_up_holds_its_tenants_slot_until_it_ends(
    tmp_path: Path, embedder: Any
) -> None:
    """A call counted against the tenant's max_concurrent_requests only while its POST
    was open: once the client hung up the slot was free, while the call ran on in its
    session, so a client that fired calls and hung up ran any number at once."""
    store = _GatedStore(tmp_path / "sessions")
    limited = TenantConfig(id="tenant-c", key="key-c", max_concurrent_requests=1)
    state = ProxyState(
        flow=ContextFlow(None, store=store),
        upstream=RemoteUpstream("http://127.0.0.1:9/v1", model="m"),
        tenants=Tenants({"key-c": limited}),
    )
    server = ServerThread(create_app(state), grace_s=0).start()
    url = f"{server.base_url}/mcp"
    listing = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
    try:
        headers = _open_session(url, {"authorization": "Bearer key-c"})
        store.armed = True
        _call_and_hang_up(url, headers, "a slow write")
        assert store.writing.wait(10)
        # The client is gone, its call is not: the tenant is at its limit throughout.
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            busy = httpx.post(url, headers=headers, json=listing)
            assert busy.status_code == 429, "a call still running no longer counts"
            time.sleep(0.05)
        store.go_on.set()
        # The call ends, and with it the slot is free.
        deadline = time.monotonic() + 10
        while httpx.post(url, headers=headers, json=listing).status_code == 429:
            assert time.monotonic() < deadline, "the slot outlived the call"
            time.sleep(0.05)
    finally:
        store.go_on.set()
        server.close()
        store.close()


def test_a_stalled_upload_is_a_408_and_holds_no_tenant_slot(tmp_path: Path) -> None:
    """The MCP transport read a body with no time bound, under the tenant's slot: a
    client whose upload stalled kept its connection, and a tenant limited to one
    request at a time was answered 429 everywhere, for as long as the socket stayed."""
    limited = TenantConfig(id="tenant-c", key="key-c", max_concurrent_requests=1)
    state = ProxyState(
        flow=ContextFlow(None, store=SessionStateStore(tmp_path / "sessions")),
        upstream=RemoteUpstream("http://127.0.0.1:9/v1", model="m"),
        tenants=Tenants({"key-c": limited}),
        limits=LimitsConfig(read_timeout_s=2),
    )
    hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t"}}
    head = (
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer key-c\r\n"
        b"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    with (
        ServerThread(create_app(state)) as server,
        socket.create_connection(("127.0.0.1", server.port)) as stalled,
    ):
        stalled.sendall(head + b'{"jsonrpc"')
        time.sleep(0.2)  # the upload has begun, and stops
        other = httpx.post(
            f"{server.base_url}/mcp",
            headers={
                "authorization": "Bearer key-c",
                "accept": "application/json, text/event-stream",
            },
            json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello},
        )
        assert other.status_code == 200, other.text  # no slot held by the stalled upload
        stalled.settimeout(10)
        started = time.monotonic()
        answer = stalled.recv(4096)
        assert time.monotonic() - started < 5, "the stalled upload was not cut off in time"
        while not answer.endswith(b"}}") and (more := stalled.recv(4096)):
            answer += more  # the body may follow the headers
    assert answer.startswith(b"HTTP/1.1 408")
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "request_timeout"


def _limited_server(tmp_path: Path, mcp: McpConfig) -> ServerThread:
    """A proxy of tenants ``tenant-a`` and ``tenant-b`` (``key-a``, ``key-b``) with ``mcp``."""
    keys = {k: TenantConfig(id=f"tenant-{k[-1]}", key=k) for k in ("key-a", "key-b")}
    state = ProxyState(
        flow=ContextFlow(None, store=SessionStateStore(tmp_path / "sessions")),
        upstream=RemoteUpstream("http://127.0.0.1:9/v1", model="m"),
        tenants=Tenants(keys),
        mcp=mcp,
    )
    return ServerThread(create_app(state))


def test_sessions_past_a_tenants_limit_are_429_and_past_the_servers_503(tmp_path: Path) -> None:
    """Sessions had no bound but the SDK's 10,000 for everyone, each kept half an hour
    after its last request: a client opening them in a loop grew the server's memory,
    and one tenant could take every session there was."""
    limits = McpConfig(max_sessions_per_tenant=2, max_sessions=3)
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    with _limited_server(tmp_path, limits) as server:
        url = f"{server.base_url}/mcp"
        key_a, key_b = {"authorization": "Bearer key-a"}, {"authorization": "Bearer key-b"}
        sessions_a = [_open_session(url, key_a) for _ in range(2)]
        refused = _initialize(url, key_a)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "too_many_sessions"
        assert "mcp-session-id" not in refused.headers
        for headers in sessions_a:  # the sessions open keep working
            assert httpx.post(url, headers=headers, json=listing).status_code == 200
        _open_session(url, key_b)  # another tenant's first: the server's third
        full = _initialize(url, key_b)
        assert full.status_code == 503 and full.headers["retry-after"]
        assert full.json()["error"]["code"] == "too_many_sessions"
        # A session the client ends makes room for its tenant again.
        assert httpx.delete(url, headers=sessions_a[0]).status_code == 200
        assert _initialize(url, key_a).status_code == 200


def test_a_session_idle_past_session_idle_s_is_closed_and_makes_room(tmp_path: Path) -> None:
    limits = McpConfig(max_sessions_per_tenant=1, session_idle_s=0.5)
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    with _limited_server(tmp_path, limits) as server:
        url = f"{server.base_url}/mcp"
        key_a = {"authorization": "Bearer key-a"}
        idle = _open_session(url, key_a)
        assert _initialize(url, key_a).status_code == 429
        deadline = time.monotonic() + 10
        while (opened := _initialize(url, key_a)).status_code == 429:
            assert time.monotonic() < deadline, "the idle session was never closed"
            time.sleep(0.1)
        assert opened.status_code == 200
        assert httpx.post(url, headers=idle, json=listing).status_code == 404


async def _list_tools_at_once(
    url: str, key: str, mode: str, calls: int, statuses: list[int]
) -> list[int]:
    """How many tools each of ``calls`` concurrent listings of the SDK's client in ``mode``
    saw; the status of each answer its requests got goes to ``statuses``."""

    async def record(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    headers = {"Authorization": f"Bearer {key}"}
    hooks = {"response": [record]}
    async with httpx2.AsyncClient(headers=headers, timeout=30, event_hooks=hooks) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode) as client:
            seen: list[int] = []

            async def list_tools() -> None:
                seen.append(len((await client.list_tools()).tools))

            async with anyio.create_task_group() as group:
                for _ in range(calls):
                    group.start_soon(list_tools)
            return seen


def test_only_an_initialize_counts_against_the_session_limits(tmp_path: Path) -> None:
    """Every request naming no session counted as an opening: the SDK's default client,
    whose calls (protocol 2026-07-28) are POSTs without a session that open none, got
    429s past max_sessions_per_tenant concurrent calls, and a GET or DELETE naming no
    session was a 429 instead of the SDK's 400."""
    limits = McpConfig(max_sessions_per_tenant=1, max_sessions=2)
    with _limited_server(tmp_path, limits) as server:
        url = f"{server.base_url}/mcp"
        key_a = {"authorization": "Bearer key-a"}
        _open_session(url, key_a)  # tenant-a holds all the sessions it may
        statuses: list[int] = []
        tools = anyio.run(_list_tools_at_once, url, "key-a", "auto", 4, statuses)
        assert len(tools) == 4 and min(tools) > 0
        assert statuses and set(statuses) == {200}
        for method in ("GET", "DELETE"):
            answer = httpx.request(method, url, headers={**key_a, **_RAW_MCP})
            assert answer.status_code == 400, (method, answer.text)
        # The session mode still opens a session per client, within the limits.
        statuses.clear()
        tools = anyio.run(_list_tools_at_once, url, "key-b", "legacy", 4, statuses)
        assert len(tools) == 4 and min(tools) > 0
        assert statuses and max(statuses) < 400
        statuses.clear()
        with pytest.raises(Exception):  # noqa: B017 - the SDK's client wraps the 429 in groups
            anyio.run(_list_tools_at_once, url, "key-a", "legacy", 1, statuses)
        assert statuses == [429]
