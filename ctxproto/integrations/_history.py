"""A conversation in a ``SessionStateStore``, in the form ``ChatSession`` keeps it.

Every adapter's chat history reads and writes this one form, so a conversation
begun in one framework (or in ``ChatSession``) continues in another.
"""

from __future__ import annotations

from ctxproto.errors import StoreError
from ctxproto.messages import Message
from ctxproto.stores.session_state import SessionStateStore

__all__ = ["load_history", "save_history"]

HISTORY_VERSION = 1
"""The version of the history state ``ChatSession`` writes."""


def load_history(store: SessionStateStore, tenant_id: str, session_id: str) -> list[Message]:
    """The session's messages, oldest first; ``StoreError`` when the state is not a history."""
    state = store.get(tenant_id, session_id) or {}
    where = f"session '{session_id}' of tenant '{tenant_id}' in {store.path}"
    if state and state.get("version") != HISTORY_VERSION:
        raise StoreError(f"{where} holds no chat history of version {HISTORY_VERSION}")
    try:
        return [Message.model_validate(m) for m in state.get("history", [])]
    except ValueError as exc:
        raise StoreError(f"{where} holds an invalid message: {exc}") from exc


def save_history(
    store: SessionStateStore, tenant_id: str, session_id: str, history: list[Message]
) -> None:
    """Replace the session's messages in one atomic store write."""
    store.put(
        tenant_id,
        session_id,
        {
            "version": HISTORY_VERSION,
            "history": [m.model_dump(exclude_none=True) for m in history],
        },
    )
