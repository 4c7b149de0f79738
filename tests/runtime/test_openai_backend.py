"""The HTTP backend against a real OpenAI-compatible server on 127.0.0.1 (our engine's)."""

import asyncio
import json
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ctxproto.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigError,
    CtxprotoError,
    UpstreamStatusError,
)
from ctxproto.runtime import Completion, GenerationParams, OpenAIBackend
from ctxproto.serve import OpenAIServer
from ctxproto.serve.envelope import error_payload, to_api_error
from tests.runtime.conftest import chat

pytestmark = pytest.mark.models

GREEDY = GenerationParams(max_new_tokens=8)
MESSAGES = chat("How long is the warranty?")


@pytest.fixture(scope="module")
def server(engine):
    with OpenAIServer(engine) as running:
        yield running


class LocalServer:
    """A real HTTP server on a free port of 127.0.0.1, answering in a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


class FlakyFront(LocalServer):
    """A real HTTP server that answers 503 a few times, then forwards to ``target``."""

    def __init__(self, target: str, failures: int, delay_s: float = 0.0) -> None:
        self.posts = 0
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                front.posts += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay_s)
                if front.posts <= failures:
                    self.send_response(503)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request = urllib.request.Request(
                    f"{target}/chat/completions", data=body, headers=dict(self.headers)
                )
                with urllib.request.urlopen(request) as answer:
                    data = answer.read()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler)


class RawServer(LocalServer):
    """A real HTTP server that answers every POST with ``raw`` as written (status line,
    headers, body) and closes the connection: what a failing or broken server sends."""

    def __init__(self, raw: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self.wfile.write(raw)
                self.close_connection = True

        super().__init__(Handler)


def test_generate_over_http_equals_local(server, engine):
    local = engine.generate(MESSAGES, GREEDY)
    remote = OpenAIBackend(server.url).generate(MESSAGES, GREEDY)
    assert remote.text == local.text
    assert remote.finish_reason == local.finish_reason
    assert remote.metrics.prompt_tokens == len(engine.encode_chat(MESSAGES))
    assert remote.metrics.output_tokens == local.metrics.output_tokens
    assert remote.metrics.cached_tokens > 0  # the server's prefix cache answered
    assert 0 < remote.metrics.ttft_ms <= remote.metrics.latency_ms


def test_ignore_eos_travels_over_http(server, engine):
    """vLLM's and llama.cpp's ``ignore_eos``: the backend sends it, the server honours it."""
    messages = chat("What is 17 times 23?")
    plain = engine.generate(messages, GenerationParams(max_new_tokens=64))
    assert plain.metrics.output_tokens < 64
    fixed = GenerationParams(max_new_tokens=64, ignore_eos=True)
    remote = OpenAIBackend(server.url).generate(messages, fixed)
    assert remote.metrics.output_tokens == 64
    assert remote.finish_reason == "length"
    assert remote.text == engine.generate(messages, fixed).text


def test_a_prediction_travels_over_http_and_its_counts_come_back(server, engine):
    """OpenAI's Predicted Outputs: sent as its content object, counted by the server."""
    messages = chat("Write a haiku about the sea.")
    expected = engine.generate(messages, GREEDY).text
    predicted = GREEDY.model_copy(update={"prediction": expected})
    remote = OpenAIBackend(server.url).generate(messages, predicted)
    assert remote.text == expected
    assert remote.metrics.accepted_prediction_tokens >= remote.metrics.output_tokens // 2


def test_stream_and_async_over_http(server, engine):
    backend = OpenAIBackend(server.url)
    deltas = list(backend.stream(MESSAGES, GREEDY))
    assert len(deltas) > 1
    expected = engine.generate(MESSAGES, GREEDY).text
    assert "".join(deltas) == expected
    assert asyncio.run(backend.agenerate(MESSAGES, GREEDY)).text == expected


