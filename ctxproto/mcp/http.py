"""The MCP server over streamable HTTP, at ``/mcp`` inside ``ctxproto serve``.

It shares the proxy's ``ProxyState``: the same pipeline and stores (through its
``ContextFlow``) and the same tenants. A request without a valid bearer key is
answered 401 before it reaches the MCP session layer, and each tool call
resolves its tenant from the key again, so a session can never act for
another tenant. The session manager needs a running task group, which the
app's lifespan provides (``McpEndpoint.lifespan``). The stores the endpoint
opens itself (``mcp.cache``, ``mcp.knowledge``) are on the app's ``/health``
beside the pipeline's (``ContextService.store_checks``). How many sessions are
open at once is bounded per tenant and overall (``_SessionLimit``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pydantic_core
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.server.streamable_http_manager import (
    StreamableHTTPASGIApp,
    StreamableHTTPSessionManager,
)
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from ctxproto.mcp.server import create_mcp_server
from ctxproto.mcp.service import ContextService
from ctxproto.serve.body import read_body
from ctxproto.serve.config import LimitsConfig, McpConfig, TenantConfig
from ctxproto.serve.envelope import APIError, error_response
from ctxproto.serve.state import ProxyState
from ctxproto.serve.tenancy import Tenants, TenantSlot

__all__ = ["MCP_PATH", "McpEndpoint", "mcp_endpoint"]

MCP_PATH = "/mcp"


@dataclass
class McpEndpoint:
    """The route to mount and the lifespan to run in the host app."""

    route: Route
    service: ContextService
    app: StreamableHTTPASGIApp
    """The streamable HTTP transport, behind the key check of ``route``."""

    @asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        """Runs the MCP sessions while the app serves; on stop, ends them, then closes the
        service's stores.

        In that order: a tool call runs in its session's task, not in the HTTP
        request that asked for it, so a call whose client left (or whose request the
        server's grace ended) may still be writing when the app stops. The requests
        in flight have had the server's grace by then; stopping the session manager
        cancels its tasks and waits for the work each runs in a worker thread, which
        is never abandoned (``anyio.to_thread``), so nothing runs on the stores when
        they close. Closed first, a ``remember`` wrote its row and then failed on the
        stopped background worker, and a ``forget`` could stop half done.
        """
        try:
            async with self.app.session_manager.run():
                yield
        finally:
            self.service.close()


def mcp_endpoint(state: ProxyState) -> McpEndpoint:
    """The MCP endpoint over ``state``'s flow, tenants and ``mcp`` settings."""
    service = ContextService(state.flow, state.mcp)
    service.warm_up()
    server = create_mcp_server(service, tenants=state.tenants)
    # With no keys the proxy listens on loopback only (unless told otherwise), and a
    # browser page must not reach it through DNS rebinding; with keys, the key decides.
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=state.tenants.open,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )
    # Builds the session manager; bodies are bounded as the proxy's are. Its own
    # session cap is a backstop behind _SessionLimit's, which answers first.
    server.streamable_http_app(
        transport_security=security,
        max_request_body_size=state.limits.max_body_bytes,
        session_idle_timeout=state.mcp.session_idle_s,
        max_sessions=state.mcp.max_sessions,
    )
    app = StreamableHTTPASGIApp(server.session_manager)
    sessions = _SessionLimit(server.session_manager, state.mcp)
    route = Route(MCP_PATH, _Authenticated(app, state.tenants, state.limits, sessions))
    return McpEndpoint(route=route, service=service, app=app)


class _SessionLimit:
    """How many MCP sessions each tenant, and all tenants together, hold open.

    A session lives until its client deletes it or it has been idle for
    ``mcp.session_idle_s``, and holds its transport, streams and task meanwhile:
    a client opening sessions in a loop grew the server's memory for half an
    hour per session, and the SDK's own cap (one number for everyone, answered
    as a bare JSON-RPC error) let one tenant take every session there was.

    Over the tenant's ``max_sessions_per_tenant`` a new session is a 429: that
    client holds too many, and closing one (or letting it idle out) makes room.
    Over ``max_sessions`` it is a 503: the server is full through no fault of
    this client, and a retry later, or at another replica, may succeed. Both in
    the proxy's error envelope. Only a request that can open a session is
    counted (``_opens_session``): requests of sessions already open, and calls
    of the sessionless protocol (2026-07-28 on), are never refused here.

    The SDK ends a session on a DELETE, on its idle timeout and on a crash, and
    tells nobody: a session counts for as long as the session manager still
    tracks it (its ``_server_instances``, read at each opening; no public API
    says which sessions are open). Used on the event loop only, as ``Tenants``.
    """

    def __init__(self, manager: StreamableHTTPSessionManager, config: McpConfig) -> None:
        self._manager = manager
        self._per_tenant = config.max_sessions_per_tenant
        self._overall = config.max_sessions
        self._owners: dict[str, str] = {}
        """Session id -> tenant id, of the sessions opened and perhaps still open."""
        self._opening: Counter[str] = Counter()
        """Per tenant, openings under way: each may become a session."""

    def admit(self, tenant: TenantConfig) -> None:
        """Count one opening of ``tenant``'s; over a limit an ``APIError`` (429, 503)."""
        live = self._manager._server_instances
        self._owners = {sid: owner for sid, owner in self._owners.items() if sid in live}
        held = Counter(self._owners.values()) + self._opening
        if held[tenant.id] >= self._per_tenant:
            raise APIError(
                429,
                f"tenant '{tenant.id}' has {held[tenant.id]} MCP sessions open "
                f"(limit {self._per_tenant}); end one (DELETE) before opening another",
                code="too_many_sessions",
            )
        if held.total() >= self._overall:
            raise APIError(
                503,
                f"the server has {held.total()} MCP sessions open (limit {self._overall})",
                code="too_many_sessions",
                retry_after=1.0,
            )
        self._opening[tenant.id] += 1

    def opened(self, tenant: TenantConfig, session_id: str | None) -> None:
        """The opening ``admit`` counted is over: a session ``session_id``, or none."""
        self._opening[tenant.id] -= 1
        if self._opening[tenant.id] == 0:
            del self._opening[tenant.id]
        if session_id is not None:
            self._owners[session_id] = tenant.id


