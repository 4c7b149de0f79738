"""Keep the history turns, documents or sentences most relevant to the query, within a budget."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, PrivateAttr

from ctxproto.context import Context
from ctxproto.models.embedder import Embedder, get_embedder
from ctxproto.stages.base import Stage, Transformed
from ctxproto.stages.registry import register_stage
from ctxproto.text.protected_spans import fact_strings
from ctxproto.text.selection import select_within_budget
from ctxproto.text.sentences import sentence_spans
from ctxproto.text.units import Target, Unit, context_units, rebuild_context
from ctxproto.tokens import TokenCounter

__all__ = ["RelevanceFilter"]


@dataclass(frozen=True)
class _Piece:
    unit: int
    text: str
    cost: int


@register_stage("relevance_filter")
class RelevanceFilter(Stage):
    """Scores pieces of the context against the query and keeps the best within a budget.

    A piece is a history block (a tool call stays with its results), a document,
    or — with ``granularity: sentence`` — a sentence of a document or plain turn,
    the coarse, question-aware selection of LongLLMLingua (Jiang et al., 2023).
    Scores are cosine similarities of all-MiniLM-L6-v2 embeddings; the embedder
    memoizes vectors by text hash, so in a chat only the new turns are embedded
    and re-scoring the rest costs a dictionary lookup.

    The budget is ``max_tokens`` and/or ``rate`` (share of the candidates'
    tokens), the stricter wins; it bounds the tokens of the kept unpinned pieces.
    Kept pieces stay in their original order. ``recency_boost`` adds up to that
    much to newer history blocks (the newest gets all of it), so that a follow-up
    like "and the second one?" keeps its antecedent. Pinned messages and
    documents are never scored, dropped or counted. Without a query nothing
    changes.

    ``fact_boost`` adds up to that much to a piece for each fact of the query it
    names (a number, code or name, ``protected_spans.fact_strings``), the more
    the fewer pieces name it: a fact that every piece names tells none apart.
    MiniLM embeds "E4" and "E7", or two order numbers, almost alike: asked
    "What is error code E4 on the Thermo T3?", the sentence about E7
    outscored the one about E4, and the answer was cut.
    """

    max_tokens: int | None = Field(default=None, ge=0, description="Token budget for kept pieces.")
    rate: float | None = Field(default=None, gt=0, le=1, description="Share of tokens to keep.")
    targets: tuple[Target, ...] = ("history", "documents")
    granularity: Literal["unit", "sentence"] = "unit"
    recency_boost: float = Field(default=0.0, ge=0)
    fact_boost: float = Field(default=0.3, ge=0)
    min_score: float | None = Field(default=None, ge=-1, le=1)
    embedder: str = "default"

    _embedder: Embedder | None = PrivateAttr(default=None)

    def warm_up(self) -> None:
        if self._embedder is None:
            self._embedder = get_embedder(self.embedder)

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        query = context.query_text.strip()
        units = context_units(context, self.targets)
        pieces = self._pieces(units, counter)
        if not query or not pieces:
            return Transformed(context, {"pieces": len(pieces), "skipped": 1})
        assert self._embedder is not None  # Stage.run warmed it up
        known = self._embedder.memo_entries
        vectors = self._embedder.embed([query] + [p.text for p in pieces])
        scores = [float(s) for s in vectors[1:] @ vectors[0]]
        scores = self._boost(scores, pieces, units)
        scores = self._boost_facts(scores, pieces, query)
        total = sum(p.cost for p in pieces)
        budget = self._budget(total)
        eligible = [self.min_score is None or s >= self.min_score for s in scores]
        costs = [p.cost if ok else budget + 1 for p, ok in zip(pieces, eligible, strict=True)]
        keep = select_within_budget(scores, costs, budget)
        texts = _unit_texts(units, pieces, keep)
        scored = {p.unit for p in pieces}
        while any(keep) and _cost(scored, texts, counter) > budget:  # joins can add tokens
            weakest = min((i for i, k in enumerate(keep) if k), key=lambda i: scores[i])
            keep[weakest] = False
            texts = _unit_texts(units, pieces, keep)
        new_context = rebuild_context(context, units, texts)
        return Transformed(
            new_context,
            {
                "pieces": len(pieces),
                "kept_pieces": sum(keep),
                "candidate_tokens": total,
                "budget": budget,
                "newly_embedded": self._embedder.memo_entries - known,
            },
        )

    def _pieces(self, units: list[Unit], counter: TokenCounter) -> list[_Piece]:
        pieces = []
        for i, unit in enumerate(units):
            if unit.pinned or not unit.text.strip():
                continue
            if self.granularity == "sentence" and unit.editable:
                for span in sentence_spans(unit.text):
                    text = unit.text[span.start : span.end]
                    pieces.append(_Piece(i, text, counter.count(text)))
            else:
                pieces.append(_Piece(i, unit.text, counter.count(unit.text)))
        return pieces

    def _boost(self, scores: list[float], pieces: list[_Piece], units: list[Unit]) -> list[float]:
        blocks = sum(1 for u in units if u.kind == "history")
        if not self.recency_boost or not blocks:
            return scores
        boosted = []
        for score, piece in zip(scores, pieces, strict=True):
            unit = units[piece.unit]
            if unit.kind == "history":
                score += self.recency_boost * (unit.index + 1) / blocks
            boosted.append(score)
        return boosted

    def _boost_facts(self, scores: list[float], pieces: list[_Piece], query: str) -> list[float]:
        facts = [f for f in fact_strings(query) if len(f) > 1]  # a lone digit names little
        if not self.fact_boost or not facts:
            return scores
        boosted = list(scores)
        for fact in facts:
            naming = _naming(fact)
            named = [i for i, p in enumerate(pieces) if naming.search(p.text)]
            # A fact every piece names tells them apart no more than one none names.
            weight = self.fact_boost * (1 - len(named) / len(pieces))
            for i in named:
                boosted[i] += weight
        return boosted

    def _budget(self, total: int) -> int:
        budget = total
        if self.max_tokens is not None:
            budget = min(budget, self.max_tokens)
        if self.rate is not None:
            budget = min(budget, math.floor(total * self.rate))
        return budget


def _naming(fact: str) -> re.Pattern[str]:
    """Where a text names ``fact``: the same characters, in any case only where the fact
    has lowercase letters ("US" is not "us"), not inside a longer word or number ("E4"
    is not in "E40", "Hub 2" not in "Hub 2.1")."""
    flags = re.IGNORECASE if any(c.islower() for c in fact) else 0
    return re.compile(rf"(?<![^\W_])(?<!\d[.,]){re.escape(fact)}(?![.,]\d)(?![^\W_])", flags)


def _unit_texts(units: list[Unit], pieces: list[_Piece], keep: list[bool]) -> list[str | None]:
    """Each unit's new text: its kept pieces joined in order, ``None`` when none is kept."""
    parts: list[list[str] | None] = [None if not u.pinned else [u.text] for u in units]
    scored = {p.unit for p in pieces}
    for i, unit in enumerate(units):
        if i not in scored and not unit.pinned:
            parts[i] = [unit.text]  # empty or whitespace-only: nothing to score
    for piece, kept in zip(pieces, keep, strict=True):
        if kept:
            bucket = parts[piece.unit]
            if bucket is None:
                parts[piece.unit] = [piece.text]
            else:
                bucket.append(piece.text)
    return [None if p is None else "".join(p) for p in parts]


def _cost(scored: set[int], texts: list[str | None], counter: TokenCounter) -> int:
    """Tokens of the scored units as they will be sent."""
    return sum(counter.count(t) for i, t in enumerate(texts) if i in scored and t is not None)
