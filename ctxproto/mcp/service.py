"""The work behind the MCP tools, over the process's own flow, stores and caps.

Nothing here speaks MCP: ``ContextService`` takes a tenant id (decided by the
transport) and plain arguments, returns the result models, and raises the
SDK's errors (``ConfigError`` for bad input, ``BudgetError``, ``StoreError``),
which the server turns into tool errors. It adds no stage, budget or cache of
its own: ``assemble`` runs the configured pipeline through ``ContextFlow.run``,
``compress`` runs the ``token_compressor`` stage, ``search`` the knowledge base
``ctxproto index`` built, and the cache tools the guarded ``SemanticCache``.

Every result is capped in tokens (``McpConfig.cap``): the text a tool returns
(messages, the compressed text, entries, chunks, an answer) fits the cap, as
context7's ``tokens`` parameter and unlike a whole-graph ``read_graph``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from ctxproto.budget import Budget
from ctxproto.context import ChatRequest, Context
from ctxproto.documents import Document
from ctxproto.errors import BudgetError, ConfigError, StoreError
from ctxproto.limits import MAX_REQUEST_BYTES
from ctxproto.mcp.memory import EntryKind, SessionMemory
from ctxproto.mcp.results import (
    AssembledContext,
    CacheLookup,
    CompressedText,
    Forgotten,
    HistoryPage,
    KnowledgeChunk,
    KnowledgeResults,
    Recalled,
    Remembered,
    StageSummary,
    Stats,
    StoredAnswer,
)
from ctxproto.mcp.stats import UsageStats
from ctxproto.messages import Message, non_text_part
from ctxproto.retrieval.knowledge_base import KnowledgeBase
from ctxproto.retrieval.packing import pack_to_budget
from ctxproto.serve.config import McpConfig
from ctxproto.serve.flow import ContextFlow
from ctxproto.stages.semantic_cache import METADATA_KEY, SemanticCacheLookup
from ctxproto.stages.token_compressor import TokenCompressor
from ctxproto.stores.semantic_cache import SemanticCache
from ctxproto.stores.session_state import SessionStore
from ctxproto.stores.store_url import redact_url
from ctxproto.stores.vector_backend import vector_store_exists
from ctxproto.tokens import TokenCounter, get_counter

__all__ = ["ContextService"]


class ContextService:
    """Assemble, compress, remember, recall, search and cache for one process."""

    def __init__(self, flow: ContextFlow, config: McpConfig | None = None) -> None:
        self.flow = flow
        self.config = config or McpConfig()
        self.counter: TokenCounter = flow.counter or get_counter()
        self.memory = SessionMemory(flow.store)
        self.usage = UsageStats(flow.store)
        self._compressor: TokenCompressor | None = None
        self._cache: SemanticCache | None = None
        self._own_cache = False
        """Whether ``_cache`` is ``mcp.cache``, opened (and closed) here, not the pipeline's."""
        self._knowledge: dict[str, KnowledgeBase] = {}
        self._lock = threading.Lock()
        self._compress_lock = threading.Lock()
        self._search_lock = threading.Lock()

    # -- assemble_context ----------------------------------------------------

    def assemble(
        self,
        tenant: str,
        session: str,
        messages: list[dict[str, Any]],
        *,
        documents: list[dict[str, Any]] | None = None,
        query: str | None = None,
        budget: int | None = None,
    ) -> AssembledContext:
        """The configured pipeline over ``messages``, fitted to the budget and the cap."""
        if query:
            messages = [*messages, {"role": "user", "content": query}]
        size = _request_bytes(messages, documents)
        if size > MAX_REQUEST_BYTES:
            raise ConfigError(
                f"messages and documents take {size:,} bytes as UTF-8 JSON, over the "
                f"{MAX_REQUEST_BYTES:,} a request may have",
                key="messages",
            )
        found = non_text_part(messages)
        if found is not None:  # the stages keep text parts only: the part would be lost
            raise ConfigError(
                f"message {found[0]} has a '{found[1]}' part; assemble_context reads text only",
                key=f"messages[{found[0]}].content",
            )
        request = ChatRequest.from_openai(
            messages, documents=documents, session_id=session, tenant_id=tenant
        )
        result = self.flow.run(request.to_context(), budget=self._budget(budget))
        prompt = result.prompt
        answer = result.answer
        prompt_tokens = prompt.prompt_tokens if prompt is not None else 0
        lookup = _looked_up(result.context)
        self._record(tenant, session, result.original_tokens, prompt_tokens, answer, lookup=lookup)
        return AssembledContext(
            messages=prompt.messages if prompt is not None else [],
            original_tokens=result.original_tokens,
            prompt_tokens=prompt_tokens,
            saved_tokens=max(result.original_tokens - prompt_tokens, 0),
            budget=prompt.budget if prompt is not None else None,
            dropped=prompt.dropped if prompt is not None else {},
            repairs=result.context.repairs,
            cached_answer=answer,
            stages=[StageSummary(**r.model_dump()) for r in result.reports],
        )

    def _budget(self, requested: int | None) -> Budget | None:
        """The pipeline's budget, lowered to the request's and to the tool's cap.

        Compared by ``prompt_limit``, what the assembler enforces: a context window
        less its answer reserve may be below ``max_prompt_tokens``. The reserve is
        kept as configured, so the prompt still leaves the answer its room.
        """
        cap = self.config.cap("assemble_context")
        limit = min(requested, cap) if requested is not None else cap
        own = self.flow.pipeline.budget if self.flow.pipeline is not None else None
        if own is None:
            return Budget(max_prompt_tokens=limit)
        if own.prompt_limit <= limit:
            return None  # the pipeline's own budget is the lowest already
        return own.model_copy(update={"max_prompt_tokens": limit})

    # -- compress_text -------------------------------------------------------

    def compress(
        self,
        tenant: str,
        session: str,
        text: str,
        *,
        question: str | None = None,
        rate: float | None = None,
        target_tokens: int | None = None,
    ) -> CompressedText:
        """``text`` cut to ``rate`` of its tokens and at most ``target_tokens`` (and the cap)."""
        cap = self.config.cap("compress_text")
        limit = min(target_tokens, cap) if target_tokens is not None else cap
        base = self._token_compressor()
        update: dict[str, Any] = {"max_tokens": limit, "targets": ("documents",)}
        if rate is not None:
            update["rate"] = rate
        elif target_tokens is not None:
            update["rate"] = 1.0  # the token target alone decides
        stage = base.model_copy(update=update)
        query = Message(role="user", content=question) if question else None
        context = Context(documents=[Document(id="text", text=text)], query=query)
        with self._compress_lock:
            result = stage.run(context, self.counter)
        kept = result.context.documents
        out = kept[0].text if kept else ""
        if text.strip() and not out.strip():
            # The stage's last resort drops whole sentences and never cuts a number, URL
            # or code block: a text made of such sentences can lose every one. An empty
            # result would read as "nothing worth keeping" to the model that asked.
            target = result.report.counters.get("target_tokens", limit)
            raise ConfigError(
                f"none of the text could be kept within {target} tokens: numbers, "
                "identifiers, URLs, code and quotes are never cut, and the sentences holding "
                "them take more; ask for more tokens (rate, target_tokens) or pass less text",
                key="target_tokens" if target_tokens is not None else "rate",
            )
        original, tokens = self.counter.count(text), self.counter.count(out)
        self._record(tenant, session, original, tokens, None)
        return CompressedText(
            text=out, original_tokens=original, tokens=tokens, counters=result.report.counters
        )

    def _token_compressor(self) -> TokenCompressor:
        """A compressor with the pipeline's settings, if it has one; its own model instance."""
        with self._lock:
            if self._compressor is None:
                stages = self.flow.pipeline.stages if self.flow.pipeline is not None else []
                configured = [s for s in stages if isinstance(s, TokenCompressor)]
                params = configured[0].model_dump() if configured else {}
                self._compressor = TokenCompressor.model_validate(params)
            return self._compressor

    # -- remember / recall ---------------------------------------------------

    def remember(
        self, tenant: str, session: str, text: str, kind: EntryKind, role: str | None
    ) -> Remembered:
        entry = self.memory.add(tenant, session, kind, text, role)
        return Remembered(session_id=session, id=entry.id)

    def forget(
        self, tenant: str, session: str, entry_id: str | None, all_entries: bool
    ) -> Forgotten:
        """One entry, or with ``all_entries`` the whole session: its entries, its summary,
        and its usage counts, which are kept under its id."""
        if (entry_id is None) != all_entries:
            raise ConfigError(
                "give the id of one entry, or all_entries=true for the whole session"
                if entry_id is None
                else "give the id of one entry or all_entries=true, not both",
                key="entry_id",
            )
        forgotten = self.memory.forget(tenant, session, entry_id)
        if all_entries:
            self.usage.forget(tenant, session)
        return forgotten

    def recall(
        self, tenant: str, session: str, query: str | None, max_tokens: int | None
    ) -> Recalled:
        cap = self.config.cap("recall")
        limit = min(max_tokens, cap) if max_tokens is not None else cap
        return self.memory.recall(tenant, session, query, limit, self.counter)

    def history(self, tenant: str, session: str, cursor: str | None) -> HistoryPage:
        cap = self.config.cap("recall")
        size = self.config.page_size
        return self.memory.page(tenant, session, cursor, size, cap, self.counter)

    def summary(self, tenant: str, session: str) -> str | None:
        return self.memory.summary(tenant, session)

    # -- search_knowledge ----------------------------------------------------

    def search(
        self, tenant: str, session: str, query: str, k: int, max_tokens: int | None
    ) -> KnowledgeResults:
        cap = self.config.cap("search_knowledge")
        limit = min(max_tokens, cap) if max_tokens is not None else cap
        knowledge = self._knowledge_base(tenant)
        with self._search_lock:
            found = knowledge.query(query, k=k, fetch_k=max(20, k))
        packed = pack_to_budget(found, self.counter, limit)
        self._record(tenant, session, 0, 0, None)
        return KnowledgeResults(
            chunks=[
                KnowledgeChunk(
                    id=d.id, text=d.text, score=d.score, source=d.source, metadata=d.metadata
                )
                for d in packed
            ],
            tokens=sum(self.counter.count(d.text) for d in packed),
            candidates=len(found),
        )

    def _knowledge_base(self, tenant: str) -> KnowledgeBase:
        """The tenant's store: ``{tenant}`` in the configured location keeps tenants apart.

        A folder or a ``postgresql://`` URL, as the ``retriever`` stage's. Only a
        store ``ctxproto index`` built is opened: ``KnowledgeBase`` starts an empty
        one where there is none, which would answer every search with nothing.
        """
        location = self.config.knowledge_location(tenant)
        with self._lock:
            knowledge = self._knowledge.get(location)
            if knowledge is None:
                if not vector_store_exists(location):
                    raise StoreError(
                        "this tenant has no knowledge store (build one: ctxproto index)"
                    )
                knowledge = KnowledgeBase(location, counter=self.counter)
                self._knowledge[location] = knowledge
            return knowledge

    # -- cached_answer / store_answer ----------------------------------------

    def cached_answer(
        self, tenant: str, session: str, question: str, context: str | None
    ) -> CacheLookup:
        """The cached answer to ``question``, if one is stored and fits the cap.

        Stats count what was served: an answer over the cap (stored before the
        cap was lowered) is refused and counts as a miss, never as a hit.
        """
        cache = self._semantic_cache()
        hit = cache.get(question, context=_context_key(context), namespace=_cache_namespace(tenant))
        cap = self.config.cap("cached_answer")
        tokens = self.counter.count(hit.answer) if hit is not None else 0
        served = hit.answer if hit is not None and tokens <= cap else None
        self._record(tenant, session, 0, 0, served, lookup=True)
        if hit is None:
            return CacheLookup(hit=False)
        if served is None:
            raise BudgetError(
                f"the cached answer has {tokens} tokens, over this tool's cap of {cap}",
                overflow_tokens=tokens - cap,
            )
        return CacheLookup(
            hit=True, answer=hit.answer, similarity=hit.similarity, cached_question=hit.query
        )

    def store_answer(
        self, tenant: str, session: str, question: str, answer: str, context: str | None
    ) -> StoredAnswer:
        cap = self.config.cap("cached_answer")
        if (tokens := self.counter.count(answer)) > cap:  # cached_answer would refuse it
            raise ConfigError(
                f"the answer has {tokens} tokens, over cached_answer's cap of {cap}: "
                "it could never be served",
                key="answer",
            )
        cache = self._semantic_cache()
        key = cache.put(
            question, answer, context=_context_key(context), namespace=_cache_namespace(tenant)
        )
        return StoredAnswer(key=key)

    def _semantic_cache(self) -> SemanticCache:
        """The pipeline's semantic cache, so MCP and proxy answers are one cache; else mcp.cache."""
        with self._lock:
            if self._cache is None:
                stages = self.flow.pipeline.stages if self.flow.pipeline is not None else []
                lookups = [s for s in stages if isinstance(s, SemanticCacheLookup)]
                if lookups:
                    lookups[0].warm_up()
                    self._cache = lookups[0].cache
                elif self.config.cache is not None:
                    self._cache = SemanticCache(
                        self.config.cache, threshold=self.config.cache_threshold
                    )
                    self._own_cache = True
                else:
                    raise ConfigError("no semantic cache is configured", key="mcp.cache")
            return self._cache

    # -- context_stats -------------------------------------------------------

    def stats(self, tenant: str, session: str | None) -> Stats:
        return self.usage.summary(tenant, session)

    def _record(
        self,
        tenant: str,
        session: str,
        original: int,
        prompt: int,
        answer: str | None,
        *,
        lookup: bool = False,
    ) -> None:
        hit = answer is not None
        self.usage.record(tenant, session, original, prompt, hit=hit, miss=lookup and not hit)

    # -- the stores of /health ----------------------------------------------

    def warm_up(self) -> None:
        """Open ``mcp.cache`` now, as the pipeline's stages open theirs at start.

        So a replica whose cache server is down fails at start naming it, and
        ``/health`` checks the cache before the first tool call, not after.
        With a ``semantic_cache`` stage in the pipeline, that stage's cache is the
        one used: the flow opens and reports it.
        """
        if self.config.cache is not None:
            self._semantic_cache()

    def store_checks(self) -> dict[str, Callable[[], None]]:
        """The stores this service opened itself, for ``/health`` beside the flow's.

        ``mcp.cache`` by its redacted location; ``mcp.knowledge`` by its configured
        folder, ``{tenant}`` left as written (``/health`` answers anyone, so it does
        not list tenants), its check reaching every tenant's store opened so far.
        """
        checks: dict[str, Callable[[], None]] = {}
        if self.config.knowledge is not None:
            checks[f"mcp.knowledge {redact_url(self.config.knowledge)}"] = self._ping_knowledge
        with self._lock:
            if self._own_cache and self._cache is not None and self.config.cache is not None:
                checks[f"mcp.cache {redact_url(self.config.cache)}"] = self._cache.ping
        return checks

    def session_stores(self) -> list[SessionStore]:
        """The session stores this service opened itself, for the server's sweep beside
        the flow's (``SessionSweeper``)."""
        return self.memory.session_stores()

    def _ping_knowledge(self) -> None:
        with self._lock:
            opened = list(self._knowledge.values())
        for knowledge in opened:
            knowledge.store.ping()

    def close(self) -> None:
        """Close what this service opened: memory, each tenant's knowledge store, ``mcp.cache``.

        The flow's stores are the flow's owner's to close. A knowledge store on
        PostgreSQL holds a pool of connections per tenant until closed here.
        """
        self.memory.close()
        with self._lock:
            opened, self._knowledge = list(self._knowledge.values()), {}
            if self._own_cache and self._cache is not None:
                self._cache.close()
                self._cache, self._own_cache = None, False
        for knowledge in opened:
            knowledge.close()


