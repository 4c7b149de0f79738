"""The adapters must work with no network: any connection off this machine fails the test.

langchain-core and llama-index-core both have code paths that download
(tokenizers, NLTK data, tiktoken rank files); a test that reaches one fails here
rather than passing on a machine that happens to be online.
"""

from __future__ import annotations

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
