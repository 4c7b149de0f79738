"""What the MCP tools return: pydantic models, so each becomes the tool's output schema.

The descriptions are read by the model that calls the tools; they say what a
field means for the next step, not how it was computed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "AssembledContext",
    "CacheLookup",
    "CompressedText",
    "Forgotten",
    "HistoryPage",
    "KnowledgeChunk",
    "KnowledgeResults",
    "MemoryEntry",
    "Recalled",
    "Remembered",
    "SessionStats",
    "StageSummary",
    "Stats",
    "StoredAnswer",
]


class StageSummary(BaseModel):
    """What one pipeline stage did to the context."""

    name: str
    tokens_in: int
    tokens_out: int
    ms: float
    counters: dict[str, int | float] = Field(default_factory=dict)


class AssembledContext(BaseModel):
    """The lean prompt to send instead of the original messages."""

    messages: list[dict[str, Any]] = Field(
        description="Send these to the model in place of the input messages."
    )
    original_tokens: int = Field(description="Tokens of the input, assembled as it was.")
    prompt_tokens: int = Field(description="Tokens of `messages`.")
    saved_tokens: int
    budget: int | None = Field(description="The prompt budget the messages were fitted to.")
    dropped: dict[str, int] = Field(
        default_factory=dict, description="Sections left out to fit the budget, by kind."
    )
    repairs: list[str] = Field(
        default_factory=list,
        description="What reading the messages changed or flagged: a tool result that "
        "answered no call, or a call that had no result, was dropped; a system message in "
        "mid-history was kept in place. Empty: the messages were taken as they were.",
    )
    cached_answer: str | None = Field(
        default=None, description="Set when the semantic cache already knows the answer."
    )
    stages: list[StageSummary]


class CompressedText(BaseModel):
    """A shorter text; numbers, identifiers, URLs and code are kept byte-exact."""

    text: str
    original_tokens: int
    tokens: int
    counters: dict[str, int | float] = Field(default_factory=dict)


class MemoryEntry(BaseModel):
    """One remembered turn, note or summary."""

    id: str = Field(description="Stable and increasing: later entries have larger ids.")
    kind: Literal["turn", "note", "summary"]
    role: str | None = None
    text: str
    created: float = Field(description="Unix time of the write.")
    truncated: bool = Field(
        default=False,
        description="Only its start is shown: it is over the cap (in recall, over the "
        "room the summary leaves).",
    )


class Remembered(BaseModel):
    """The entry was stored; it is visible to the next `recall`."""

    session_id: str
    id: str


class Forgotten(BaseModel):
    """What was removed; it is no longer recalled, listed in history or summarized."""

    session_id: str
    removed: int = Field(
        description="Entries removed: 0 when the session holds no entry with that id."
    )
    remaining: int = Field(description="Entries the session still holds.")
    summary_dropped: bool = Field(
        description="The automatic summary had folded a removed turn: it is gone, and "
        "folded again from the turns left."
    )


class Recalled(BaseModel):
    """A session's summary and its entries most relevant to the query, oldest first."""

    session_id: str
    summary: str | None = Field(
        description="What you stored as kind=summary, else the older turns folded together."
    )
    summary_truncated: bool = Field(
        default=False, description="Only the summary's start fits the cap."
    )
    entries: list[MemoryEntry]
    tokens: int = Field(description="Tokens of the summary and the entries returned.")
    total_entries: int = Field(description="Entries the session holds in all.")


class HistoryPage(BaseModel):
    """One page of a session's entries, oldest first."""

    entries: list[MemoryEntry]
    next_cursor: str | None = Field(description="Pass it back for the next page; null: no more.")


class KnowledgeChunk(BaseModel):
    id: str
    text: str
    score: float | None
    source: str | None
    metadata: dict[str, Any] = Field(default_factory=dict)


class KnowledgeResults(BaseModel):
    """Chunks of the knowledge base, best first, packed into the token cap."""

    chunks: list[KnowledgeChunk]
    tokens: int
    candidates: int = Field(description="Chunks found before packing into the cap.")


class CacheLookup(BaseModel):
    """A cached answer to a question that means the same thing, if any."""

    hit: bool
    answer: str | None = None
    similarity: float | None = None
    cached_question: str | None = None


class StoredAnswer(BaseModel):
    key: str


class SessionStats(BaseModel):
    calls: int = 0
    original_tokens: int = 0
    prompt_tokens: int = 0
    saved_tokens: int = 0
    cache_hits: int = 0
    cache_misses: int = 0


class Stats(BaseModel):
    """Tokens saved and cache hits, for one session and for the whole tenant."""

    overall: SessionStats
    session: SessionStats | None = None
    sessions: int = Field(description="Sessions of this tenant with recorded activity.")
