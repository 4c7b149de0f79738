"""One proxied turn through the SDK's own flow: pipeline -> upstream -> state.

The proxy adds no stage, budget or cache of its own: ``prepare`` runs the
configured ``Pipeline`` over the request's messages (in a worker thread, one
run at a time, as the stages keep state), and a semantic-cache hit answers
there; ``finish`` files the answer in the semantic cache and, in stateful mode,
appends the turn to the session's history.

Stateless mode (the default) is a drop-in: the client sends the whole
conversation and it is what the pipeline sees. In stateful mode the client
sends only the new messages; the history lives in the session store (on a
``redis://`` server, every replica sees it), and turns of one session are
answered one after the other by this process.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio.to_thread

from ctxproto.budget import Budget
from ctxproto.context import ChatRequest, Context
from ctxproto.messages import non_text_part
from ctxproto.pipeline import Pipeline, PipelineResult
from ctxproto.prompt import messages_sent_again
from ctxproto.serve.config import ServeConfig
from ctxproto.stages.base import Stage
from ctxproto.stages.semantic_cache import SemanticCacheLookup
from ctxproto.stores.session_state import SessionStateStore, SessionStore, open_session_store
from ctxproto.stores.store_url import redact_url
from ctxproto.tokens import TokenCounter

__all__ = ["CacheStatus", "ContextFlow", "Turn"]

CacheStatus = Literal["hit", "miss", "bypass"]
_HISTORY_VERSION = 1


@dataclass
class Turn:
    """What the pipeline made of one request."""

    tenant: str
    session: str
    messages: list[dict[str, Any]]
    """The messages to forward: assembled by the pipeline, or as received."""
    cache: CacheStatus
    answer_limit: int | None = None
    """The client's ``max_tokens``: a cache keys answers by it (``Context.answer_limit``)."""
    original_tokens: int = 0
    prompt_tokens: int = 0
    answer: str | None = None
    """Set on a semantic-cache hit: no upstream call is needed."""
    result: PipelineResult | None = None
    stateful_history: list[dict[str, Any]] | None = None
    """The stored conversation with this request's messages (stateful mode)."""
    sent: list[dict[str, Any]] = field(default_factory=list)
    """The messages the client sent, before any stored history joined them."""
    cache_messages: int | None = None
    """Leading messages the next turn sends again, when not all (``messages_sent_again``)."""
    lock: asyncio.Lock | None = field(default=None, repr=False)
    """The session's lock while this turn holds it (stateful mode)."""

    @property
    def saved_tokens(self) -> int:
        return max(self.original_tokens - self.prompt_tokens, 0)


