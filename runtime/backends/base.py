"""The one interface every LLM backend implements: chat messages in, a completion out.

Kept as small as httpx's ``BaseTransport``: ``generate`` and ``stream`` are the
two things a chatbot does; ``agenerate`` defaults to running ``generate`` in a
worker thread, which backends with native async may override. ``stream`` returns a
``CompletionStream``: text deltas while the answer is generated, then the same
``Completion`` (metrics included) that ``generate`` would have returned, so a
streaming chat turn reports cached prefix tokens and TTFT like a blocking one.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

from ctxproto.runtime.params import Completion, GenerationParams

__all__ = ["Backend", "CompletionStream"]


class CompletionStream(Iterator[str]):
    """Text deltas of one answer; ``completion`` is set once they are exhausted.

    Closing it early (``close()``, or leaving a ``for`` loop over a generator that
    wraps it) closes the underlying delta iterator, which stops the generation.
    """

    def __init__(self, deltas: Iterator[str], finish: Callable[[str], Completion]) -> None:
        self._deltas = deltas
        self._finish = finish
        self._parts: list[str] = []
        self.completion: Completion | None = None

    def __next__(self) -> str:
        try:
            delta = next(self._deltas)
        except StopIteration:
            if self.completion is None:
                self.completion = self._finish("".join(self._parts))
            raise
        self._parts.append(delta)
        return delta

    def close(self) -> None:
        close = getattr(self._deltas, "close", None)
        if close is not None:
            close()


class Backend(ABC):
    """Answers chat requests; implementations: ``LocalBackend`` and ``OpenAIBackend``."""

    @abstractmethod
    def generate(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> Completion:
        """The whole answer to ``messages`` (OpenAI chat format)."""

    @abstractmethod
    def stream(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> CompletionStream:
        """The answer as text deltas; closing the stream early stops the generation."""

    async def agenerate(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> Completion:
        return await asyncio.to_thread(self.generate, messages, params)

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release what the backend holds (threads, connections); idempotent."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
