"""LLMLingua-style prompt compression that never garbles numbers, names or identifiers."""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from dataclasses import dataclass, field

from pydantic import Field, PrivateAttr, field_validator

from ctxproto.context import Context
from ctxproto.errors import BudgetError
from ctxproto.models.device import resolve_device
from ctxproto.models.embedder import Embedder, get_embedder
from ctxproto.models.self_information import SelfInformationScorer
from ctxproto.stages.base import Stage, Transformed
from ctxproto.stages.registry import register_stage
from ctxproto.text.protected_spans import Span, compile_patterns, protected_spans
from ctxproto.text.selection import centrality, select_within_budget
from ctxproto.text.sentences import sentence_spans
from ctxproto.text.turns import block_of, group_blocks
from ctxproto.text.units import Target, Unit, context_units, rebuild_context
from ctxproto.tokens import TokenCounter

__all__ = ["TokenCompressor"]

_WORD = re.compile(r"\S+\s*")


@dataclass
class _Word:
    start: int
    end: int
    protected: bool
    dropped: bool = False


@dataclass
class _Sentence:
    unit: int
    start: int
    end: int
    cost: int
    hard: bool
    words: list[_Word]
    kept: bool = True
    relevance: float = 0.0
    whole: bool = False  # kept verbatim: among the most relevant to the query


@dataclass
class _Candidate:
    """A word the token pass may drop: how informative it is, and what dropping it saves."""

    surprisal: float
    word: _Word
    sentence: _Sentence
    saving: int


@dataclass
class _Plan:
    """Every target unit split into sentences and words, with what is kept so far."""

    units: list[Unit]
    texts: list[str]
    sentences: list[_Sentence] = field(default_factory=list)
    parseable: list[bool] = field(default_factory=list)

    def render(self, u: int) -> str:
        return "".join(self.render_sentence(s) for s in self.sentences if s.unit == u and s.kept)

    def render_sentence(self, s: _Sentence) -> str:
        """The sentence as kept so far: its leading space, then its words not dropped."""
        text = self.texts[s.unit]
        lead = text[s.start : s.words[0].start] if s.words else text[s.start : s.end]
        return lead + "".join(text[w.start : w.end] for w in s.words if not w.dropped)

    def cost(self, counter: TokenCounter) -> int:
        return sum(counter.count(self.render(u)) for u in range(len(self.units)))


