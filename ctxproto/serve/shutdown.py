"""Ending the requests still running when a stopping server's grace period is over.

uvicorn, told to stop, waits for requests in flight without a bound, so one
slow stream keeps a stopped proxy up until an orchestrator kills it. With a
bound (``timeout_graceful_shutdown``) it cancels them from outside the app: a
stream then breaks off mid-answer with no error event, and a plain request gets
uvicorn's plain-text 500 and a traceback in the log. So the server
(``runner.GracefulServer``) calls ``ShutdownCutoff.cut`` once the grace is over,
and every request ends in the app's own way while the event loop still runs: a
stream with an error event, a plain request with a 503 in the envelope, which
tells clients to retry (on another replica).

Only the waits that may last are guarded (a session's turn waiting for the one
before it, the pipeline, the upstream's answer, each chunk of a stream): once
the upstream has answered, filing the answer in the cache and the session's
history runs to the end, so a cut never leaves a turn stored that its client
was told failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anyio

from ctxproto.serve.envelope import APIError

__all__ = ["ShutdownCutoff"]


class ShutdownCutoff:
    """Cancels every guarded wait at once, when the server's grace period ends."""

    def __init__(self) -> None:
        self._scopes: set[anyio.CancelScope] = set()
        self._cut = False

    def cut(self) -> None:
        """End the guarded waits running now, and refuse the ones that start later.

        Called on the server's event loop (a cancel scope belongs to it).
        """
        self._cut = True
        for scope in list(self._scopes):
            scope.cancel()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Runs the block until the cut; cut, it raises a 503 ``APIError``."""
        with anyio.CancelScope() as scope:
            if self._cut:
                scope.cancel()
            self._scopes.add(scope)
            try:
                yield
            finally:
                self._scopes.discard(scope)
        if scope.cancelled_caught:
            raise APIError(
                503,
                "the server is shutting down and stopped this request",
                code="server_shutting_down",
            )
