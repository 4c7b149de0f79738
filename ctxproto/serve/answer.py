"""Answers as streams and streams as answers.

``AnswerAccumulator`` rebuilds the assistant message a stream carried (text, a
refusal, and tool calls merged by index, as OpenAI's SDK does), so a streamed answer is
cached and stored in a session exactly like a plain one. ``replay_chunks``
turns a semantic-cache hit into a proper stream: role first, the text, the
finish reason, then usage.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from ctxproto.serve.protocol import ChatCompletionChunk, ChunkChoice, DeltaMessage, Usage

__all__ = ["AnswerAccumulator", "replay_chunks"]

_PIECES = re.compile(r"\S+\s*|\s+")


class AnswerAccumulator:
    """The assistant message of a stream of chunks."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._refusal: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None

    def add(self, chunk: ChatCompletionChunk) -> None:
        for choice in chunk.choices:
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
            delta = choice.delta
            if delta.content:
                self._text.append(delta.content)
            # OpenAI streams a refusal as ``refusal`` deltas, its content null: left out,
            # a stateful session stored a turn in which the assistant said nothing.
            refusal = (delta.model_extra or {}).get("refusal")
            if isinstance(refusal, str):
                self._refusal.append(refusal)
            for call in delta.tool_calls or []:
                slot = self._calls.setdefault(
                    call.index or 0,
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.id:
                    slot["id"] = call.id
                if call.function is not None:
                    slot["function"]["name"] += call.function.name or ""
                    slot["function"]["arguments"] += call.function.arguments or ""

    def message(self) -> dict[str, Any] | None:
        """The assistant message, or ``None`` when the stream ended before finishing."""
        if self.finish_reason is None:
            return None
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self._text) or None}
        if self._refusal:
            message["refusal"] = "".join(self._refusal)
        if self._calls:
            message["tool_calls"] = [self._calls[i] for i in sorted(self._calls)]
        return message


async def replay_chunks(text: str, usage: Usage) -> AsyncIterator[ChatCompletionChunk]:
    """A cached answer as the chunks a generation would have sent, a word at a time."""
    yield ChatCompletionChunk(
        choices=[ChunkChoice(delta=DeltaMessage(role="assistant", content=""))]
    )
    for piece in _PIECES.findall(text):
        yield ChatCompletionChunk(choices=[ChunkChoice(delta=DeltaMessage(content=piece))])
    yield ChatCompletionChunk(choices=[ChunkChoice(finish_reason="stop")])
    yield ChatCompletionChunk(usage=usage)
