# The openai client types messages as TypedDicts; plain dicts, as users write them, are fine.
# mypy: disable-error-code="arg-type,call-overload,union-attr,index,misc,list-item,attr-defined"
"""The remote path: retries, error normalisation, failures mid-stream, dead upstreams."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import httpx
import openai
import pytest

from ctxproto.errors import BackendError
from ctxproto.pipeline import Pipeline
from ctxproto.serve import ContextFlow, ProxyState, RemoteUpstream, ServerThread, create_app
from ctxproto.serve.metrics import CLIENT_CLOSED_REQUEST
from ctxproto.serve.protocol import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChunkChoice,
    DeltaMessage,
)
from ctxproto.serve.upstream import Upstream, UpstreamStream
from ctxproto.tokens import TokenCounter
from tests.serve.clients import openai_client
from tests.serve.hung_up import post_and_hang_up

pytestmark = pytest.mark.models


def ask(proxy, text: str, **options):
    return openai_client(proxy, "key-a").chat.completions.create(
        model="ctxproto", messages=[{"role": "user", "content": text}], **options
    )


def test_503s_are_retried_then_answered(proxy, scripted):
    tag = uuid.uuid4().hex
    answer = ask(proxy, f"FAIL 503 2 {tag}")
    assert scripted.failures[tag] == 2
    assert answer.choices[0].message.content.endswith(f"FAIL 503 2 {tag}")


def test_retries_run_out_as_a_502_in_the_envelope(proxy, scripted):
    tag = uuid.uuid4().hex
    with pytest.raises(openai.APIStatusError) as raised:
        ask(proxy, f"FAIL 503 9 {tag}")
    assert raised.value.status_code == 502
    assert raised.value.body["message"] == "upstream: scripted 503"  # old vLLM shape, normalised
    assert raised.value.response.headers["x-should-retry"] == "true"
    assert scripted.failures[tag] == 3  # one try and two retries


def test_upstream_429_is_passed_on_with_retry_after(proxy):
    with pytest.raises(openai.RateLimitError) as raised:
        ask(proxy, f"FAIL 429 9 {uuid.uuid4().hex}")
    assert raised.value.response.headers["retry-after"] == "0"
    assert raised.value.body["type"] == "rate_limit_error"


@pytest.mark.parametrize("sent", ["inf", "nan", "-5", "1e400"])
def test_a_retry_after_that_is_no_wait_is_not_passed_on(proxy, sent):
    """``inf`` and ``nan`` read as floats: the retry slept ``nan`` or the envelope's
    ``int(inf)`` failed, a 500 outside the envelope in place of the upstream's 429."""
    with pytest.raises(openai.RateLimitError) as raised:
        ask(proxy, f"FAIL 429 9 {uuid.uuid4().hex} {sent}")
    assert "retry-after" not in raised.value.response.headers
    assert raised.value.body["type"] == "rate_limit_error"


def test_upstream_400_keeps_its_status_and_message(proxy):
    with pytest.raises(openai.BadRequestError) as raised:
        ask(proxy, f"FAIL 400 9 {uuid.uuid4().hex}")
    assert raised.value.body["message"] == "scripted 400"
    assert raised.value.body["code"] == "400"


@pytest.mark.parametrize(("status", "answered"), [(504, 502), (429, 429)])
def test_an_error_page_is_not_quoted_to_the_tenant_and_is_logged(proxy, caplog, status, answered):
    # A gateway's 504 or a web server's 429 in front of the model server: a page that
    # may name internal hosts, quoted to the tenant in the message it read.
    with (
        caplog.at_level(logging.WARNING, logger="ctxproto.serve"),
        pytest.raises(openai.APIStatusError) as raised,
    ):
        ask(proxy, f"PAGE {status} {uuid.uuid4().hex}")
    assert raised.value.status_code == answered
    assert raised.value.body["code"] == f"upstream_{status}"
    message = raised.value.body["message"]
    assert f"HTTP {status}" in message and "text/html" in message and "not quoted" in message
    assert "internal-host" not in raised.value.response.text
    assert any("internal-host" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("content_type", "named"),
    [
        ("text/html; charset=utf-8", "(text/html)"),
        ("text/html\x1b[2K\x1b[1G\x1c\x85FORGED line", "(an unreadable content-type)"),
        (None, "(no content-type)"),
    ],
)
def test_an_error_pages_content_type_is_named_only_when_it_reads_as_one(
    caplog, content_type, named
):
    # h11 passes a header's control characters on: a terminal's escapes, and what a
    # log reader splits lines on, went into the tenant's message and the log line.
    from ctxproto.serve.upstream import _upstream_error

    headers = [(b"content-type", content_type.encode("latin-1"))] if content_type else []
    page = httpx.Response(429, headers=headers, content=b"<html>busy</html>")
    with caplog.at_level(logging.WARNING, logger="ctxproto.serve"):
        error = asyncio.run(_upstream_error(page, clients_model=False))
    assert error.status == 429
    assert error.message == f"HTTP 429 with a body that is not JSON {named}, not quoted"
    [line] = [record.getMessage() for record in caplog.records]
    assert named in line and "busy" in line
    assert line.isprintable()


