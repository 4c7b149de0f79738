"""MCP session memory beside the proxy's own summarizer, on one session store: the
summary checkpoints of an MCP session and of a proxy session never meet, whatever
the proxy's client names its session. And its background work stays bounded."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctxproto.context import Context
from ctxproto.mcp.memory import MAX_BACKGROUND_JOBS, SessionMemory
from ctxproto.messages import Message
from ctxproto.stages.summarizer import Summarizer
from ctxproto.stores.session_state import SessionStateStore, open_session_store

TURNS = [
    ("user" if i % 2 == 0 else "assistant", f"Turn {i}: the parcel {i} went to depot {i * 7}.")
    for i in range(12)
]
"""Enough turns past the memory's newest eight for one fold of four."""
CLAIMED = "mcp-summarizer/s"
"""The session id a proxy client sends (``x-session-id``) to name MCP session ``s``'s
summarizer state, as the memory keyed it."""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SessionStateStore]:
    store = SessionStateStore(tmp_path / "sessions")
    yield store
    store.close()


@pytest.fixture
def memory(store: SessionStateStore, embedder: Any) -> Iterator[SessionMemory]:
    memory = SessionMemory(store)
    yield memory
    memory.close()


def _proxy_summarizer(store: SessionStateStore) -> Summarizer:
    """A pipeline's summarizer as the docs advise for replicas: its state in the sessions store."""
    return Summarizer(model=None, keep_turns=8, checkpoint_every=4, state_path=store.location)


def _proxy_turn(summarizer: Summarizer) -> int:
    """Run the proxy's summarizer on ``TURNS`` under ``CLAIMED``; the folds it did itself."""
    history = [Message(role=role, content=text) for role, text in TURNS]
    result = summarizer.run(Context(history=history, session_id=CLAIMED, tenant_id="t"))
    assert result.context.summary  # the oldest four turns are folded, resumed or not
    return int(result.report.counters["checkpoints"])


def _remember_turns(memory: SessionMemory) -> None:
    for role, text in TURNS:
        memory.add("t", "s", "turn", text, role)
    assert memory.summary("t", "s"), "the memory folded nothing"


def test_a_proxy_session_named_after_an_mcp_sessions_summary_state_cannot_read_it(
    store: SessionStateStore, memory: SessionMemory
) -> None:
    """Both summarizers kept their state in one namespace: a proxy client sending
    ``x-session-id: mcp-summarizer/s`` resumed from MCP session ``s``'s checkpoint
    (and each fold of its own overwrote it, as the memory's folds overwrote the
    proxy session's)."""
    _remember_turns(memory)
    summarizer = _proxy_summarizer(store)
    try:
        assert _proxy_turn(summarizer) == 1, "the proxy resumed from the MCP session's state"
    finally:
        summarizer.close()


def test_forget_drops_the_summary_state_an_older_version_kept(
    store: SessionStateStore, memory: SessionMemory
) -> None:
    """Before its namespace of its own, the memory kept the summarizer's state with the
    pipelines'; that state holds the folded turns' text, and forgotten means forgotten
    (a proxy session named ``mcp-summarizer/s`` loses its checkpoint with it, and
    folds its history again on its next turn)."""
    legacy = open_session_store(store.location, namespace="summaries")
    try:
        legacy.put("t", CLAIMED, {"version": 1, "folded": 4, "summary": "Turn 0: the parcel"})
        memory.add("t", "s", "turn", "Turn 12: the last one.", "user")
        memory.forget("t", "s", None)
        assert legacy.get("t", CLAIMED) is None
    finally:
        legacy.close()


def test_writes_faster_than_the_background_wait_for_room_instead_of_piling_up(
    memory: SessionMemory,
) -> None:
    """Regression: every write queued its embedding (holding the entry's text) and a
    fold with no bound, and writes are far quicker than embeddings, so a client
    writing in a loop grew the server's memory for as long as it wrote. Here the
    background is held up (a ``forget`` holds the fold lock too) while a client
    writes to many sessions: the jobs queued or running never pass the bound."""
    writes = MAX_BACKGROUND_JOBS + 20
    most = 0

    def write() -> None:
        nonlocal most
        for i in range(writes):
            memory.add("t", f"busy-{i}", "turn", f"Turn {i}: the parcel went out.", "user")
            with memory._lock:
                most = max(most, sum(len(jobs) for jobs in memory._pending.values()))

    writer = threading.Thread(target=write)
    with memory._fold_lock:  # the first fold waits here, and every later job behind it
        writer.start()
        writer.join(timeout=5)  # without a bound every write returns at once
    writer.join()
    assert most <= MAX_BACKGROUND_JOBS
    assert all(memory.exists("t", f"busy-{i}") for i in range(writes))
