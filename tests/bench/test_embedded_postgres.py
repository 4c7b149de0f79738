"""The embedded PostgreSQL starts from a copy of its binaries, as it must when the
virtual environment lies where ``nobody`` cannot go (a venv under ``/root``)."""

from __future__ import annotations

import pytest

from ctxproto.bench.embedded_postgres import EmbeddedPostgres
from ctxproto.errors import ModelNotAvailableError


def test_a_server_started_from_copied_binaries_serves_pgvector() -> None:
    psycopg = pytest.importorskip("psycopg")
    try:
        server = EmbeddedPostgres()
    except ModelNotAvailableError as exc:
        pytest.skip(str(exc))
    server.bin = server._copy_binaries()
    with server:
        assert server.folder in server.bin.parents
        with psycopg.connect(server.url) as conn:
            conn.execute("CREATE EXTENSION vector")
            row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            version = row.fetchone()
            assert version is not None and tuple(map(int, version[0].split("."))) >= (0, 8)
    assert not server.folder.exists() and server.pid() is None
