"""``POST /v1/embeddings``, through the openai client: forwarded as it came, the tenant's
key checked and the upstream's own sent; refused by the bundled runtime."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from ctxproto.serve import ContextFlow, ProxyState, RemoteUpstream, ServerThread, create_app
from ctxproto.serve.config import LimitsConfig, TenantConfig
from ctxproto.serve.envelope import APIError
from ctxproto.serve.tenancy import Tenants
from tests.serve.clients import openai_client
from tests.serve.hung_up import post_and_hang_up
from tests.serve.scraped import metric
from tests.serve.scripted_upstream import Embedded, ScriptedUpstream

UPSTREAM_KEY = "upstream-secret"


@pytest.fixture(scope="module")
def server(scripted: Any) -> Iterator[ServerThread]:
    """A proxy of its own (no pipeline: no model to load) with a key for its upstream,
    tenant ``key-a`` and ``key-c`` (one request at a time), and a small body limit."""
    tenants = {
        "key-a": TenantConfig(id="tenant-a", key="key-a"),
        "key-c": TenantConfig(id="tenant-c", key="key-c", max_concurrent_requests=1),
    }
    state = ProxyState(
        flow=ContextFlow(None),
        upstream=RemoteUpstream(scripted.url, model="scripted", api_key=UPSTREAM_KEY),
        tenants=Tenants(tenants),
        models=["ctxproto", "scripted"],
        limits=LimitsConfig(max_body_bytes=4096),
    )
    with ServerThread(create_app(state)) as running:
        yield running


def _got(scripted: ScriptedUpstream, text: str) -> list[Embedded]:
    """The requests the upstream got whose first input was ``text``."""
    return [e for e in scripted.embedded if e.body["input"][0] == text]


def _answered(server: ServerThread) -> float:
    """Tenant ``key-a``'s embeddings requests answered, as ``/metrics`` counts them."""
    return metric(
        server, "ctxproto_requests_total", route="embeddings", tenant="tenant-a", cache="bypass"
    )


def test_an_embedding_passes_through_with_the_upstreams_key_not_the_tenants(
    server: ServerThread, scripted: ScriptedUpstream
) -> None:
    text = f"a cat {uuid.uuid4().hex}"
    answered = _answered(server)
    raw = openai_client(server, "key-a").embeddings.with_raw_response.create(
        model="text-embedder",
        input=[text, "two dogs"],
        dimensions=3,
        extra_headers={"x-request-id": "rag-7"},
    )
    result = raw.parse()
    # Sent as base64 (the client's default) and decoded by the client as it came.
    assert [d.embedding for d in result.data] == [[len(text), 0.0, 0.5], [8.0, 1.0, 0.5]]
    assert result.model == "text-embedder"
    [got] = _got(scripted, text)
    assert got.authorization == f"Bearer {UPSTREAM_KEY}"  # never key-a
    # The client's model, fields and encoding, not the chat model the proxy serves.
    assert got.body["model"] == "text-embedder"
    assert got.body["dimensions"] == 3 and got.body["encoding_format"] == "base64"
    assert raw.http_response.content == got.answer  # byte for byte
    assert raw.headers["x-request-id"] == "rag-7"
    # No pipeline, session or cache ran: none of the chat answer's x-ctxproto-* headers.
    assert not [name for name in raw.headers if name.startswith("x-ctxproto")]
    assert got.request_id is not None and got.request_id.startswith("rag-7-")
    assert _answered(server) == answered + 1


def test_a_wrong_key_is_a_401_and_reaches_no_upstream(
    server: ServerThread, scripted: ScriptedUpstream
) -> None:
    text = uuid.uuid4().hex
    with pytest.raises(openai.AuthenticationError) as raised:
        openai_client(server, "key-x").embeddings.create(model="text-embedder", input=[text])
    assert raised.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    assert _got(scripted, text) == []


@pytest.mark.parametrize(
    ("status", "answered", "code"),
    [
        (400, 400, "400"),  # the client's request, in the upstream's words
        (404, 404, "404"),  # the client's model: the upstream has none of that name
        (401, 502, "upstream_401"),  # the proxy's own key: not the client's to be told
    ],
)
def test_an_upstream_refusal_is_answered_in_the_envelope_as_for_chat(
    server: ServerThread, scripted: ScriptedUpstream, status: int, answered: int, code: str
) -> None:
    text = f"FAIL {status} 9 {uuid.uuid4().hex}"
    with pytest.raises(openai.APIStatusError) as raised:
        openai_client(server, "key-a").embeddings.create(model="text-embedder", input=[text])
    assert raised.value.status_code == answered
    body = raised.value.body
    assert isinstance(body, dict) and body["code"] == code
    if status != 401:
        assert body["message"] == f"scripted {status}"  # older vLLM's shape, normalised
    assert len(_got(scripted, text)) == 1  # a 4xx is not retried


