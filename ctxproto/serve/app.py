"""The ASGI app: routes only. The flow is ``ContextFlow``'s, errors are ``envelope``'s.

``create_app(state)`` is a factory over shared ``ProxyState``, so other surfaces
(an MCP endpoint at ``/mcp``, say) mount beside these routes in one process and
use the same pipeline, stores and upstream::

    POST /v1/chat/completions   the proxy (plain JSON or server-sent events)
    POST /v1/embeddings         forwarded to the upstream as it came
    GET  /v1/models             the served model name
    GET  /v1/models/{model}     one of them (the openai client's ``models.retrieve``)
    GET  /health                readiness: the upstream and every store answer
    GET  /metrics               Prometheus text
    POST /v1/ctxproto/invalidate drop the cached answers built on a source (admin keys)
    /mcp                        the MCP server (streamable HTTP), with the mcp extra
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import anyio
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from ctxproto.errors import CtxprotoError
from ctxproto.serve.answer import replay_chunks
from ctxproto.serve.body import parse_body, parse_chat_request, read_json_body
from ctxproto.serve.envelope import APIError, error_response, to_api_error
from ctxproto.serve.flow import Turn
from ctxproto.serve.health import OK, STORE_TIMEOUT_S, StoreHealth
from ctxproto.serve.metrics import CLIENT_CLOSED_REQUEST
from ctxproto.serve.protocol import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    Choice,
    EmbeddingRequest,
    InvalidationRequest,
    InvalidationResponse,
    ModelCard,
    ModelList,
    ResponseMessage,
    Usage,
)
from ctxproto.serve.request_id import (
    RequestIdMiddleware,
    current_request,
    note_error,
    request_log,
)
from ctxproto.serve.session_sweeper import SessionSweeper
from ctxproto.serve.state import ProxyState
from ctxproto.serve.tenancy import conversation_session, named_session
from ctxproto.serve.turn_stream import TurnStream, close_source

if TYPE_CHECKING:
    from ctxproto.mcp.http import McpEndpoint

__all__ = ["create_app"]

log = request_log
Answer = TypeVar("Answer")

# A session id comes from the body's ``user`` too, which may hold any text; a header
# value holds printable ASCII: the rest (and "%") is percent-encoded as UTF-8, or a
# "ユーザー" failed the answer with a 500 and a line break got no answer at all.
_HEADER_SAFE = "".join(chr(code) for code in range(0x20, 0x7F) if chr(code) != "%")


def create_app(
    state: ProxyState, *, routes: Sequence[BaseRoute] = (), mcp_server: bool = True
) -> Starlette:
    """The proxy's ASGI app over ``state``; ``routes`` mount next to the built-in ones.

    ``mcp_server=False`` leaves out ``/mcp`` (the runtime's plain model server).
    The session stores with an idle TTL are swept once here, so a store that cannot
    be opened or swept raises its ``StoreError`` before a server runs the app.
    """
    mcp = _mcp_endpoint(state) if mcp_server else None
    try:
        sweeper = _swept_session_stores(state, mcp)
    except BaseException:
        if mcp is not None:
            mcp.service.close()
        raise

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The upstream's connections belong to the server's event loop: close them
        # there, when the server stops, not from another loop afterwards.
        try:
            async with contextlib.AsyncExitStack() as running:
                if mcp is not None:
                    await running.enter_async_context(mcp.lifespan(app))
                # Stopped before the MCP service closes its own stores.
                sweeper.start()
                running.callback(sweeper.stop)
                yield
        finally:
            await state.aclose()

    app = _ProxyApp(
        lifespan=lifespan,
        routes=[
            *([mcp.route] if mcp is not None else []),
            Route("/v1/chat/completions", _chat_completions, methods=["POST"]),
            Route("/v1/embeddings", _embeddings, methods=["POST"]),
            Route("/v1/models", _models, methods=["GET"]),
            # :path, as a model's name holds a "/" (Qwen/Qwen2.5-7B-Instruct).
            Route("/v1/models/{model:path}", _model, methods=["GET"]),
            Route("/health", _health, methods=["GET"]),
            Route("/metrics", _metrics, methods=["GET"]),
            Route("/v1/ctxproto/invalidate", _invalidate, methods=["POST"]),
            *routes,
        ],
        exception_handlers={
            HTTPException: _http_error,
            CtxprotoError: _ctxproto_error,
            Exception: _unexpected_error,
        },
    )
    app.state.proxy = state
    app.state.mcp = mcp
    app.state.store_health = StoreHealth()
    return app


class _ProxyApp(Starlette):
    """Starlette with ``RequestIdMiddleware`` outside all of Starlette's own middleware.

    Outside ``ServerErrorMiddleware`` too, which answers an unexpected exception with
    the 500: as a user middleware (inside it), that 500 went out with no request id
    and the traceback's log line named none.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return RequestIdMiddleware(super().build_middleware_stack())


def _swept_session_stores(state: ProxyState, mcp: McpEndpoint | None) -> SessionSweeper:
    """The sweeper of every session store with an idle TTL (the sessions', each
    summarizer's, the MCP memory's), which has swept them once.

    Here, before a server runs the app, not in its lifespan: collecting the stores
    opens the MCP memory summarizer's, and opening or sweeping a store can fail. In
    the lifespan, uvicorn printed that failure as its own traceback and ``ctxproto
    serve`` then said the proxy could not start on its address, where every other
    store failing at start is one line naming the store.
    """
    stores = state.flow.session_stores()
    sweeper = SessionSweeper(stores + (mcp.service.session_stores() if mcp else []))
    sweeper.sweep()
    return sweeper


def _mcp_endpoint(state: ProxyState) -> McpEndpoint | None:
    """The MCP server at /mcp over the same state, when the mcp extra is installed."""
    if importlib.util.find_spec("mcp") is None:
        return None
    from ctxproto.mcp.http import mcp_endpoint

    return mcp_endpoint(state)


def _state(request: Request) -> ProxyState:
    state: ProxyState = request.app.state.proxy
    return state


async def _models(request: Request) -> JSONResponse:
    state = _state(request)
    state.tenants.authenticate(request.headers.get("authorization"))
    cards = [ModelCard(id=name) for name in state.models]
    return JSONResponse(ModelList(data=cards).model_dump())


async def _model(request: Request) -> JSONResponse:
    """One model's card, as OpenAI's API answers ``GET /v1/models/{model}``: the openai
    client's ``models.retrieve`` got a 404 for the route, for a model the list names.
    A name clients may not use is the chat route's 404 ``model_not_found``."""
    name: str = request.path_params["model"]
    if not name:  # /v1/models/, which the list answered before this route
        return await _models(request)
    state = _state(request)
    state.tenants.authenticate(request.headers.get("authorization"))
    if name not in state.models:
        raise _unknown_model(name)
    return JSONResponse(ModelCard(id=name).model_dump())


def _unknown_model(name: str) -> APIError:
    return APIError(
        404, f"the model '{name}' does not exist", code="model_not_found", param="model"
    )


async def _health(request: Request) -> JSONResponse:
    """200 when the upstream and every store answer; else 503 with each reason.

    The stores are the flow's (sessions, the pipeline's) and those the MCP
    endpoint opened itself.
    """
    state = _state(request)
    checks = state.flow.store_checks()
    mcp: McpEndpoint | None = request.app.state.mcp
    if mcp is not None:
        checks.update(mcp.service.store_checks())
    store_health: StoreHealth = request.app.state.store_health
    upstream, stores = await asyncio.gather(_upstream_ready(state), store_health.check(checks))
    problems = [upstream] if upstream is not None else []
    problems += [f"{name}: {why}" for name, why in stores.items() if why != OK]
    body: dict[str, Any] = {
        "status": "unavailable" if problems else "ok",
        "upstream": upstream or OK,
        "stores": stores,
    }
    if problems:
        body["reason"] = "; ".join(problems)
    return JSONResponse(body, status_code=503 if problems else 200)


async def _upstream_ready(state: ProxyState) -> str | None:
    """The upstream's readiness, within the same bound as each store's check."""
    with anyio.move_on_after(STORE_TIMEOUT_S):
        return await state.upstream.ready()
    return f"upstream: no answer within {STORE_TIMEOUT_S:g} s"


async def _invalidate(request: Request) -> JSONResponse:
    """Drop the cached answers built on a source (a document that changed); admin keys only."""
    state = _state(request)
    tenant = state.tenants.authenticate(request.headers.get("authorization"))
    if not state.tenants.open and not tenant.admin:
        raise APIError(
            403,
            f"tenant '{tenant.id}' may not invalidate cached answers (needs admin: true)",
            code="permission_denied",
        )
    body = parse_body(InvalidationRequest, await read_json_body(request, state.limits))
    dropped = await anyio.to_thread.run_sync(state.flow.invalidate, body.source)
    return JSONResponse(InvalidationResponse(source=body.source, dropped=dropped).model_dump())


async def _metrics(request: Request) -> Response:
    return Response(
        _state(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


async def _chat_completions(request: Request) -> Response:
    state = _state(request)
    tenant = state.tenants.authenticate(request.headers.get("authorization"))
    body = await read_json_body(request, state.limits)
    chat = parse_chat_request(body)
    if chat.model is not None and chat.model not in state.models:
        raise _unknown_model(chat.model)
    headers = request.headers
    stateful = _stateful(headers.get("x-ctxproto-session-mode", state.session_mode))
    session = named_session(headers, chat.user)
    if session is None:
        if stateful:
            raise APIError(
                400,
                "stateful mode needs an x-session-id header or a 'user'",
                code="missing_session",
            )
        session = conversation_session(body["messages"])
    no_cache = "no-cache" in headers.get("cache-control", "").lower()
    use_cache = (
        not no_cache
        and not chat.answer_shapers
        and headers.get("x-ctxproto-cache", "").lower() != "bypass"
    )
    use_pipeline = headers.get("x-ctxproto-pipeline", "on").lower() != "off"
    state.tenants.enter(tenant)
    turn: Turn | None = None
    streaming = False
    try:
        with state.cutoff.guard():
            turn = await state.flow.prepare(
                body["messages"],
                tenant=tenant.id,
                session=session,
                stateful=stateful,
                use_cache=use_cache,
                use_pipeline=use_pipeline,
                answer_limit=chat.answer_tokens,
            )
        model = chat.model or state.models[0]
        forward = {**body, "messages": turn.messages}
        if chat.stream:
            with state.cutoff.guard():
                source = await _open_stream(state, turn, forward, model)
            streamed = turn

            def release() -> None:
                state.flow.release(streamed)
                state.tenants.leave(tenant)

            response: Response = TurnStream(
                state,
                turn,
                source,
                model=model,
                include_usage=chat.include_usage,
                release=release,
                headers={**_turn_headers(turn), "cache-control": "no-cache"},
            )
            streaming = True  # the stream releases the session and the tenant slot
            return response
        answer = await _answer(request, state, turn, forward, model)
        if answer is None:
            return _client_gone(state)
        return JSONResponse(
            answer.model_dump(exclude_none=False),
            headers=_turn_headers(turn),
            background=BackgroundTask(_once_sent, partial(state.record, turn, answer.usage)),
        )
    finally:
        if not streaming:
            if turn is not None:
                state.flow.release(turn)
            state.tenants.leave(tenant)


async def _embeddings(request: Request) -> Response:
    """Embeddings forwarded as they came, so a RAG app keeps one client for the proxy.

    No pipeline, session or cache: a text to embed is no conversation. The tenant's
    key, its limits and the body's bounds are the chat route's; the upstream gets
    its own key (``RemoteUpstream``), the client's ``model`` as it named it, and
    the answer goes back as the upstream sent it.
    """
    state = _state(request)
    tenant = state.tenants.authenticate(request.headers.get("authorization"))
    body = await read_json_body(request, state.limits)
    parse_body(EmbeddingRequest, body)
    state.tenants.enter(tenant)
    try:
        started = time.perf_counter()
        with state.cutoff.guard():
            answer = await _unless_disconnected(request, state.upstream.embeddings(body))
        if answer is None:
            return _client_gone(state)
        seconds = time.perf_counter() - started
        return Response(
            answer,
            media_type="application/json",
            background=BackgroundTask(
                _once_sent, partial(state.metrics.forwarded, "embeddings", tenant.id, seconds)
            ),
        )
    finally:
        state.tenants.leave(tenant)


def _client_gone(state: ProxyState) -> Response:
    """The answer to a client that left before its answer came; nobody reads it."""
    state.metrics.client_left()
    note_error(499, CLIENT_CLOSED_REQUEST, "the client left before its answer came")
    return Response(status_code=499)


def _stateful(mode: str) -> bool:
    """The session mode a request asks for: any other value is a 400, not stateless,
    which would forward the new messages alone, the history silently left out."""
    mode = mode.strip().lower()
    if mode not in ("stateless", "stateful"):
        raise APIError(
            400,
            f"x-ctxproto-session-mode must be 'stateless' or 'stateful', not '{mode[:50]}'",
            code="invalid_value",
            param="x-ctxproto-session-mode",
        )
    return mode == "stateful"


async def _answer(
    request: Request, state: ProxyState, turn: Turn, forward: dict[str, Any], model: str
) -> ChatCompletionResponse | None:
    """The whole answer, cancelled (upstream included) if the client disconnects."""
    response: ChatCompletionResponse | None
    if turn.answer is not None:
        response = _cached_response(state, turn, model)
    else:
        started = time.perf_counter()
        with state.cutoff.guard():
            response = await _unless_disconnected(
                request,
                state.upstream.complete(
                    forward, tenant=turn.tenant, cache_messages=turn.cache_messages
                ),
            )
        if response is None:
            return None
        state.metrics.upstream_latency.labels(route="chat_completions", stream="false").observe(
            time.perf_counter() - started
        )
        response.model = model
        await _count(state, turn)
    choice = response.choices[0] if response.choices else None
    message = choice.message.model_dump(exclude_none=True) if choice else None
    await state.flow.finish(
        turn,
        message,
        choice.finish_reason if choice else None,
        response.usage.completion_tokens if response.usage else None,
    )
    return response


async def _once_sent(count: Callable[[], None]) -> None:
    """Count a plain answer as answered once it is sent: a client gone as it was written
    did not get it, and is counted as that instead (``_unexpected_error``), not twice.

    A coroutine, so that Starlette's background task runs it on the event loop rather
    than in a worker thread the pipeline's work may be queued for."""
    count()


async def _unless_disconnected(
    request: Request, work: Coroutine[Any, Any, Answer]
) -> Answer | None:
    """``work``'s result, or ``None`` once the client has gone (``work`` is cancelled)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
    if watcher.done() and not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    return task.result() if not task.cancelled() else None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _cached_response(state: ProxyState, turn: Turn, model: str) -> ChatCompletionResponse:
    answer = turn.answer or ""
    counter = state.flow.counter
    tokens = counter.count(answer) if counter is not None else 0
    return ChatCompletionResponse(
        model=model,
        choices=[Choice(message=ResponseMessage(content=answer), finish_reason="stop")],
        usage=Usage.of(0, tokens),
    )


async def _open_stream(
    state: ProxyState, turn: Turn, forward: dict[str, Any], model: str
) -> AsyncIterator[ChatCompletionChunk]:
    """The upstream's chunks, or a semantic-cache hit replayed as a stream.

    The prompt is counted once the upstream has accepted the request, while it
    computes its first token rather than before asking it; a count that fails
    (or the server's cutoff) closes the stream it opened, which no response
    will own.
    """
    if turn.answer is not None:
        response = _cached_response(state, turn, model)
        return replay_chunks(response.choices[0].message.content or "", response.usage)
    source = await state.upstream.stream(
        forward, tenant=turn.tenant, cache_messages=turn.cache_messages
    )
    try:
        await _count(state, turn)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await close_source(source)
        raise
    return source


async def _count(state: ProxyState, turn: Turn) -> None:
    """Token counts for a turn the pipeline did not run on (off, or none configured)."""
    if turn.result is None:
        tokens = await anyio.to_thread.run_sync(state.count_messages, turn.messages)
        turn.original_tokens = turn.prompt_tokens = tokens


def _turn_headers(turn: Turn) -> dict[str, str]:
    return {
        "x-ctxproto-cache": turn.cache,
        "x-ctxproto-original-tokens": str(turn.original_tokens),
        "x-ctxproto-prompt-tokens": str(turn.prompt_tokens),
        "x-ctxproto-saved-tokens": str(turn.saved_tokens),
        "x-ctxproto-session": quote(turn.session, safe=_HEADER_SAFE),
    }


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    error = APIError(
        exc.status_code,
        f"{request.method} {request.url.path}: {exc.detail}",
        code=codes.get(exc.status_code, "http_error"),
    )
    # Starlette's own headers stay: a 405 must say which methods are allowed.
    return _answer_error(request, error, headers=dict(exc.headers or {}))


async def _ctxproto_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CtxprotoError)
    return _answer_error(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    record = current_request()
    if isinstance(exc, (OSError, ClientDisconnect)) and record is not None and record.client_gone:
        # The server's send raised (ASGI 2.4): the client hung up as its answer was
        # written. Its doing, not ours: counted and logged as a 499 (once: the route
        # may have seen it leave first), no traceback.
        if record.error_status != 499:
            _state(request).metrics.client_left()
            note_error(499, CLIENT_CLOSED_REQUEST, "the client left as its answer was sent")
        return Response(status_code=499)  # sent to no one: the client is gone
    log.exception("unexpected error answering %s %s", request.method, request.url.path)
    return _answer_error(request, APIError(500, "internal error", code="internal_error"))


def _answer_error(
    request: Request, exc: CtxprotoError, *, headers: dict[str, str] | None = None
) -> Response:
    error = to_api_error(exc)
    _state(request).metrics.errors.labels(code=error.code).inc()
    return error_response(error, headers)
