"""Blocking work from an event loop: a call or an iterator, in worker threads.

For the async forms of blocking APIs (``ChatSession.aask`` and ``astream``, the
LlamaIndex LLM's ``astream_chat``): the loop keeps serving while a model works, and a
caller that is cancelled or leaves early never leaves the work half-closed behind it.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, TypeVar

__all__ = ["call_in_thread", "iterate_in_thread"]

_Result = TypeVar("_Result")
_Item = TypeVar("_Item")
_DONE = object()


async def call_in_thread(work: Callable[[], _Result], *, then: Callable[[], None]) -> _Result:
    """``work()`` in a worker thread, then ``then()`` in that thread once it has ended.

    The work runs and ``then`` follows it even when the caller is cancelled, at once
    or before a thread took the work (``asyncio.to_thread`` then skipped it): ``then``
    releases what the work holds, which must not be released while it still runs.
    """

    def run() -> _Result:
        try:
            return work()
        finally:
            then()

    context = contextvars.copy_context()  # as asyncio.to_thread hands the caller's on
    try:
        job = asyncio.get_running_loop().run_in_executor(None, context.run, run)
    except BaseException:  # the executor is shut down: the work never runs
        then()
        raise
    return await asyncio.shield(job)


async def iterate_in_thread(
    items: Iterator[_Item], *, then: Callable[[], None] | None = None
) -> AsyncGenerator[_Item, None]:
    """``items`` as an async iterator, each ``next`` in a worker thread.

    A caller cancelled while a ``next`` runs (a client gone mid-answer) gets its
    ``CancelledError`` at once, and ``items`` is closed as soon as that ``next``
    returns: closing a generator while another thread runs it raised
    ``ValueError: generator already executing`` in place of the cancellation,
    and left the generation running. ``then()`` runs once ``items`` is closed, in
    whichever thread closed it.
    """
    steps = _Steps(items, then)
    try:
        while (item := await asyncio.to_thread(steps.next)) is not _DONE:
            yield item  # type: ignore[misc]
    finally:
        steps.close()


class _Steps:
    """``next`` and ``close`` of an iterator, from any thread: a close asked while a
    ``next`` runs happens when that ``next`` returns, and ends the iteration."""

    def __init__(self, items: Iterator[Any], then: Callable[[], None] | None) -> None:
        self._items = items
        self._then = then
        self._lock = threading.Lock()
        self._running = False
        self._closing = False

    def next(self) -> object:
        with self._lock:
            if self._closing:
                return _DONE
            self._running = True
        try:
            return next(self._items, _DONE)
        finally:
            with self._lock:
                self._running = False
                closing = self._closing
            if closing:
                self._close()

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            if self._running:
                return  # the running next closes it
        self._close()

    def _close(self) -> None:
        try:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()
        finally:
            if self._then is not None:
                self._then()