@register_stage("token_compressor")
class TokenCompressor(Stage):
    """Compresses documents (and plain history turns) to ``rate`` of their tokens.

    Two passes, as LLMLingua/LongLLMLingua (Jiang et al., 2023):

    1. coarse — with a query, sentences are ranked by embedding similarity to it
       and the least relevant dropped until ``rate / fine_rate`` of the tokens
       remain; the ``keep_top_sentences`` most relevant stay verbatim;
    2. fine — the bundled LM scores each remaining token's self-information,
       conditioned on the query, and the least informative words go until the
       target (``rate`` of the tokens, and at most ``max_tokens``) is met.

    Protected spans (``ctxproto.text.protected_spans``: digits, identifiers, URLs,
    e-mails, code, quotes, capitalized names, and ``force_keep`` regexes) are
    never cut: words are dropped whole, and a word touching a protected span is
    kept, so those spans survive byte-exact (LLMLingua issues #93, #213).
    Sentences matching a ``force_keep`` regex are never dropped by either pass.
    Text that is not whitespace-separated Latin script (CJK, mixed scripts,
    binary) is only ever cut at sentence boundaries.
    """

    rate: float = Field(default=0.5, gt=0, le=1, description="Share of tokens to keep.")
    max_tokens: int | None = Field(default=None, ge=0, description="Hard cap on kept tokens.")
    targets: tuple[Target, ...] = ("documents",)
    fine_rate: float = Field(default=0.7, gt=0, le=1, description="Share the token pass keeps.")
    keep_top_sentences: int = Field(default=1, ge=0)
    force_keep: list[str] = Field(default_factory=list, description="Regexes kept byte-exact.")
    model: str = "default"
    embedder: str = "default"
    device: str = "auto"
    window_tokens: int = Field(default=384, ge=16, le=4096)
    batch_size: int = Field(default=4, ge=1)

    _scorer: SelfInformationScorer | None = PrivateAttr(default=None)
    _embedder: Embedder | None = PrivateAttr(default=None)

    @field_validator("force_keep")
    @classmethod
    def _valid_regexes(cls, patterns: list[str]) -> list[str]:
        try:
            compile_patterns(patterns)
        except re.error as exc:
            raise ValueError(str(exc)) from None
        return patterns

    def warm_up(self) -> None:
        device = resolve_device(self.device)  # a bad one refused before any model loads
        if self._embedder is None:
            self._embedder = get_embedder(self.embedder)
        if self._scorer is None:
            self._scorer = SelfInformationScorer(
                self.model,
                device=device,
                window_tokens=self.window_tokens,
                batch_size=self.batch_size,
            )

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        units = context_units(context, self.targets)
        # The question a request that ends on tool results asks stands in for the query
        # and, like it, is never cut (it was, to "Could you please lovely old Oslo").
        asked = block_of(group_blocks(context.history), context.open_question)
        units = [
            u
            for u in units
            if u.editable
            and not u.pinned
            and u.text.strip()
            and not (u.kind == "history" and u.index == asked)
        ]
        total = sum(counter.count(u.text) for u in units)
        target = math.ceil(total * self.rate)
        if self.max_tokens is not None:
            target = min(target, self.max_tokens)
        if total <= target:  # nothing to drop: the same counters, as a report reader expects
            return Transformed(context, {**dict.fromkeys(_COUNTERS, 0), **_met(target, total)})
        plan = self._plan(units, counter)
        query = context.query_text.strip()
        if query:
            self._coarse(plan, query, math.ceil(target / self.fine_rate))
        scored, candidates, reserve = self._fine(plan, query, target, counter)
        kept = _drop_words(plan, candidates, target, counter)
        # The most relevant sentences keep every word while the others' words meet the
        # target; when they cannot, those sentences give words too before any goes
        # whole: kept whole, one too long for the target was dropped by the last
        # resort, and the text lost the very sentence that answers the query.
        if kept > target and reserve:
            kept = _drop_words(plan, reserve, target, counter)
        candidates += reserve
        fallback_dropped = 0
        if kept > target:
            # Words alone cannot meet the target: choose whole sentences by what they
            # cost at the least, then give the kept ones back every word that fits.
            fallback_dropped = self._drop_sentences(plan, target, counter)
            for candidate in candidates:
                candidate.word.dropped = False
            kept_candidates = [c for c in candidates if c.sentence.kept]
            kept = _drop_words(plan, kept_candidates, target, counter)
        if self.max_tokens is not None and kept > self.max_tokens:
            raise BudgetError(
                f"token_compressor: force-kept content needs {kept} tokens, "
                f"{kept - self.max_tokens} more than max_tokens={self.max_tokens}",
                overflow_tokens=kept - self.max_tokens,
            )
        texts: list[str | None] = [plan.render(u) or None for u in range(len(units))]
        return Transformed(
            rebuild_context(context, units, texts),
            {
                **_met(target, kept),
                "sentences_dropped": sum(not s.kept for s in plan.sentences),
                "fallback_sentences_dropped": fallback_dropped,
                "words_dropped": sum(w.dropped for s in plan.sentences for w in s.words),
                "lm_tokens_scored": scored,
                "sentence_level_units": plan.parseable.count(False),
            },
        )

    def _plan(self, units: list[Unit], counter: TokenCounter) -> _Plan:
        plan = _Plan(units, [u.text for u in units])
        patterns = compile_patterns(self.force_keep)
        for u, unit in enumerate(units):
            text = unit.text
            protected = protected_spans(text, patterns)
            hard = protected_spans(text, patterns, kinds=())
            protected_starts = [p.start for p in protected]
            hard_starts = [h.start for h in hard]
            plan.parseable.append(_parseable(text))
            for span in sentence_spans(text, protected):
                words = [
                    _Word(m.start() + span.start, m.end() + span.start, False)
                    for m in _WORD.finditer(text[span.start : span.end])
                ]
                for word in words:
                    word.protected = _overlaps(word.start, word.end, protected, protected_starts)
                plan.sentences.append(
                    _Sentence(
                        unit=u,
                        start=span.start,
                        end=span.end,
                        cost=counter.count(text[span.start : span.end]),
                        hard=_overlaps(span.start, span.end, hard, hard_starts),
                        words=words,
                    )
                )
        return plan

    def _coarse(self, plan: _Plan, query: str, budget: int) -> None:
        """Keep the sentences most similar to the query within ``budget`` (LongLLMLingua)."""
        assert self._embedder is not None
        sentences = plan.sentences
        texts = [plan.texts[s.unit][s.start : s.end] for s in sentences]
        vectors = self._embedder.embed([query, *texts])
        for s, score in zip(sentences, vectors[1:] @ vectors[0], strict=True):
            s.relevance = float(score)
        ranked = sorted(range(len(sentences)), key=lambda i: -sentences[i].relevance)
        for i in ranked[: self.keep_top_sentences]:
            sentences[i].whole = True
        keep = select_within_budget(
            [s.relevance for s in sentences],
            [s.cost for s in sentences],
            budget,
            forced=[s.hard or s.whole for s in sentences],
        )
        for s, kept in zip(sentences, keep, strict=True):
            s.kept = kept

    def _fine(
        self, plan: _Plan, query: str, target: int, counter: TokenCounter
    ) -> tuple[int, list[_Candidate], list[_Candidate]]:
        """Score the unprotected words of the kept sentences with the LM.

        Returns the LM tokens scored, the droppable words, and the words of the
        sentences kept verbatim (``whole``), each least informative first.
        """
        assert self._scorer is not None
        units = [u for u in range(len(plan.units)) if plan.parseable[u]]
        if not units or plan.cost(counter) <= target:
            return 0, [], []
        before = self._scorer.tokens_scored
        texts = [plan.render(u) for u in units]
        candidates: list[_Candidate] = []
        reserve: list[_Candidate] = []
        for u, scores in zip(units, self._scorer.score(texts, query), strict=True):
            words: list[_Word] = []
            sentence_of: list[_Sentence] = []
            starts: list[int] = []  # where each word starts in the rendered (coarse) text
            position = 0
            for s in plan.sentences:
                if s.unit != u or not s.kept:
                    continue
                position += (s.words[0].start if s.words else s.end) - s.start
                for w in s.words:
                    words.append(w)
                    sentence_of.append(s)
                    starts.append(position)
                    position += w.end - w.start
            totals = [0.0] * len(words)
            counts = [0] * len(words)
            for token in scores:
                index = bisect_right(starts, token.end - 1) - 1
                if index >= 0:
                    totals[index] += token.surprisal
                    counts[index] += 1
            for w, s, t, n in zip(words, sentence_of, totals, counts, strict=True):
                if not w.protected and n:
                    piece = plan.texts[u][w.start : w.end]
                    into = reserve if s.whole else candidates
                    into.append(_Candidate(t / n, w, s, counter.count(piece)))
        candidates.sort(key=lambda c: c.surprisal)
        reserve.sort(key=lambda c: c.surprisal)
        return self._scorer.tokens_scored - before, candidates, reserve

    def _drop_sentences(self, plan: _Plan, target: int, counter: TokenCounter) -> int:
        """Last resort: keep the most relevant (or most central) whole sentences that fit.

        Called with every droppable word dropped, so each sentence is measured at its
        shortest. Sentences are taken most relevant first, each if it still fits
        (``select_within_budget``), so one that cannot fit (a long quote or a list of
        figures, never cut) leaves room for shorter ones instead of taking them with
        it. Dropping the least relevant first until the target was met dropped a
        short sentence that fitted before the long one that did not, and emptied
        texts made of such sentences. Returns how many sentences it dropped.
        """
        assert self._embedder is not None
        kept = [s for s in plan.sentences if s.kept]
        movable = [s for s in kept if not s.hard]
        if not any(s.relevance for s in movable):
            texts = [plan.texts[s.unit][s.start : s.end] for s in movable]
            for s, score in zip(movable, centrality(self._embedder.embed(texts)), strict=True):
                s.relevance = score
        keep = select_within_budget(
            [s.relevance for s in kept],
            [counter.count(plan.render_sentence(s)) for s in kept],
            target,
            forced=[s.hard for s in kept],
        )
        for s, keep_it in zip(kept, keep, strict=True):
            s.kept = keep_it
        # Sentence counts do not add up exactly to the text's: measure, and drop
        # the least relevant kept sentence until the measure fits.
        queue = sorted((s for s in movable if s.kept), key=lambda s: s.relevance)
        while plan.cost(counter) > target and queue:
            queue.pop(0).kept = False
        return sum(not s.kept for s in kept)


