"""A streamed turn: its answer as text deltas, then the turn's own result.

``ChatSession.last_turn`` is the session's newest turn, whoever asked it: a web app
that streams one request's answer while the next request of the same chat waits
read the next request's report there, as that turn had started as soon as the
stream ended. The stream itself keeps its turn's result, which nothing else writes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctxproto.session import TurnResult

__all__ = ["AsyncTurnStream", "TurnStream"]


class TurnStream:
    """The answer of one turn as text deltas, from ``ChatSession.stream``.

    Iterate it for the deltas; once they are all read, ``turn`` holds the turn's
    answer and report. ``close()``, or leaving a ``with`` block over it, stops the
    generation and keeps no half turn.
    """

    def __init__(self, deltas: Generator[str, None, TurnResult]) -> None:
        self._deltas = deltas
        self.turn: TurnResult | None = None
        """This turn's result once the stream has ended; ``None`` before, and for a
        stream closed early, which keeps no turn."""

    def __iter__(self) -> TurnStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._deltas)
        except StopIteration as end:
            if end.value is not None:  # a generator already ended stops with None
                self.turn = end.value
            raise

    def close(self) -> None:
        """Stop the generation; a turn not yet ended is not kept, and frees its session."""
        self._deltas.close()

    def __enter__(self) -> TurnStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTurnStream:
    """The answer of one turn as text deltas, from ``ChatSession.astream``.

    ``async for`` it for the deltas; once they are all read, ``turn`` holds the
    turn's answer and report. ``aclose()``, or leaving an ``async with`` block over
    it, stops the generation and keeps no half turn. Leaving an ``async for`` early
    does neither by itself: an async iterator is closed when garbage-collected, at
    once only if nothing else refers to it (PEP 525).
    """

    def __init__(self, deltas: AsyncGenerator[str, None], turn: TurnStream) -> None:
        self._deltas = deltas
        self._turn = turn

    @property
    def turn(self) -> TurnResult | None:
        """This turn's result once the stream has ended; ``None`` before, and for a
        stream closed early, which keeps no turn."""
        return self._turn.turn

    def __aiter__(self) -> AsyncTurnStream:
        return self

    async def __anext__(self) -> str:
        return await self._deltas.__anext__()

    async def aclose(self) -> None:
        """Stop the generation; a turn not yet ended is not kept, and frees its session."""
        await self._deltas.aclose()

    async def __aenter__(self) -> AsyncTurnStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