@pytest.mark.parametrize("status", [401, 403, 404])
def test_upstream_refusing_the_proxys_credentials_is_a_502(proxy, status):
    with pytest.raises(openai.APIStatusError) as raised:
        ask(proxy, f"FAIL {status} 9 {uuid.uuid4().hex}")
    assert raised.value.status_code == 502  # not the client's key, model or URL
    assert raised.value.body["code"] == f"upstream_{status}"


def test_upstream_stalling_after_its_headers_is_a_504(scripted):
    upstream = RemoteUpstream(scripted.url, model="scripted", timeout=0.5, retries=0)
    state = ProxyState(flow=ContextFlow(None), upstream=upstream)
    with ServerThread(create_app(state)) as server:
        with pytest.raises(openai.APIStatusError) as raised:
            ask(server, "STALL 3")
        assert raised.value.status_code == 504
        assert raised.value.body["code"] == "upstream_timeout"


def test_failure_mid_stream_ends_the_stream_with_an_error_event(proxy):
    stream = ask(proxy, "MIDFAIL one two three four", stream=True)
    with pytest.raises(openai.APIError, match="scripted failure"):
        for _ in stream:
            pass
    assert ask(proxy, "still serving").choices


def test_a_stream_the_upstream_ends_mid_answer_ends_with_an_error_event(proxy):
    # The upstream closed its body cleanly, but with no finish reason nor [DONE]:
    # the answer is cut, and a client told it was whole would keep half of it.
    stream = ask(proxy, "CUT one two three four", stream=True)
    received = []
    with pytest.raises(openai.APIError, match="ended before"):
        for chunk in stream:
            received += [c.delta.content for c in chunk.choices if c.delta.content]
    assert "".join(received) == "CUT one"
    assert ask(proxy, "still serving").choices


def test_half_a_surrogate_pair_from_the_upstream_is_a_502_in_the_envelope(proxy):
    # Passed on, it failed the proxy's own JSON encoding: a 500 internal_error,
    # or a stream cut off with no error event.
    with pytest.raises(openai.APIStatusError) as raised:
        ask(proxy, f"SURROGATE {uuid.uuid4().hex}")
    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "bad_upstream_response"
    stream = ask(proxy, f"SURROGATE {uuid.uuid4().hex}", stream=True)
    with pytest.raises(openai.APIError, match="not Unicode"):
        list(stream)
    # Written as raw bytes rather than an escape: not UTF-8, the same 502.
    with pytest.raises(openai.APIStatusError) as raised:
        ask(proxy, f"RAWSURROGATE {uuid.uuid4().hex}")
    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "bad_upstream_response"


