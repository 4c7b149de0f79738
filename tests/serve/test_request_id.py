# The openai client types messages as TypedDicts; plain dicts, as users write them, are fine.
# mypy: disable-error-code="arg-type,call-overload,union-attr,index,misc,list-item,attr-defined"
"""Request ids, through the real ``openai`` client: every answer's ``x-request-id``, the
id the upstream gets, and the proxy's log line about each request naming both."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ctxproto.serve import ContextFlow, ProxyState, RemoteUpstream, ServerThread, create_app
from ctxproto.serve.config import LimitsConfig
from tests.serve.clients import openai_client

pytestmark = pytest.mark.models  # the proxy fixture's semantic cache embedder

FRESH = re.compile(r"[0-9a-f]{32}")
NO_CACHE = {"cache-control": "no-cache"}


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{text} {uuid.uuid4().hex[:8]}"}]


async def _boom(request: Request) -> Response:
    raise RuntimeError("a bug in a route mounted beside the proxy's")


@pytest.fixture(scope="module")
def small_proxy(scripted: Any) -> Iterator[ServerThread]:
    """A proxy with no pipeline, bodies over 2000 bytes refused, and a route that fails."""
    state = ProxyState(
        flow=ContextFlow(None),
        upstream=RemoteUpstream(scripted.url, model="scripted", retries=0),
        models=["scripted"],
        limits=LimitsConfig(max_body_bytes=2000),
    )
    app = create_app(state, routes=[Route("/boom", _boom)], mcp_server=False)
    with ServerThread(app) as server:
        yield server


def lines_about(
    caplog: pytest.LogCaptureFixture, request_id: str, servers: int = 1
) -> list[logging.LogRecord]:
    """Each server's line about the request: written once its answer is over, so waited for."""
    deadline = time.monotonic() + 5
    while True:
        lines = [
            r
            for r in caplog.records
            if r.name == "ctxproto.serve" and " answered " in r.getMessage()
            if getattr(r, "request_id", None) == request_id
        ]
        if len(lines) >= servers:
            assert len(lines) == servers, [r.getMessage() for r in lines]
            assert all(r.getMessage().startswith(f"request {request_id}: ") for r in lines)
            return lines
        assert time.monotonic() < deadline, f"no line about request {request_id}"
        time.sleep(0.02)


def line_about(caplog: pytest.LogCaptureFixture, request_id: str) -> logging.LogRecord:
    return lines_about(caplog, request_id)[0]


def test_a_completion_and_a_stream_carry_a_fresh_id_the_upstream_got_too(proxy, scripted):
    client = openai_client(proxy, "key-a")
    answer = client.chat.completions.create(
        model="ctxproto", messages=ask("an id for this"), extra_headers=NO_CACHE
    )
    assert FRESH.fullmatch(answer._request_id)
    assert scripted.request_ids[-1] == answer._request_id
    stream = client.chat.completions.create(
        model="ctxproto", messages=ask("an id for that"), stream=True, extra_headers=NO_CACHE
    )
    assert [c for c in stream]
    streamed = stream.response.headers["x-request-id"]
    assert FRESH.fullmatch(streamed) and streamed != answer._request_id
    assert scripted.request_ids[-1] == streamed


def test_the_clients_own_id_is_answered_and_sent_upstream_made_unique(proxy, scripted, caplog):
    # vLLM takes x-request-id as its engine's request id, and two requests in flight
    # under one id fail there: a client reusing its id (a gateway's retry does) must
    # not hand the upstream one id twice.
    caplog.set_level(logging.INFO, logger="ctxproto.serve")
    mine = "trace-4bf92f35:span/00f067aa.01"
    sent = []
    for _ in range(2):
        answer = openai_client(proxy, "key-a").chat.completions.create(
            model="ctxproto",
            messages=ask("keep my id"),
            extra_headers={**NO_CACHE, "x-request-id": mine},
        )
        assert answer._request_id == mine
        sent.append(scripted.request_ids[-1])
    assert all(re.fullmatch(re.escape(mine) + r"-[0-9a-f]{8}", s) for s in sent), sent
    assert sent[0] != sent[1]
    said = [line.getMessage() for line in lines_about(caplog, mine, servers=2)]
    assert [f"sent upstream as {s}" in line for s, line in zip(sent, said, strict=True)] == [
        True,
        True,
    ]


