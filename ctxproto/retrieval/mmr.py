"""Maximal marginal relevance: relevant results that do not repeat each other.

Carbonell & Goldstein (1998): pick, one at a time, the candidate maximizing
``λ·sim(query, d) − (1−λ)·max sim(d, already picked)``. Near-duplicate chunks
(overlapping windows, copied paragraphs) would otherwise fill the top k.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["mmr_select"]


def mmr_select(
    relevance: npt.NDArray[np.float32],
    vectors: npt.NDArray[np.float32],
    k: int,
    *,
    diversity: float = 0.3,
) -> list[int]:
    """Indices of ``k`` candidates in MMR order.

    ``relevance`` are the candidates' query similarities, ``vectors`` their
    normalized embeddings; ``diversity`` is ``1 − λ`` (0 gives plain top-k).
    """
    count = len(relevance)
    k = min(k, count)
    if k <= 0:
        return []
    pairwise = vectors @ vectors.T
    redundancy = np.full(count, -np.inf, dtype=np.float32)
    chosen: list[int] = []
    available = np.ones(count, dtype=bool)
    for _ in range(k):
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        score = (1.0 - diversity) * relevance - diversity * penalty
        score[~available] = -np.inf
        best = int(np.argmax(score))
        chosen.append(best)
        available[best] = False
        redundancy = np.maximum(redundancy, pairwise[best])
    return chosen