class ContextFlow:
    """The pipeline and session state behind the proxy."""

    def __init__(self, pipeline: Pipeline | None, *, store: SessionStore | None = None) -> None:
        self.pipeline = pipeline
        self.store: SessionStore = store if store is not None else SessionStateStore()
        self._uncached = _without_cache(pipeline) if pipeline is not None else None
        self._run_lock = threading.Lock()
        self._session_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @classmethod
    def from_config(cls, config: ServeConfig, *, source: str | None = None) -> ContextFlow:
        """The pipeline and the session store a serve config describes."""
        pipeline = None
        if config.pipeline is not None:
            pipeline = Pipeline.from_dict(config.pipeline, source=source, key="pipeline")
        store = None
        sessions = config.sessions
        if sessions.store or sessions.idle_ttl_s is not None:
            store = open_session_store(
                sessions.store, namespace="sessions", idle_ttl_s=sessions.idle_ttl_s
            )
        return cls(pipeline, store=store)

    @property
    def counter(self) -> TokenCounter | None:
        return self.pipeline.counter if self.pipeline is not None else None

    def warm_up(self) -> None:
        if self.pipeline is not None:
            self.pipeline.warm_up()

    async def prepare(
        self,
        messages: list[dict[str, Any]],
        *,
        tenant: str,
        session: str,
        stateful: bool,
        use_cache: bool,
        use_pipeline: bool,
        answer_limit: int | None = None,
    ) -> Turn:
        """Run the pipeline on a request's messages (with the stored history if stateful).

        In stateful mode the session stays locked until ``finish`` or ``release``.
        ``answer_limit`` is the client's ``max_tokens`` (``Context.answer_limit``).
        """
        turn = Turn(
            tenant=tenant,
            session=session,
            messages=messages,
            cache="bypass",
            answer_limit=answer_limit,
        )
        if stateful:
            lock = self._session_lock(tenant, session)
            await lock.acquire()
            turn.lock = lock
        try:
            await self._prepare(turn, stateful, use_cache, use_pipeline)
        except BaseException:
            self.release(turn)
            raise
        return turn

    async def _prepare(
        self, turn: Turn, stateful: bool, use_cache: bool, use_pipeline: bool
    ) -> None:
        if stateful:
            history = await anyio.to_thread.run_sync(self._load_history, turn.tenant, turn.session)
            turn.sent = turn.messages
            turn.stateful_history = _merge(history, turn.messages)
            turn.messages = turn.stateful_history
        pipeline = self.pipeline if use_cache else self._uncached
        if pipeline is None or not use_pipeline or not _pipeline_reads(turn.messages):
            return
        context = _context(turn.messages, turn.tenant, turn.session, turn.answer_limit)
        result = await anyio.to_thread.run_sync(self._run, pipeline, context)
        turn.result = result
        turn.original_tokens = result.original_tokens
        turn.prompt_tokens = result.prompt_tokens
        turn.cache = "bypass" if not use_cache or not _has_cache(pipeline) else "miss"
        if result.answer is not None:
            turn.cache, turn.answer = "hit", result.answer
        elif result.prompt is not None:
            written = turn.messages[-1].get("content") if turn.messages else None
            turn.messages = result.prompt.messages
            turn.cache_messages = messages_sent_again(turn.messages, written)

    async def finish(
        self,
        turn: Turn,
        answer: dict[str, Any] | None,
        finish_reason: str | None = "stop",
        output_tokens: int | None = None,
    ) -> None:
        """File the upstream's answer (an assistant message) and release the session.

        What is cached follows ``Pipeline.after_answer``: an answer that ended of
        itself, or one cut at the client's own ``max_tokens``, filed for that cap
        only (never served whole to a client with a larger one). Tool calls are not.
        """
        try:
            if answer is None:
                return
            text = answer.get("content")
            cacheable = turn.cache == "miss" and not answer.get("tool_calls")
            if turn.result is not None and cacheable and isinstance(text, str) and text:
                await anyio.to_thread.run_sync(
                    self._remember, turn.result, text, finish_reason, output_tokens
                )
            if turn.stateful_history is not None:
                await anyio.to_thread.run_sync(
                    self._append_turn, turn.tenant, turn.session, [*turn.sent, answer]
                )
        finally:
            self.release(turn)

    def release(self, turn: Turn) -> None:
        """Let the session's next turn in; idempotent (never releases another turn's hold)."""
        lock, turn.lock = turn.lock, None
        if lock is not None:
            lock.release()

    def run(self, context: Context, *, budget: Budget | None = None) -> PipelineResult:
        """Run the pipeline (or, with no pipeline, the assembler alone) on a built context.

        For other surfaces in the process (the MCP server): they share this
        flow's one-run-at-a-time lock, as the stages keep state. ``budget``
        replaces the pipeline's own for this run; the stage objects are the same.
        Blocking: call it from a worker thread.
        """
        pipeline = self.pipeline or Pipeline()
        if budget is not None:
            pipeline = _derived(pipeline, pipeline.stages, budget)
        return self._run(pipeline, context)

    def store_checks(self) -> dict[str, Callable[[], None]]:
        """The session store and every store the pipeline's stages opened, by name."""
        checks = {f"sessions {redact_url(self.store.location)}": self.store.ping}
        for stage in self.pipeline.stages if self.pipeline is not None else []:
            checks.update(stage.store_checks())
        return checks

    def session_stores(self) -> list[SessionStore]:
        """The session store and every session store the pipeline's stages keep, for the
        server's sweep (``SessionSweeper``)."""
        stages = self.pipeline.stages if self.pipeline is not None else []
        return [self.store, *(store for stage in stages for store in stage.session_stores())]

    def invalidate(self, source: str) -> int:
        """Drop every cached answer built on ``source``, in every semantic cache of the pipeline.

        Sources are the documents the deployment indexes, shared by its tenants, so
        this is a deployment-wide operation. On a shared store (``redis://``) every
        replica's next lookup sees it. Blocking: call it from a worker thread.
        """
        stages = self.pipeline.stages if self.pipeline is not None else []
        return sum(
            stage.cache.invalidate(source=source)
            for stage in stages
            if isinstance(stage, SemanticCacheLookup)
        )

    def history(self, tenant: str, session: str) -> list[dict[str, Any]]:
        """The stored conversation of a stateful session."""
        return self._load_history(tenant, session)

    # -- internals -----------------------------------------------------------

    def _run(self, pipeline: Pipeline, context: Context) -> PipelineResult:
        with self._run_lock:
            return pipeline.run(context)

    def _remember(
        self,
        result: PipelineResult,
        answer: str,
        finish_reason: str | None,
        output_tokens: int | None,
    ) -> None:
        if self.pipeline is None:
            return
        with self._run_lock:
            self.pipeline.after_answer(result, answer, finish_reason, output_tokens)

    def _session_lock(self, tenant: str, session: str) -> asyncio.Lock:
        key = (tenant, session)
        lock = self._session_locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._session_locks[key] = lock
        return lock

    def _load_history(self, tenant: str, session: str) -> list[dict[str, Any]]:
        return _stored_messages(self.store.get(tenant, f"proxy:{session}"))

    def _append_turn(self, tenant: str, session: str, turn: list[dict[str, Any]]) -> None:
        """Add a turn to the stored conversation as it is now, in one store update.

        Not the conversation as this turn read it: another replica may have added
        a turn of the same session since, and a write of what was read would drop it.
        """

        def appended(state: dict[str, Any] | None) -> dict[str, Any]:
            messages = _merge(_stored_messages(state), turn)
            return {"version": _HISTORY_VERSION, "messages": messages}

        self.store.update(tenant, f"proxy:{session}", appended)


