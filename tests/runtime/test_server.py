"""The runtime's HTTP server refuses bad requests at once, in the envelope, and keeps serving.

Each test is a regression test of a case the former standard-library server got
wrong: a closed connection instead of a 400, reading past the size cap, threads
held by stalled clients, misleading answers to chunked or non-JSON bodies.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from ctxproto.serve import OpenAIServer
from ctxproto.serve.config import LimitsConfig

pytestmark = pytest.mark.models

LIMIT = 16 << 20
HELLO = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def server(engine):
    with OpenAIServer(
        engine, limits=LimitsConfig(max_body_bytes=LIMIT, read_timeout_s=1.0)
    ) as running:
        yield running


def raw_request(server, head: bytes, body: bytes = b"", *, wait_s: float = 10.0) -> bytes:
    """Send bytes on a socket; what comes back before the server answers or closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait_s) as conn:
        conn.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer or _incomplete(answer):
            data = conn.recv(65536)
            if not data:
                break
            answer += data
        return answer


def _incomplete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) < int(line.split(b":")[1])
    return False


def post(server, content: bytes, **headers: str) -> httpx.Response:
    headers.setdefault("content-type", "application/json")
    return httpx.post(
        f"{server.url}/chat/completions", content=content, headers=headers, timeout=60
    )


def assert_envelope(answer: httpx.Response, status: int, param: str | None = None) -> None:
    assert answer.status_code == status
    error = answer.json()["error"]
    assert isinstance(error["message"], str) and isinstance(error["code"], str)
    if param is not None:
        assert error["param"] == param


def assert_still_serving(server) -> None:
    assert post(server, json.dumps(HELLO).encode()).status_code == 200


def engine_idle(engine) -> bool:
    return not len(engine._batch) and not engine._waiting


# -- 14: proper 400s, validated before the engine sees anything -------------------------


def test_message_without_content_is_400(server):
    assert_envelope(post(server, b'{"messages": [{"role": "user"}]}'), 400, "messages[0]")
    assert_still_serving(server)


def test_stream_options_not_an_object_is_400_and_nothing_is_generated(server, engine):
    body = {**HELLO, "stream": True, "stream_options": "yes", "max_tokens": 200}
    assert_envelope(post(server, json.dumps(body).encode()), 400, "stream_options")
    assert engine_idle(engine)
    assert_still_serving(server)


def test_deeply_nested_body_is_400(server):
    depth = 200_000
    answer = post(server, b"[" * depth + b"]" * depth)
    assert_envelope(answer, 400)
    assert_still_serving(server)


# -- 15: bad lengths at once, size before tokenizing -------------------------------------


def test_negative_content_length_is_refused_at_once(server):
    started = time.monotonic()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: -1\r\n\r\n"
    )
    answer = raw_request(server, head, b"x" * 1000)
    assert answer.startswith(b"HTTP/1.1 400")
    assert time.monotonic() - started < 2
    assert_still_serving(server)


def test_declared_oversize_is_413_without_reading(server):
    started = time.monotonic()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {LIMIT + 1}\r\n\r\n".encode()
    )
    answer = raw_request(server, head)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"request_too_large"' in answer
    assert time.monotonic() - started < 2


def test_huge_prompt_is_refused_before_tokenizing(server):
    text = "word " * ((14 << 20) // 5)
    body = json.dumps({"messages": [{"role": "user", "content": text}]}).encode()
    started = time.monotonic()
    answer = post(server, body)
    assert_envelope(answer, 400, "messages")
    assert "context window" in answer.json()["error"]["message"]
    assert time.monotonic() - started < 5  # 18.7 s when it was tokenized first
    assert_still_serving(server)


# -- 16: stalled clients time out; they hold no thread ------------------------------------


def test_stalled_body_is_408_and_others_are_served_meanwhile(server):
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as stalled:
        stalled.sendall(head + b'{"messages"')
        assert_still_serving(server)
        answer = stalled.recv(65536)
        while b"\r\n\r\n" not in answer or _incomplete(answer):
            more = stalled.recv(65536)
            if not more:
                break
            answer += more
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"request_timeout"' in answer


# -- 17: chunked bodies accepted (bounded), non-JSON refused ------------------------------


def test_chunked_body_is_accepted(server):
    def pieces() -> Iterator[bytes]:
        data = json.dumps(HELLO).encode()
        yield data[:10]
        yield data[10:]

    answer = httpx.post(
        f"{server.url}/chat/completions",
        content=pieces(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert answer.status_code == 200
    assert answer.json()["object"] == "chat.completion"


def test_chunked_body_over_the_limit_is_413(server):
    def pieces() -> Iterator[bytes]:
        for _ in range(17):
            yield b" " * (1 << 20)

    answer = httpx.post(
        f"{server.url}/chat/completions",
        content=pieces(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert_envelope(answer, 413)


def test_text_plain_is_415(server):
    assert_envelope(post(server, json.dumps(HELLO).encode(), **{"content-type": "text/plain"}), 415)
    assert_still_serving(server)