def test_a_client_id_holding_a_percent_sign_is_still_logged(proxy, scripted, caplog):
    # The id goes into the line's format string: a bare %s took the line's arguments
    # and the line was lost to a logging error.
    caplog.set_level(logging.INFO, logger="ctxproto.serve")
    mine = "%s%d%(x)s-100%"
    answer = openai_client(proxy, "key-a").chat.completions.create(
        model="ctxproto",
        messages=ask("log my odd id"),
        extra_headers={**NO_CACHE, "x-request-id": mine},
    )
    assert answer._request_id == mine
    said = line_about(caplog, mine).getMessage()
    assert said.startswith(f"request {mine}: POST /v1/chat/completions answered 200 in ")


@pytest.mark.parametrize(
    "theirs",
    [b"x" * 129, b"two words", b"tab\there", "caf\u00e9".encode(), b""],
    ids=["too-long", "space", "tab", "not-ascii", "empty"],
)
def test_an_insane_client_id_is_replaced_never_echoed(proxy, scripted, caplog, theirs):
    caplog.set_level(logging.INFO, logger="ctxproto.serve")
    answer = httpx.post(
        f"{proxy.url}/chat/completions",
        json={"messages": ask("replace my id")},
        headers={"authorization": "Bearer key-a", "x-request-id": theirs, **NO_CACHE},
    )
    assert answer.status_code == 200
    ours = answer.headers["x-request-id"]
    assert FRESH.fullmatch(ours)
    assert scripted.request_ids[-1] == ours
    line_about(caplog, ours)
    if theirs:
        assert theirs.decode("latin-1") not in caplog.text


def test_errors_in_the_envelope_carry_an_id(proxy, small_proxy):
    client = openai_client(proxy, "key-a")
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="ctxproto",
            messages=ask("hi"),
            extra_headers={"x-ctxproto-session-mode": "sideways"},
        )
    with pytest.raises(openai.AuthenticationError) as unknown_key:
        openai_client(proxy, "nope").chat.completions.create(model="ctxproto", messages=ask("hi"))
    with pytest.raises(openai.NotFoundError) as no_model:
        client.chat.completions.create(model="gpt-9", messages=ask("hi"))
    with pytest.raises(openai.APIStatusError) as too_large:
        openai_client(small_proxy, "any").chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "long " * 500}]
        )
    assert too_large.value.status_code == 413
    ids = [e.value.request_id for e in (bad, unknown_key, no_model, too_large)]
    assert all(FRESH.fullmatch(i) for i in ids) and len(set(ids)) == 4
    with pytest.raises(openai.BadRequestError) as mine:
        client.chat.completions.create(
            model="ctxproto",
            messages=ask("hi"),
            extra_headers={"x-ctxproto-session-mode": "sideways", "x-request-id": "req-mine"},
        )
    assert mine.value.request_id == "req-mine"


