"""The assembled prompt: ordered sections, each with role, text, tokens, pinning, stability."""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ctxproto.messages import Message

__all__ = ["AssembledPrompt", "Section", "SectionKind", "Stability", "messages_sent_again"]


class Stability(IntEnum):
    """How long a section's bytes stay unchanged; lower renders first.

    Ordering by stability keeps the rendered prefix byte-identical across turns,
    which is what prefix-KV caches (ours, SGLang RadixAttention, vLLM automatic
    prefix caching) need in order to hit.
    """

    SYSTEM = 0
    MEMORY = 1
    DOCUMENTS = 2
    HISTORY = 3
    QUERY = 4


SectionKind = str
"""One of ``system``, ``memory``, ``documents``, ``history``, ``query``."""


class Section(BaseModel):
    """One piece of the prompt."""

    model_config = ConfigDict(extra="forbid")

    kind: SectionKind
    role: str
    text: str
    tokens: int
    pinned: bool = False
    stability: Stability
    message: Message | None = Field(
        default=None, description="The source message, kept so tool calls render faithfully."
    )


def messages_sent_again(messages: list[dict[str, Any]], written: Any) -> int | None:
    """How many leading ``messages`` of an assembled prompt the next turn sends again.

    The next turn sends the history with the last user message as it was
    ``written``. ``None`` (all of them) when the prompt's last message is that;
    all but the last when the pipeline added to it (documents placed with the
    question): that message, and the answer after it, are never sent again in
    this form, so a prefix cache gains nothing by keeping them
    (``GenerationParams.cache_messages``).
    """
    if not messages or messages[-1].get("content") == written:
        return None
    return len(messages) - 1


class AssembledPrompt(BaseModel):
    """What the backend receives: sections in order, rendered as chat and as text."""

    model_config = ConfigDict(extra="forbid")

    sections: list[Section]
    messages: list[dict[str, Any]]
    text: str
    prompt_tokens: int
    budget: int | None
    dropped: dict[str, int] = Field(
        default_factory=dict, description="Sections dropped to fit the budget, by kind."
    )