def test_usage_details_sent_as_null_pass_through(proxy):
    """The openai SDK's own usage objects dump absent details as null: not a 502."""
    plain = ask(proxy, f"NULLDETAILS {uuid.uuid4().hex}")
    assert plain.usage.prompt_tokens == 7 and plain.usage.prompt_tokens_details is None
    streamed = f"NULLDETAILS {uuid.uuid4().hex}"
    chunks = list(ask(proxy, streamed, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).endswith(streamed)
    assert chunks[-1].usage.prompt_tokens == 7


def test_usage_as_the_openai_sdk_dumps_it_passes_through(proxy):
    """Details there with their counts null (``cached_tokens``, the prediction counts),
    as the SDK's usage objects dump what they were not given, were a 502 "invalid
    answer" for every request, plain or streamed; so was a whole answer's null usage."""
    plain = ask(proxy, f"SDKUSAGE {uuid.uuid4().hex}")
    assert plain.usage.prompt_tokens == 7
    assert plain.usage.prompt_tokens_details.cached_tokens == 0
    streamed = f"SDKUSAGE {uuid.uuid4().hex}"
    chunks = list(ask(proxy, streamed, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).endswith(streamed)
    assert chunks[-1].usage.prompt_tokens == 7
    assert chunks[-1].usage.completion_tokens_details.accepted_prediction_tokens == 0
    unsaid = f"NOUSAGE {uuid.uuid4().hex}"
    assert ask(proxy, unsaid).choices[0].message.content.endswith(unsaid)


@pytest.mark.parametrize(
    "count, value",
    [("cached_tokens", "-1"), ("prompt_tokens", "-5"), ("completion_tokens", str(10**400))],
)
def test_a_token_count_no_server_counts_is_a_502_plain_or_streamed(proxy, count, value):
    """A negative count failed the metrics' update after the answer came (prometheus
    counters only go up), and a count too large for a float: a 500 internal_error
    for the upstream's answer, and a stream cut off with no error event."""
    with pytest.raises(openai.APIStatusError) as raised:
        ask(proxy, f"BADUSAGE {count} {value} {uuid.uuid4().hex}")
    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "bad_upstream_response"
    options = {"stream": True, "stream_options": {"include_usage": True}}
    with pytest.raises(openai.APIError, match="broken upstream answer"):
        list(ask(proxy, f"BADUSAGE {count} {value} {uuid.uuid4().hex}", **options))
    assert ask(proxy, "still serving").choices


def test_a_token_count_sent_as_a_numeric_string_is_read_as_its_number(proxy):
    """Lax as pydantic reads numbers: ``"7"`` is 7; ``"seven"`` is a 502, not a 500."""
    assert ask(proxy, f'BADUSAGE prompt_tokens "7" {uuid.uuid4().hex}').usage.prompt_tokens == 7
    with pytest.raises(openai.APIStatusError) as raised:
        ask(proxy, f'BADUSAGE prompt_tokens "seven" {uuid.uuid4().hex}')
    assert raised.value.status_code == 502


def test_an_answer_of_the_wrong_shape_is_described_not_quoted(proxy, caplog):
    """pydantic's message quotes the value it refused: a misconfigured upstream's
    words (an internal host, a user name) reached the tenant inside the 502, and
    the streamed error event, with a link to pydantic's pages."""
    secret = f'"db-7.internal:{uuid.uuid4().hex}"'
    with (
        caplog.at_level(logging.WARNING, logger="ctxproto.serve"),
        pytest.raises(openai.APIStatusError) as raised,
    ):
        ask(proxy, f"BADUSAGE prompt_tokens {secret} {uuid.uuid4().hex}")
    assert raised.value.status_code == 502
    message = raised.value.body["message"]
    assert message == (
        "the upstream sent an invalid answer: usage.prompt_tokens: "
        "Input should be a valid integer, unable to parse string as an integer"
    )
    assert "db-7" not in raised.value.response.text
    assert any("db-7.internal" in record.getMessage() for record in caplog.records)
    options = {"stream": True, "stream_options": {"include_usage": True}}
    with pytest.raises(openai.APIError, match="broken upstream answer: usage") as streamed:
        list(ask(proxy, f"BADUSAGE prompt_tokens {secret} {uuid.uuid4().hex}", **options))
    assert "db-7" not in str(streamed.value)


def _dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/v1"


def test_unreachable_upstream_is_502_and_unready(scripted):
    state = ProxyState(
        flow=ContextFlow(None), upstream=RemoteUpstream(_dead_url(), model="m", retries=1)
    )
    with ServerThread(create_app(state)) as server:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as raised:
            ask(server, "hello")
        assert raised.value.status_code == 502
        assert raised.value.body["code"] == "upstream_unavailable"
        assert time.monotonic() - started < 5
        import httpx

        assert httpx.get(f"{server.base_url}/health").status_code == 503


@pytest.mark.parametrize("userinfo", ["ops:s3cret", "sk-live-s3cret"])
def test_the_upstreams_url_reaches_a_client_without_its_credentials(userinfo):
    """A base_url with credentials (``https://user:secret@host/v1``, basic auth) was
    quoted whole in the 502 of an upstream down and the 504 of one that never
    answered: any tenant read the upstream's password. Then only a password was
    masked, and a token written as the user part (``https://TOKEN@host/v1``) was
    still quoted whole."""
    with socket.socket() as silent:  # takes connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent_url = f"http://{userinfo}@127.0.0.1:{silent.getsockname()[1]}/v1"
        down_url = _dead_url().replace("//", f"//{userinfo}@")
        for url, status in ((down_url, 502), (silent_url, 504)):
            upstream = RemoteUpstream(url, model="m", retries=0, timeout=0.5)
            app = create_app(ProxyState(flow=ContextFlow(None), upstream=upstream))
            with ServerThread(app) as server, pytest.raises(openai.APIStatusError) as raised:
                ask(server, "hello")
            assert raised.value.status_code == status
            message = raised.value.body["message"]
            assert "s3cret" not in message and "//***@127.0.0.1" in message


def test_the_upstreams_credentials_go_as_basic_auth_and_never_into_a_log(caplog):
    """httpx logs every request's URL at INFO: a URL carrying the upstream's
    credentials put them in the proxy's log."""
    import asyncio
    import base64

    import httpx

    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "list", "data": []})

    transport = httpx.MockTransport(answer)
    upstream = RemoteUpstream("http://sk-live-s3cret@upstream/v1", model="m", transport=transport)

    async def check() -> str | None:
        try:
            return await upstream.ready()
        finally:
            await upstream.aclose()

    with caplog.at_level("INFO", logger="httpx"):
        assert asyncio.run(check()) is None
    assert "upstream/v1/models" in caplog.text and "s3cret" not in caplog.text
    (request,) = seen
    basic = base64.b64encode(b"sk-live-s3cret:").decode()
    assert request.headers["authorization"] == f"Basic {basic}"
    assert "s3cret" not in str(request.url)