def _drop_words(
    plan: _Plan, candidates: list[_Candidate], target: int, counter: TokenCounter
) -> int:
    """Drop ``candidates`` in order until the plan fits ``target``; returns its cost."""
    cost, cursor = plan.cost(counter), 0
    while cost > target and cursor < len(candidates):
        deficit = cost - target
        while deficit > 0 and cursor < len(candidates):  # estimate by word costs, then measure
            candidates[cursor].word.dropped = True
            deficit -= candidates[cursor].saving
            cursor += 1
        cost = plan.cost(counter)
    return cost


def _overlaps(start: int, end: int, spans: list[Span], starts: list[int]) -> bool:
    """Whether ``[start, end)`` touches one of the sorted, merged ``spans``."""
    index = bisect_right(starts, end - 1) - 1
    return index >= 0 and spans[index].end > start


def _parseable(text: str) -> bool:
    """Whitespace-separated Latin-script text, which word-level pruning cannot garble."""
    if "\ufffd" in text or any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        return False
    letters = [c for c in text if c.isalpha()]
    latin = sum(1 for c in letters if ord(c) < 0x250)
    return not letters or latin >= 0.9 * len(letters)


_COUNTERS = (
    "target_tokens",
    "kept_tokens",
    "target_met",
    "sentences_dropped",
    "fallback_sentences_dropped",
    "words_dropped",
    "lm_tokens_scored",
    "sentence_level_units",
)
"""Every counter the stage reports, on every run."""


def _met(target: int, kept: int) -> dict[str, int]:
    return {"target_tokens": target, "kept_tokens": kept, "target_met": int(kept <= target)}
