"""The embedded PostgreSQL starts from a copy of its binaries, as it must when the
virtual environment lies where ``nobody`` cannot go (a venv under ``/root``)."""

from __future__ import annotations

import os
import signal
import time

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


def test_ctrl_c_during_the_stop_still_stops_the_server_and_removes_its_folder() -> None:
    """A fast shutdown takes a second or two; a Ctrl-C or SIGTERM landing in it (a
    second press, or a benchmark stopped as it ends) left the folder behind, and a
    postmaster that pg_ctl had not yet signalled ran on."""
    try:
        server = EmbeddedPostgres()
    except ModelNotAvailableError as exc:
        pytest.skip(str(exc))
    server.__enter__()
    pid = server.pid()
    assert pid is not None

    def ctrl_c(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, ctrl_c)
    signal.setitimer(signal.ITIMER_REAL, 0.05)  # inside pg_ctl stop, which waits 0.1 s at least
    try:
        with pytest.raises(KeyboardInterrupt):
            server.close()
            time.sleep(5)  # a machine that stopped it sooner still sees Ctrl-C
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        stray = server.folder.exists()
        server.close()  # a test that fails leaves nothing running either
    assert not stray
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