def test_an_empty_userinfo_leaves_the_api_key_as_the_bearer():
    """``http://:@host`` names no credentials: httpx sent the api_key's bearer for it,
    and reading the bare ``:@`` as credentials replaced it with an empty basic auth."""
    import asyncio

    import httpx

    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "list", "data": []})

    upstream = RemoteUpstream(
        "http://:@upstream/v1", model="m", api_key="KEY", transport=httpx.MockTransport(answer)
    )

    async def check() -> str | None:
        try:
            return await upstream.ready()
        finally:
            await upstream.aclose()

    assert asyncio.run(check()) is None
    (request,) = seen
    assert request.headers["authorization"] == "Bearer KEY"


@pytest.mark.parametrize(
    ("status", "ready"), [(200, True), (404, True), (401, False), (403, False)]
)
def test_an_upstream_refusing_the_proxys_key_is_unready(status, ready):
    # Every request would be a 502 upstream_401: no replica to send traffic to. A 404
    # is a server without /models, which may serve chat completions all the same.
    import asyncio

    import httpx

    transport = httpx.MockTransport(lambda request: httpx.Response(status, json={}))
    upstream = RemoteUpstream("http://upstream/v1", model="m", transport=transport)

    async def check() -> str | None:
        try:
            return await upstream.ready()
        finally:
            await upstream.aclose()

    reason = asyncio.run(check())
    assert (reason is None) == ready
    if not ready:
        assert reason is not None and str(status) in reason


def test_slow_upstream_is_504(scripted):
    state = ProxyState(
        flow=ContextFlow(None),
        upstream=RemoteUpstream(scripted.url, model="m", retries=0, timeout=0.3),
    )
    with ServerThread(create_app(state)) as server:
        stream = ask(server, "SLOW 1 a b", stream=True)
        with pytest.raises(openai.APIError, match="in time"):
            list(stream)


def test_disconnect_closes_the_upstream_request(proxy, scripted):
    before = scripted.chunks_sent
    stream = ask(proxy, "SLOW 0.1 " + "w " * 40, stream=True)
    for index, _ in enumerate(stream):
        if index == 3:
            break
    stream.close()
    time.sleep(1.0)
    sent = scripted.chunks_sent
    time.sleep(0.5)
    assert scripted.chunks_sent == sent  # the upstream stopped sending
    assert sent - before < 30


