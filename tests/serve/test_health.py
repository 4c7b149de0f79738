"""``GET /health`` names every store a replica uses and answers in bounded time.

A proxy with its sessions, summaries and semantic cache on a Redis server of
this module's own (so it can be stopped and frozen without disturbing other
tests) and its retrieval store on the session's PostgreSQL. Both URLs carry a
password, which no answer may show. A second proxy, with no pipeline, has the
stores its MCP endpoint opens itself: ``mcp.cache`` on that Redis server and
``mcp.knowledge`` folders.

A chat request while a store is down is a 503 with ``retry-after`` (code
``store_unavailable``), which the real OpenAI client sees as a status error it
may retry, and answered again once the store is back.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from ctxproto.bench.embedded_postgres import EmbeddedPostgres
from ctxproto.bench.redis_server import RedisServer
from ctxproto.documents import Document
from ctxproto.retrieval import KnowledgeBase
from ctxproto.serve import ProxyState, ServerThread, create_app
from ctxproto.serve.config import ServeConfig
from ctxproto.serve.health import STILL_RUNNING, STORE_TIMEOUT_S
from tests.serve.clients import openai_client
from tests.serve.scraped import metric
from tests.servers_redis import running_redis

pytestmark = pytest.mark.models

PASSWORD = "hunter2"


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("valkey-health")) as server:
        yield server


def with_password(url: str, user: str) -> str:
    """``url`` with a user and password; these servers accept any password for it."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{PASSWORD}@{rest.split('@')[-1]}"


@pytest.fixture(scope="module")
def proxy(
    redis: RedisServer, postgres: EmbeddedPostgres, scripted: Any, embedder: Any
) -> Iterator[ServerThread]:
    store_url = with_password(redis.url, "default")
    knowledge = f"{with_password(postgres.url, 'postgres')}?table=t_{uuid.uuid4().hex[:12]}"
    base = KnowledgeBase(knowledge, embedder=embedder)
    base.add_documents([Document(id="hours", text="The shop opens at nine.", source="h.md")])
    base.save()
    config = ServeConfig.model_validate(
        {
            "pipeline": {
                "stages": [
                    {"type": "retriever", "init_parameters": {"store": knowledge}},
                    {"type": "semantic_cache", "init_parameters": {"path": f"{store_url}#h"}},
                    {
                        "type": "summarizer",
                        "init_parameters": {"model": None, "state_path": store_url},
                    },
                ]
            },
            "upstream": {"type": "openai", "base_url": scripted.url, "model": "scripted"},
            "sessions": {"store": store_url},
        }
    )
    state = ProxyState.from_config(config)
    state.flow.warm_up()
    with ServerThread(create_app(state)) as server:
        yield server


def health(server: ServerThread) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    answer = httpx.get(f"{server.base_url}/health", timeout=60)
    return answer, time.monotonic() - start


def health_while(
    server: ServerThread, stop: Callable[[], None], restart: Callable[[], None]
) -> tuple[httpx.Response, float]:
    """``health(server)`` between ``stop()`` and ``restart()`` of a store's server."""
    stop()
    try:
        return health(server)
    finally:
        restart()


def recovers(server: ServerThread) -> None:
    deadline = time.monotonic() + 30
    while health(server)[0].status_code != 200:
        assert time.monotonic() < deadline, "the stores never answered again"
        time.sleep(0.2)


def test_every_store_is_listed_by_its_url_without_the_password(proxy):
    answer, _ = health(proxy)
    assert answer.status_code == 200, answer.text
    stores = answer.json()["stores"]
    assert [name.split()[0] for name in stores] == [
        "sessions",
        "retriever",
        "semantic_cache",
        "summarizer",
    ]
    assert set(stores.values()) == {"ok"}
    assert "default:***@127.0.0.1" in answer.text and "postgres:***@127.0.0.1" in answer.text
    assert PASSWORD not in answer.text


