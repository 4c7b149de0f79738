"""The test session's PostgreSQL with pgvector (``ctxproto.bench.embedded_postgres``).

One server per test session on a free 127.0.0.1 port, started as ``nobody``
when the suite runs as root and stopped by its PID at the end; each test gets
a table of its own through ``?table=`` in the URL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from ctxproto.bench.embedded_postgres import EmbeddedPostgres
from ctxproto.errors import ModelNotAvailableError

__all__ = ["pg_url", "postgres"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    """One PostgreSQL 18 + pgvector for the whole session."""
    try:
        server = EmbeddedPostgres()
    except ModelNotAvailableError as exc:  # the 'postgres' extra is not installed
        pytest.skip(str(exc))
    with server:
        yield server


@pytest.fixture
def pg_url(postgres: EmbeddedPostgres) -> str:
    """A store URL on the session's server with a table of this test's own."""
    return f"{postgres.url}?table=t_{uuid.uuid4().hex[:12]}"
