"""Session memory for MCP clients: turns, notes and summaries, recalled within a token cap.

Each entry is its own row of the session store (one atomic diskcache
write under a fresh, time-ordered id), never a list read, extended and written
back: two clients, or two server processes sharing the store folder, writing
to one session at once cannot overwrite each other's entries. This is what the
reference ``memory`` MCP server gets wrong (a whole-file rewrite per change).

A write returns as soon as the row is on disk. Embedding the entry for
relevance recall runs on a background thread (mem0's ``add_memories`` blocks
the client for the whole extraction); ``recall`` waits for this process's
pending work on the session, so a write is always visible to the next recall,
and embeds on the spot any entry another process has not embedded yet. At most
``MAX_BACKGROUND_JOBS`` wait for the background thread; a write past them
waits for room, so a client writing faster than entries are embedded is slowed
down rather than piling up their text in memory.

Turns are also folded into a rolling summary in the background, by the
``summarizer`` stage (extractive: the most central sentences, and every fact a
user stated about themselves, kept verbatim), once enough have gathered beyond
the newest ``SUMMARY_KEEP_TURNS``. ``recall`` returns the latest summary an agent
stored (``kind="summary"``), else that one.

``forget`` removes one entry, or every entry of a session, as the reference
``memory`` server's ``delete_observations`` and mem0's ``delete_memories`` /
``delete_all_memories`` do. Forgotten means forgotten: an automatic summary that
folded a removed turn is dropped with the summarizer's state (both hold the
turn's text) and folded again from the turns left. A summary row names the last
turn it folded and how many, so one that a fold still running elsewhere writes
after the forget is never returned: it covers a turn that is gone.

On a store opened with an idle TTL (``sessions.idle_ttl_s``), each entry and the
automatic summary expire that long after their own write, as whole sessions do
in the proxy: rewriting every entry of a session on each ``remember`` to keep it
alive would undo the one-row-per-entry design above. An entry older than the
TTL is forgotten even while the session gets newer ones.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Literal

import numpy as np

from ctxproto.context import Context
from ctxproto.errors import ConfigError, ModelNotAvailableError
from ctxproto.mcp.results import Forgotten, HistoryPage, MemoryEntry, Recalled
from ctxproto.messages import Message
from ctxproto.models.embedder import Embedder, get_embedder
from ctxproto.stages.summarizer import Summarizer
from ctxproto.stores.session_state import SessionStore, idle_ttl_of, sessions_with_prefix
from ctxproto.tokens import TokenCounter

__all__ = ["ENTRY_ID", "MAX_BACKGROUND_JOBS", "SUMMARY_KEEP_TURNS", "EntryKind", "SessionMemory"]

EntryKind = Literal["turn", "note", "summary"]
_ROW_PREFIX = "mcp-memory"
_SUMMARY_ROW = "mcp-summary"
_SUMMARIZER_STATE = "mcp-summarizer"
SUMMARY_KEEP_TURNS = 8
"""Newest turns never folded into the automatic summary."""
ENTRY_ID = re.compile(r"^[0-9]{20}-[0-9a-f]{12}$")
"""What an entry id looks like: the write's time in nanoseconds, then 12 random hex digits."""
_VERSION = 1
MAX_BACKGROUND_JOBS = 32
"""Embeddings and folds queued or running at once; a write past them waits for room.

Each queued embedding holds its entry's text (up to two million characters), and
writes are far quicker than embeddings: 150 entries of 200,000 characters were
written in half a second and queued 300 jobs, which took four times as long to
run. Unbounded, a client writing in a loop grew the server's memory for as long
as it kept writing."""

log = logging.getLogger("ctxproto.mcp")


