"""Bring the relevant chunks of a knowledge base into the context, within a token budget."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr

from ctxproto.context import Context
from ctxproto.errors import ConfigError
from ctxproto.models.embedder import get_embedder
from ctxproto.retrieval import KnowledgeBase, long_context_reorder, pack_to_budget
from ctxproto.stages.base import Stage, Transformed
from ctxproto.stages.registry import register_stage
from ctxproto.stores.store_url import redact_url, store_location
from ctxproto.stores.vector_backend import vector_store_exists
from ctxproto.tokens import TokenCounter

__all__ = ["Retriever"]


@register_stage("retriever")
class Retriever(Stage):
    """Queries the store at ``store`` with the current user query.

    Top ``fetch_k`` by cosine, then MMR down to ``k`` (``diversity`` 0 turns it
    off), dropped below ``min_score``, restricted by metadata ``filters``. With
    ``lexical_weight`` above 0 the search is hybrid: the top ``fetch_k`` by BM25
    join the candidates, ranked by their cosine and BM25 scores fused with that
    weight (``ctxproto.retrieval.fusion``), so a rare word of the question (a
    name, a code) finds the one chunk that holds it. Then the chunks are
    packed into ``max_tokens`` (most relevant per token first) and, with
    ``reorder``, laid out best-at-both-ends for long contexts. Retrieved chunks
    are appended after documents the request already carried.
    """

    store: str = Field(
        description="Store built by `ctxproto index`: a folder or a postgresql:// URL."
    )
    k: int = Field(default=5, ge=1)
    fetch_k: int = Field(default=20, ge=1)
    diversity: float = Field(default=0.3, ge=0.0, le=1.0)
    min_score: float | None = Field(default=None, ge=-1.0, le=1.0)
    filters: dict[str, Any] = Field(default_factory=dict)
    max_tokens: int | None = Field(default=None, ge=0, description="Token budget for chunks.")
    reorder: bool = False
    embedder: str = "default"
    lexical_weight: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of BM25 in the fused score (0: vectors only; folder stores).",
    )

    _knowledge_base: KnowledgeBase | None = PrivateAttr(default=None)

    def warm_up(self) -> None:
        if self._knowledge_base is None:
            _require_store(self.store)
            if self.lexical_weight > 0 and store_location(self.store) == "postgresql":
                raise ConfigError(
                    "hybrid retrieval needs a folder store; a postgresql:// store is "
                    "searched by vector only",
                    key="lexical_weight",
                    expected="0 with a postgresql:// store",
                )
            self._knowledge_base = KnowledgeBase(self.store, embedder=get_embedder(self.embedder))

    def store_checks(self) -> dict[str, Callable[[], None]]:
        if self._knowledge_base is None:
            return {}
        return {f"{self.type_name} {redact_url(self.store)}": self._knowledge_base.store.ping}

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        assert self._knowledge_base is not None  # Stage.run warmed it up
        query = context.query_text.strip()
        if not query:
            return Transformed(context=context, counters={"retrieved": 0, "kept": 0})
        found = self._knowledge_base.query(
            query,
            k=self.k,
            fetch_k=self.fetch_k,
            diversity=self.diversity,
            min_score=self.min_score,
            filters=self.filters or None,
            lexical_weight=self.lexical_weight,
        )
        present = {d.id for d in context.documents}
        fresh = [d for d in found if d.id not in present]
        kept = (
            pack_to_budget(fresh, counter, self.max_tokens)
            if self.max_tokens is not None
            else fresh
        )
        if self.reorder:
            kept = long_context_reorder(kept)
        return Transformed(
            context=context.model_copy(update={"documents": [*context.documents, *kept]}),
            counters={
                "retrieved": len(found),
                "kept": len(kept),
                "retrieved_tokens": sum(counter.count(d.text) for d in kept),
            },
        )


def _require_store(location: str) -> None:
    """Refuse a ``store`` that holds no store, rather than searching an empty one.

    ``KnowledgeBase`` starts a new, empty store in a missing folder or table,
    which is right for ``ctxproto index`` but turned a mistyped path into a
    pipeline that silently retrieved nothing. The check is made when the stage
    warms up, so a pipeline may be built before its index (the chat benchmark
    does so).
    """
    try:
        if vector_store_exists(location):
            return
    except ConfigError as exc:  # a URL of a scheme no store lives at
        raise ConfigError(
            exc.detail, key="store", expected="a folder or a postgresql:// URL"
        ) from None
    if store_location(location) == "postgresql":
        found = "the database holds no such store table"
    elif not (folder := Path(location)).exists():
        found = "nothing is there"
    elif not folder.is_dir():
        found = "it is a file"
    else:
        found = "the folder holds no store"
    shown = redact_url(location)
    raise ConfigError(
        f"no store at {shown} ({found})",
        key="store",
        expected=f"a store built by `ctxproto index SOURCES --store {shown}`",
    )