def _cache_namespace(tenant: str) -> str:
    """The tenant's namespace for the answers of ``cached_answer`` and ``store_answer``.

    Not the tenant id, which the pipeline's ``semantic_cache`` stage files under:
    its key for a chat with no system prompt (scope ``query``) is no context, as is
    an agent's lookup without one, so an answer an agent stored would be served to
    the proxy's chat users, and a chat's answer to agents. A ``:`` is never in a
    tenant id the config accepts, so no tenant's own namespace is this one.
    """
    return f"mcp:{tenant}"


def _context_key(context: str | None) -> str | None:
    """The cache's context for the tools' ``context``: an empty or blank one is none.

    Models fill an optional string argument with ``""`` as often as they leave it
    out, and the cache keys ``""`` apart from no context: an answer stored with
    ``context=""`` was never found by a lookup without one, nor the other way round.
    """
    return context if context is not None and context.strip() else None


def _request_bytes(messages: list[dict[str, Any]], documents: list[dict[str, Any]] | None) -> int:
    """The bytes of ``messages`` and ``documents`` as a request file holding them, UTF-8 JSON.

    Bytes, as ``MAX_REQUEST_BYTES`` counts a request file: counting characters let
    text in a script of three bytes a character through at three times the cap.
    Text no encoder can write (a lone surrogate, which a caller in this process can
    pass) is refused naming the item, not met by an error with no detail when the
    result is sent back.
    """
    size = 0
    for key, items in (("messages", messages), ("documents", documents or [])):
        for index, item in enumerate(items):
            encoded = json.dumps(item, ensure_ascii=False, default=str)
            try:
                size += len(encoded.encode("utf-8"))
            except UnicodeEncodeError:
                raise ConfigError(
                    "is not valid Unicode text (it holds a lone surrogate)",
                    key=f"{key}[{index}]",
                ) from None
    return size


def _looked_up(context: Context) -> bool:
    """Whether the pipeline's ``semantic_cache`` stage looked the query up.

    So a miss of ``assemble_context`` counts as one, as a hit does: counting hits
    alone made every hit rate of ``context_stats`` 100%. A lookup the stage
    skipped (no query) is neither.
    """
    record = context.metadata.get(METADATA_KEY)
    return isinstance(record, dict) and "hit" in record