def _connections_in_use(transport: httpx.AsyncHTTPTransport) -> int:
    """Connections of the upstream's pool lent to a response nobody closed."""
    return sum(not connection.is_idle() for connection in transport._pool.connections)


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_a_client_gone_before_the_stream_started_leaves_no_upstream_connection(
    scripted, spec_version
):
    """The stream's body was never started, so the generator whose ``finally`` closes
    the upstream's response never ran: its connection stayed lent out of the pool,
    one more for every client that hung up while the upstream was being asked."""
    transport = httpx.AsyncHTTPTransport()
    state = ProxyState(
        flow=ContextFlow(None),
        upstream=RemoteUpstream(scripted.url, model="m", retries=0, transport=transport),
    )
    body = {"stream": True, "messages": [{"role": "user", "content": "SLOW 0.2 a b c d"}]}

    async def hang_up() -> tuple[list[Any], int]:
        try:
            sent = await post_and_hang_up(create_app(state), body, spec_version=spec_version)
            return sent, _connections_in_use(transport)
        finally:
            await state.aclose()

    sent, in_use = asyncio.run(hang_up())
    assert not [m for m in sent if m["type"] == "http.response.body" and m["body"]]
    assert in_use == 0
    assert state.tenants._in_flight == {"default": 0}
    assert state.metrics.errors.labels(code=CLIENT_CLOSED_REQUEST)._value.get() == 1


@pytest.mark.parametrize(
    ("stream", "answer_messages"),
    [(False, 0), (False, 1), (True, 0), (True, 3)],
    ids=["plain", "plain-started", "stream-unstarted", "mid-stream"],
)
def test_a_client_gone_as_its_answer_is_written_is_one_line_and_no_traceback(
    scripted: Any, caplog: pytest.LogCaptureFixture, stream: bool, answer_messages: int
) -> None:
    """Under ASGI 2.4 the server's send raises once the client is gone (Starlette's
    stream makes it a ClientDisconnect): it was logged as an unexpected error with its
    traceback, counted as an internal_error, and raised to the server, which logs the
    app's failure once more. It is the client's 499: one INFO line, no traceback."""
    caplog.set_level(logging.INFO)
    transport = httpx.AsyncHTTPTransport()
    state = ProxyState(
        flow=ContextFlow(None),
        upstream=RemoteUpstream(scripted.url, model="m", retries=0, transport=transport),
    )
    content = f"SLOW 0.05 a b c d e f g h {uuid.uuid4().hex}"
    body = {"stream": stream, "messages": [{"role": "user", "content": content}]}

    async def hang_up() -> tuple[list[Any], int]:
        try:
            sent = await post_and_hang_up(
                create_app(state, mcp_server=False),
                body,
                spec_version="2.4",
                answer_messages=answer_messages,
            )
            return sent, _connections_in_use(transport)
        finally:
            await state.aclose()

    sent, in_use = asyncio.run(hang_up())  # raises nothing to the server
    assert len(sent) == answer_messages and in_use == 0  # the upstream's stream closed
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    (line,) = [r for r in caplog.records if "POST /v1/chat/completions answered" in r.message]
    assert line.levelno == logging.INFO
    assert ("answered 200" if answer_messages else "answered 499 (nothing sent") in line.message
    assert "error 499 client_closed_request" in line.message
    counted = {
        sample.labels["code"]: sample.value
        for sample in state.metrics.errors.collect()[0].samples
        if sample.name.endswith("_total")
    }
    assert counted == {CLIENT_CLOSED_REQUEST: 1.0}
    # Not answered too: a plain answer is counted as answered once it is sent.
    samples = state.metrics.requests.collect()[0].samples
    assert [s for s in samples if s.name == "ctxproto_requests_total"] == []
    assert state.tenants._in_flight == {"default": 0}


class _DiskFullUpstream(Upstream):
    """Streams one chunk, then fails as a full disk does: an ``OSError`` of the proxy's
    own side, raised while its client still reads."""

    model = "m"

    async def complete(
        self, body: dict[str, Any], *, tenant: str, cache_messages: int | None = None
    ) -> ChatCompletionResponse:
        raise NotImplementedError("streams only")

    async def stream(
        self, body: dict[str, Any], *, tenant: str, cache_messages: int | None = None
    ) -> UpstreamStream:
        async def chunks() -> AsyncGenerator[ChatCompletionChunk, None]:
            yield ChatCompletionChunk(choices=[ChunkChoice(delta=DeltaMessage(content="half"))])
            raise OSError(errno.ENOSPC, "No space left on device")

        async def end() -> None:
            """Nothing to end: no request was sent anywhere."""

        return UpstreamStream(chunks(), end)

    async def ready(self) -> str | None:
        return None


