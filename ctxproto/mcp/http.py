"""The MCP server over streamable HTTP, at ``/mcp`` inside ``ctxproto serve``.

It shares the proxy's ``ProxyState``: the same pipeline and stores (through its
``ContextFlow``) and the same tenants. A request without a valid bearer key is
answered 401 before it reaches the MCP session layer, and each tool call
resolves its tenant from the key again, so a session can never act for
another tenant. The session manager needs a running task group, which the
app's lifespan provides (``McpEndpoint.lifespan``). The stores the endpoint
opens itself (``mcp.cache``, ``mcp.knowledge``) are on the app's ``/health``
beside the pipeline's (``ContextService.store_checks``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from ctxproto.mcp.server import create_mcp_server
from ctxproto.mcp.service import ContextService
from ctxproto.serve.body import read_body
from ctxproto.serve.config import LimitsConfig
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
    # Builds the session manager; bodies are bounded as the proxy's are.
    server.streamable_http_app(
        transport_security=security, max_request_body_size=state.limits.max_body_bytes
    )
    app = StreamableHTTPASGIApp(server.session_manager)
    route = Route(MCP_PATH, _Authenticated(app, state.tenants, state.limits))
    return McpEndpoint(route=route, service=service, app=app)


class _Authenticated:
    """401 for a missing or unknown bearer key, 429 over the tenant's limit, in the
    proxy's error envelope; a POST's body read within the proxy's ``limits``.

    The MCP transport reads a body with no time bound: a client whose upload
    stalled (a dead link, a half-sent request) held its connection, and the
    tenant's slot taken for the call, for as long as the socket stayed open, so
    a tenant limited to one request at a time got 429s on every route. The body
    is therefore read here first, as the proxy's routes read theirs (408 past
    ``read_timeout_s``, 413 past ``max_body_bytes``), and the slot taken only
    once it has arrived.
    """

    def __init__(self, app: StreamableHTTPASGIApp, tenants: Tenants, limits: LimitsConfig) -> None:
        self.app = app
        self.tenants = tenants
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Calls (POSTs) count against the tenant's max_concurrent_requests as proxy
        # requests do; the long-lived GET event stream and DELETE do not. The slot
        # goes with the request to the tool it calls (``TenantSlot``), which holds
        # it until its work ends, whether or not its client is still there.
        counted = scope.get("method") == "POST"
        try:
            tenant = self.tenants.authenticate(Headers(scope=scope).get("authorization"))
            if counted:
                receive = _replaying(await read_body(Request(scope, receive), self.limits), receive)
            slot = TenantSlot(self.tenants, tenant) if counted else None
        except APIError as exc:
            await error_response(exc)(scope, receive, send)
            return
        if slot is not None:
            slot.attach(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            if slot is not None:
                slot.release()


def _replaying(body: bytes | bytearray, receive: Receive) -> Receive:
    """``receive`` that first gives the body already read, whole, then waits on the
    client as before (the transport learns of a disconnect from it)."""
    pending = [bytes(body)]

    async def replay() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replay
