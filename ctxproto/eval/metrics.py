"""Answer metrics: SQuAD normalization, subspan exact match, token F1, percentiles.

``normalize_answer``, ``best_subspan_em`` and ``token_f1`` follow the SQuAD v1.1
evaluation script as reused by the lost-in-the-middle (Liu et al., 2023,
``lost_in_the_middle/metrics.py``) and LLMLingua-2 evaluation code, so figures
are comparable with theirs. Subspan match is a substring test on normalized
text, exactly as there: it asks "does the gold answer occur in this text?", which
is what retention in a compressed prompt means.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

__all__ = ["best_subspan_em", "normalize_answer", "percentile", "token_f1"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def best_subspan_em(prediction: str, ground_truths: Sequence[str]) -> float:
    """1.0 when any normalized gold answer occurs inside the normalized prediction."""
    normalized = normalize_answer(prediction)
    for truth in ground_truths:
        gold = normalize_answer(truth)
        if gold and gold in normalized:
            return 1.0
    return 0.0


def token_f1(prediction: str, ground_truths: Sequence[str]) -> float:
    """The best SQuAD token-overlap F1 of ``prediction`` against any gold answer."""
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for truth in ground_truths:
        gold = normalize_answer(truth).split()
        common = sum((Counter(predicted) & Counter(gold)).values())
        if common == 0:
            continue
        precision = common / len(predicted)
        recall = common / len(gold)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