def test_an_oserror_of_ours_mid_stream_is_a_server_fault_not_a_hang_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under ASGI 2.4 Starlette makes any OSError out of a stream a ClientDisconnect,
    the chunks' own too: taken for the client's hang-up, a fault of ours was one INFO
    line and a stream cut short with no error counted. The client is still there."""
    caplog.set_level(logging.INFO)
    state = ProxyState(flow=ContextFlow(None), upstream=_DiskFullUpstream())
    body = {"stream": True, "messages": [{"role": "user", "content": "hi"}]}
    app = create_app(state, mcp_server=False)
    with pytest.raises(OSError, match="No space left"):  # to the server, as itself
        # A client that reads on: no send raises.
        asyncio.run(post_and_hang_up(app, body, spec_version="2.4", answer_messages=1000))
    [fault] = [r for r in caplog.records if r.exc_info]
    assert fault.levelno == logging.ERROR and isinstance(fault.exc_info[1], OSError)
    counted = {
        sample.labels["code"]: sample.value
        for sample in state.metrics.errors.collect()[0].samples
        if sample.name.endswith("_total")
    }
    assert counted == {"internal_error": 1.0}
    assert state.tenants._in_flight == {"default": 0}


class _BrokenCounter(TokenCounter):
    """A tokenizer that fails on every text."""

    name = "broken"

    def encode(self, text: str) -> list[int]:
        raise BackendError("the tokenizer failed")

    def decode(self, ids: Sequence[int]) -> str:
        raise BackendError("the tokenizer failed")


def test_a_failure_once_the_stream_is_open_closes_it(scripted):
    """The prompt is counted after the upstream accepted the request; a count that
    failed answered an error and left the stream it had opened to nobody, its
    connection lent out of the pool for good."""
    transport = httpx.AsyncHTTPTransport()
    state = ProxyState(
        flow=ContextFlow(Pipeline(counter=_BrokenCounter())),
        upstream=RemoteUpstream(scripted.url, model="m", retries=0, transport=transport),
    )
    body = {"stream": True, "messages": [{"role": "user", "content": "SLOW 0.2 a b c d"}]}

    async def ask_unpipelined() -> tuple[httpx.Response, int]:
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(create_app(state)), base_url="http://proxy"
            ) as client:
                answer = await client.post(
                    "/v1/chat/completions", json=body, headers={"x-ctxproto-pipeline": "off"}
                )
            return answer, _connections_in_use(transport)
        finally:
            await state.aclose()

    answer, in_use = asyncio.run(ask_unpipelined())
    assert answer.status_code == 502
    assert "the tokenizer failed" in answer.json()["error"]["message"]
    assert in_use == 0
    assert state.tenants._in_flight == {"default": 0}


class _ChunksAlone:
    """An async iterator with no ``aclose``, as an upstream written before streams had
    to be closeable may return."""

    def __aiter__(self) -> _ChunksAlone:
        return self

    async def __anext__(self) -> Any:
        raise StopAsyncIteration


class _PlainIteratorUpstream(RemoteUpstream):
    async def stream(  # type: ignore[override]
        self, body: dict[str, Any], *, tenant: str, cache_messages: int | None = None
    ) -> _ChunksAlone:
        return _ChunksAlone()


def test_a_failed_count_after_a_stream_without_aclose_is_still_the_502(scripted):
    """The failure path closed the stream with ``source.aclose()`` where the rest of the
    proxy asks whether it has one: an upstream's plain iterator turned the 502 naming
    the failure into an AttributeError's 500."""
    state = ProxyState(
        flow=ContextFlow(Pipeline(counter=_BrokenCounter())),
        upstream=_PlainIteratorUpstream(scripted.url, model="m", retries=0),
    )
    body = {"stream": True, "messages": [{"role": "user", "content": "hello"}]}

    async def ask_unpipelined() -> httpx.Response:
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(create_app(state)), base_url="http://proxy"
            ) as client:
                return await client.post(
                    "/v1/chat/completions", json=body, headers={"x-ctxproto-pipeline": "off"}
                )
        finally:
            await state.aclose()

    answer = asyncio.run(ask_unpipelined())
    assert answer.status_code == 502
    assert "the tokenizer failed" in answer.json()["error"]["message"]
