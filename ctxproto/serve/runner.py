"""Running an app on uvicorn: in the foreground (the CLI) or from a background thread.

``ServerThread`` is how Python callers and tests serve an app without a
subprocess: ``with ServerThread(app) as server: server.url``. It binds before
returning (port 0 picks a free port) and stops uvicorn gracefully on close.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import uvicorn

from ctxproto.errors import BackendError

__all__ = ["ServerThread", "uvicorn_config"]

# A connection idle this long between requests is closed; bodies have their own
# read timeout in the app (limits.read_timeout_s).
KEEP_ALIVE_S = 5


def uvicorn_config(app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=options.pop("log_level", "warning"),
        timeout_keep_alive=KEEP_ALIVE_S,
        lifespan="on",  # the app closes its upstream and runs the /mcp sessions there
        **options,
    )


class ServerThread:
    """Serves ``app`` on ``host:port`` from a daemon thread."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        # IPPROTO_TCP, not the default 0: asyncio turns Nagle's algorithm off
        # (TCP_NODELAY) only on connections of a socket that says it is TCP. With
        # Nagle on, a response written as headers then body waits for the client's
        # delayed ACK: 40 ms on every keep-alive request after the first.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self._server = uvicorn.Server(uvicorn_config(app, self.host, self.port))
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The API root clients use as ``base_url``: ``http://HOST:PORT/v1``."""
        return f"{self.base_url}/v1"

    def start(self) -> ServerThread:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self._thread.start()
        for _ in range(1000):
            if self._server.started:
                return self
            if not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        raise BackendError(f"the server on {self.base_url} did not start")

    def close(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
