"""The one interface every LLM backend implements: chat messages in, a completion out.

Kept as small as httpx's ``BaseTransport``: ``generate`` and ``stream`` are the
two things a chatbot does; ``agenerate`` defaults to running ``generate`` in a
worker thread, which backends with native async may override. ``stream``
returns a ``CompletionStream``: text deltas while the answer is generated, then
the same ``Completion`` (metrics included) that ``generate`` would have
returned, so a streaming chat turn reports cached prefix tokens and TTFT like a
blocking one.

``Backend`` is a ``typing.Protocol``: callers (``ChatSession``) are typed
against it and a backend need not inherit from it, though subclassing gives the
defaults.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, Protocol, Self

from ctxproto.runtime.params import Completion, GenerationParams

__all__ = ["Backend", "CompletionStream"]


class CompletionStream(Iterator[str]):
    """Text deltas of one answer; ``completion`` is set once they are exhausted.

    ``close()`` (or the caller leaving early, in ``ChatSession.stream``) closes the
    source and calls ``on_close``, which stops the generation even if no delta was
    read yet. After an error or a close the stream stays ended and ``completion``
    stays ``None``: a partial answer is never reported as a finished one.
    """

    def __init__(
        self,
        deltas: Iterator[str],
        finish: Callable[[str], Completion],
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._deltas = deltas
        self._finish = finish
        self._on_close = on_close
        self._parts: list[str] = []
        self._ended = False
        self.completion: Completion | None = None

    def __next__(self) -> str:
        if self._ended:
            raise StopIteration
        try:
            delta = next(self._deltas)
        except StopIteration:
            self._ended = True
            self.completion = self._finish("".join(self._parts))
            raise
        except BaseException:  # any failure, Ctrl-C included, ends the stream; re-raised
            self._ended = True
            raise
        self._parts.append(delta)
        return delta

    def close(self) -> None:
        if self._ended:
            return
        self._ended = True
        close = getattr(self._deltas, "close", None)
        if close is not None:
            close()
        if self._on_close is not None:
            self._on_close()


class Backend(Protocol):
    """Answers chat requests: ``LocalBackend``, ``OpenAIBackend``, ``ScriptedBackend``.

    A protocol, so anything with these methods is a backend. Subclass it to
    inherit ``agenerate`` (``generate`` in a worker thread), a ``close`` that
    does nothing and the context manager; then only ``generate`` and ``stream``
    are yours to write.
    """

    def generate(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> Completion:
        """The whole answer to ``messages`` (OpenAI chat format)."""
        ...

    def stream(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> CompletionStream:
        """The answer as text deltas, then its ``Completion``; closing it stops the generation.

        Wrap any iterator of text in ``CompletionStream`` with a function that
        builds the final ``Completion``, so that a streamed turn reports the same
        metrics as a blocking one.
        """
        ...

    async def agenerate(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> Completion:
        """``generate`` without blocking the event loop."""
        return await asyncio.to_thread(self.generate, messages, params)

    def close(self) -> None:
        """Release what the backend holds (threads, connections); idempotent."""
        return None  # most backends hold nothing to release

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
