"""Request ids: every answer carries ``x-request-id``, the upstream gets the same id, and
the server's log lines about a request name it.

An operator handed a complaint ("my request at 14:02 got a 502") needs a key to find
that request in the logs, and to match the proxy's line to the upstream's. OpenAI's
API answers every request with ``x-request-id`` (the openai client reads it as
``completion._request_id`` and ``APIStatusError.request_id``), and so does this server.
A client's own id is kept when it is sane (printable ASCII with no space, at most
``MAX_REQUEST_ID_CHARS`` characters), so a gateway's or tracer's id spans every hop;
any other value is replaced by a fresh one, never copied into a header or a log line.

``RequestIdMiddleware`` is the one place an id is assigned. It keeps the request's
``RequestRecord`` in a context variable, where the log calls (``request_log``), the
upstream client (``RemoteUpstream`` sends the id and notes the upstream's own) and
the tasks and threads a request starts find it. When the answer is over it writes
one line about the request to the ``ctxproto.serve`` logger: at INFO, or at WARNING
for a 5xx (a stream's error event included), with the status, the time taken, the
error answered and the upstream's own request id.

A client that hangs up is the client's doing, not a server fault: one line, no
traceback. Under ASGI 2.3 (uvicorn) the server says so with ``http.disconnect``;
under 2.4 its ``send`` raises ``OSError`` (Starlette's streamed response turns
it into ``ClientDisconnect``). That error, raised out of the app once the client
is gone, is the end of the request: the server is not handed it, which it would
report as an exception in the application with its traceback. A request that
sent nothing before its client left is answered 499, as nginx names it.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterable, Mapping, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "MAX_REQUEST_ID_CHARS",
    "REQUEST_ID_HEADER",
    "RequestIdMiddleware",
    "RequestRecord",
    "current_request",
    "note_error",
    "request_log",
    "sane_request_id",
]

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
# Visible ASCII only: no space, no control character (a line break would forge a log
# line), nothing a header cannot hold as it is.
_SANE = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_CHARS}}}")
_HEADER = REQUEST_ID_HEADER.encode("ascii")


@dataclass
class RequestRecord:
    """One request, as its log lines tell it."""

    id: str
    sent_upstream: str = ""
    """The id the upstream gets: ``id`` when this server chose it; a client's own with a
    random suffix, unique per request, since vLLM takes ``x-request-id`` as its engine's
    request id, and two requests in flight under one id fail there (or, in older
    versions, stop the engine for every tenant)."""
    upstream_asked: bool = False
    """A remote upstream was sent the request (its line then names ``sent_upstream``
    where that differs from ``id``)."""
    upstream_id: str | None = None
    """The upstream's own ``x-request-id`` on its (last) answer, when sane."""
    error: str | None = None
    """The error answered (status, code, message), a stream's error event too."""
    severe: bool = False
    """That error was a 5xx: the line about the request is a warning."""
    error_status: int | None = None
    """The status of that error (499: the client left, and was counted as such)."""
    client_gone: bool = False
    """The server's ``send`` raised (ASGI 2.4): the client hung up as its answer was
    written."""


_current: ContextVar[RequestRecord | None] = ContextVar("ctxproto_request", default=None)


def current_request() -> RequestRecord | None:
    """The request being answered, or ``None`` outside one (a background task)."""
    return _current.get()


def note_error(status: int, code: str, message: str) -> None:
    """Note the error the request being answered gets (a client gone: 499), for its line."""
    record = _current.get()
    if record is not None:
        record.error = f"{status} {code} {message!r}"  # repr: a line break stays \n
        record.error_status = status
        record.severe = status >= 500


def sane_request_id(value: str | bytes | None) -> str | None:
    """``value`` when it may go into a header and a log line as it is, else ``None``."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value if value is not None and _SANE.fullmatch(value) else None


class _RequestLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes ``request <id>: `` to each line logged while a request is answered, and
    sets ``request_id`` on the record for formatters that want it as a field."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        record = _current.get()
        if record is None:
            return msg, kwargs
        kwargs["extra"] = {**(kwargs.get("extra") or {}), "request_id": record.id}
        # Doubled: the line is a format string, and a client's id may hold a ``%``.
        return f"request {record.id.replace('%', '%%')}: {msg}", kwargs


request_log = _RequestLog(logging.getLogger("ctxproto.serve"), {})
"""The ``ctxproto.serve`` logger, its lines naming the request being answered."""


class RequestIdMiddleware:
    """Assigns each HTTP request its id, answers with it, and logs the request's line.

    A pure ASGI middleware (no per-request task or body buffering, as Starlette's
    ``BaseHTTPMiddleware`` would add), to wrap an app from outside: ``create_app``
    puts it outside Starlette's ``ServerErrorMiddleware`` too, so a 500 carries the
    id and its traceback's log line names it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        theirs = _client_id(scope["headers"])
        if theirs is None:
            fresh = secrets.token_hex(16)
            record = RequestRecord(fresh, sent_upstream=fresh)
        else:
            record = RequestRecord(theirs, sent_upstream=f"{theirs}-{secrets.token_hex(4)}")
        header = (_HEADER, record.id.encode("ascii"))
        status = 0
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            starting = message["type"] == "http.response.start"
            if starting:
                headers = [h for h in message.get("headers", ()) if h[0].lower() != _HEADER]
                message = {**message, "headers": [*headers, header]}
            try:
                await send(message)
            except OSError:  # ASGI 2.4: the client is gone
                record.client_gone = True
                raise
            if starting:
                status = message["status"]

        token = _current.set(record)
        try:
            await self.app(scope, receive, send_with_id)
        except (OSError, ClientDisconnect):
            if not record.client_gone:
                raise
            # The client hung up as its answer was written: its line below says so,
            # and the server has nothing left to do for it.
        finally:
            _log_answered(scope, record, status, time.perf_counter() - started)
            _current.reset(token)


def _client_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The client's own ``x-request-id`` (the first), if sane."""
    for name, value in headers:
        if name.lower() == _HEADER:
            return sane_request_id(value)
    return None


def _log_answered(
    scope: Mapping[str, Any], record: RequestRecord, status: int, seconds: float
) -> None:
    """The one line about a request: what it was answered, how fast, and what failed."""
    level = logging.WARNING if status >= 500 or record.severe else logging.INFO
    if not request_log.isEnabledFor(level):
        return
    # The path percent-encoded, as uvicorn's access log shows it: a client's bytes
    # never reach the log as they are.
    answered = str(status) if status else "499 (nothing sent: the client left first)"
    request_log.log(
        level,
        "%s %s answered %s in %.3f s%s%s%s",
        scope["method"],
        quote(scope.get("root_path", "") + scope["path"]),
        answered,
        seconds,
        f", error {record.error}" if record.error else "",
        f", sent upstream as {record.sent_upstream}"
        if record.upstream_asked and record.sent_upstream != record.id
        else "",
        f", upstream request {record.upstream_id}" if record.upstream_id else "",
    )
