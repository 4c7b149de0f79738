"""``ServerThread``: serving an app from a background thread, as callers and tests do."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ctxproto.budget import Budget
from ctxproto.pipeline import Pipeline
from ctxproto.serve import ContextFlow, ProxyState, RemoteUpstream, ServerThread, create_app
from ctxproto.stages.recency_window import RecencyWindow
from tests.serve.clients import openai_client


async def _pong(request: Request) -> JSONResponse:
    return JSONResponse({"pong": True})


def test_keep_alive_requests_do_not_wait_for_a_delayed_ack():
    """With Nagle's algorithm on, a response sent as headers then body waits for the
    client's delayed ACK: at least 40 ms on Linux for every request after the first."""
    app = Starlette(routes=[Route("/ping", _pong)])
    with ServerThread(app) as server, socket.create_connection((server.host, server.port)) as conn:
        times = []
        for _ in range(10):
            started = time.perf_counter()
            conn.sendall(b"GET /ping HTTP/1.1\r\nhost: test\r\n\r\n")
            received = b""
            while not received.endswith(b'{"pong":true}'):
                chunk = conn.recv(65536)
                assert chunk, "the server closed the connection"
                received += chunk
            times.append((time.perf_counter() - started) * 1000)
    # With the delay every request after the first takes 40+ ms; a loaded machine
    # slows some requests down, but not the fastest of nine.
    assert min(times[1:]) < 30  # ms


def test_close_gives_a_stream_the_grace_then_ends_it_with_an_error_event(scripted: Any) -> None:
    """close() used to set uvicorn's should_exit and wait 10 s: a stream in flight ran on
    past that with the server left behind it, and never got the ``server_shutting_down``
    error event that ``ctxproto serve`` sends once its grace is over."""
    state = ProxyState(  # its own: a cut state refuses every later request
        flow=ContextFlow(Pipeline([RecencyWindow(max_tokens=400)], Budget(max_prompt_tokens=1500))),
        upstream=RemoteUpstream(scripted.url, model="scripted"),
        models=["ctxproto", "scripted"],
    )
    server = ServerThread(create_app(state), grace_s=1.0).start()
    client = openai_client(server, "-")
    closing = threading.Thread(target=server.close)
    try:
        # 100 words 0.2 s apart: 20 s of answer, far past the grace.
        stream = client.chat.completions.create(
            model="ctxproto",
            messages=[{"role": "user", "content": "SLOW 0.2 " + "word " * 100}],
            stream=True,
        )
        next(iter(stream))
        stopped = time.monotonic()
        closing.start()
        with pytest.raises(openai.APIError, match="shutting down"):
            for _ in stream:
                pass
        closing.join(timeout=30)
        took = time.monotonic() - stopped
    finally:
        if not closing.is_alive():
            server.close()  # when the test failed before closing; a second close is harmless
    assert not closing.is_alive()
    assert took < 1.0 + 2.0  # the grace, and a margin for a loaded machine
