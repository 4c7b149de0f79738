"""SIGTERM read as Ctrl-C, for commands that must clean up when they are stopped.

A batch scheduler, a container runtime, ``timeout`` or ``kill`` stops a command
with SIGTERM, whose default action ends Python at once: no ``finally`` runs, so
the servers a benchmark started (llama.cpp's server, PostgreSQL, valkey-server)
run on and their temporary folders stay. Read as Ctrl-C, the same cleanup runs
as for Ctrl-C, and ``ctxproto`` exits with 130 and one line (``main``).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["sigterm_as_ctrl_c", "stoppable"]

Handler = Callable[[argparse.Namespace], int]


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM raises ``KeyboardInterrupt`` while the block runs.

    Signals can only be handled on the main thread; elsewhere (``main`` called
    from a worker) SIGTERM keeps its handler.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stoppable(handler: Handler) -> Handler:
    """``handler`` (a sub-command's) with SIGTERM read as Ctrl-C while it runs."""

    def handle(args: argparse.Namespace) -> int:
        with sigterm_as_ctrl_c():
            return handler(args)

    return handle
