"""Running an app on uvicorn: in the foreground (the CLI) or from a background thread.

``ServerThread`` is how Python callers and tests serve an app without a
subprocess: ``with ServerThread(app) as server: server.url``. It binds before
returning (port 0 picks a free port). Both it and the CLI run a
``GracefulServer``: told to stop, it gives requests in flight a bounded grace,
then ends them in the app's own way (``ShutdownCutoff``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

from ctxproto.cli.serve import DEFAULT_SHUTDOWN_GRACE_S
from ctxproto.errors import BackendError, UsageError
from ctxproto.serve.state import ProxyState

__all__ = ["GracefulServer", "ServerThread", "uvicorn_config"]

# A connection idle this long between requests is closed; bodies have their own
# read timeout in the app (limits.read_timeout_s).
KEEP_ALIVE_S = 5
# How long uvicorn waits after the grace, for requests the cutoff could not end
# (a client that reads nothing, a pipeline step that runs on in its thread),
# before it cancels them itself.
CUTOFF_BACKSTOP_S = 5.0
# How long ``ServerThread.close`` waits, past uvicorn's own bound, for the app's
# lifespan to end (the upstream's connections closed, the /mcp sessions stopped).
LIFESPAN_SHUTDOWN_S = 10.0


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


class GracefulServer(uvicorn.Server):
    """uvicorn's server whose requests in flight get ``grace_s`` seconds to finish on stop.

    Then ``on_grace_over`` ends them (``ShutdownCutoff.cut``: a stream with an
    error event, a plain request with a 503 in the envelope). uvicorn alone waits
    without a bound, or, bounded, cancels them from outside the app: a stream
    breaks off with no error event and a plain request gets a plain-text 500.
    Its own bound stays, ``CUTOFF_BACKSTOP_S`` later, for what the cut cannot end.
    """

    def __init__(
        self, config: uvicorn.Config, *, grace_s: float, on_grace_over: Callable[[], None]
    ) -> None:
        config.timeout_graceful_shutdown = int(grace_s + CUTOFF_BACKSTOP_S + 0.999)
        super().__init__(config)
        self.grace_s = grace_s
        self._on_grace_over = on_grace_over

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = asyncio.get_running_loop().call_later(self.grace_s, self._on_grace_over)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()


class ServerThread:
    """Serves ``app`` on ``host:port`` from a daemon thread.

    On ``close`` the requests in flight get ``grace_s`` seconds to finish, as
    under ``ctxproto serve --shutdown-grace`` (the same default): then a proxy
    app (``create_app``) ends them with its ``ShutdownCutoff``, so a stream
    ends with a ``server_shutting_down`` error event rather than breaking off,
    and ``close`` returns. Without the bound, one slow stream held ``close``
    until it gave up waiting and left the server running behind it. Other apps
    have no cut: uvicorn cancels their requests ``CUTOFF_BACKSTOP_S`` later.
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        grace_s: float = DEFAULT_SHUTDOWN_GRACE_S,
    ) -> None:
        if not grace_s >= 0:
            raise UsageError(f"grace_s must be a number of seconds >= 0, not {grace_s}")
        # IPPROTO_TCP, not the default 0: asyncio turns Nagle's algorithm off
        # (TCP_NODELAY) only on connections of a socket that says it is TCP. With
        # Nagle on, a response written as headers then body waits for the client's
        # delayed ACK: 40 ms on every keep-alive request after the first.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self._server = GracefulServer(
            uvicorn_config(app, self.host, self.port),
            grace_s=grace_s,
            on_grace_over=_cutoff_of(app),
        )
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
        """Stop taking connections, give requests in flight the grace, then end them."""
        self._server.should_exit = True
        if self._thread is not None:
            bound = self._server.config.timeout_graceful_shutdown or 0
            self._thread.join(timeout=bound + LIFESPAN_SHUTDOWN_S)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cutoff_of(app: Any) -> Callable[[], None]:
    """What ends a stopping ``app``'s requests once the grace is over: the proxy's cut."""
    state = getattr(getattr(app, "state", None), "proxy", None)
    if isinstance(state, ProxyState):
        return state.cutoff.cut
    return _nothing_to_cut


def _nothing_to_cut() -> None:
    """An app that is not the proxy has no cutoff; uvicorn's backstop ends its requests."""
