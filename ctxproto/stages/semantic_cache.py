"""Answer a repeated question from the semantic cache, without calling the model."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator

from ctxproto.context import Context
from ctxproto.errors import StoreError
from ctxproto.messages import Message
from ctxproto.models.embedder import get_embedder
from ctxproto.stages.base import Stage, Transformed
from ctxproto.stages.folders import FolderOrRedisURL
from ctxproto.stages.registry import register_stage
from ctxproto.stores.semantic_cache.cache import CacheContext, Guard, SemanticCache
from ctxproto.stores.store_url import redact_url
from ctxproto.tokens import TokenCounter

__all__ = ["SemanticCacheLookup"]

METADATA_KEY = "semantic_cache"

Scope = Literal["query", "conversation", "documents"]

# First-person possessive/object pronouns, and "I" as the one who said or gave something.
_PERSONAL = re.compile(
    r"\b(my|mine|me|myself|our|ours|us)\b|\bI\s+(said|told|mentioned|gave|asked)\b|\bdid\s+I\b",
    re.IGNORECASE,
)


@register_stage("semantic_cache")
class SemanticCacheLookup(Stage):
    """Looks the query up in the cache at ``path``; a hit sets ``context.answer``.

    ``scope`` says what else an answer depends on, so that it is only reused in
    the same situation (GPTCache issue #8: "how old is he?" about two people):

    - ``query``: the query alone (FAQ-style questions);
    - ``conversation``: the summary plus the last ``context_turns`` history
      messages, so a follow-up only hits in the same conversation state;
    - ``documents``: the ids of the context's documents, so put this stage
      after ``retriever`` and an answer is reused only over the same chunks.

    A question about the user themself ("what is *my* order number?", "what did
    *I* say?") has a different answer in every conversation whatever the scope,
    so with ``personal_in_session`` such questions are looked up and stored only
    within their own session (a lexical test on first-person possessive and
    object pronouns; "how do I reset it?" stays shareable).

    The tenant id is the namespace: tenants never see each other's answers. On
    a miss the context's metadata records the lookup key; once the model has
    answered, ``after_answer`` (called by ``ChatSession``, or ``store`` when
    driving the pipeline by hand) caches the answer under that key, with the
    documents' sources, so ``invalidate(source=...)`` drops it.
    """

    path: FolderOrRedisURL = Field(
        description="Folder of the cache (created if missing), or a redis:// URL "
        "(#name picks the cache on the server) that replicas share."
    )
    threshold: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="Cosine a candidate needs; by default the learned guard's own floor, "
        "or 0.7 under 'rules' and 'off'.",
    )
    ttl: float | None = Field(default=None, gt=0, description="Seconds an answer stays valid.")
    scope: Scope = "conversation"
    context_turns: int = Field(default=2, ge=0)
    max_entries: int | None = Field(default=None, gt=0)
    max_bytes: int = Field(default=1 << 30, gt=0)
    guard: Guard = Field(
        default="learned",
        description="How a near question is judged the same: 'learned' (the fitted "
        "verifier), 'rules' (exact slots) or 'off' (cosine only); true/false mean rules/off.",
    )
    personal_in_session: bool = True
    embedder: str = "default"

    _cache: SemanticCache | None = PrivateAttr(default=None)

    @field_validator("guard", mode="before")
    @classmethod
    def _guard_switch(cls, value: object) -> object:
        """Configs written when the guard was an on/off switch keep their meaning."""
        if value is True:
            return "rules"
        if value is False:
            return "off"
        return value

    @property
    def cache(self) -> SemanticCache:
        self.warm_up()
        assert self._cache is not None
        return self._cache

    def warm_up(self) -> None:
        if self._cache is None:
            self._cache = SemanticCache(
                self.path,
                threshold=self.threshold,
                ttl=self.ttl,
                max_entries=self.max_entries,
                max_bytes=self.max_bytes,
                guard=self.guard,
                embedder=get_embedder(self.embedder),
            )

    def store_checks(self) -> dict[str, Callable[[], None]]:
        if self._cache is None:
            return {}
        return {f"{self.type_name} {redact_url(self.path)}": self._cache.ping}

    def context_key(self, context: Context) -> CacheContext:
        """What the answer to ``context.query`` depends on besides the query, per ``scope``.

        Whatever the scope, the system prompt: an answer written under one set of
        instructions ("answer in French", another product's assistant) is not an
        answer under another, and a proxy's clients each send their own. And the
        answer's token cap (``context.answer_limit``) when the caller set one.
        """
        personal = self.personal_in_session and bool(_PERSONAL.search(context.query_text))
        fixed = [f"session:{context.session_id or ''}"] if personal else []
        if context.system_prompt:
            digest = hashlib.sha256(context.system_prompt.encode()).hexdigest()[:32]
            fixed.append(f"system:{digest}")
        if context.answer_limit is not None:
            fixed.append(f"answer_limit:{context.answer_limit}")
        if self.scope == "query":
            return "\n".join(fixed) if fixed else None
        if self.scope == "documents":
            return [d.id for d in context.documents] + fixed
        recent = context.history[-self.context_turns :] if self.context_turns else []
        parts = [*fixed, context.summary or "", *(f"{m.role}: {m.text}" for m in recent)]
        return "\n".join(parts)

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        query = context.query_text
        # With scope "documents", a question no document supports is answered from the
        # conversation itself ("what is my order number?"): an answer cached under the
        # empty document set would be served to every other conversation.
        unsupported = self.scope == "documents" and not context.documents
        if not query.strip() or unsupported:
            skipped = {**context.metadata, METADATA_KEY: {"skipped": True}}
            return Transformed(
                context=context.model_copy(update={"metadata": skipped}),
                counters={"hit": 0, "skipped": 1},
            )
        key = self.context_key(context)
        hit = self.cache.get(query, context=key, namespace=context.tenant_id)
        record: dict[str, Any] = {
            "hit": hit is not None,
            "query": query,
            "context_key": key if key is None or isinstance(key, str) else list(key),
        }
        update: dict[str, Any] = {"metadata": {**context.metadata, METADATA_KEY: record}}
        if hit is not None:
            record.update(similarity=hit.similarity, matched_query=hit.query, key=hit.key)
            update["answer"] = hit.answer
        counters = {"hit": float(hit is not None)}
        if hit is not None:
            counters["similarity"] = hit.similarity
        return Transformed(context=context.model_copy(update=update), counters=counters)

    def after_answer(self, context: Context, answer: str) -> None:
        """Cache the model's answer to the query looked up in ``context``.

        Not an empty answer, and not one the model already gave, word for word, to an
        earlier message of this conversation: a model caught in a loop answers every
        question alike ("I'm here to assist you with any questions..."), and cached, that
        non-answer would be served to the next user who asks (docs/benchmarks.md,
        "answers that loop"). ``store`` files whatever it is given.
        """
        if answer.strip() and not _said_before(answer, context.history):
            self.store(context, answer)

    def store(self, context: Context, answer: str) -> str | None:
        """Cache ``answer`` for the query this stage looked up in ``context``; returns its key.

        Returns ``None`` without caching when the lookup was skipped (no query, or
        scope ``documents`` with no document).

        ``context`` is the pipeline result's context (``PipelineResult.context``);
        the key recorded at lookup is reused, so a later stage that changed the
        documents or history does not change what the answer is filed under.
        """
        record = context.metadata.get(METADATA_KEY)
        if isinstance(record, dict) and record.get("skipped"):
            return None
        if not isinstance(record, dict) or "query" not in record:
            raise StoreError("this context did not pass through the semantic_cache stage")
        sources = {d.source or d.id for d in context.documents}
        return self.cache.put(
            record["query"],
            answer,
            context=record["context_key"],
            namespace=context.tenant_id,
            sources=sources,
        )


def _said_before(answer: str, history: list[Message]) -> bool:
    """Whether an earlier assistant message of ``history`` is ``answer``, spacing aside."""
    said = " ".join(answer.split())
    return any(m.role == "assistant" and " ".join(m.text.split()) == said for m in history)