class _MemorySummarizer(Summarizer):
    """The summarizer of MCP sessions, its state in a namespace no pipeline's reaches.

    In the pipelines' ``summaries`` namespace, on a store the proxy's summarizer
    shares (one ``redis://`` URL for replicas, as ``docs/deploy.md`` advises), a
    proxy client of the same tenant sending ``x-session-id: mcp-summarizer/<s>``
    resumed from MCP session ``<s>``'s checkpoint and overwrote it, as the
    memory's folds overwrote that proxy session's. A proxy session id may be any
    text, so no key prefix keeps the two apart; a namespace does.
    """

    state_namespace = "mcp-summaries"


class SessionMemory:
    """Remember and recall entries per ``(tenant, session)``."""

    def __init__(self, store: SessionStore, *, embedder: str = "default") -> None:
        self.store = store
        self._embedder_name = embedder
        self._embedder: Embedder | None = None
        self._embedder_missing = False
        self._summarizer = _MemorySummarizer(
            model=None,
            embedder=embedder,
            keep_turns=SUMMARY_KEEP_TURNS,
            checkpoint_every=4,
            max_summary_tokens=300,
            state_path=store.location,
            state_idle_ttl_s=idle_ttl_of(store),
        )
        self._legacy_summaries = Summarizer(model=None, state_path=store.location)
        """Only to drop, on ``forget``, the state versions before ``_MemorySummarizer`` kept
        in the pipelines' namespace (it holds the folded turns' text); its store opens on
        the first such drop."""
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctxproto-memory")
        self._room = threading.BoundedSemaphore(MAX_BACKGROUND_JOBS)
        """One per background job queued or running (``MAX_BACKGROUND_JOBS``)."""
        self._pending: dict[tuple[str, str], set[Future[None]]] = {}
        self._summary_queued: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._fold_lock = threading.Lock()
        """Held by a fold and by ``forget``: a fold reads the turns either before or after."""

    def add(
        self, tenant: str, session: str, kind: EntryKind, text: str, role: str | None = None
    ) -> MemoryEntry:
        """Store one entry now; its embedding follows in the background."""
        entry_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
        entry = MemoryEntry(id=entry_id, kind=kind, role=role, text=text, created=time.time())
        row = {"version": _VERSION, **entry.model_dump()}
        self.store.put(tenant, _row(session, entry_id), row)
        self._in_background(tenant, session, self._embed_row, row)
        if kind == "turn":
            self._queue_fold(tenant, session)
        return entry

    def forget(self, tenant: str, session: str, entry_id: str | None) -> Forgotten:
        """Remove the entry ``entry_id``, or with ``None`` every entry of the session.

        An id the session does not hold (for this tenant) removes nothing: a
        deletion is asked again after a lost answer, and another tenant's id must
        look no different from one never written. An automatic summary that
        folded a removed turn is dropped, with the summarizer's state, and folded
        again from the turns left; a summary an agent stored is an entry of its
        own, forgotten by its id.
        """
        if entry_id is not None and not ENTRY_ID.match(entry_id):
            raise ConfigError("is not an entry id this server returned", key="entry_id")
        with self._fold_lock:
            ids = self._ids(tenant, session) if entry_id is None else [entry_id]
            gone = [loaded[0] for i in ids if (loaded := self._load(tenant, session, i))]
            summary_row = self.store.get(tenant, _summary_row(session))
            folded = entry_id is None or any(
                e.kind == "turn" and _folded(e.id, summary_row) for e in gone
            )
            removed = sum(self.store.delete(tenant, _row(session, e.id)) for e in gone)
            summary_dropped = False
            if folded:
                summary_dropped = self.store.delete(tenant, _summary_row(session))
                self._summarizer.forget(tenant, f"{_SUMMARIZER_STATE}/{session}")
                self._legacy_summaries.forget(tenant, f"{_SUMMARIZER_STATE}/{session}")
        remaining = len(self._ids(tenant, session))
        if summary_dropped and remaining:
            self._queue_fold(tenant, session)
        return Forgotten(
            session_id=session,
            removed=removed,
            remaining=remaining,
            summary_dropped=summary_dropped,
        )

    def exists(self, tenant: str, session: str) -> bool:
        return bool(self._ids(tenant, session))

    def summary(self, tenant: str, session: str) -> str | None:
        """The latest summary an agent stored, else the automatic one, if any."""
        self._require(tenant, session)
        self._wait(tenant, session)
        return self._summary(tenant, session, [e for e, _ in self._entries(tenant, session)])

    def _summary(self, tenant: str, session: str, entries: list[MemoryEntry]) -> str | None:
        stored = [e.text for e in entries if e.kind == "summary"]
        if stored:
            return stored[-1]
        row = self.store.get(tenant, _summary_row(session)) or {}
        text = row.get("summary")
        if not isinstance(text, str) or not text or not _still_held(row, entries):
            return None
        return text

    def recall(
        self, tenant: str, session: str, query: str | None, cap: int, counter: TokenCounter
    ) -> Recalled:
        """The summary, then the entries most relevant to ``query`` (the latest without
        one) that fit ``cap`` tokens, returned oldest first.

        The most relevant entry (the latest without a query) comes back whenever
        the summary leaves room: whole if it fits, else cut to that room and marked
        ``truncated``, as a history page returns an entry over the cap. Left out,
        it could never be recalled, and the result would not say why; cut only
        when alone over the cap, one that fitted the cap but not the room the
        summary left gave way to older, smaller entries.
        """
        self._require(tenant, session)
        self._wait(tenant, session)
        rows = self._entries(tenant, session)
        summary = self._summary(tenant, session, [e for e, _ in rows])
        used = counter.count(summary) if summary else 0
        summary_truncated = used > cap
        if summary and summary_truncated:  # the summary comes first: its start, marked as cut
            summary = _cut(summary, cap, counter)
            used = counter.count(summary)
        candidates = [(e, v) for e, v in rows if e.kind != "summary"]
        order = list(reversed(range(len(candidates))))
        if query and candidates:
            scores = self._relevance(query, candidates)
            if scores is not None:
                order = sorted(order, key=lambda i: scores[i], reverse=True)
        picked: dict[int, MemoryEntry] = {}
        for rank, i in enumerate(order):
            entry = candidates[i][0]
            cost = counter.count(entry.text)
            cut = rank == 0 and used + cost > cap and used < cap
            if cut:  # over the room the summary leaves: its start, marked as cut
                text = _cut(entry.text, cap - used, counter)
                entry = entry.model_copy(update={"text": text, "truncated": True})
                cost = counter.count(text)
            if cut or used + cost <= cap:
                picked[i] = entry
                used += cost
        entries = [picked[i] for i in sorted(picked)]
        return Recalled(
            session_id=session,
            summary=summary,
            summary_truncated=summary_truncated,
            entries=entries,
            tokens=used,
            total_entries=len(rows),
        )

    def page(
        self,
        tenant: str,
        session: str,
        cursor: str | None,
        size: int,
        cap: int,
        counter: TokenCounter,
    ) -> HistoryPage:
        """Up to ``size`` entries after ``cursor`` (and within ``cap`` tokens), oldest first."""
        if cursor is not None and not ENTRY_ID.match(cursor):
            raise ConfigError("is not a cursor this server returned", key="cursor")
        self._require(tenant, session)
        ids = [i for i in self._ids(tenant, session) if cursor is None or i > cursor]
        entries: list[MemoryEntry] = []
        used = 0
        for entry_id in ids[:size]:
            loaded = self._load(tenant, session, entry_id)
            if loaded is None:
                continue
            entry = loaded[0]
            cost = counter.count(entry.text)
            if entries and used + cost > cap:
                break
            if cost > cap:  # alone over the cap: its start, marked as cut
                text = _cut(entry.text, cap, counter)
                entry = entry.model_copy(update={"text": text, "truncated": True})
                cost = counter.count(text)
            entries.append(entry)
            used += cost
        more = bool(entries) and entries[-1].id != ids[-1]
        return HistoryPage(entries=entries, next_cursor=entries[-1].id if more else None)

    def session_stores(self) -> list[SessionStore]:
        """The session stores this memory opened itself (its summarizer's state), for the
        server's sweep; its entries are in the store it was given, which its owner sweeps."""
        return self._summarizer.session_stores()

    def close(self) -> None:
        """Finish the background work, then close the summarizer's store it opened."""
        self._background.shutdown(wait=True)
        self._summarizer.close()
        self._legacy_summaries.close()

    # -- internals -----------------------------------------------------------

    def _require(self, tenant: str, session: str) -> None:
        if not self.exists(tenant, session):
            raise ConfigError(
                f"no session '{session}' has memory for this tenant", key="session_id"
            )

    def _ids(self, tenant: str, session: str) -> list[str]:
        prefix = f"{_ROW_PREFIX}/{session}/"
        return [s[len(prefix) :] for s in sessions_with_prefix(self.store, tenant, prefix)]

    def _entries(self, tenant: str, session: str) -> list[tuple[MemoryEntry, list[float] | None]]:
        loaded = (self._load(tenant, session, i) for i in self._ids(tenant, session))
        return [row for row in loaded if row is not None]

    def _load(
        self, tenant: str, session: str, entry_id: str
    ) -> tuple[MemoryEntry, list[float] | None] | None:
        row = self.store.get(tenant, _row(session, entry_id))
        if row is None:
            return None
        vector = row.pop("vector", None)
        row.pop("version", None)
        return MemoryEntry.model_validate(row), vector

    def _relevance(
        self, query: str, rows: list[tuple[MemoryEntry, list[float] | None]]
    ) -> list[float] | None:
        embedder = self._embedder_or_none()
        if embedder is None:
            return None
        missing = [i for i, (_, v) in enumerate(rows) if v is None]
        fresh = embedder.embed([rows[i][0].text for i in missing]) if missing else None
        vectors = np.asarray(
            [v if v is not None else [0.0] * embedder.dimension for _, v in rows], dtype=np.float32
        )
        if fresh is not None:
            vectors[missing] = fresh
        scores = vectors @ np.asarray(embedder.embed_one(query), dtype=np.float32)
        return [float(s) for s in scores]

    def _in_background(
        self, tenant: str, session: str, work: Callable[..., None], *args: Any
    ) -> None:
        """Queue ``work`` once fewer than ``MAX_BACKGROUND_JOBS`` are queued or running.

        Called from tool calls' worker threads, never from the background thread
        itself, which would wait on its own queue.
        """
        self._room.acquire()
        try:
            future = self._background.submit(work, tenant, session, *args)
        except BaseException:
            self._room.release()
            raise
        key = (tenant, session)
        with self._lock:
            self._pending.setdefault(key, set()).add(future)
        future.add_done_callback(lambda done: self._settle(key, done))

    def _queue_fold(self, tenant: str, session: str) -> None:
        """Fold the session's turns in the background, unless a fold is queued already."""
        with self._lock:
            queued = (tenant, session) in self._summary_queued
            self._summary_queued.add((tenant, session))
        if not queued:  # one queued fold per session covers every turn before it starts
            self._in_background(tenant, session, self._summarize)

    def _summarize(self, tenant: str, session: str) -> None:
        """Fold the session's older turns into its rolling summary (a no-op until enough)."""
        with self._lock:
            self._summary_queued.discard((tenant, session))
        if self._embedder_or_none() is None:
            return
        with self._fold_lock:
            self._fold_turns(tenant, session)

    def _fold_turns(self, tenant: str, session: str) -> None:
        turns = [e for e, _ in self._entries(tenant, session) if e.kind == "turn"]
        history = [
            Message(role=e.role if e.role in ("user", "assistant") else "user", content=e.text)
            for e in turns
        ]
        context = Context(
            history=history, session_id=f"{_SUMMARIZER_STATE}/{session}", tenant_id=tenant
        )
        result = self._summarizer.run(context)
        summary = result.context.summary
        # One block per turn (no tool calls here): the oldest ``folded`` turns are in it.
        folded = int(result.report.counters.get("folded_turns", 0))
        if summary and 0 < folded <= len(turns):
            row = {
                "version": _VERSION,
                "summary": summary,
                "turns": folded,
                "through": turns[folded - 1].id,
            }
            self.store.put(tenant, _summary_row(session), row)

    def _embed_row(self, tenant: str, session: str, row: dict[str, Any]) -> None:
        """Add the entry's vector to its row, unless the entry was forgotten meanwhile.

        A plain write would bring a forgotten entry back (by another process too,
        whose ``forget`` cannot wait for this one's background work).
        """
        embedder = self._embedder_or_none()
        if embedder is None:
            return
        vector = embedder.embed_one(row["text"]).tolist()

        def with_vector(stored: dict[str, Any] | None) -> dict[str, Any]:
            if stored is None:
                raise _EntryGone
            return {**stored, "vector": vector}

        with contextlib.suppress(_EntryGone):  # the update wrote nothing
            self.store.update(tenant, _row(session, row["id"]), with_vector)

    def _embedder_or_none(self) -> Embedder | None:
        """The embedder; without the ``embed`` extra recall falls back to recency."""
        with self._lock:
            if self._embedder is None and not self._embedder_missing:
                try:
                    self._embedder = get_embedder(self._embedder_name)
                except ModelNotAvailableError:
                    self._embedder_missing = True
            return self._embedder

    def _wait(self, tenant: str, session: str) -> None:
        with self._lock:
            pending = list(self._pending.get((tenant, session), ()))
        wait(pending)

    def _settle(self, key: tuple[str, str], future: Future[None]) -> None:
        self._room.release()
        error = future.exception()
        if error is not None:
            # The entry itself is stored; recall embeds it on the spot instead.
            log.warning("embedding a memory entry failed: %s", error)
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None:
                pending.discard(future)
                if not pending:
                    del self._pending[key]