def test_a_404_page_is_a_502_for_the_proxy_to_fix_its_text_not_passed_on(
    server: ServerThread, scripted: ScriptedUpstream
) -> None:
    # Not an error in OpenAI's JSON shape, so no model's: a web server with no such
    # route, whose page (naming an internal host) is not the tenant's to read.
    with pytest.raises(openai.APIStatusError) as raised:
        openai_client(server, "key-a").embeddings.create(
            model="text-embedder", input=[f"PAGE 404 {uuid.uuid4().hex}"]
        )
    assert raised.value.status_code == 502
    body = raised.value.body
    assert isinstance(body, dict) and body["code"] == "upstream_404"
    assert "base_url needs fixing" in body["message"]
    assert "internal-host" not in raised.value.response.text


def test_an_upstream_with_no_embeddings_route_is_a_502(scripted: Any) -> None:
    # A wrong base_url: the server answers its own plain-text 404 for every path.
    upstream = RemoteUpstream(f"{scripted.url}/nowhere", model="scripted", retries=0)
    state = ProxyState(flow=ContextFlow(None), upstream=upstream)
    with (
        ServerThread(create_app(state, mcp_server=False)) as wrong,
        pytest.raises(openai.APIStatusError) as raised,
    ):
        openai_client(wrong, "unused").embeddings.create(model="text-embedder", input=["x"])
    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "upstream_404"  # type: ignore[index]


def test_an_answer_that_is_not_json_is_a_502(server: ServerThread) -> None:
    # A 200 login page, passed on as application/json, failed the client's parsing.
    with pytest.raises(openai.APIStatusError) as raised:
        openai_client(server, "key-a").embeddings.create(
            model="text-embedder", input=[f"PAGE 200 {uuid.uuid4().hex}"]
        )
    assert raised.value.status_code == 502
    body = raised.value.body
    assert isinstance(body, dict) and body["code"] == "bad_upstream_response"
    assert "text/html" in body["message"] and "internal-host" not in body["message"]