def test_a_stopped_redis_is_a_503_naming_it_at_once(proxy, redis: RedisServer):
    answer, took = health_while(proxy, redis.stop, redis.start)  # nothing listens on its port
    assert answer.status_code == 503 and took < STORE_TIMEOUT_S + 3
    body = answer.json()
    down = {name.split()[0] for name, state in body["stores"].items() if state != "ok"}
    assert down == {"sessions", "semantic_cache", "summarizer"}
    assert f"redis://default:***@127.0.0.1:{redis.port}/0" in body["reason"]
    assert "Connection refused" in body["reason"] and PASSWORD not in answer.text
    recovers(proxy)  # the pools reconnect by themselves


def test_a_frozen_redis_is_reported_within_the_bound_not_waited_for(proxy, redis: RedisServer):
    assert redis.process is not None
    process = redis.process
    # Frozen, it accepts connections and never answers.
    answer, took = health_while(
        proxy,
        lambda: process.send_signal(signal.SIGSTOP),
        lambda: process.send_signal(signal.SIGCONT),
    )
    assert answer.status_code == 503 and took < STORE_TIMEOUT_S + 3
    assert f"no answer within {STORE_TIMEOUT_S:g} s" in answer.json()["reason"]
    assert answer.json()["stores"][next(iter(answer.json()["stores"]))] != "ok"
    recovers(proxy)


def test_a_hung_store_gets_no_second_check_while_its_first_still_waits(proxy, redis: RedisServer):
    """A poll every second against a hung server must not pile up threads and connections."""
    assert redis.process is not None
    process = redis.process
    process.send_signal(signal.SIGSTOP)
    try:
        first, _ = health(proxy)
        second, took = health(proxy)  # the first poll's Redis checks are still waiting
    finally:
        process.send_signal(signal.SIGCONT)
    hung = {name for name, state in first.json()["stores"].items() if state != "ok"}
    assert hung and first.status_code == 503
    assert {name: second.json()["stores"][name] for name in hung} == dict.fromkeys(
        hung, STILL_RUNNING
    )
    assert took < STORE_TIMEOUT_S  # nothing waited for: the answer is known
    recovers(proxy)


def test_a_stopped_postgres_is_a_503_naming_it(proxy, postgres: EmbeddedPostgres):
    answer, took = health_while(proxy, postgres.stop, postgres.start)
    assert answer.status_code == 503 and took < STORE_TIMEOUT_S + 3
    retriever = next(v for k, v in answer.json()["stores"].items() if k.startswith("retriever"))
    assert retriever.startswith("PostgreSQL at postgresql://postgres:***@127.0.0.1")
    assert PASSWORD not in answer.text
    recovers(proxy)  # the pool reconnects in the background, with a backoff


QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "When does the shop open?"}
]


def unavailable(server: ServerThread, **request: Any) -> openai.APIStatusError:
    """The error the OpenAI client (no retries of its own) gets for one chat request."""
    client = openai_client(server, "any-key")
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="ctxproto", messages=QUESTION, **request)
    return raised.value


def test_a_chat_while_redis_is_down_is_a_503_the_client_retries_after_it_is_back(
    proxy, redis: RedisServer
):
    """Was a 500 ``store_error``, as for a corrupt store: load balancers and the OpenAI
    client retry 502/503/504 (honouring ``retry-after``), not 500."""
    failed = metric(proxy, "ctxproto_errors_total", code="store_unavailable")
    redis.stop()
    try:
        plain = unavailable(proxy, extra_headers={"x-session-id": "outage"})
        streamed = unavailable(proxy, stream=True, extra_headers={"x-session-id": "outage"})
    finally:
        redis.start()
    for error in (plain, streamed):
        assert error.status_code == 503 and error.code == "store_unavailable", error.body
        assert error.response.headers["retry-after"] == "1"
        assert error.response.headers["x-should-retry"] == "true"
        assert f"redis://default:***@127.0.0.1:{redis.port}/0" in error.message
        assert PASSWORD not in error.response.text
    assert metric(proxy, "ctxproto_errors_total", code="store_unavailable") == failed + 2
    client = openai_client(proxy, "any-key")
    answer = client.chat.completions.create(
        model="ctxproto", messages=QUESTION, extra_headers={"x-session-id": "outage"}
    )
    assert answer.choices[0].message.content

    # A client that retries, as the OpenAI client does by default, rides the outage out.
    redis.stop()
    back = threading.Timer(0.5, redis.start)
    back.start()
    try:
        with openai.OpenAI(base_url=proxy.url, api_key="any-key", max_retries=5) as retrying:
            answer = retrying.chat.completions.create(
                model="ctxproto", messages=QUESTION, extra_headers={"x-session-id": "outage"}
            )
    finally:
        back.join()
    assert answer.choices[0].message.content
    assert metric(proxy, "ctxproto_errors_total", code="store_unavailable") > failed + 2


