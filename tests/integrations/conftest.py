"""The adapters must work with no network, and leave no event loop behind.

langchain-core and llama-index-core both have code paths that download
(tokenizers, NLTK data, tiktoken rank files); a test that reaches one fails here
rather than passing on a machine that happens to be online.

llama-index runs its synchronous calls' coroutines on ``asyncio.get_event_loop()``
(``llama_index.core.async_utils.asyncio_run``: its prompt helper's token
estimates take that path in every query), which creates a loop and leaves it
set, open, for the life of the thread. A later ``asyncio.run`` in the thread
(another test's) replaces it, and the loop and its self-pipe socket pair
become garbage unclosed: their ResourceWarnings then failed whichever test
happened to collect garbage next. Each test here gives llama-index a loop of
its own to find, and closes it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest


class NetworkAccess(BaseException):
    """Not an ``Exception``, so that no library's ``except Exception`` swallows it
    (NLTK's downloader reports failures and carries on)."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    connect = socket.socket.connect

    def local_only(sock: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in (
            "127.0.0.1",
            "::1",
            "localhost",
        ):
            raise NetworkAccess(f"network access to {address} during an offline test")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    yield


@pytest.fixture(autouse=True)
def own_event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The thread's current event loop during the test, closed at its end."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        asyncio.set_event_loop(None)
        loop.close()