def test_a_503_is_retried_before_the_first_byte(
    server: ServerThread, scripted: ScriptedUpstream
) -> None:
    text = f"FAIL 503 2 {uuid.uuid4().hex}"
    result = openai_client(server, "key-a").embeddings.create(model="text-embedder", input=[text])
    assert result.data[0].embedding == [len(text), 0.0, 0.5]
    assert len(_got(scripted, text)) == 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ["x"]}, "model"),
        ({"model": "text-embedder"}, "input"),
        ({"model": "text-embedder", "input": 7}, "input"),
    ],
)
def test_a_body_without_model_or_input_is_a_400_naming_it(
    server: ServerThread, body: dict[str, object], param: str
) -> None:
    answer = httpx.post(
        f"{server.url}/embeddings", json=body, headers={"authorization": "Bearer key-a"}
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param


def test_a_body_over_the_limit_is_a_413(server: ServerThread) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        openai_client(server, "key-a").embeddings.create(
            model="text-embedder", input=["word " * 1000]
        )
    assert raised.value.status_code == 413


def test_a_tenant_over_its_limit_is_a_429_until_its_request_ends(
    server: ServerThread, scripted: ScriptedUpstream
) -> None:
    text = f"SLOW 1 {uuid.uuid4().hex}"
    first = threading.Thread(
        target=lambda: openai_client(server, "key-c").embeddings.create(
            model="text-embedder", input=[text]
        )
    )
    first.start()
    deadline = time.monotonic() + 5
    while not _got(scripted, text) and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(openai.RateLimitError):
        openai_client(server, "key-c").embeddings.create(model="text-embedder", input=["more"])
    first.join()
    assert openai_client(server, "key-c").embeddings.create(model="text-embedder", input=["more"])


def _limited(scripted: Any) -> ProxyState:
    """A proxy's state of its own: tenant ``key-c``, one request at a time."""
    tenants = {"key-c": TenantConfig(id="tenant-c", key="key-c", max_concurrent_requests=1)}
    upstream = RemoteUpstream(scripted.url, model="scripted", retries=0)
    return ProxyState(flow=ContextFlow(None), upstream=upstream, tenants=Tenants(tenants))


def _slot_free(state: ProxyState) -> bool:
    """Whether tenant ``key-c``'s one slot is free (``enter`` refuses it with a 429)."""
    tenant = state.tenants.authenticate("Bearer key-c")
    try:
        state.tenants.enter(tenant)
    except APIError:
        return False
    state.tenants.leave(tenant)
    return True


def test_a_client_gone_while_it_waits_frees_its_slot_and_is_counted_once(
    scripted: ScriptedUpstream,
) -> None:
    state = _limited(scripted)
    text = f"SLOW 3 {uuid.uuid4().hex}"
    with ServerThread(create_app(state, mcp_server=False), grace_s=0.1) as server:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up, closing its socket
            httpx.post(
                f"{server.url}/embeddings",
                json={"model": "text-embedder", "input": [text]},
                headers={"authorization": "Bearer key-c"},
                timeout=0.5,
            )
        assert _got(scripted, text)
        deadline = time.monotonic() + 2  # before the upstream's answer, 3 s in
        while not _slot_free(state) and time.monotonic() < deadline:
            time.sleep(0.02)
        # The next request is served: no 429 for a slot the gone client held.
        assert openai_client(server, "key-c").embeddings.create(model="text-embedder", input=["x"])
        counted = {
            "gone": metric(server, "ctxproto_errors_total", code="client_closed_request"),
            "answered": metric(
                server,
                "ctxproto_requests_total",
                route="embeddings",
                tenant="tenant-c",
                cache="bypass",
            ),
        }
    assert counted == {"gone": 1.0, "answered": 1.0}


def test_a_shutdown_ends_a_waiting_request_with_a_503_and_frees_its_slot(
    scripted: ScriptedUpstream,
) -> None:
    state = _limited(scripted)
    text = f"SLOW 3 {uuid.uuid4().hex}"
    answers: list[httpx.Response] = []
    server = ServerThread(create_app(state, mcp_server=False), grace_s=0.1).start()
    asking = threading.Thread(
        target=lambda: answers.append(
            httpx.post(
                f"{server.url}/embeddings",
                json={"model": "text-embedder", "input": [text]},
                headers={"authorization": "Bearer key-c"},
                timeout=10,
            )
        )
    )
    asking.start()
    deadline = time.monotonic() + 5
    while not _got(scripted, text) and time.monotonic() < deadline:
        time.sleep(0.02)
    server.close()  # the grace is over before the upstream answers: the cut ends it
    asking.join(timeout=5)
    [answer] = answers
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "server_shutting_down"
    assert _slot_free(state)
    shut = {"code": "server_shutting_down"}
    assert state.metrics.registry.get_sample_value("ctxproto_errors_total", shut) == 1.0


def test_a_client_gone_as_its_answer_is_sent_is_counted_once(scripted: ScriptedUpstream) -> None:
    """Under ASGI 2.4 the server's send raises once the client is gone: counted as
    answered before the answer was sent, such a request was answered and a 499 both."""
    state = _limited(scripted)
    body = {"model": "text-embedder", "input": [f"gone {uuid.uuid4().hex}"]}

    async def hang_up() -> list[Any]:
        try:
            return await post_and_hang_up(
                create_app(state, mcp_server=False),
                body,
                spec_version="2.4",
                headers={"authorization": "Bearer key-c"},
                answer_messages=1,
                path="/v1/embeddings",
            )
        finally:
            await state.aclose()

    sent = asyncio.run(hang_up())
    assert [m["type"] for m in sent] == ["http.response.start"]
    gone = {"code": "client_closed_request"}
    assert state.metrics.registry.get_sample_value("ctxproto_errors_total", gone) == 1.0
    answered = {"route": "embeddings", "tenant": "tenant-c", "cache": "bypass"}
    assert state.metrics.registry.get_sample_value("ctxproto_requests_total", answered) is None
    assert _slot_free(state)


@pytest.mark.models
def test_the_bundled_runtime_refuses_embeddings_with_a_404(local_proxy: ServerThread) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        openai_client(local_proxy, "unused").embeddings.create(model="default", input=["x"])
    body = raised.value.body
    assert isinstance(body, dict) and body["code"] == "embeddings_not_served"
    assert "bundled runtime serves chat completions only" in body["message"]