def test_plain_json_response_and_routes(server):
    body = {"messages": MESSAGES, "max_tokens": 4, "temperature": 0}
    request = urllib.request.Request(
        f"{server.url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        payload = json.load(answer)
    assert payload["object"] == "chat.completion"
    assert payload["choices"][0]["message"]["role"] == "assistant"
    assert payload["usage"]["completion_tokens"] <= 4
    with urllib.request.urlopen(f"{server.url}/models") as answer:
        assert json.load(answer)["data"][0]["id"] == "default"


def test_bad_request_is_a_config_error(server):
    with pytest.raises(ConfigError, match="messages"):
        OpenAIBackend(server.url).generate([], GREEDY)


def test_connection_refused_is_a_clear_backend_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(BackendError, match="connection refused"):
        OpenAIBackend(f"http://127.0.0.1:{port}/v1").generate(MESSAGES, GREEDY)
    assert time.monotonic() - started < 5  # no retry loop on a dead address


def test_503_is_retried_with_backoff(server, engine):
    front = FlakyFront(server.url, failures=2)
    try:
        completion = OpenAIBackend(front.url, max_retries=3).generate(MESSAGES, GREEDY)
    finally:
        front.close()
    assert front.posts == 3
    assert completion.text == engine.generate(MESSAGES, GREEDY).text


def test_retries_run_out_with_the_status_in_the_error(server):
    front = FlakyFront(server.url, failures=5)
    try:
        with pytest.raises(BackendError, match="HTTP 503"):
            OpenAIBackend(front.url, max_retries=1).generate(MESSAGES, GREEDY)
    finally:
        front.close()
    assert front.posts == 2


def test_timeout_is_a_backend_error(server):
    front = FlakyFront(server.url, failures=10, delay_s=1.5)
    try:
        with pytest.raises(BackendError, match="within"):
            OpenAIBackend(front.url, timeout=0.3, max_retries=0).generate(MESSAGES, GREEDY)
    finally:
        front.close()


def test_invalid_backend_settings():
    with pytest.raises(ConfigError):
        OpenAIBackend("localhost:8000")
    with pytest.raises(ConfigError):
        OpenAIBackend("http://localhost:8000", timeout=0)


def test_cache_salt_keeps_prefixes_apart(server, engine):
    engine.generate(MESSAGES, GREEDY)
    salted = OpenAIBackend(server.url, cache_salt="tenant-z")
    assert salted.generate(MESSAGES, GenerationParams(max_new_tokens=1)).metrics.cached_tokens == 0


def test_stream_ends_with_the_completion_and_its_metrics(server, engine):
    backend = OpenAIBackend(server.url)
    stream = backend.stream(MESSAGES, GREEDY)
    assert stream.completion is None
    text = "".join(stream)
    assert stream.completion is not None
    assert stream.completion.text == text
    assert stream.completion.metrics.prompt_tokens == len(engine.encode_chat(MESSAGES))
    assert stream.completion.metrics.output_tokens > 0


# ----- streams that end without an answer -------------------------------------------------

STARTED = '{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Partial ans"}}]}'


def sse(*events: str) -> bytes:
    """A 200 event stream with ``events``; the body ends where the connection closes."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    return head + b"".join(f"data: {event}\n\n".encode() for event in events)


def completion_from(raw: bytes) -> Completion:
    """What ``OpenAIBackend.generate`` returns from a server that answers ``raw``."""
    served = RawServer(raw)
    try:
        return OpenAIBackend(served.url, timeout=5, max_retries=0).generate(MESSAGES, GREEDY)
    finally:
        served.close()


def generate_from(raw: bytes) -> str:
    """The text ``OpenAIBackend.generate`` returns from a server that answers ``raw``."""
    return completion_from(raw).text


def proxy_error_event(failure: CtxprotoError) -> str:
    """The error event ctxproto's proxy sends when ``failure`` stops an answer mid-stream."""
    return error_payload(to_api_error(failure)).model_dump_json()


@pytest.mark.parametrize(
    ("event", "expected", "status"),
    [
        (  # ctxproto's proxy: type "server_error", a string code
            proxy_error_event(BackendUnavailableError("the engine was closed")),
            UpstreamStatusError,
            500,
        ),
        (  # vLLM: any failure after the stream began
            '{"error": {"message": "the engine was closed", "type": "BadRequestError",'
            ' "param": null, "code": 400}}',
            UpstreamStatusError,
            400,
        ),
        (  # older vLLM: the fields at the top level
            '{"object": "error", "message": "the engine was closed", "type": "InternalServerError",'
            ' "code": 500}',
            UpstreamStatusError,
            500,
        ),
        (
            '{"error": {"message": "the engine was closed", "type": "timeout_error"}}',
            BackendTimeoutError,
            None,
        ),
        (  # Hugging Face TGI: the message itself as "error"
            '{"error": "the engine was closed", "error_type": "generation"}',
            UpstreamStatusError,
            500,
        ),
    ],
    ids=["ctxproto-proxy", "vllm", "vllm-top-level", "timeout-type", "tgi"],
)
def test_an_error_event_mid_stream_fails_with_the_servers_message(event, expected, status):
    with pytest.raises(expected, match="the engine was closed") as caught:
        generate_from(sse(STARTED, event, "[DONE]"))
    if status is not None:
        assert caught.value.status_code == status
        assert "the engine was closed" in caught.value.upstream_message


def test_an_error_event_ends_a_stream_without_a_completion():
    served = RawServer(sse(STARTED, proxy_error_event(BackendError("the model failed"))))
    try:
        stream = OpenAIBackend(served.url, timeout=5, max_retries=0).stream(MESSAGES, GREEDY)
        assert next(stream) == "Partial ans"
        with pytest.raises(BackendError, match="the model failed"):
            next(stream)
    finally:
        served.close()
    assert stream.completion is None


def test_a_stream_closed_before_its_first_delta_closes_the_connection():
    """The request is sent when the stream is made; closing it unread left the answer's
    connection open, so the server went on generating for as long as the caller held
    the stream: a generator closed before it started runs none of its code."""
    hung_up = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.wfile.write(sse(STARTED))  # and more to come, until the client leaves
            self.wfile.flush()
            self.connection.settimeout(5)
            try:
                if self.connection.recv(1) == b"":
                    hung_up.set()
            except OSError:
                pass
            self.close_connection = True

    served = LocalServer(Handler)
    try:
        stream = OpenAIBackend(served.url, timeout=5, max_retries=0).stream(MESSAGES, GREEDY)
        stream.close()
        assert hung_up.wait(4)
    finally:
        served.close()
    assert stream.completion is None


def test_a_stream_that_just_stops_is_no_answer():
    with pytest.raises(BackendUnavailableError, match="ended early"):
        generate_from(sse(STARTED))


def test_a_stream_cut_inside_an_event_ended_early():
    # The connection closed in the middle of a data line (no chunked framing to tell):
    # the cut event is no broken answer of the server's, it is a stream that stopped.
    for cut in (b'data: {"choices": [{"ind', b'data: {"choices": [{"delta": {"content": "caf\xc3'):
        with pytest.raises(BackendUnavailableError, match="ended early"):
            generate_from(sse(STARTED) + cut)
        with pytest.raises(BackendUnavailableError, match="ended early"):
            generate_from(sse() + cut)
    assert generate_from(sse(STARTED) + b"data: [DONE]") == "Partial ans"


def test_a_last_event_the_connection_closed_right_after_is_read():
    """A server that closes the connection after its final event may leave out the event's
    newline; a last line that is whole JSON was taken for one cut short, and the answer
    finished by it failed as a stream that ended early, its usage counts lost."""
    finished = '{"choices": [{"index": 0, "delta": {"content": "wer"}, "finish_reason": "stop"}]}'
    assert generate_from(sse(STARTED) + f"data: {finished}".encode()) == "Partial answer"
    usage = '{"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}'
    completion = completion_from(sse(STARTED, finished) + f"data:{usage}".encode())
    assert completion.text == "Partial answer"
    assert (completion.metrics.prompt_tokens, completion.metrics.output_tokens) == (7, 2)
    assert generate_from(sse(STARTED, finished) + b"data:[DONE]") == "Partial answer"


@pytest.mark.parametrize(
    "event",
    [
        "[1, 2]",
        '"keep-alive"',
        '{"choices": "none"}',
        '{"choices": ["x"]}',
        '{"choices": [{"index": 0, "delta": "x"}]}',
        '{"choices": [{"index": 0, "delta": {"content": 5}}]}',
        '{"choices": [], "usage": "none"}',
        '{"choices": [], "usage": {"prompt_tokens": "many"}}',
        '{"choices": [], "usage": {"prompt_tokens_details": []}}',
    ],
)
def test_an_event_of_the_wrong_shape_is_a_broken_stream(event):
    # A BackendError like any other failure of the server, never an AttributeError or
    # TypeError escaping past callers that catch BackendError.
    finished = '{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}'
    with pytest.raises(BackendError, match="broken response stream"):
        generate_from(sse(STARTED, event, finished, "[DONE]"))


def test_a_stream_ends_with_a_finish_reason_or_done():
    finished = '{"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}'
    completion = completion_from(sse(STARTED, finished))  # no [DONE]: the finish reason is enough
    assert (completion.text, completion.finish_reason) == ("Partial ans", "length")
    assert generate_from(sse(STARTED, "[DONE]")) == "Partial ans"


def test_a_broken_http_exchange_is_a_backend_unavailable_error():
    with pytest.raises(BackendUnavailableError, match="BadStatusLine"):
        generate_from(b"not http at all\r\n\r\n")
    cut_in_a_chunk = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b'40\r\ndata: {"cho'
    )
    with pytest.raises(BackendUnavailableError, match="IncompleteRead"):
        generate_from(cut_in_a_chunk)


