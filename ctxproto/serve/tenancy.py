"""Who is asking (API key -> tenant) and which conversation it belongs to (session id).

Keys are looked up by their SHA-256 digest, so the table never holds a key in a
form a log line or a traceback could show, and the lookup takes the same time
whichever key matches. The session id comes from a header (``x-session-id``,
or the names LiteLLM and Helicone use), else the body's ``user``, else a hash of
the conversation's opening messages: a client that sends nothing special still
keeps one session turn after turn, so its summary checkpoints are reused.
A named id longer than ``MAX_SESSION_ID_CHARS`` stands for the digest of all of
it, not cut: two ids that differ only past the cut would be one session, and one
user's history would be sent with another's turn.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from ctxproto.serve.config import TenantConfig
from ctxproto.serve.envelope import APIError

__all__ = [
    "MAX_SESSION_ID_CHARS",
    "SESSION_HEADERS",
    "TenantSlot",
    "Tenants",
    "conversation_session",
    "named_session",
    "session_id",
]

SESSION_HEADERS = ("x-session-id", "x-litellm-session-id", "helicone-session-id")
MAX_SESSION_ID_CHARS = 200
"""Longest session id kept as a client names it (a session header, ``user``); a longer
one stands for its digest. An MCP tool's ``session_id`` longer than this is refused."""
# Where a request's TenantSlot waits for the work it starts: the ASGI scope's
# "state", which Starlette's Request.state reads.
_SLOT_STATE_KEY = "ctxproto_tenant_slot"
DEFAULT_TENANT = TenantConfig(id="default", key="unused")


class Tenants:
    """API key -> tenant; with no tenants configured every request is tenant ``default``."""

    def __init__(self, keys: Mapping[str, TenantConfig]) -> None:
        self._by_digest = {_digest(key): tenant for key, tenant in keys.items()}
        self._in_flight: dict[str, int] = {}

    @property
    def open(self) -> bool:
        """True when no key is needed."""
        return not self._by_digest

    def authenticate(self, authorization: str | None) -> TenantConfig:
        if self.open:
            return DEFAULT_TENANT
        scheme, _, key = (authorization or "").partition(" ")
        tenant = self._by_digest.get(_digest(key.strip())) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise APIError(401, "invalid or missing API key", code="invalid_api_key")
        return tenant

    def enter(self, tenant: TenantConfig) -> None:
        """Count one request in flight; over the tenant's limit is a 429."""
        running = self._in_flight.get(tenant.id, 0)
        limit = tenant.max_concurrent_requests
        if limit is not None and running >= limit:
            raise APIError(
                429,
                f"tenant '{tenant.id}' has {running} requests running (limit {limit})",
                code="rate_limit_exceeded",
                retry_after=1.0,
            )
        self._in_flight[tenant.id] = running + 1

    def leave(self, tenant: TenantConfig) -> None:
        self._in_flight[tenant.id] -= 1


class TenantSlot:
    """One of a tenant's ``max_concurrent_requests``, held by a request and by the work
    it started, and free once the last of them ends.

    An MCP tool call over HTTP runs in its session's task, not in the POST that
    asked for it: a client that hangs up ends the POST while the call runs on,
    and a slot held by the POST alone was free again, so a client that fired
    calls and hung up ran any number at once. The work cannot be cancelled
    instead: it runs in a worker thread, which nothing interrupts halfway (and
    a ``forget`` stopped halfway would leave half its entries). Work that starts
    after every holder left takes the slot anew, over the limit a 429.

    Used on the event loop only, as ``Tenants`` is.
    """

    def __init__(self, tenants: Tenants, tenant: TenantConfig) -> None:
        """Take the slot (``Tenants.enter``: over the limit, a 429 ``APIError``)."""
        tenants.enter(tenant)
        self._tenants = tenants
        self._tenant = tenant
        self._holders = 1

    def attach(self, scope: MutableMapping[str, Any]) -> None:
        """Leave the slot in an ASGI request's state, where the work it starts finds it."""
        scope.setdefault("state", {})[_SLOT_STATE_KEY] = self

    @staticmethod
    def of(scope: Mapping[str, Any]) -> TenantSlot | None:
        """The slot ``attach`` left in ``scope``, if any."""
        slot = scope.get("state", {}).get(_SLOT_STATE_KEY)
        return slot if isinstance(slot, TenantSlot) else None

    def release(self) -> None:
        """One holder is done; the last one frees the slot."""
        self._holders -= 1
        if self._holders == 0:
            self._tenants.leave(self._tenant)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the slot while the block runs."""
        if self._holders == 0:
            self._tenants.enter(self._tenant)
        self._holders += 1
        try:
            yield
        finally:
            self.release()


def session_id(headers: Mapping[str, str], user: str | None, messages: list[Any]) -> str:
    """The session a stateless request belongs to (see the module docstring)."""
    return named_session(headers, user) or conversation_session(messages)


def named_session(headers: Mapping[str, str], user: str | None) -> str | None:
    """The session the client named, by a session header or ``user``; ``None`` if neither.

    An id over ``MAX_SESSION_ID_CHARS`` becomes a fixed-length one (``_bounded_session``).
    """
    for name in SESSION_HEADERS:
        value = headers.get(name)
        if value:
            return _bounded_session(value)
    return f"user-{_bounded_session(user)}" if user else None


def _bounded_session(value: str) -> str:
    """``value`` unchanged, or, longer than ``MAX_SESSION_ID_CHARS``, ``sha256-`` and the
    digest of all of it.

    Not cut to the cap: ids that differ only past it would name one session, whose
    history, summary and cached answers the other's turns would then read. Nor
    refused: OpenAI clients send ``user`` freely (an email, an id, at times a long
    one), and such requests were served before ids were bounded.
    """
    if len(value) <= MAX_SESSION_ID_CHARS:
        return value
    return "sha256-" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def conversation_session(messages: list[Any]) -> str:
    """A session for a client that names none: the hash of the conversation's opening."""
    opening: list[Any] = []
    for message in messages:
        opening.append(message)
        if message.get("role") == "user":
            break
    text = json.dumps(opening, sort_keys=True, ensure_ascii=False)
    return "conv-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
