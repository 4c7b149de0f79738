"""``SessionSweeper``: every session store with an idle TTL is swept while a server runs,
each on its own, however another's sweep fails."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ctxproto.serve.session_sweeper import SessionSweeper
from ctxproto.stores.session_state import SessionStateStore

TTL = 1.0


def rows(folder: Path) -> int:
    with sqlite3.connect(folder / "cache.db") as db:
        (count,) = db.execute("SELECT COUNT(*) FROM Cache").fetchone()
    return int(count)


def refuse_deletes(folder: Path) -> None:
    """Make the folder's database refuse every delete, as a full disk refuses a write."""
    with sqlite3.connect(folder / "cache.db") as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE DELETE ON Cache"
            " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )


def allow_deletes(folder: Path) -> None:
    with sqlite3.connect(folder / "cache.db") as db:
        db.execute("DROP TRIGGER refuse")


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s  # the sweeper runs every second at least
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return condition()


def test_a_store_that_cannot_be_swept_leaves_the_others_swept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """The first store's failure ended each sweep before the stores after it, whose
    expired sessions then stayed for as long as it failed."""
    failing, healthy = tmp_path / "failing", tmp_path / "healthy"
    stores = [SessionStateStore(folder, idle_ttl_s=TTL) for folder in (failing, healthy)]
    for store in stores:
        store.put("acme", "idle", {"v": 1})
    sweeper = SessionSweeper(stores)
    sweeper.sweep()
    sweeper.start()
    try:
        refuse_deletes(failing)
        with caplog.at_level(logging.WARNING, logger="ctxproto.serve"):
            assert wait_for(lambda: rows(healthy) == 0)
        assert rows(failing) == 1
        assert any(str(failing) in record.getMessage() for record in caplog.records)
        allow_deletes(failing)
        assert wait_for(lambda: rows(failing) == 0)  # the next sweeps went on
    finally:
        sweeper.stop()
        for store in stores:
            store.close()


class DefectiveOnceStore(SessionStateStore):
    """A folder store whose second sweep fails with an exception no store wraps, as a
    store with a defect does."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, idle_ttl_s=TTL)
        self.sweeps = 0

    def remove_expired(self) -> int:
        self.sweeps += 1
        if self.sweeps == 2:
            raise RuntimeError("a defect")
        return super().remove_expired()


def test_a_sweep_failing_with_any_exception_leaves_the_sweeps_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """Only a ``StoreError`` was caught: any other exception ended the thread, and no
    session expired from then on was swept while the server ran."""
    store = DefectiveOnceStore(tmp_path / "sessions")
    store.put("acme", "idle", {"v": 1})
    sweeper = SessionSweeper([store])
    sweeper.sweep()  # the first, as a server runs it before it serves
    sweeper.start()
    try:
        with caplog.at_level(logging.WARNING, logger="ctxproto.serve"):
            assert wait_for(lambda: rows(tmp_path / "sessions") == 0)
        assert store.sweeps > 2
        assert any(record.exc_info for record in caplog.records)  # the defect's traceback
    finally:
        sweeper.stop()
        store.close()
