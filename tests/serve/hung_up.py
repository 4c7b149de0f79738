"""A chat request whose client hangs up before the answer starts (or after
``answer_messages`` of it), sent to an ASGI app directly, as a server reports it.

Under ASGI spec 2.3 (uvicorn's) the server's ``receive`` answers
``http.disconnect`` once the client is gone; Starlette's ``StreamingResponse``
listens for it beside the stream, and one already there cancels the stream at
its first wait: with a ``send`` that waits (a server writing to its socket), at
``http.response.start``, before the body is read. Under 2.4 the server's
``send`` raises an ``OSError`` instead, at ``http.response.start`` (or at the
first message past ``answer_messages``), and ``receive`` waits till then: a plain
answer is computed, and its sending fails. The app must end the request there,
raising nothing to the server, which would log it as the app's failure.
"""

from __future__ import annotations

import json
from typing import Any

import anyio.lowlevel
from starlette.types import ASGIApp, Message


async def post_and_hang_up(
    app: ASGIApp,
    body: dict[str, Any],
    *,
    spec_version: str = "2.3",
    headers: dict[str, str] | None = None,
    answer_messages: int = 0,
    path: str = "/v1/chat/completions",
) -> list[Message]:
    """POST ``body`` to ``path`` as a client gone once its body is sent
    (under 2.4, as the message after ``answer_messages`` of the answer is sent: till
    then ``receive`` waits, as a server's does while its client stays); what the app
    sent."""
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    pending = [{"type": "http.request", "body": raw, "more_body": False}]
    sent: list[Message] = []

    gone = anyio.Event()

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if spec_version >= "2.4":
            await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if spec_version >= "2.4" and len(sent) >= answer_messages:
            gone.set()
            raise OSError("the client is gone")
        await anyio.lowlevel.checkpoint()  # the socket's write
        sent.append(message)

    await app(scope, receive, send)
    return sent
