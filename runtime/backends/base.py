"""The one interface every LLM backend implements: chat messages in, a completion out.

Kept as small as httpx's ``BaseTransport``: ``generate`` and ``stream`` are the
two things a chatbot does; ``agenerate`` defaults to running ``generate`` in a
worker thread, which backends with native async may override.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from ctxproto.runtime.params import Completion, GenerationParams

__all__ = ["Backend"]


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
    ) -> Iterator[str]:
        """The answer as text deltas; closing the iterator early stops the generation."""

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