def test_every_route_answers_with_an_id_mcp_and_a_500_too(proxy, small_proxy, caplog):
    for answer in (
        httpx.get(f"{proxy.base_url}/health"),
        httpx.get(f"{proxy.base_url}/metrics"),
        httpx.get(f"{proxy.url}/nowhere"),
        httpx.get(f"{proxy.url}/chat/completions"),  # 405
        httpx.post(f"{proxy.base_url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "x"}),
    ):
        assert FRESH.fullmatch(answer.headers["x-request-id"]), answer.status_code
    kept = httpx.post(f"{proxy.base_url}/mcp", json={}, headers={"x-request-id": "mcp-1"})
    assert kept.status_code == 401 and kept.headers["x-request-id"] == "mcp-1"
    caplog.set_level(logging.INFO, logger="ctxproto.serve")
    failed = httpx.get(f"{small_proxy.base_url}/boom")
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "internal_error"
    request_id = failed.headers["x-request-id"]
    assert FRESH.fullmatch(request_id)
    traceback = [r for r in caplog.records if r.exc_info and "unexpected error" in r.getMessage()]
    assert traceback[0].getMessage().startswith(f"request {request_id}: ")
    assert line_about(caplog, request_id).levelno == logging.WARNING


def test_each_request_is_logged_with_its_id_and_the_upstreams(proxy, caplog):
    caplog.set_level(logging.INFO, logger="ctxproto.serve")
    answer = openai_client(proxy, "key-a").chat.completions.create(
        model="ctxproto", messages=ask("log me"), extra_headers=NO_CACHE
    )
    line = line_about(caplog, answer._request_id)
    assert line.levelno == logging.INFO
    said = line.getMessage()
    assert "POST /v1/chat/completions answered 200 in " in said
    # The upstream's own id, for its logs: kept in ours, never answered as ours.
    assert re.search(r"upstream request scripted-\d+$", said)
    assert not answer._request_id.startswith("scripted-")


def test_an_upstream_failure_is_a_warning_naming_both_ids(proxy, scripted, caplog):
    caplog.set_level(logging.INFO, logger="ctxproto.serve")
    with pytest.raises(openai.InternalServerError) as failed:
        openai_client(proxy, "key-a").chat.completions.create(
            model="ctxproto",
            messages=[{"role": "user", "content": f"FAIL 500 9 {uuid.uuid4().hex}"}],
        )
    request_id = failed.value.request_id
    assert scripted.request_ids[-3:] == [request_id] * 3  # each retry, the same id
    line = line_about(caplog, request_id)
    assert line.levelno == logging.WARNING
    said = line.getMessage()
    assert "answered 502" in said and "error 502 " in said and "scripted 500" in said
    assert re.search(r"upstream request scripted-\d+$", said)


def test_a_stream_that_fails_midway_is_a_warning(proxy, caplog):
    caplog.set_level(logging.INFO, logger="ctxproto.serve")
    stream = openai_client(proxy, "key-a").chat.completions.create(
        model="ctxproto", messages=ask("MIDFAIL"), stream=True, extra_headers=NO_CACHE
    )
    with pytest.raises(openai.APIError):
        list(stream)
    line = line_about(caplog, stream.response.headers["x-request-id"])
    assert line.levelno == logging.WARNING
    assert "answered 200" in line.getMessage() and "error 502 " in line.getMessage()


def test_a_client_that_hangs_up_mid_stream_is_logged_as_such(proxy, caplog):
    caplog.set_level(logging.INFO, logger="ctxproto.serve")
    messages = [{"role": "user", "content": "SLOW 0.2 a b c d e f g h"}]
    stream = openai_client(proxy, "key-a").chat.completions.create(
        model="ctxproto", messages=messages, stream=True, extra_headers=NO_CACHE
    )
    next(iter(stream))
    stream.close()
    line = line_about(caplog, stream.response.headers["x-request-id"])
    assert line.levelno == logging.INFO
    assert "error 499 client_closed_request 'the client left mid-answer'" in line.getMessage()


def test_through_the_runtimes_own_server_both_log_lines_name_one_id(remote_runtime_proxy, caplog):
    """The runtime's server is the same app: it keeps the proxy's id, so its log line
    and the proxy's name the same request."""
    caplog.set_level(logging.INFO, logger="ctxproto.serve")
    answer = openai_client(remote_runtime_proxy, "none").chat.completions.create(
        model="ctxproto", messages=ask("Name a colour."), max_tokens=2
    )
    proxy_line, runtime_line = sorted(
        (r.getMessage() for r in lines_about(caplog, answer._request_id, servers=2)),
        key=lambda said: "upstream request" not in said,
    )
    assert proxy_line.endswith(f"upstream request {answer._request_id}")
    assert "answered 200" in runtime_line and "upstream request" not in runtime_line
