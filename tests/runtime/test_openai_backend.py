"""The HTTP backend against a real OpenAI-compatible server on 127.0.0.1 (our engine's)."""

import asyncio
import json
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ctxproto.errors import BackendError, ConfigError
from ctxproto.runtime import GenerationParams, OpenAIBackend
from ctxproto.serve import OpenAIServer
from tests.runtime.conftest import chat

pytestmark = pytest.mark.models

GREEDY = GenerationParams(max_new_tokens=8)
MESSAGES = chat("How long is the warranty?")


@pytest.fixture(scope="module")
def server(engine):
    with OpenAIServer(engine) as running:
        yield running


class FlakyFront:
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

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


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