def test_a_base_url_with_a_bad_port_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        OpenAIBackend("http://127.0.0.1:port/v1", max_retries=0).generate(MESSAGES, GREEDY)
    assert caught.value.key == "base_url"


def test_a_server_that_does_not_stream_answers_with_its_json_completion():
    answer = {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Two years."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": None},
    }
    body = json.dumps(answer).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
    raw = head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    served = RawServer(raw)
    try:
        backend = OpenAIBackend(served.url, timeout=5, max_retries=0)
        completion = backend.generate(MESSAGES, GREEDY)
        assert list(backend.stream(MESSAGES, GREEDY)) == ["Two years."]
    finally:
        served.close()
    assert (completion.text, completion.finish_reason) == ("Two years.", "stop")
    assert (completion.metrics.prompt_tokens, completion.metrics.output_tokens) == (12, 3)
    failed = json.dumps({"error": {"message": "model overloaded", "code": 503}}).encode()
    with pytest.raises(UpstreamStatusError, match="model overloaded"):
        generate_from(head + f"Content-Length: {len(failed)}\r\n\r\n".encode() + failed)


def json_answer(status: str, body: object) -> bytes:
    """An answer with status line ``status`` and ``body`` as JSON, then the connection closes."""
    data = json.dumps(body).encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n"
    return head.encode() + f"Content-Length: {len(data)}\r\n\r\n".encode() + data


