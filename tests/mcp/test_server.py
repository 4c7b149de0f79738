"""The MCP server through the real in-memory ``Client``: every tool, resource and prompt."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from ctxproto.context import ChatRequest
from ctxproto.mcp import ContextService, create_mcp_server
from ctxproto.stores.session_state import SessionStateStore
from tests.mcp.conftest import make_service, text_of

TOOLS = {
    "assemble_context",
    "compress_text",
    "remember",
    "recall",
    "forget",
    "search_knowledge",
    "cached_answer",
    "store_answer",
    "context_stats",
}


def conversation(turns: int, words: int = 60) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        role = "user" if i % 2 == 0 else "assistant"
        messages.append({"role": role, "content": f"turn {i} " + "lorem ipsum " * words})
    messages.append({"role": "user", "content": "What did we decide?"})
    return messages


def call(service: ContextService, name: str, arguments: dict[str, Any]) -> Any:
    async def run() -> Any:
        async with Client(create_mcp_server(service)) as client:
            return await client.call_tool(name, arguments)

    return anyio.run(run)


def test_lists_tools_with_output_schemas_resources_and_prompts(service: ContextService) -> None:
    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            tools = (await client.list_tools()).tools
            assert {t.name for t in tools} == TOOLS
            for tool in tools:
                assert tool.description and tool.output_schema is not None
                assert tool.annotations is not None
                writes = tool.name in ("remember", "store_answer", "forget")
                assert tool.annotations.read_only_hint is not writes
                assert bool(tool.annotations.destructive_hint) is (tool.name == "forget")
                assert "session_id" in tool.input_schema["required"]
            templates = (await client.list_resource_templates()).resource_templates
            assert {t.uri_template for t in templates} == {
                "ctxproto://sessions/{session_id}/summary",
                "ctxproto://sessions/{session_id}/history{?cursor}",
                "ctxproto://stats{?session_id}",
            }
            prompts = (await client.list_prompts()).prompts
            assert {p.name for p in prompts} == {"handover", "answer_from_knowledge"}
            got = await client.get_prompt("handover", {"session_id": "s-1"})
            assert "remember(session_id='s-1', kind='summary'" in str(got.messages[0].content)

    anyio.run(run)


def test_assemble_context_runs_the_pipeline_and_reports_savings(service: ContextService) -> None:
    result = call(service, "assemble_context", {"session_id": "a-1", "messages": conversation(9)})
    assert not result.is_error
    out = result.structured_content
    assert out["stages"][0]["name"] == "recency_window"
    assert out["stages"][0]["counters"]["dropped_messages"] > 0
    assert out["saved_tokens"] == out["original_tokens"] - out["prompt_tokens"] > 0
    assert out["messages"][0] == {"role": "system", "content": "You are terse."}
    assert out["messages"][-1] == {"role": "user", "content": "What did we decide?"}


def test_assemble_context_output_stays_within_the_budget_and_the_cap(mcp_folder: Path) -> None:
    service = make_service(mcp_folder, tool_output_tokens={"assemble_context": 150})
    try:
        messages = [{"role": "user", "content": "lorem ipsum " * 40}] * 1 + conversation(1, 5)
        asked = call(service, "assemble_context", {"session_id": "a-2", "messages": messages})
        assert asked.structured_content["budget"] == 150  # the cap, not the default 4000
        assert asked.structured_content["prompt_tokens"] <= 150
        smaller = call(
            service,
            "assemble_context",
            {"session_id": "a-2", "messages": messages, "budget": 60},
        )
        assert smaller.structured_content["prompt_tokens"] <= 60
        too_small = call(
            service,
            "assemble_context",
            {"session_id": "a-2", "messages": messages, "budget": 5},
        )
        assert too_small.is_error and "token" in text_of(too_small)
    finally:
        service.close()


def recency_service(max_turns: int, budget: Any) -> ContextService:
    """A service over a pipeline of one recency window and ``budget``, the default config."""
    from ctxproto.pipeline import Pipeline
    from ctxproto.serve.config import McpConfig
    from ctxproto.serve.flow import ContextFlow
    from ctxproto.stages.recency_window import RecencyWindow

    return ContextService(
        ContextFlow(Pipeline([RecencyWindow(max_turns=max_turns)], budget)), McpConfig()
    )


def test_a_requested_budget_never_raises_the_pipelines_own(mcp_folder: Path) -> None:
    from ctxproto.budget import Budget

    service = recency_service(20, Budget(max_prompt_tokens=100))
    try:
        asked = call(
            service,
            "assemble_context",
            {"session_id": "b-1", "messages": conversation(6, 20), "budget": 3000},
        )
        assert asked.structured_content["prompt_tokens"] <= 100
    finally:
        service.close()


def test_the_cap_keeps_the_pipelines_answer_reserve(mcp_folder: Path) -> None:
    from ctxproto.budget import Budget

    # An 8k window with 6k kept for the answer: prompts of at most 2,192 tokens.
    own = Budget(max_prompt_tokens=8192, context_window=8192, reserve_answer_tokens=6000)
    service = recency_service(100, own)  # the default cap, 4,000, is above that limit
    try:
        asked = call(
            service,
            "assemble_context",
            {"session_id": "b-2", "messages": conversation(30, 100)},
        )
        out = asked.structured_content
        assert out["original_tokens"] > 4000
        assert out["budget"] == own.prompt_limit
        assert out["prompt_tokens"] <= own.prompt_limit
        smaller = call(
            service,
            "assemble_context",
            {"session_id": "b-2", "messages": conversation(30, 100), "budget": 1000},
        )
        assert smaller.structured_content["prompt_tokens"] <= 1000
    finally:
        service.close()


def test_assemble_context_reports_what_it_repaired(service: ContextService) -> None:
    call_ = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Look it up."},
        {"role": "tool", "tool_call_id": "gone", "content": "a result whose call was trimmed"},
        {"role": "assistant", "content": None, "tool_calls": [call_]},
        {"role": "user", "content": "Never mind."},
    ]
    result = call(service, "assemble_context", {"session_id": "r-1", "messages": messages})
    assert not result.is_error, text_of(result)
    out = result.structured_content
    assert out["repairs"] == [
        "dropped 1 tool result that answered no call",
        "dropped 1 tool call that had no result",
    ]
    assert [m["role"] for m in out["messages"]] == ["user", "user"]
    clean = call(service, "assemble_context", {"session_id": "r-1", "messages": messages[:1]})
    assert clean.structured_content["repairs"] == []


def test_assemble_context_takes_messages_as_openai_returns_them(service: ContextService) -> None:
    returned: dict[str, Any] = {
        "role": "assistant",
        "content": "Hi!",
        "refusal": None,
        "annotations": [],
    }
    messages = [{"role": "user", "content": "Hello"}, returned, {"role": "user", "content": "Bye"}]
    result = call(service, "assemble_context", {"session_id": "b-2", "messages": messages})
    assert not result.is_error, text_of(result)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    pictured = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}]
    refused = call(service, "assemble_context", {"session_id": "b-2", "messages": pictured})
    assert refused.is_error and "image_url" in text_of(refused)


def test_documents_and_query_reach_the_pipeline(service: ContextService) -> None:
    result = call(
        service,
        "assemble_context",
        {
            "session_id": "a-3",
            "messages": [{"role": "system", "content": "Answer from the documents."}],
            "documents": [{"id": "d1", "text": "The build id is B-7781."}],
            "query": "Which build id?",
        },
    )
    text = json.dumps(result.structured_content["messages"])
    assert "B-7781" in text and "Which build id?" in text


def test_remember_then_recall_the_most_relevant_within_the_cap(
    service: ContextService, counter: Any
) -> None:
    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            for i in range(30):
                await client.call_tool(
                    "remember",
                    {"session_id": "m-1", "text": f"filler note {i}: " + "the weather " * 10},
                )
            await client.call_tool(
                "remember", {"session_id": "m-1", "text": "The staging database port is 6543."}
            )
            await client.call_tool(
                "remember",
                {"session_id": "m-1", "kind": "summary", "text": "User is migrating staging."},
            )
            got = await client.call_tool(
                "recall", {"session_id": "m-1", "query": "which port does staging db use"}
            )
            out = got.structured_content
            assert out["summary"] == "User is migrating staging."
            assert out["total_entries"] == 32
            texts = [e["text"] for e in out["entries"]]
            assert "The staging database port is 6543." in texts
            assert len(texts) < 31  # the configured cap of 200 tokens left filler out
            spent = counter.count(out["summary"]) + sum(counter.count(t) for t in texts)
            assert out["tokens"] == spent <= 200
            ids = [e["id"] for e in out["entries"]]
            assert ids == sorted(ids)  # oldest first
            read = await client.read_resource("ctxproto://sessions/m-1/summary")
            assert read.contents[0].text == "User is migrating staging."  # type: ignore[union-attr]

    anyio.run(run)


def test_history_pages_walk_every_entry_once(service: ContextService) -> None:
    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            for i in range(60):
                await client.call_tool(
                    "remember",
                    {"session_id": "h-1", "kind": "turn", "role": "user", "text": f"msg {i}"},
                )
            seen: list[str] = []
            pages = 0
            uri = "ctxproto://sessions/h-1/history"
            while True:
                read = await client.read_resource(uri)
                page = json.loads(read.contents[0].text)  # type: ignore[union-attr]
                pages += 1
                seen.extend(e["text"] for e in page["entries"])
                if page["next_cursor"] is None:
                    break
                uri = f"ctxproto://sessions/h-1/history?cursor={page['next_cursor']}"
            assert seen == [f"msg {i}" for i in range(60)]
            assert pages == 3  # page_size 25

    anyio.run(run)


def test_search_knowledge_packs_chunks_into_the_cap(service: ContextService) -> None:
    result = call(
        service,
        "search_knowledge",
        {"session_id": "k-1", "query": "how do I deploy a release?", "k": 3},
    )
    chunks = result.structured_content["chunks"]
    assert chunks[0]["id"].startswith("deploy") and "B-7781" in chunks[0]["text"]
    assert all("Bluefin" not in c["text"] for c in chunks)  # tenant-a's store
    capped = call(
        service,
        "search_knowledge",
        {"session_id": "k-1", "query": "deploy", "k": 3, "max_tokens": 25},
    )
    assert capped.structured_content["tokens"] <= 25
    assert len(capped.structured_content["chunks"]) < len(chunks)


def test_a_folder_without_a_built_store_is_no_knowledge_store(tmp_path: Path) -> None:
    from ctxproto.serve.config import McpConfig
    from ctxproto.serve.flow import ContextFlow

    (tmp_path / "kb" / "default").mkdir(parents=True)  # made, never indexed
    knowledge = str(tmp_path / "kb" / "{tenant}")
    service = ContextService(ContextFlow(None), McpConfig(knowledge=knowledge))
    try:
        found = call(service, "search_knowledge", {"session_id": "k-2", "query": "deploy"})
        assert found.is_error and "no knowledge store" in text_of(found)
        assert list((tmp_path / "kb" / "default").iterdir()) == []  # nothing was started
    finally:
        service.close()


def test_search_knowledge_reads_a_postgresql_store(pg_url: str, embedder: Any) -> None:
    from ctxproto.documents import Document
    from ctxproto.retrieval.knowledge_base import KnowledgeBase
    from ctxproto.serve.config import McpConfig
    from ctxproto.serve.flow import ContextFlow

    built = KnowledgeBase(pg_url, embedder=embedder)
    built.add_documents([Document(id="deploy", text="Deploy with `make release`; B-7781.")])
    built.save()
    service = ContextService(ContextFlow(None), McpConfig(knowledge=pg_url))
    try:
        found = call(service, "search_knowledge", {"session_id": "k-3", "query": "deploy"})
        assert not found.is_error, text_of(found)
        assert "B-7781" in found.structured_content["chunks"][0]["text"]
    finally:
        service.close()
    secret = McpConfig(knowledge="postgresql://kb:s3cret@db/ctx?table=kb_{tenant}")
    (name,) = ContextService(ContextFlow(None), secret).store_checks()  # what /health shows
    assert name == "mcp.knowledge postgresql://kb:***@db/ctx?table=kb_{tenant}"


def test_close_closes_every_store_the_service_opened_once(
    pg_url: str, redis_server: Any, embedder: Any
) -> None:
    """The tenant's PostgreSQL pool and the summarizer's Redis connection end with close."""
    import time

    import psycopg
    import redis

    from ctxproto.documents import Document
    from ctxproto.pipeline import Pipeline
    from ctxproto.retrieval.knowledge_base import KnowledgeBase
    from ctxproto.serve.config import McpConfig
    from ctxproto.serve.flow import ContextFlow
    from ctxproto.stages.recency_window import RecencyWindow
    from ctxproto.stores.redis_session_state import RedisSessionStateStore

    # Connections named for this test: other tests' stores may open and close theirs
    # (a pool collected with its store) while this one runs.
    name = f"close-test-{uuid.uuid4().hex[:8]}"
    pg_named = f"{pg_url}{'&' if '?' in pg_url else '?'}application_name={name}"
    redis_named = f"{redis_server.url}{'&' if '?' in redis_server.url else '?'}client_name={name}"
    built = KnowledgeBase(pg_url, embedder=embedder)
    built.add_documents([Document(id="deploy", text="Deploy with `make release`; B-7781.")])
    built.save()
    built.store.close()
    server = psycopg.connect(pg_url.split("?")[0], autocommit=True)
    watcher = redis.Redis.from_url(redis_server.url)

    def opened() -> tuple[int, int]:
        row = server.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchone()
        assert row is not None
        return int(row[0]), sum(c.get("name") == name for c in watcher.client_list())

    sessions = RedisSessionStateStore(redis_named, namespace=redis_server.namespace())
    flow = ContextFlow(Pipeline([RecencyWindow(max_turns=2)]), store=sessions)
    service = ContextService(flow, McpConfig(knowledge=pg_named))
    try:
        before = opened()
        found = call(service, "search_knowledge", {"session_id": "cl", "query": "deploy"})
        assert not found.is_error, text_of(found)
        call(service, "remember", {"session_id": "cl", "kind": "turn", "text": "Hi."})
        call(service, "recall", {"session_id": "cl"})  # the summarizer's fold has run
        during = opened()
        assert during[0] > before[0] and during[1] > before[1]
        service.close()
        service.close()  # a second close has nothing left to close
        # The session store is the flow's, not the service's; its pool may have opened
        # a second connection while a background fold read it. Closed too, every
        # connection of this test's name must be gone: one left is a store the
        # service opened and did not close.
        sessions.close()
        deadline = time.monotonic() + 10
        while opened() != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.1)  # a server lets a closed connection go soon after
        assert opened() == (0, 0)
    finally:
        service.close()
        sessions.close()
        watcher.close()
        server.close()


def test_a_store_that_is_down_is_a_tool_error_saying_it_is_temporary(redis_server: Any) -> None:
    """A server that is down is said to be temporary, so a model calls again later;
    it read as any failure, as if the tool were broken."""
    from ctxproto.serve.config import McpConfig
    from ctxproto.serve.flow import ContextFlow

    cache = f"{redis_server.url}#{redis_server.namespace()}"
    service = ContextService(ContextFlow(None), McpConfig(cache=cache))
    question = {"session_id": "down", "question": "How long do refunds take?"}
    try:
        stored = call(service, "store_answer", {**question, "answer": "Five days."})
        assert not stored.is_error, text_of(stored)
        redis_server.stop()
        try:
            failed = call(service, "cached_answer", question)
        finally:
            redis_server.start()
        assert failed.is_error
        assert "temporarily unavailable, try again in a few seconds" in text_of(failed)
        assert f"127.0.0.1:{redis_server.port}" in text_of(failed)
        again = call(service, "cached_answer", question)
        assert not again.is_error and again.structured_content["answer"] == "Five days."
    finally:
        service.close()


def test_semantic_cache_round_trip_and_stats(service: ContextService) -> None:
    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            question = "How long do refunds take?"
            miss = await client.call_tool(
                "cached_answer", {"session_id": "c-1", "question": question}
            )
            assert miss.structured_content == {
                "hit": False,
                "answer": None,
                "similarity": None,
                "cached_question": None,
            }
            await client.call_tool(
                "store_answer",
                {"session_id": "c-1", "question": question, "answer": "Five days."},
            )
            hit = await client.call_tool(
                "cached_answer", {"session_id": "c-1", "question": "how long does a refund take"}
            )
            assert hit.structured_content["answer"] == "Five days."
            other = await client.call_tool(
                "cached_answer", {"session_id": "c-1", "question": "How long do invoices take?"}
            )
            assert other.structured_content["hit"] is False
            stats = await client.call_tool("context_stats", {"session_id": "c-1"})
            session = stats.structured_content["session"]
            assert (session["cache_hits"], session["cache_misses"]) == (1, 2)
            read = await client.read_resource("ctxproto://stats?session_id=c-1")
            assert json.loads(read.contents[0].text)["session"] == session  # type: ignore[union-attr]

    anyio.run(run)


def test_an_empty_cache_context_is_no_context(service: ContextService) -> None:
    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            for stored, asked in (
                ({"context": ""}, {}),
                ({}, {"context": " "}),
                ({"context": "v2"}, {"context": "v2"}),
            ):
                question = f"Which port does the {len(stored)}{len(asked)} staging db use?"
                await client.call_tool(
                    "store_answer",
                    {"session_id": "ctx", "question": question, "answer": "6543", **stored},
                )
                got = await client.call_tool(
                    "cached_answer", {"session_id": "ctx", "question": question, **asked}
                )
                assert got.structured_content["answer"] == "6543", (stored, asked)
            other = await client.call_tool(
                "cached_answer",
                {"session_id": "ctx", "question": "Which port does the 11 staging db use?"},
            )
            assert other.structured_content["hit"] is False  # a context still keys apart

    anyio.run(run)


def test_a_cached_answer_over_the_cap_is_refused_and_counted_as_a_miss(tmp_path: Path) -> None:
    question, answer = "How do refunds work?", "Refunds take five days. " * 20
    before = make_service(tmp_path)  # the cap was 4,000 when the answer was stored
    try:
        stored = call(
            before, "store_answer", {"session_id": "c-2", "question": question, "answer": answer}
        )
        assert not stored.is_error, text_of(stored)
    finally:
        before.close()
    lowered = make_service(tmp_path, tool_output_tokens={"cached_answer": 20})
    try:
        got = call(lowered, "cached_answer", {"session_id": "c-2", "question": question})
        assert got.is_error and "over this tool's cap of 20" in text_of(got)
        stats = call(lowered, "context_stats", {"session_id": "c-2"}).structured_content
        session = stats["session"]
        assert (session["cache_hits"], session["cache_misses"]) == (0, 1)  # nothing was served
    finally:
        lowered.close()


def test_agent_answers_and_the_pipelines_answers_stay_apart(tmp_path: Path) -> None:
    from ctxproto.pipeline import Pipeline
    from ctxproto.serve.config import McpConfig
    from ctxproto.serve.flow import ContextFlow
    from ctxproto.stages.semantic_cache import SemanticCacheLookup

    # Scope "query" and no system prompt: the pipeline keys a chat's answer by no context.
    stage = SemanticCacheLookup(path=str(tmp_path / "cache"), scope="query")
    flow = ContextFlow(Pipeline([stage]))
    service = ContextService(flow, McpConfig())

    def chat(question: str) -> Any:
        request = ChatRequest.from_openai(
            [{"role": "user", "content": question}], session_id="chat", tenant_id="default"
        )
        return flow.run(request.to_context())

    try:
        stored = call(
            service,
            "store_answer",
            {"session_id": "s", "question": "What is the refund window?", "answer": "Agent note."},
        )
        assert not stored.is_error
        assert chat("What is the refund window?").answer is None
        filed = chat("Where is the head office?")
        stage.store(filed.context, "In Lisbon.")
        assert chat("Where is the head office?").answer == "In Lisbon."
        lookup = call(
            service, "cached_answer", {"session_id": "s", "question": "Where is the head office?"}
        )
        assert lookup.structured_content["hit"] is False
        again = call(
            service, "cached_answer", {"session_id": "s", "question": "What is the refund window?"}
        )
        assert again.structured_content["answer"] == "Agent note."
    finally:
        service.close()
        flow.store.close()


def test_assemble_context_counts_the_pipelines_cache_misses(tmp_path: Path) -> None:
    from ctxproto.pipeline import Pipeline
    from ctxproto.serve.config import McpConfig
    from ctxproto.serve.flow import ContextFlow
    from ctxproto.stages.semantic_cache import SemanticCacheLookup

    stage = SemanticCacheLookup(path=str(tmp_path / "cache"), scope="query")
    flow = ContextFlow(Pipeline([stage]))
    service = ContextService(flow, McpConfig())
    messages = [{"role": "user", "content": "Where is the head office?"}]
    try:
        first = service.assemble("default", "m-1", messages)
        assert first.cached_answer is None
        request = ChatRequest.from_openai(messages, session_id="m-1", tenant_id="default")
        stage.store(flow.run(request.to_context()).context, "In Lisbon.")
        again = call(service, "assemble_context", {"session_id": "m-1", "messages": messages})
        assert again.structured_content["cached_answer"] == "In Lisbon."
        stats = call(service, "context_stats", {"session_id": "m-1"})
        session = stats.structured_content["session"]
        assert (session["calls"], session["cache_hits"], session["cache_misses"]) == (2, 1, 1)
    finally:
        service.close()
        flow.store.close()


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("recall", {"session_id": "never-seen"}, "no session 'never-seen'"),
        ("remember", {"session_id": "x", "text": 42}, "text"),
        ("remember", {"session_id": "a/b", "text": "hi"}, "session_id"),
        ("remember", {"session_id": "x", "text": "y" * 2_000_001}, "text"),
        ("assemble_context", {"session_id": "x", "messages": [{"role": "wizard"}]}, "role"),
        ("assemble_context", {"session_id": "x", "messages": "hello"}, "messages"),
        ("compress_text", {"session_id": "x", "text": "abc", "rate": 3}, "rate"),
        (
            "assemble_context",
            {"session_id": "x", "messages": [{"role": "user", "content": "w" * 9_000_000}] * 2},
            "over the 16,777,216",
        ),
        (  # 6M characters, 18M bytes: the cap is a request file's, in bytes
            "assemble_context",
            {"session_id": "x", "messages": [{"role": "user", "content": "日" * 6_000_000}]},
            "18,000,031 bytes",
        ),
        (  # a lone surrogate: only a caller in this process can pass one
            "assemble_context",
            {
                "session_id": "x",
                "messages": [{"role": "user", "content": "Hi"}],
                "documents": [{"id": "d", "text": "broken \ud800 text"}],
            },
            "key 'documents[0]': is not valid Unicode",
        ),
        ("nonexistent_tool", {"session_id": "x"}, "nonexistent_tool"),
        (
            "store_answer",
            {"session_id": "x", "question": "Why?", "answer": "because " * 5000},
            "could never be served",
        ),
        (
            "cached_answer",
            {"session_id": "x", "question": "Why?", "context": "c" * 10_001},
            "context",
        ),
    ],
)
def test_bad_input_is_a_tool_error_and_the_server_keeps_serving(
    service: ContextService, name: str, arguments: dict[str, Any], message: str
) -> None:
    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            bad = await client.call_tool(name, arguments)
            assert bad.is_error and message in text_of(bad)
            fine = await client.call_tool("context_stats", {"session_id": "x"})
            assert not fine.is_error

    anyio.run(run)


@pytest.mark.parametrize(
    ("name", "arguments", "key"),
    [
        ("assemble_context", {"messages": [{"role": "user", "content": "Hi"}]}, "budget"),
        ("compress_text", {"text": "Invoice 4471 is due."}, "target_tokens"),
        ("compress_text", {"text": "Invoice 4471 is due."}, "rate"),
        ("recall", {}, "max_tokens"),
        ("search_knowledge", {"query": "refunds"}, "k"),
        ("search_knowledge", {"query": "refunds"}, "max_tokens"),
    ],
)
def test_a_boolean_for_a_number_is_a_tool_error_naming_the_argument(
    service: ContextService, name: str, arguments: dict[str, Any], key: str
) -> None:
    """``true`` was read as 1 (``budget: true`` a one-token budget), as a config refuses it.
    The argument's schema keeps its bounds in JSON Schema's words."""
    for value in (True, False):
        got = call(service, name, {"session_id": "x", **arguments, key: value})
        assert got.is_error and key in text_of(got)
        assert "a number, not a boolean" in text_of(got)

    async def schema() -> dict[str, Any]:
        async with Client(create_mcp_server(service)) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            found: dict[str, Any] = tools[name].input_schema["properties"][key]
            return found

    bounds = json.dumps(anyio.run(schema))
    assert "maximum" in bounds and '"le"' not in bounds and '"gt"' not in bounds


def test_unknown_session_resource_is_a_resource_error(service: ContextService) -> None:
    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            with pytest.raises(Exception, match="no session 'ghost'"):
                await client.read_resource("ctxproto://sessions/ghost/summary")
            with pytest.raises(Exception, match="session_id"):
                await client.read_resource("ctxproto://sessions/a%2Fb/history")
            assert (await client.call_tool("context_stats", {"session_id": "x"})).structured_content

    anyio.run(run)


def test_two_clients_writing_one_session_lose_nothing(mcp_folder: Path) -> None:
    # Two services on one store folder stand for two server processes.
    first, second = make_service(mcp_folder), make_service(mcp_folder)

    async def writer(service: ContextService, name: str) -> None:
        async with Client(create_mcp_server(service)) as client:
            for i in range(40):
                got = await client.call_tool(
                    "remember", {"session_id": "w-1", "text": f"{name}{i}"}
                )
                assert not got.is_error

    async def run() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(writer, first, "a")
            group.start_soon(writer, second, "b")

    try:
        anyio.run(run)
        page = first.memory.page("default", "w-1", None, 1000, 10_000, first.counter)
        assert sorted(e.text for e in page.entries) == sorted(
            [f"a{i}" for i in range(40)] + [f"b{i}" for i in range(40)]
        )
    finally:
        first.close()
        second.close()


def test_a_history_entry_over_the_cap_comes_back_cut_and_marked(
    service: ContextService, counter: Any
) -> None:
    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            await client.call_tool("remember", {"session_id": "big", "text": "word " * 1000})
            await client.call_tool("remember", {"session_id": "big", "text": "small"})
            read = await client.read_resource("ctxproto://sessions/big/history")
            page = json.loads(read.contents[0].text)  # type: ignore[union-attr]
            first = page["entries"][0]
            assert first["truncated"] is True and counter.count(first["text"]) <= 200
            assert len(page["entries"]) == 1 and page["next_cursor"] == first["id"]
            got = await client.call_tool("recall", {"session_id": "big"})
            assert [e["text"] for e in got.structured_content["entries"]] == ["small"]

    anyio.run(run)


def test_recall_cuts_and_marks_the_first_entry_when_it_alone_is_over_the_cap(
    service: ContextService, counter: Any
) -> None:
    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            await client.call_tool("remember", {"session_id": "huge", "text": "word " * 1000})
            got = await client.call_tool("recall", {"session_id": "huge"})
            out = got.structured_content
            assert out["total_entries"] == 1
            (entry,) = out["entries"]
            assert entry["truncated"] is True and entry["text"].startswith("word word")
            assert out["tokens"] == counter.count(entry["text"]) <= 200
            await client.call_tool("remember", {"session_id": "huge", "text": "a short note"})
            await client.call_tool(
                "remember", {"session_id": "huge", "kind": "summary", "text": "Words, mostly."}
            )
            older = await client.call_tool(
                "recall", {"session_id": "huge", "query": "word word word", "max_tokens": 50}
            )
            out = older.structured_content
            (entry,) = out["entries"]  # the most relevant, cut to the room the summary leaves
            assert entry["truncated"] is True and entry["text"].startswith("word word")
            assert out["tokens"] == counter.count(out["summary"]) + counter.count(entry["text"])
            assert out["tokens"] <= 50

    anyio.run(run)


def test_recall_cuts_the_latest_entry_to_the_room_the_summary_leaves_not_an_older_one(
    service: ContextService, counter: Any
) -> None:
    summary = "We went over the release plan and agreed on every step of it. " * 10
    latest = "The deploy id is D-991; it ships on Friday once review is done. " * 6

    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            session = {"session_id": "room"}
            await client.call_tool("remember", {**session, "text": "The cat is grey."})
            await client.call_tool("remember", {**session, "kind": "summary", "text": summary})
            await client.call_tool("remember", {**session, "text": latest})
            # Under the cap of 200 alone, over the room the summary leaves.
            assert counter.count(latest) < 200 < counter.count(summary) + counter.count(latest)
            got = await client.call_tool("recall", session)
            out = got.structured_content
            assert out["summary"] == summary and out["total_entries"] == 3
            (entry,) = out["entries"]  # the latest, not the older note that would fit whole
            assert entry["truncated"] is True and entry["text"].startswith("The deploy id is D-991")
            assert out["tokens"] == counter.count(summary) + counter.count(entry["text"]) <= 200

    anyio.run(run)


def test_an_entry_cut_to_the_cap_ends_on_a_whole_character(service: ContextService) -> None:
    # Emoji take several tokens each: the 200-token cap falls inside one.
    text = "🙂🚀🧠 " * 400

    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            await client.call_tool("remember", {"session_id": "emoji", "text": text})
            got = await client.call_tool("recall", {"session_id": "emoji"})
            (entry,) = got.structured_content["entries"]
            read = await client.read_resource("ctxproto://sessions/emoji/history")
            (paged,) = json.loads(read.contents[0].text)["entries"]  # type: ignore[union-attr]
            for cut in (entry, paged):
                assert cut["truncated"] is True and "\ufffd" not in cut["text"]
                assert text.startswith(cut["text"]) and len(cut["text"]) > 100

    anyio.run(run)


def test_older_turns_fold_into_a_summary_in_the_background(service: ContextService) -> None:
    async def run() -> None:
        async with Client(create_mcp_server(service)) as client:
            turns = [("user", "Hi, my order number is ORD-551203 and it never arrived.")]
            for i in range(15):
                turns.append(("assistant", f"Checking the carrier records, step {i}."))
                turns.append(("user", f"Still waiting on update number {i}, thanks."))
            for role, text in turns:
                got = await client.call_tool(
                    "remember", {"session_id": "fold", "kind": "turn", "role": role, "text": text}
                )
                assert not got.is_error
            read = await client.read_resource("ctxproto://sessions/fold/summary")
            summary = read.contents[0].text  # type: ignore[union-attr]
            assert "ORD-551203" in summary  # a stated fact survives folding
            assert "update number 14" not in summary  # the newest turns stay out
            recalled = await client.call_tool("recall", {"session_id": "fold", "max_tokens": 30})
            out = recalled.structured_content
            assert out["summary_truncated"] is True and out["tokens"] <= 30
            assert out["summary"] == summary[: len(out["summary"])]

    anyio.run(run)


def test_stats_add_up_across_processes_and_survive_a_restart(tmp_path: Path) -> None:
    messages = conversation(9)
    first, second = make_service(tmp_path), make_service(tmp_path)  # two processes
    try:
        for service in (first, second):
            call(service, "assemble_context", {"session_id": "st", "messages": messages})
        one = first.stats("default", "st").session
        assert one is not None and one.calls == 2 and one.saved_tokens > 0
    finally:
        first.close()
        second.close()
    restarted = make_service(tmp_path)
    try:
        again = call(restarted, "context_stats", {"session_id": "st"}).structured_content
        assert again["session"] == one.model_dump() and again["sessions"] == 1
    finally:
        restarted.close()


def test_building_the_server_leaves_logging_alone_and_names_its_version(
    service: ContextService,
) -> None:
    """Over stdio too: the SDK's ``basicConfig`` put every INFO record on the host's stderr."""
    import logging

    from ctxproto import __version__

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.handlers = []  # an unconfigured process (pytest's capture handlers hide the effect)
    root.setLevel(logging.WARNING)
    try:
        server = create_mcp_server(service)
        assert root.handlers == [] and root.level == logging.WARNING
    finally:
        root.handlers = handlers
        root.setLevel(level)

    async def run() -> None:
        async with Client(server) as client:
            info = client.server_info
            assert info is not None and info.version == __version__

    anyio.run(run)


def test_memory_and_stats_read_one_sessions_rows_not_the_whole_store(tmp_path: Path) -> None:
    service = make_service(tmp_path)
    try:
        for i in range(30):
            service.remember("default", "busy", f"note {i}", "note", None)
        service.remember("default", "mine", "the one note here", "note", None)
        service.remember("default", "mine", "and a second", "note", None)
        store = service.memory.store
        assert isinstance(store, SessionStateStore)

        def every_key() -> None:
            raise AssertionError("listed every key of the store")

        store._cache.iterkeys = every_key  # what listing one session must not do
        recalled = service.recall("default", "mine", None, None)
        assert [e.text for e in recalled.entries] == ["the one note here", "and a second"]
        assert recalled.total_entries == 2
        page = service.history("default", "mine", None)
        assert [e.text for e in page.entries] == ["the one note here", "and a second"]
        assert service.stats("default", "mine").sessions == 0
    finally:
        service.close()
