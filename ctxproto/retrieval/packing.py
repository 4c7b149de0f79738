"""Fitting retrieved chunks into a token budget, and ordering them for long contexts."""

from __future__ import annotations

from collections.abc import Sequence

from ctxproto.documents import Document
from ctxproto.tokens import TokenCounter

__all__ = ["long_context_reorder", "pack_to_budget"]


def pack_to_budget(
    documents: Sequence[Document], counter: TokenCounter, max_tokens: int
) -> list[Document]:
    """The chunks that fit ``max_tokens``, chosen by relevance per token, returned best first.

    Greedy by ``score / tokens`` (the classic knapsack approximation): a short
    chunk that is almost as relevant as a long one buys more of the budget.
    Chunks without a score count as score 0. Scores below 0 (a cross-encoder's
    logits) are shifted to start at 0 first: divided as they are, a long weak
    chunk would rank above a short strong one.
    """
    costs = [max(1, counter.count(d.text)) for d in documents]
    scores = [d.score or 0.0 for d in documents]
    shift = -min(scores, default=0.0) if min(scores, default=0.0) < 0 else 0.0
    order = sorted(
        range(len(documents)), key=lambda i: (scores[i] + shift) / costs[i], reverse=True
    )
    picked: list[int] = []
    used = 0
    for i in order:
        if used + costs[i] <= max_tokens:
            picked.append(i)
            used += costs[i]
    picked.sort(key=lambda i: documents[i].score or 0.0, reverse=True)
    return [documents[i] for i in picked]


def long_context_reorder(documents: Sequence[Document]) -> list[Document]:
    """Best chunks at both ends, weakest in the middle.

    Models use the start and end of a long context best and the middle worst
    (Liu et al. 2023, "Lost in the Middle"); as LangChain's
    ``LongContextReorder`` and Haystack's ``LostInTheMiddleRanker``, the ranked
    list is dealt alternately to the front and the back.
    """
    ranked = sorted(documents, key=lambda d: d.score or 0.0, reverse=True)
    front = ranked[0::2]
    back = ranked[1::2]
    return front + back[::-1]
