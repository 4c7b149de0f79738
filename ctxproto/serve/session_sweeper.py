"""Deleting the sessions idle past their session store's TTL, while a server runs.

A folder store skips an expired session on read but keeps its row until it is
deleted; diskcache removes a few expired rows per write, not all of them, so
a server that took many sessions once and few later would keep their rows. The
proxy (``ctxproto serve``) and the stdio MCP server (``ctxproto mcp``) sweep
every session store they keep (``ContextFlow.session_stores``: the sessions',
the summarizer's; ``ContextService.session_stores``: the MCP memory's
summarizer's) when they start, then every half of the shortest TTL (at least a
second apart, at most ten minutes), on a thread of their own: each sweep is one indexed delete
of the rows past their deadline, in diskcache's transactions, so it costs what
it removes and never loses a write that renews a session
(``SessionStateStore.remove_expired``). A store whose sweep fails in the
background (a full disk) is logged on ``ctxproto.serve`` and tried again at the
next sweep, and the other stores are swept all the same. A Redis store needs no
sweep: the server expires its keys.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from ctxproto.errors import StoreError
from ctxproto.stores.session_state import SessionStore, idle_ttl_of, remove_expired_sessions
from ctxproto.stores.store_url import redact_url

__all__ = ["SessionSweeper"]

log = logging.getLogger("ctxproto.serve")

MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 600.0


class SessionSweeper:
    """Sweeps ``stores`` at ``sweep`` and, from ``start``, periodically until ``stop``; a
    store without an idle TTL is never swept."""

    def __init__(self, stores: Sequence[SessionStore]) -> None:
        self.stores = [store for store in stores if idle_ttl_of(store) is not None]
        ttls = [ttl for store in self.stores if (ttl := idle_ttl_of(store)) is not None]
        self.interval_s = min(max(min(ttls) / 2, MIN_INTERVAL_S), MAX_INTERVAL_S) if ttls else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> None:
        """Sweep every store once, now; a store that cannot be swept raises its error.

        The first sweep, run by a server before it serves, so a store that cannot be
        swept fails the start with the store's own error.
        """
        for store in self.stores:
            remove_expired_sessions(store)

    def start(self) -> None:
        """Keep sweeping in the background, every ``interval_s``, until ``stop``."""
        if self.interval_s is None:
            return
        self._thread = threading.Thread(
            target=self._run, name="ctxproto-session-sweeper", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """End the background sweeps; a sweep under way finishes first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        assert self.interval_s is not None
        while not self._stop.wait(self.interval_s):
            for store in self.stores:
                self._sweep_logged(store)

    @staticmethod
    def _sweep_logged(store: SessionStore) -> None:
        """Sweep ``store``, logging a failure: the next sweep retries, and the other stores
        are swept still. One store's failure skipped the stores after it, and any other
        exception than a ``StoreError`` ended the thread (with Python's default report of
        an uncaught exception in a thread), and with it every sweep while the server ran."""
        try:
            remove_expired_sessions(store)
        except StoreError as exc:  # a full disk, a locked database
            log.warning("sweeping expired sessions failed: %s", exc)
        except Exception:  # a defect: its traceback, and the thread sweeps on
            log.exception(
                "sweeping expired sessions of the store at %s failed",
                redact_url(store.location),
            )
