"""Tokens saved and cache hits per tenant and session, kept in the session store.

Each server process counts into rows of its own (one per session, under an id
drawn at start), so no two writers ever share a row and none of them loses a
count; reading sums every process's rows. Counts therefore survive restarts
(a desktop client starts a stdio server per launch) and add up across the
processes that share a store folder.

A count is added to what its row holds, not written from a total kept in
memory: when a session is forgotten (``forget``) its rows are deleted, and a
process that wrote its total back on its next call would bring them back.
"""

from __future__ import annotations

import uuid
from typing import Any

from ctxproto.mcp.results import SessionStats, Stats
from ctxproto.stores.session_state import SessionStore, sessions_with_prefix

__all__ = ["UsageStats"]

_ROW_PREFIX = "mcp-stats"


class UsageStats:
    """Count tool calls into ``store``; sum them per tenant and session."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self._process = uuid.uuid4().hex[:12]

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
        if self.store.read_only:  # a read-only store serves reads; counts are not kept
            return
        call = SessionStats(
            calls=1,
            original_tokens=original,
            prompt_tokens=prompt,
            saved_tokens=max(original - prompt, 0),
            cache_hits=int(hit),
            cache_misses=int(miss),
        )

        def added(row: dict[str, Any] | None) -> dict[str, Any]:
            total = SessionStats.model_validate(row or {})
            _add(total, call)
            return total.model_dump()

        self.store.update(tenant, f"{_ROW_PREFIX}/{session}/{self._process}", added)

    def forget(self, tenant: str, session: str) -> None:
        """Delete the session's counts, every process's rows: its id goes with them."""
        for row_id in sessions_with_prefix(self.store, tenant, f"{_ROW_PREFIX}/{session}/"):
            self.store.delete(tenant, row_id)

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
