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
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.to_thread

from ctxproto.errors import CtxprotoError

__all__ = ["OK", "STORE_TIMEOUT_S", "store_health"]

STORE_TIMEOUT_S = 2.0

OK = "ok"


async def store_health(
    checks: dict[str, Callable[[], None]], *, timeout_s: float = STORE_TIMEOUT_S
) -> dict[str, str]:
    """Each store's state by name: ``"ok"``, or why it cannot be used now."""
    states = {name: f"no answer within {timeout_s:g} s" for name in checks}

    async def check(name: str, probe: Callable[[], None]) -> None:
        try:
            await anyio.to_thread.run_sync(probe, abandon_on_cancel=True)
        except CtxprotoError as exc:
            states[name] = str(exc)
        except Exception as exc:  # a driver error we did not wrap: still a 503, not a 500
            states[name] = f"check failed: {type(exc).__name__}: {exc}"
        else:
            states[name] = OK

    with anyio.move_on_after(timeout_s):
        async with anyio.create_task_group() as group:
            for name, probe in checks.items():
                group.start_soon(check, name, probe)
    return states