class _EntryGone(Exception):
    """Raised inside a store update to leave the row unwritten: its entry was forgotten."""


def _row(session: str, entry_id: str) -> str:
    return f"{_ROW_PREFIX}/{session}/{entry_id}"


def _summary_row(session: str) -> str:
    return f"{_SUMMARY_ROW}/{session}"


def _folded(entry_id: str, summary_row: dict[str, Any] | None) -> bool:
    """Whether the automatic summary in ``summary_row`` folded the turn ``entry_id``.

    A row from before rows named their last turn is taken to have folded it.
    """
    if summary_row is None:
        return False
    through = summary_row.get("through")
    return not isinstance(through, str) or entry_id <= through


def _still_held(summary_row: dict[str, Any], entries: list[MemoryEntry]) -> bool:
    """Whether every turn the summary folded is still remembered.

    A fold that read a turn before another process forgot it may write its summary
    after the forget dropped the old one; it counts more turns up to its last than
    are left, and is not returned. Turns written since (ids are increasing) do not
    count against it. A row from before rows named their last turn is kept:
    ``forget`` drops it.
    """
    through, turns = summary_row.get("through"), summary_row.get("turns")
    if not isinstance(through, str):
        return True
    held = sum(1 for e in entries if e.kind == "turn" and e.id <= through)
    return isinstance(turns, int) and held >= turns


def _cut(text: str, tokens: int, counter: TokenCounter) -> str:
    """The start of ``text`` that fits ``tokens``, ending on a whole character.

    A token may hold part of a character's UTF-8 bytes (most CJK and emoji take
    two or three), and decoding the part gives U+FFFD: a cut through a character
    would end the entry in a replacement mark the text never had.
    """
    cut = counter.decode(counter.encode(text)[:tokens])
    while cut.endswith("\ufffd") and not text.startswith(cut):
        cut = cut[:-1]
    return cut
