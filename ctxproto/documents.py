"""Documents and chunks: the unit retrieval, pruning and packing work on."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Document"]


class Document(BaseModel):
    """A document or a chunk of one.

    ``score`` is the relevance a retriever or filter gave it (higher is better);
    ``source`` names where it came from, so caches can drop answers built on it
    when it changes.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    score: float | None = None
    source: str | None = None
    pinned: bool = False
