# The openai client types messages as TypedDicts; plain dicts, as users write them, are fine.
# mypy: disable-error-code="arg-type,call-overload,union-attr,index,misc,list-item,attr-defined"
"""Two proxy replicas on one Redis: a conversation alternating between them stays whole."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ctxproto.errors import ConfigError, StoreError
from ctxproto.pipeline import Pipeline
from ctxproto.serve import ProxyState, ServerThread, create_app
from ctxproto.serve.config import ServeConfig, load_serve_config
from ctxproto.stores import open_session_store
from tests.serve.replicated_config import replicated_config
from tests.servers_redis import RedisServer, free_port

pytestmark = pytest.mark.models


@pytest.fixture(scope="session")
def replicas(redis_server: RedisServer, scripted: Any, embedder: Any) -> Iterator[list[Any]]:
    """Two proxies built from one config: answers, summaries and histories on the shared server."""
    tenant = redis_server.namespace()  # a tenant no other test uses on the shared server
    config = ServeConfig.model_validate(
        replicated_config(
            redis_server.url,
            cache=f"{redis_server.url}#{tenant}",
            upstream=scripted.url,
            tenant={"id": tenant, "key": "key-shared"},
            scope="query",
        )
    )
    servers = []
    for _ in range(2):
        state = ProxyState.from_config(config)
        state.flow.warm_up()
        app = create_app(state, routes=[Route("/test/close", _closer(state), methods=["POST"])])
        servers.append((ServerThread(app).start(), state, tenant))
    yield servers
    for server, state, _ in servers:
        httpx.post(f"{server.base_url}/test/close")
        server.close()
        state.flow.store.close()


def _closer(state: ProxyState) -> Any:
    """A route that closes the upstream client in the event loop that owns its connections."""

    async def close(request: Request) -> Response:
        await state.aclose()
        return Response(status_code=204)

    return close


def test_turns_alternating_between_replicas_keep_history_and_summary(replicas, redis_server):
    tenant = replicas[0][2]
    clients = [openai.OpenAI(base_url=s.url, api_key="key-shared") for s, _, _ in replicas]
    headers = {"x-session-id": "alternating"}
    answers = []
    for turn in range(6):
        client = clients[turn % 2]
        reply = client.chat.completions.create(
            model="ctxproto",
            messages=[{"role": "user", "content": f"turn {turn}"}],
            extra_headers=headers,
        )
        answers.append(reply.choices[0].message.content)
    for client in clients:
        client.close()
    # Each replica sees the whole conversation, whichever replica answered each turn.
    for _, state, _ in replicas:
        history = state.flow.history(tenant, "alternating")
        assert [m["content"] for m in history if m["role"] == "user"] == [
            f"turn {t}" for t in range(6)
        ]
        assert [m["content"] for m in history if m["role"] == "assistant"] == answers
    # The summary that either replica folded is the one the other resumed from.
    summaries = open_session_store(redis_server.url, namespace="summaries")
    state = summaries.get(tenant, "alternating")
    summaries.close()
    assert state is not None and state["folded"] == 8
    assert "turn 0" in state["summary"] and "turn 3" in state["summary"]


def test_turns_of_one_session_answered_at_once_by_both_replicas_both_stay(replicas):
    tenant = replicas[0][2]

    def ask(server: ServerThread, text: str) -> str:
        with openai.OpenAI(base_url=server.url, api_key="key-shared") as client:
            stream = client.chat.completions.create(
                model="ctxproto",
                messages=[{"role": "user", "content": text}],
                stream=True,
                extra_headers={"x-session-id": "at-once"},
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    asked = ["SLOW 0.05 through the first", "SLOW 0.05 through the second"]
    with ThreadPoolExecutor(2) as pool:  # each answer streams for about half a second
        answers = list(pool.map(ask, [server for server, _, _ in replicas], asked))
    history = replicas[0][1].flow.history(tenant, "at-once")
    assert sorted(m["content"] for m in history if m["role"] == "user") == asked
    assert sorted(m["content"] for m in history if m["role"] == "assistant") == sorted(answers)


def test_an_answer_cached_through_one_replica_is_served_by_the_other(replicas, scripted):
    (first, _, _), (second, _, _) = replicas[0], replicas[1]
    question = [{"role": "user", "content": "What are the opening hours of the Oslo shop?"}]
    with (
        openai.OpenAI(base_url=first.url, api_key="key-shared") as a,
        openai.OpenAI(base_url=second.url, api_key="key-shared") as b,
    ):
        answered = a.chat.completions.with_raw_response.create(
            model="ctxproto", messages=question, extra_headers={"x-session-id": "cache-a"}
        )
        asked_upstream = len(scripted.bodies)
        again = b.chat.completions.with_raw_response.create(
            model="ctxproto", messages=question, extra_headers={"x-session-id": "cache-b"}
        )
    assert answered.headers["x-ctxproto-cache"] == "miss"
    assert again.headers["x-ctxproto-cache"] == "hit"
    assert again.parse().choices[0].message.content == answered.parse().choices[0].message.content
    assert len(scripted.bodies) == asked_upstream


def test_a_bad_store_url_is_a_config_error_naming_the_key_but_not_the_password(tmp_path):
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "upstream: {type: openai, base_url: 'http://127.0.0.1:9/v1', model: m}\n"
        "sessions: {store: 'redis://:hunter2@/0'}\n"
    )
    with pytest.raises(ConfigError, match=r"redis://:\*\*\*@/0 names no host") as raised:
        load_serve_config(config)
    assert raised.value.key == "sessions.store" and "hunter2" not in str(raised.value)
    config.write_text(
        "upstream: {type: openai, base_url: 'http://127.0.0.1:9/v1', model: m}\n"
        "sessions: {store: 'postgresql://app:hunter2@db/ctx'}\n"
    )
    with pytest.raises(ConfigError, match="retrieval stores only") as raised:
        load_serve_config(config)
    assert "hunter2" not in str(raised.value)
    stages = [{"type": "summarizer", "init_parameters": {"state_path": "redis://h:port/0"}}]
    with pytest.raises(ConfigError, match="not a valid URL") as raised:
        Pipeline.from_dict({"stages": stages}, source="chat.yaml")
    assert "state_path" in str(raised.value)


def test_a_replica_whose_store_is_down_fails_fast_naming_it_without_the_password():
    url = f"redis://admin:hunter2@127.0.0.1:{free_port()}/0"
    config = ServeConfig.model_validate(
        {
            "upstream": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
            "sessions": {"mode": "stateful", "store": url},
        }
    )
    start = time.monotonic()
    with pytest.raises(StoreError) as raised:
        ProxyState.from_config(config)
    assert time.monotonic() - start < 10
    message = str(raised.value)
    assert "redis://admin:***@127.0.0.1" in message and "hunter2" not in message
    assert not isinstance(raised.value, ConfigError)


def test_health_reports_a_store_that_went_down(replicas, redis_server: RedisServer):
    server = replicas[0][0]
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    redis_server.stop()
    try:
        start = time.monotonic()
        answer = httpx.get(f"{server.base_url}/health", timeout=30)
        chat = httpx.post(
            f"{server.url}/chat/completions",
            json={"model": "ctxproto", "messages": [{"role": "user", "content": "Still there?"}]},
            headers={"authorization": "Bearer key-shared", "x-session-id": "down"},
            timeout=30,
        )
        assert time.monotonic() - start < 20
    finally:
        redis_server.start()
    assert chat.status_code == 503 and chat.json()["error"]["code"] == "store_unavailable"
    assert chat.headers["retry-after"] == "1"
    assert answer.status_code == 503, answer.text
    assert redis_server.url.rsplit("/", 1)[0] in answer.json()["reason"]
    assert httpx.get(f"{server.base_url}/health").status_code == 200
