"""The exception tree, and the backend failures it lets callers tell apart.

The backend cases run ``OpenAIBackend`` against real sockets on 127.0.0.1: a port
nobody listens on, a server that answers 503, and one that accepts and stalls.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import ctxproto
from ctxproto.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    BudgetError,
    ConfigError,
    CtxprotoError,
    DatasetError,
    ModelNotAvailableError,
    OperationalError,
    StoreError,
    StoreUnavailableError,
    UpstreamStatusError,
    UsageError,
)
from ctxproto.runtime import OpenAIBackend

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize(
    ("error", "parent"),
    [
        (UsageError, CtxprotoError),
        (OperationalError, CtxprotoError),
        (ConfigError, UsageError),
        (DatasetError, UsageError),
        (BudgetError, OperationalError),
        (ModelNotAvailableError, OperationalError),
        (StoreError, OperationalError),
        (StoreUnavailableError, StoreError),
        (BackendError, OperationalError),
        (BackendTimeoutError, BackendError),
        (BackendUnavailableError, BackendError),
        (UpstreamStatusError, BackendError),
    ],
)
def test_tree_shape(error: type[Exception], parent: type[Exception]) -> None:
    assert error.__mro__[1] is parent


def test_usage_and_operational_branches_are_disjoint() -> None:
    usage = {e for e in vars(ctxproto.errors).values() if isinstance(e, type)}
    for error in usage:
        if issubclass(error, CtxprotoError):
            assert not (issubclass(error, UsageError) and issubclass(error, OperationalError))


def test_every_error_is_exported_from_the_package() -> None:
    for name in ctxproto.errors.__all__:
        assert getattr(ctxproto, name) is getattr(ctxproto.errors, name)


def test_compatible_builtin_bases_are_kept() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(BudgetError, ValueError)
    assert issubclass(ModelNotAvailableError, ImportError)


def test_config_error_renders_file_key_and_expected() -> None:
    error = ConfigError("must be positive", file="p.yaml", key="budget", expected="an int")
    assert str(error) == "p.yaml: key 'budget': must be positive (expected an int)"


def test_refused_connection_is_backend_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nobody listens on the port now: the kernel refuses the connection.
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=5)
    with pytest.raises(BackendUnavailableError, match="connection refused"):
        backend.generate(MESSAGES)


class _StatusServer:
    """A real HTTP server that answers every POST with ``status`` and an OpenAI error body."""

    def __init__(self, status: int, message: str) -> None:
        self.posts = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                owner.posts += 1
                self.rfile.read(int(self.headers["Content-Length"]))
                body = json.dumps({"error": {"message": message}}).encode()
                self.send_response(status)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def overloaded() -> Iterator[_StatusServer]:
    server = _StatusServer(503, "the model is overloaded")
    yield server
    server.close()


def test_upstream_status_carries_code_and_message(overloaded: _StatusServer) -> None:
    backend = OpenAIBackend(overloaded.url, max_retries=1, timeout=5)
    with pytest.raises(UpstreamStatusError) as caught:
        backend.generate(MESSAGES)
    assert caught.value.status_code == 503
    assert caught.value.upstream_message == "the model is overloaded"
    assert "503" in str(caught.value)
    assert overloaded.posts == 2  # retried once, then gave up


def test_bad_request_from_upstream_is_a_config_error() -> None:
    server = _StatusServer(400, "max_tokens is too large")
    try:
        with pytest.raises(ConfigError, match="max_tokens is too large"):
            OpenAIBackend(server.url, max_retries=3, timeout=5).generate(MESSAGES)
        assert server.posts == 1  # a caller's mistake is not retried
    finally:
        server.close()


@pytest.fixture
def stalling_server() -> Iterator[str]:
    """Accepts connections and reads the request, but never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def test_stalled_server_is_backend_timeout(stalling_server: str) -> None:
    backend = OpenAIBackend(stalling_server, max_retries=0, timeout=0.3)
    start = time.perf_counter()
    with pytest.raises(BackendTimeoutError, match=r"within 0\.3 s"):
        backend.generate(MESSAGES)
    assert time.perf_counter() - start < 5
