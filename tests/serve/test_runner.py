"""``ServerThread``: serving an app from a background thread, as callers and tests do."""

from __future__ import annotations

import socket
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ctxproto.serve import ServerThread


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


def test_a_port_in_use_and_a_host_that_is_no_address_are_one_clear_error_each():
    import pytest

    from ctxproto.errors import BackendError, ConfigError
    from ctxproto.serve.runner import listening_socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BackendError, match=f"cannot listen on 127\\.0\\.0\\.1:{port}"):
            listening_socket("127.0.0.1", port)
    with pytest.raises(ConfigError, match=r"cannot listen on no\.such\.host\.invalid"):
        listening_socket("no.such.host.invalid", 8080)
