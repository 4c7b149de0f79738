"""One turn at a time, in the order asked, for threads and event loops alike.

A session's turns must run one after another (each reads the history the last one
wrote), whether they come from threads (``ask``, ``stream``) or from an event loop
(``aask``, ``astream``). A ``threading.Lock`` serializes threads, but an async caller
that waits on one in a worker thread holds that thread for the whole wait: a few
turns queued on one session took every thread of the loop's default executor, the
running stream, which needs one for its next delta, waited for them, and every
async turn of every session stopped with it. Here a thread waits on an event and an
async caller on a future of its own loop, so a queued turn holds no thread.

``release`` hands the lock to the oldest waiter, so turns run in the order they were
asked; it may be called from any thread (a turn an async caller starts ends in a
worker thread).

A blocking ``acquire`` on an event loop's thread would wait for ever behind a holder
or waiter of that same loop: the loop, blocked, never runs the async waiter the lock
is handed to, nor reads the next delta of the stream holding it. Such an acquire
is a ``UsageError`` at once; one behind threads or other loops only waits.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from ctxproto.errors import UsageError

__all__ = ["TurnLock"]


class _Waiter(NamedTuple):
    wake: Callable[[], None]
    """Hands the lock to the waiter."""
    loop: asyncio.AbstractEventLoop | None
    """The event loop running in the waiter's thread, which it may need to go on."""


class TurnLock:
    """A first-come, first-served lock that threads and coroutines wait on alike."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._holder_loop: asyncio.AbstractEventLoop | None = None
        """The event loop running in the holder's thread when it took the lock."""
        self._waiters: deque[_Waiter] = deque()
        """The waiters, oldest first; the lock is theirs when woken."""

    def acquire(self) -> None:
        """Wait, blocking this thread, until the lock is the caller's.

        ``UsageError`` when this thread runs an event loop that the holder or a
        waiter is on: blocking the loop, the wait would never end.
        """
        loop = _running_loop()
        with self._mutex:
            if not self._held:
                self._held, self._holder_loop = True, loop
                return
            if loop is not None and (
                self._holder_loop is loop or any(w.loop is loop for w in self._waiters)
            ):
                raise UsageError(
                    "a blocking turn (ask, stream) asked on an event loop's thread while "
                    "a turn of that loop holds or waits for the session would wait for "
                    "ever, as the loop it blocks is what that turn needs to go on: "
                    "use aask or astream there"
                )
            granted = threading.Event()
            waiter = _Waiter(granted.set, loop)
            self._waiters.append(waiter)
        try:
            granted.wait()
        except BaseException:  # Ctrl-C while waiting: leave the queue, or pass the lock on
            with self._mutex:
                queued = waiter in self._waiters
                if queued:
                    self._waiters.remove(waiter)
            if not queued:
                self.release()
            raise

    async def acquire_async(self) -> None:
        """Wait, without blocking the event loop, until the lock is the caller's.

        A caller cancelled while it waits leaves the queue; one the lock was handed
        to meanwhile passes it on.
        """
        loop = asyncio.get_running_loop()
        with self._mutex:
            if not self._held:
                self._held, self._holder_loop = True, loop
                return
            granted: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                try:
                    loop.call_soon_threadsafe(self._grant, granted)
                except RuntimeError:  # the waiter's loop is closed: nobody waits there
                    self.release()

            waiter = _Waiter(wake, loop)
            self._waiters.append(waiter)
        try:
            await granted
        except BaseException:
            with self._mutex:
                queued = waiter in self._waiters
                if queued:
                    self._waiters.remove(waiter)
            if not queued:
                if granted.done() and not granted.cancelled():
                    self.release()  # granted just before the cancellation arrived
                else:
                    granted.cancel()  # _grant, still to run, passes the lock on
            raise

    def release(self) -> None:
        """Hand the lock to the oldest waiter, or free it; from any thread."""
        with self._mutex:
            if not self._held:
                raise RuntimeError("release of a TurnLock that is not held")
            if not self._waiters:
                self._held, self._holder_loop = False, None
                return
            waiter = self._waiters.popleft()
            self._holder_loop = waiter.loop
        waiter.wake()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _grant(self, granted: asyncio.Future[None]) -> None:
        """On the waiter's loop: the lock is the waiter's, unless it gave up waiting."""
        if granted.cancelled():
            self.release()
        else:
            granted.set_result(None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