class _Authenticated:
    """401 for a missing or unknown bearer key, 429 over the tenant's limit, 429 or 503
    for a session past ``_SessionLimit``'s, in the proxy's error envelope; a POST's
    body read within the proxy's ``limits``.

    The MCP transport reads a body with no time bound: a client whose upload
    stalled (a dead link, a half-sent request) held its connection, and the
    tenant's slot taken for the call, for as long as the socket stayed open, so
    a tenant limited to one request at a time got 429s on every route. The body
    is therefore read here first, as the proxy's routes read theirs (408 past
    ``read_timeout_s``, 413 past ``max_body_bytes``), and the slot taken only
    once it has arrived.
    """

    def __init__(
        self,
        app: StreamableHTTPASGIApp,
        tenants: Tenants,
        limits: LimitsConfig,
        sessions: _SessionLimit,
    ) -> None:
        self.app = app
        self.tenants = tenants
        self.limits = limits
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Calls (POSTs) count against the tenant's max_concurrent_requests as proxy
        # requests do; the long-lived GET event stream and DELETE do not. The slot
        # goes with the request to the tool it calls (``TenantSlot``), which holds
        # it until its work ends, whether or not its client is still there.
        counted = scope.get("method") == "POST"
        headers = Headers(scope=scope)
        try:
            tenant = self.tenants.authenticate(headers.get("authorization"))
            opening = None
            if counted:
                body = bytes(await read_body(Request(scope, receive), self.limits))
                receive = _replaying(body, receive)
                if _opens_session(headers, body):
                    opening = _Opening(self.sessions, tenant, send)
            try:
                slot = TenantSlot(self.tenants, tenant) if counted else None
            except APIError:
                if opening is not None:
                    opening.end(None)
                raise
        except APIError as exc:
            await error_response(exc)(scope, receive, send)
            return
        if slot is not None:
            slot.attach(scope)
        try:
            await self.app(scope, receive, send if opening is None else opening.send)
        finally:
            if slot is not None:
                slot.release()
            if opening is not None:
                opening.end(None)


def _opens_session(headers: Headers, body: bytes) -> bool:
    """Whether the SDK may keep a session for this POST: an ``initialize`` naming no session,
    in a protocol version of the handshake.

    Nothing else opens one, and counting anything else refused real work: from
    protocol 2026-07-28 on every call is a POST with no session id, which the SDK
    serves without a session (its default client speaks it), and a GET or DELETE
    with none is the SDK's 400. The body is parsed as the SDK's transport parses
    it (``pydantic_core.from_json``), so no text reads as an ``initialize`` to one
    and not to the other; a batch or a body that is no JSON opens nothing, and the
    SDK answers it as it does.
    """
    if MCP_SESSION_ID_HEADER in headers:
        return False
    version = headers.get(MCP_PROTOCOL_VERSION_HEADER)
    if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
        return False  # the SDK routes it to its sessionless entry
    try:
        message = pydantic_core.from_json(body)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("method") == "initialize"


class _Opening:
    """An ``initialize`` that may open a session (``_opens_session``), counted by
    ``_SessionLimit.admit`` until its answer starts: with a status below 400 and a
    session id, that session counts on."""

    def __init__(self, sessions: _SessionLimit, tenant: TenantConfig, send: Send) -> None:
        """Count the opening (over a limit, a 429 or 503 ``APIError``)."""
        sessions.admit(tenant)
        self._sessions = sessions
        self._tenant = tenant
        self._send = send
        self._ended = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            opened = Headers(raw=message.get("headers", [])).get(MCP_SESSION_ID_HEADER)
            self.end(opened if message["status"] < 400 else None)
        await self._send(message)

    def end(self, session_id: str | None) -> None:
        """The opening is over, as session ``session_id`` or none; later calls do nothing."""
        if not self._ended:
            self._ended = True
            self._sessions.opened(self._tenant, session_id)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` that first gives the body already read, whole, then waits on the
    client as before (the transport learns of a disconnect from it)."""
    pending = [body]

    async def replay() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replay
