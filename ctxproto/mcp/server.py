"""The MCP server: typed tools, resources and prompts over one ``ContextService``.

Each tool is a typed function whose return model is its output schema, as the
MCP SDK's own examples; the docstrings and field descriptions are what the
calling model reads. The service is lifespan state, not a global: one server
object serves stdio, memory (tests) and streamable HTTP the same way.

The tenant comes from the transport, never from an argument: over HTTP from
the bearer key (the same ``Tenants`` as the proxy), over stdio from the
config. The session is an explicit argument of every tool, so an agent keeps
its conversations apart on purpose. Misuse and failures (``CtxprotoError``)
become tool errors the model can read; the server keeps serving.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Concatenate, Literal, ParamSpec, TypeVar

import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import ToolAnnotations
from pydantic import BeforeValidator, Field

from ctxproto import __version__
from ctxproto.errors import CtxprotoError, StoreUnavailableError
from ctxproto.mcp.memory import ENTRY_ID
from ctxproto.mcp.results import (
    AssembledContext,
    CacheLookup,
    CompressedText,
    Forgotten,
    KnowledgeResults,
    Recalled,
    Remembered,
    Stats,
    StoredAnswer,
)
from ctxproto.mcp.service import ContextService
from ctxproto.serve.envelope import APIError
from ctxproto.serve.tenancy import MAX_SESSION_ID_CHARS, Tenants, TenantSlot

__all__ = ["McpRuntime", "create_mcp_server"]

T = TypeVar("T")
P = ParamSpec("P")

MAX_TEXT_CHARS = 2_000_000
"""Longer inputs are refused before any work (about 500k tokens)."""

SESSION_PATTERN = re.compile(rf"^[A-Za-z0-9_.:@-]{{1,{MAX_SESSION_ID_CHARS}}}$")
SessionId = Annotated[
    str,
    Field(
        pattern=SESSION_PATTERN.pattern,
        description="Your conversation's id: letters, digits and _.:@- only.",
    ),
]


def _no_boolean(value: Any) -> Any:
    """``value``, unless a boolean: pydantic's lax mode reads ``true`` as 1 where a
    number belongs, and ``budget: true`` was a one-token budget (``ctxproto._config_model``
    refuses it in configs for the same reason)."""
    if isinstance(value, bool):
        raise ValueError(f"Input should be a number, not a boolean, got {value}")
    return value


NoBoolean = BeforeValidator(_no_boolean)
"""On every numeric tool argument, after its bounds: it wraps what comes before it,
so it runs first, and the bounds stay JSON Schema's ``exclusiveMinimum``/``maximum``
(given after a validator, they were listed as pydantic's ``gt``/``le``)."""
LongText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
Tokens = Annotated[int, Field(gt=0, le=1_000_000), NoBoolean]
Share = Annotated[float, Field(gt=0, le=1), NoBoolean]

INSTRUCTIONS = (
    "ctxproto keeps prompts lean. Call assemble_context with the conversation before "
    "sending it to a model and send the messages it returns; recall, remember and forget "
    "keep session memory; search_knowledge finds document chunks; cached_answer may already "
    "know the answer. Outputs are capped in tokens; every tool takes your session_id."
)


@dataclass(frozen=True)
class McpRuntime:
    """The lifespan state: the service, and who the tenant is on this transport."""

    service: ContextService
    tenants: Tenants | None
    """The bearer keys over HTTP; ``None`` on stdio, where ``tenant`` is fixed."""
    tenant: str

    def tenant_of(self, ctx: Context[Any, Any]) -> str:
        if self.tenants is None:
            return self.tenant
        headers = ctx.headers or {}
        try:
            return self.tenants.authenticate(headers.get("authorization")).id
        except APIError as exc:
            raise ToolError(exc.message) from None


def create_mcp_server(
    service: ContextService, *, tenants: Tenants | None = None, tenant: str | None = None
) -> MCPServer[McpRuntime]:
    """An MCP server over ``service``: with ``tenants`` (HTTP) the bearer key names the
    tenant; without, every call is ``tenant`` (default: the config's ``mcp.tenant``)."""
    runtime = McpRuntime(service, tenants, tenant or service.config.tenant)

    @asynccontextmanager
    async def lifespan(_: MCPServer[McpRuntime]) -> AsyncIterator[McpRuntime]:
        # Per connection; the service outlives them all and its owner closes it.
        yield runtime

    with _root_logger_kept():
        server: MCPServer[McpRuntime] = MCPServer(
            "ctxproto", instructions=INSTRUCTIONS, version=__version__, lifespan=lifespan
        )
    reads = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    writes = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
    deletes = ToolAnnotations(
        read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
    )
    for tool, hints in (
        (assemble_context, reads),
        (compress_text, reads),
        (remember, writes),
        (recall, reads),
        (forget, deletes),
        (search_knowledge, reads),
        (cached_answer, reads),
        (store_answer, writes),
        (context_stats, reads),
    ):
        server.add_tool(tool, annotations=hints)
    server.resource(
        "ctxproto://sessions/{session_id}/summary",
        mime_type="text/plain",
        description="The latest summary remembered for a session (empty if none).",
    )(session_summary)
    server.resource(
        "ctxproto://sessions/{session_id}/history{?cursor}",
        mime_type="application/json",
        description="A session's remembered entries, a page at a time: pass next_cursor back.",
    )(session_history)
    server.resource(
        "ctxproto://stats{?session_id}",
        mime_type="application/json",
        description="Tokens saved and cache hits of this tenant (and of one session).",
    )(tenant_stats)
    server.prompt(description="Summarize a session for handover to another agent or person.")(
        handover
    )
    server.prompt(description="Answer a question from the knowledge base, lean and cited.")(
        answer_from_knowledge
    )
    return server


# -- tools -------------------------------------------------------------------


async def assemble_context(
    session_id: SessionId,
    messages: Annotated[
        list[dict[str, Any]],
        Field(
            min_length=1,
            max_length=10_000,
            description="OpenAI-style chat messages ({role, content, ...}), oldest first.",
        ),
    ],
    ctx: Context[McpRuntime, Any],
    documents: Annotated[
        list[dict[str, Any]] | None,
        Field(description="Extra documents ({id, text, ...}) the answer may draw on."),
    ] = None,
    query: Annotated[
        str | None,
        Field(max_length=MAX_TEXT_CHARS, description="The new user message, if not in messages."),
    ] = None,
    budget: Annotated[
        Tokens | None, Field(description="Most tokens the returned messages may take.")
    ] = None,
) -> AssembledContext:
    """Fit a conversation into a token budget: send the returned messages to the model
    instead of the originals. System prompt and latest message are kept; older turns are
    trimmed, summarized or compressed by the configured pipeline; the prefix stays stable
    turn after turn so the model's prompt cache keeps working. Reports tokens saved.
    If cached_answer is set, that answer is already known and no model call is needed."""
    return await _tool(
        ctx,
        _runtime(ctx).service.assemble,
        session_id,
        messages,
        documents=documents,
        query=query,
        budget=budget,
    )


async def compress_text(
    session_id: SessionId,
    text: LongText,
    ctx: Context[McpRuntime, Any],
    question: Annotated[
        str | None,
        Field(max_length=MAX_TEXT_CHARS, description="Keep what answers this question."),
    ] = None,
    rate: Annotated[Share | None, Field(description="Share of tokens to keep, e.g. 0.3.")] = None,
    target_tokens: Annotated[Tokens | None, Field(description="Most tokens to keep.")] = None,
) -> CompressedText:
    """Shorten a long text (a log, a page, a tool result) to a share of its tokens or a
    token count. Numbers, identifiers, URLs, e-mails, code and quotes are kept
    byte-exact; with a question, the sentences that answer it are kept first."""
    return await _tool(
        ctx,
        _runtime(ctx).service.compress,
        session_id,
        text,
        question=question,
        rate=rate,
        target_tokens=target_tokens,
    )


async def remember(
    session_id: SessionId,
    text: LongText,
    ctx: Context[McpRuntime, Any],
    kind: Annotated[
        Literal["turn", "note", "summary"],
        Field(
            description="turn: a conversation message; note: a fact; summary: replaces "
            "the session's summary."
        ),
    ] = "note",
    role: Annotated[
        Literal["user", "assistant", "system", "tool"] | None,
        Field(description="Who said it, for kind=turn."),
    ] = None,
) -> Remembered:
    """Store a turn, a note or a summary in the session's memory. Returns at once; the
    entry is visible to the next recall."""
    return await _tool(ctx, _runtime(ctx).service.remember, session_id, text, kind, role)


async def recall(
    session_id: SessionId,
    ctx: Context[McpRuntime, Any],
    query: Annotated[
        str | None,
        Field(max_length=MAX_TEXT_CHARS, description="What you need; without it, the latest."),
    ] = None,
    max_tokens: Annotated[Tokens | None, Field(description="Most tokens to return.")] = None,
) -> Recalled:
    """The session's summary plus its remembered turns and notes most relevant to the
    query, within a token cap, oldest first. Unknown sessions are an error."""
    return await _tool(ctx, _runtime(ctx).service.recall, session_id, query, max_tokens)


async def forget(
    session_id: SessionId,
    ctx: Context[McpRuntime, Any],
    entry_id: Annotated[
        str | None,
        Field(
            pattern=ENTRY_ID.pattern,
            description="The id remember returned (recall lists it) of the entry to remove.",
        ),
    ] = None,
    all_entries: Annotated[
        bool,
        Field(description="Remove every entry of the session, its summary and its stats."),
    ] = False,
) -> Forgotten:
    """Remove a remembered entry (entry_id), or everything the session remembers
    (all_entries=true), when the user asks you to forget it. What is removed is no longer
    recalled or summarized. An id the session does not hold removes nothing (removed: 0)."""
    return await _tool(ctx, _runtime(ctx).service.forget, session_id, entry_id, all_entries)


async def search_knowledge(
    session_id: SessionId,
    query: Annotated[str, Field(min_length=1, max_length=10_000)],
    ctx: Context[McpRuntime, Any],
    k: Annotated[int, Field(ge=1, le=100, description="Most chunks to return."), NoBoolean] = 5,
    max_tokens: Annotated[Tokens | None, Field(description="Most tokens to return.")] = None,
) -> KnowledgeResults:
    """Search the knowledge base (documents indexed with `ctxproto index`) and return
    the best chunks that fit the token cap, best first, with their sources."""
    return await _tool(ctx, _runtime(ctx).service.search, session_id, query, k, max_tokens)


async def cached_answer(
    session_id: SessionId,
    question: Annotated[str, Field(min_length=1, max_length=10_000)],
    ctx: Context[McpRuntime, Any],
    context: Annotated[
        str | None,
        Field(
            max_length=10_000,
            description="What the answer depends on besides the question (a document "
            "id, a version); answers stored with another context never match. Empty: none.",
        ),
    ] = None,
) -> CacheLookup:
    """Look up an answer given before to a question that means the same thing. The
    cache refuses near matches that ask something else (other numbers, names, or
    negation). On a hit, use the answer instead of calling a model."""
    return await _tool(ctx, _runtime(ctx).service.cached_answer, session_id, question, context)


async def store_answer(
    session_id: SessionId,
    question: Annotated[str, Field(min_length=1, max_length=10_000)],
    answer: LongText,
    ctx: Context[McpRuntime, Any],
    context: Annotated[
        str | None, Field(max_length=10_000, description="As in cached_answer.")
    ] = None,
) -> StoredAnswer:
    """Store an answer for cached_answer to find next time the question is asked."""
    return await _tool(
        ctx, _runtime(ctx).service.store_answer, session_id, question, answer, context
    )


async def context_stats(
    session_id: SessionId,
    ctx: Context[McpRuntime, Any],
) -> Stats:
    """Tokens saved and cache hits and misses: for this session and for all of yours."""
    return await _tool(ctx, _runtime(ctx).service.stats, session_id)


# -- resources and prompts ---------------------------------------------------


async def session_summary(session_id: str, ctx: Context[McpRuntime, Any]) -> str:
    runtime = _runtime(ctx)
    tenant = _resource_tenant(runtime, ctx, session_id)
    summary = await _resource(ctx, runtime.service.summary, tenant, session_id)
    return summary or ""


async def session_history(
    session_id: str, ctx: Context[McpRuntime, Any], cursor: str | None = None
) -> str:
    runtime = _runtime(ctx)
    tenant = _resource_tenant(runtime, ctx, session_id)
    page = await _resource(ctx, runtime.service.history, tenant, session_id, cursor)
    return page.model_dump_json()


async def tenant_stats(ctx: Context[McpRuntime, Any], session_id: str | None = None) -> str:
    runtime = _runtime(ctx)
    tenant = _resource_tenant(runtime, ctx, session_id)
    stats = await _resource(ctx, runtime.service.stats, tenant, session_id)
    return stats.model_dump_json()


def handover(session_id: str) -> str:
    return (
        f"Call recall with session_id '{session_id}' (no query) to read the session's "
        "summary and latest entries. Then write a handover summary for someone taking the "
        "conversation over: the goal, decisions made, open questions, and every number, "
        "identifier, path and URL that matters, copied exactly. Finally store it with "
        f"remember(session_id='{session_id}', kind='summary', text=<your summary>)."
    )


def answer_from_knowledge(question: str, session_id: str) -> str:
    return (
        f"First call cached_answer with session_id '{session_id}' and the question; on a "
        "hit, reply with that answer. Otherwise call search_knowledge with the question, "
        "answer only from the chunks it returns, cite their sources, and call store_answer "
        f"with your answer.\n\nQuestion: {question}"
    )


# -- plumbing ------------------------------------------------------------------


def _runtime(ctx: Context[McpRuntime, Any]) -> McpRuntime:
    return ctx.request_context.lifespan_context


def _resource_tenant(
    runtime: McpRuntime, ctx: Context[McpRuntime, Any], session_id: str | None = None
) -> str:
    """The caller's tenant; a resource URI's session id is checked as a tool argument is."""
    if session_id is not None and not SESSION_PATTERN.fullmatch(session_id):
        raise ResourceError(
            f"session_id: letters, digits and _.:@- only, at most {MAX_SESSION_ID_CHARS}"
        )
    try:
        return runtime.tenant_of(ctx)
    except ToolError as exc:
        raise ResourceError(str(exc)) from None


async def _tool(
    ctx: Context[McpRuntime, Any],
    method: Callable[Concatenate[str, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run a service method for the caller's tenant in a thread; our errors reach the
    model as tool errors. The tenant is resolved here, once for every tool, from the
    transport (``McpRuntime.tenant_of``), and passed first, before the tool's arguments."""
    tenant = _runtime(ctx).tenant_of(ctx)
    try:
        return await _work(ctx, functools.partial(method, tenant, *args, **kwargs))
    except CtxprotoError as exc:
        raise ToolError(_told(exc)) from exc


async def _resource(ctx: Context[McpRuntime, Any], function: Callable[..., T], *args: Any) -> T:
    try:
        return await _work(ctx, functools.partial(function, *args))
    except CtxprotoError as exc:
        raise ResourceError(_told(exc)) from exc


def _told(exc: CtxprotoError) -> str:
    """What a tool or resource error says: a store that did not answer is said to be
    temporary, as the proxy's 503 says it with ``retry-after``, so a model calls again
    later rather than giving the tool up as broken."""
    if isinstance(exc, StoreUnavailableError):
        return f"temporarily unavailable, try again in a few seconds: {exc}"
    return str(exc)


async def _work(ctx: Context[McpRuntime, Any], work: Callable[[], T]) -> T:
    """Run ``work`` in a thread, holding the tenant's slot its HTTP request took.

    The call runs in its session's task: its client may hang up and end the
    request meanwhile, and the work still counts against the tenant's limit
    (``TenantSlot``); work that starts after its request ended takes the slot
    anew, and over the limit fails as the tool's error (an ``APIError``, 429).
    Over stdio no request holds a slot.
    """
    scope = getattr(ctx.request_context.request, "scope", None)
    slot = TenantSlot.of(scope) if isinstance(scope, Mapping) else None
    with slot.held() if slot is not None else contextlib.nullcontext():
        return await anyio.to_thread.run_sync(work)


@contextlib.contextmanager
def _root_logger_kept() -> Iterator[None]:
    """Undo what the block does to the root logger's handlers and level.

    The MCP SDK's server constructor calls ``logging.basicConfig`` (a rich
    handler at INFO): in a process that had not configured logging, every
    library's INFO record would then be written, on every request (httpx logs
    each upstream request; over stdio, every failed tool call and faiss's
    loader reached the host's stderr). How the host process logs is its own
    choice, not a side effect of building a server.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