def _stored_messages(state: dict[str, Any] | None) -> list[dict[str, Any]]:
    history = (state or {}).get("messages", [])
    return list(history) if isinstance(history, list) else []


def _context(
    messages: list[dict[str, Any]], tenant: str, session: str, answer_limit: int | None
) -> Context:
    """The SDK's context of OpenAI messages; fields the SDK does not model are left out."""
    request = ChatRequest.from_openai(messages, session_id=session, tenant_id=tenant)
    return request.to_context().model_copy(update={"answer_limit": answer_limit})


def _pipeline_reads(messages: list[dict[str, Any]]) -> bool:
    """Whether the stages can work on ``messages`` (this request's, or a stateful
    session's stored history with them); when not, they pass to the upstream as sent.

    The stages read text: a conversation with an image, audio or a file would reach
    the upstream with those parts dropped. And they answer a user: without a user
    message (a system prompt alone, an assistant's turn) ``ChatRequest`` refuses
    the chat, for the SDK has nothing to answer, yet OpenAI's API takes it, and a
    proxy between the two should not refuse what its upstream would answer.
    """
    return non_text_part(messages) is None and any(m.get("role") == "user" for m in messages)


def _merge(history: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stored history with the new messages; new system messages replace the stored ones."""
    if new and new[0].get("role") in ("system", "developer"):
        history = [m for m in history if m.get("role") not in ("system", "developer")]
        count = 0
        while count < len(new) and new[count].get("role") in ("system", "developer"):
            count += 1
        return [*new[:count], *history, *new[count:]]
    return [*history, *new]


def _has_cache(pipeline: Pipeline) -> bool:
    return any(isinstance(stage, SemanticCacheLookup) for stage in pipeline.stages)


def _without_cache(pipeline: Pipeline) -> Pipeline:
    """The same stage objects minus the semantic cache, for requests that bypass it."""
    stages = [s for s in pipeline.stages if not isinstance(s, SemanticCacheLookup)]
    return _derived(pipeline, stages, pipeline.budget)


def _derived(pipeline: Pipeline, stages: list[Stage], budget: Budget | None) -> Pipeline:
    """A pipeline over ``stages`` (the same objects) with ``pipeline``'s settings."""
    return Pipeline(
        stages,
        budget,
        name=pipeline.name,
        tokenizer=pipeline.tokenizer,
        render=pipeline.render,
        counter=pipeline.counter,
        chat_template=pipeline.assembler.chat_template,
        documents_position=pipeline.documents_position,
    )