def test_a_chat_while_postgres_is_down_is_a_503_and_answered_once_it_is_back(
    proxy, postgres: EmbeddedPostgres
):
    """The retriever's pool has no connection to lend (``PoolTimeout``): a 503 too."""
    postgres.stop()
    try:
        error = unavailable(proxy)
    finally:
        postgres.start()
    assert error.status_code == 503 and error.code == "store_unavailable", error.body
    assert error.response.headers["retry-after"] == "1"
    assert "PostgreSQL at postgresql://postgres:***@127.0.0.1" in error.message
    recovers(proxy)
    answer = openai_client(proxy, "any-key").chat.completions.create(
        model="ctxproto", messages=QUESTION
    )
    assert answer.choices[0].message.content


def test_an_upstream_that_never_answers_is_reported_within_the_bound(tmp_path: Path):
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the backlog), never answers
    try:
        port = silent.getsockname()[1]
        config = ServeConfig.model_validate(
            {
                "upstream": {
                    "type": "openai",
                    "base_url": f"http://127.0.0.1:{port}/v1",
                    "model": "m",
                },
                "sessions": {"store": str(tmp_path / "sessions")},
            }
        )
        with ServerThread(create_app(ProxyState.from_config(config))) as server:
            answer, took = health(server)
    finally:
        silent.close()
    assert answer.status_code == 503 and took < STORE_TIMEOUT_S + 3
    assert answer.json()["upstream"] == f"upstream: no answer within {STORE_TIMEOUT_S:g} s"


@pytest.fixture(scope="module")
def mcp_proxy(
    redis: RedisServer, scripted: Any, embedder: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    folder = tmp_path_factory.mktemp("mcp-stores")
    config = ServeConfig.model_validate(
        {
            "upstream": {"type": "openai", "base_url": scripted.url, "model": "scripted"},
            "sessions": {"store": str(folder / "sessions")},
            "mcp": {
                "cache": f"{with_password(redis.url, 'default')}#mcp",
                "knowledge": str(folder / "knowledge-{tenant}"),
            },
        }
    )
    with ServerThread(create_app(ProxyState.from_config(config))) as server:
        yield server


def test_the_mcp_endpoints_own_stores_are_checked_and_a_stopped_one_is_named(
    mcp_proxy, redis: RedisServer
):
    answer, _ = health(mcp_proxy)
    assert answer.status_code == 200, answer.text
    stores = answer.json()["stores"]
    cache = f"redis://default:***@127.0.0.1:{redis.port}/0#mcp"
    assert [name.split()[0] for name in stores] == ["sessions", "mcp.knowledge", "mcp.cache"]
    assert f"mcp.cache {cache}" in stores and set(stores.values()) == {"ok"}
    assert next(n for n in stores if n.startswith("mcp.knowledge")).endswith("-{tenant}")
    answer, took = health_while(mcp_proxy, redis.stop, redis.start)
    assert answer.status_code == 503 and took < STORE_TIMEOUT_S + 3
    body = answer.json()
    assert [name for name, state in body["stores"].items() if state != "ok"] == [
        f"mcp.cache {cache}"
    ]
    assert f"mcp.cache {cache}: " in body["reason"] and PASSWORD not in answer.text
    recovers(mcp_proxy)