def test_an_error_given_as_a_string_keeps_the_servers_message():
    # TGI's envelope, on a status and in a whole answer: the message, not the reason phrase.
    tgi = {"error": "Input validation error: inputs too long", "error_type": "validation"}
    with pytest.raises(ConfigError, match="inputs too long"):
        generate_from(json_answer("422 Unprocessable Entity", tgi))
    with pytest.raises(UpstreamStatusError, match="inputs too long") as caught:
        generate_from(json_answer("500 Internal Server Error", tgi))
    assert caught.value.upstream_message == tgi["error"]
    with pytest.raises(UpstreamStatusError, match="inputs too long"):
        generate_from(json_answer("200 OK", tgi))


def test_an_answer_that_is_no_event_stream_says_so():
    page = b"<html>welcome</html>"
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n" + page
    with pytest.raises(BackendError, match=r"not an event stream.*text/html"):
        generate_from(raw)


def test_usage_numbers_sent_as_null_count_as_zero():
    finished = (
        '{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],'
        ' "usage": {"prompt_tokens": null, "completion_tokens": null}}'
    )
    completion = completion_from(sse(STARTED, finished, "[DONE]"))
    assert completion.text == "Partial ans"
    assert (completion.metrics.prompt_tokens, completion.metrics.output_tokens) == (0, 0)


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        ("2", 2.0, 2.0),
        ("-5", 0.0, 0.0),  # never a negative sleep
        ("nan", 0.25, 0.25),  # unusable: exponential
        ("inf", 0.25, 0.25),
        ("3600", 8.0, 8.0),  # capped
        ("soon", 0.25, 0.25),
    ],
)
def test_retry_after_is_read_safely(retry_after, low, high):
    from ctxproto.runtime.backends.openai import _backoff

    assert low <= _backoff(0, retry_after) <= high


def test_retry_after_as_an_http_date():
    import email.utils

    from ctxproto.runtime.backends.openai import _backoff

    in_three = email.utils.formatdate(time.time() + 3, usegmt=True)
    assert 1.0 <= _backoff(0, in_three) <= 3.0
    past = email.utils.formatdate(time.time() - 60, usegmt=True)
    assert _backoff(0, past) == 0.0
