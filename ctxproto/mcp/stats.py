"""Tokens saved and cache hits per tenant and session, kept in the session store.

Each server process counts into rows of its own (one per session, under an id
drawn at start), so no two writers ever share a row and none of them loses a
count; reading sums every process's rows. Counts therefore survive restarts
(a desktop client starts a stdio server per launch) and add up across the
processes that share a store folder.
"""

from __future__ import annotations

import threading
import uuid

from ctxproto.mcp.results import SessionStats, Stats
from ctxproto.stores.session_state import SessionStore, sessions_with_prefix

__all__ = ["UsageStats"]

_ROW_PREFIX = "mcp-stats"


class UsageStats:
    """Count tool calls into ``store``; sum them per tenant and session."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self._process = uuid.uuid4().hex[:12]
        self._mine: dict[tuple[str, str], SessionStats] = {}
        self._lock = threading.Lock()

    def record(
        self,
        tenant: str,
        session: str,
        original: int,
        prompt: int,
        *,
        hit: bool = False,
        miss: bool = False,
    ) -> None:
        with self._lock:
            one = self._mine.setdefault((tenant, session), SessionStats())
            one.calls += 1
            one.original_tokens += original
            one.prompt_tokens += prompt
            one.saved_tokens += max(original - prompt, 0)
            one.cache_hits += int(hit)
            one.cache_misses += int(miss)
            if not self.store.read_only:  # a read-only store serves reads; counts are not kept
                row = f"{_ROW_PREFIX}/{session}/{self._process}"
                self.store.put(tenant, row, one.model_dump())

    def summary(self, tenant: str, session: str | None) -> Stats:
        """The tenant's totals, and ``session``'s when given."""
        prefix = f"{_ROW_PREFIX}/"
        overall, chosen = SessionStats(), SessionStats()
        sessions: set[str] = set()
        for row_id in sessions_with_prefix(self.store, tenant, prefix):
            name = row_id[len(prefix) :].rsplit("/", 1)[0]
            counts = SessionStats.model_validate(self.store.get(tenant, row_id) or {})
            sessions.add(name)
            _add(overall, counts)
            if name == session:
                _add(chosen, counts)
        return Stats(
            overall=overall,
            session=chosen if session is not None else None,
            sessions=len(sessions),
        )


def _add(total: SessionStats, more: SessionStats) -> None:
    for field in SessionStats.model_fields:
        setattr(total, field, getattr(total, field) + getattr(more, field))
