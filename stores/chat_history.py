"""A conversation in a session store, in the one form ``ChatSession`` and every
framework adapter read and write, so a conversation begun in one continues in
another.

A state is ``{"version": 1, "history": [message, ...]}``. A state of another
version, or a message that is not one, is a ``StoreError`` naming the session
and the store (its URL without a password), never a history read wrongly.
"""

from __future__ import annotations

from typing import Any

from ctxproto.errors import StoreError
from ctxproto.messages import Message
from ctxproto.stores.session_state import SessionStore
from ctxproto.stores.store_url import redact_url

__all__ = ["HISTORY_VERSION", "append_history", "load_history", "save_history"]

HISTORY_VERSION = 1
"""The version of the history state ``ChatSession`` writes."""


def load_history(store: SessionStore, tenant_id: str, session_id: str) -> list[Message]:
    """The session's messages, oldest first; ``StoreError`` when the state is not a history."""
    where = _where(store, tenant_id, session_id)
    try:
        return [Message.model_validate(m) for m in _stored(store.get(tenant_id, session_id), where)]
    except ValueError as exc:
        raise StoreError(f"{where} holds an invalid message: {exc}") from exc


def save_history(
    store: SessionStore, tenant_id: str, session_id: str, history: list[Message]
) -> None:
    """Replace the session's messages in one atomic store write."""
    store.put(tenant_id, session_id, _state([], history))


def append_history(
    store: SessionStore, tenant_id: str, session_id: str, messages: list[Message]
) -> None:
    """Add ``messages`` to the session's history in one transaction of the store, so
    that two turns written at once both stay (a load then a save kept only the later)."""
    where = _where(store, tenant_id, session_id)
    store.update(tenant_id, session_id, lambda state: _state(_stored(state, where), messages))


def _stored(state: dict[str, Any] | None, where: str) -> list[Any]:
    """The stored messages of a history state, as JSON; none for no state."""
    if state and state.get("version") != HISTORY_VERSION:
        raise StoreError(f"{where} holds no chat history of version {HISTORY_VERSION}")
    return list((state or {}).get("history", []))


def _state(kept: list[Any], added: list[Message]) -> dict[str, Any]:
    history = [*kept, *(m.model_dump(exclude_none=True) for m in added)]
    return {"version": HISTORY_VERSION, "history": history}


def _where(store: SessionStore, tenant_id: str, session_id: str) -> str:
    return f"session '{session_id}' of tenant '{tenant_id}' in {redact_url(store.location)}"
