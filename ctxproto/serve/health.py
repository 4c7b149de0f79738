"""Readiness for ``GET /health``: the upstream and every store a replica uses, in bounded time.

A load balancer polls ``/health`` to decide whether a replica gets traffic, so
the answer must come promptly whatever a store does: a server that is down
answers at once (connection refused), but one that hangs would hold a check
for its whole socket timeout and retries. Each store's check (one cheap round
trip, ``Stage.store_checks``) runs in a worker thread, all at once; one that
has not answered within ``STORE_TIMEOUT_S`` is reported as not answering and
its thread is left to end on its own timeout. The bound holds even when
every worker thread is taken by requests stuck on that store: the check then
waits for a thread, and is reported as not answering when the time is up.

A left thread still holds what its check took (a pooled connection, a worker
thread), so a store whose last check has not ended gets no second one: polling
every second against a hung server would otherwise pile up a thread and a
connection per poll. ``StoreHealth`` remembers the checks still running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import anyio
import anyio.to_thread

from ctxproto.errors import CtxprotoError

__all__ = ["OK", "STILL_RUNNING", "STORE_TIMEOUT_S", "StoreHealth"]

STORE_TIMEOUT_S = 2.0

OK = "ok"

STILL_RUNNING = "no answer yet to the previous check"


class StoreHealth:
    """Checks stores for ``/health``, never running two checks of one store at once."""

    def __init__(self, *, timeout_s: float = STORE_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._running: dict[str, object] = {}
        self._lock = threading.Lock()

    async def check(self, checks: dict[str, Callable[[], None]]) -> dict[str, str]:
        """Each store's state by name: ``"ok"``, or why it cannot be used now."""
        states = {name: f"no answer within {self.timeout_s:g} s" for name in checks}
        with anyio.move_on_after(self.timeout_s):
            async with anyio.create_task_group() as group:
                for name, probe in checks.items():
                    group.start_soon(self._check_one, name, probe, states)
        return states

    async def _check_one(
        self, name: str, probe: Callable[[], None], states: dict[str, str]
    ) -> None:
        token = object()
        with self._lock:
            if name in self._running:
                states[name] = STILL_RUNNING
                return
            self._running[name] = token
        started = threading.Event()

        def run() -> None:
            started.set()
            try:
                probe()
            finally:
                self._done(name, token)

        try:
            await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
        except CtxprotoError as exc:
            states[name] = str(exc)
        except Exception as exc:  # a driver error we did not wrap: still a 503, not a 500
            states[name] = f"check failed: {type(exc).__name__}: {exc}"
        else:
            states[name] = OK
        finally:
            if not started.is_set():  # cancelled while waiting for a worker thread
                self._done(name, token)

    def _done(self, name: str, token: object) -> None:
        with self._lock:
            if self._running.get(name) is token:
                del self._running[name]
