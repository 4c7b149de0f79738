"""Choosing the best pieces within a token budget, and scoring pieces without a query.

One greedy rule serves every selecting stage (``relevance_filter``, the coarse
pass of ``token_compressor``, extractive summaries): forced pieces first, then
the rest by descending score, each taken if it still fits — so a long piece that
does not fit leaves room for shorter ones — and the caller keeps the chosen
pieces in their original order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["centrality", "select_within_budget"]


def select_within_budget(
    scores: Sequence[float],
    costs: Sequence[int],
    budget: int,
    forced: Sequence[bool] | None = None,
) -> list[bool]:
    """Which pieces to keep: all ``forced`` ones, then the best-scoring that fit ``budget``.

    Forced pieces are kept even when they alone exceed the budget; callers that
    must guarantee the budget check ``sum(cost of forced)`` themselves.
    """
    forced = forced if forced is not None else [False] * len(scores)
    keep = list(forced)
    used = sum(c for c, f in zip(costs, forced, strict=True) if f)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    for i in order:
        if not keep[i] and used + costs[i] <= budget:
            keep[i] = True
            used += costs[i]
    return keep


def centrality(vectors: npt.NDArray[np.float32]) -> list[float]:
    """Mean cosine similarity of each (normalized) vector to all the others.

    The extractive-summary score of LexRank/TextRank in its simplest form: a
    sentence close to many others carries what the text is about.
    """
    n = len(vectors)
    if n == 0:
        return []
    if n == 1:
        return [1.0]
    similarity = vectors @ vectors.T
    return [float(x) for x in (similarity.sum(axis=1) - np.diag(similarity)) / (n - 1)]
