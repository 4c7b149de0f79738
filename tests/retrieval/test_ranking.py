"""MMR, budget packing and the long-context reorder."""

from __future__ import annotations

from typing import Any

import numpy as np

from ctxproto.documents import Document
from ctxproto.retrieval import long_context_reorder, mmr_select, pack_to_budget


def test_mmr_skips_a_near_duplicate_in_favour_of_a_different_result() -> None:
    a = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    duplicate = np.array([0.999, 0.045, 0.0], dtype=np.float32)
    other = np.array([0.6, 0.0, 0.8], dtype=np.float32)
    vectors = np.stack([a, duplicate / np.linalg.norm(duplicate), other])
    relevance = np.array([0.9, 0.89, 0.7], dtype=np.float32)
    assert mmr_select(relevance, vectors, 2, diversity=0.5) == [0, 2]
    assert mmr_select(relevance, vectors, 2, diversity=0.0) == [0, 1]
    assert mmr_select(relevance, vectors, 10, diversity=0.5) == [0, 2, 1]


def test_packing_prefers_relevance_per_token_and_respects_the_budget(counter: Any) -> None:
    long_doc = Document(id="long", text="alpha " * 60, score=0.9)
    short_a = Document(id="a", text="beta gamma", score=0.8)
    short_b = Document(id="b", text="delta epsilon", score=0.7)
    packed = pack_to_budget([long_doc, short_a, short_b], counter, 20)
    assert [d.id for d in packed] == ["a", "b"]
    assert sum(counter.count(d.text) for d in packed) <= 20
    assert [d.id for d in pack_to_budget([long_doc, short_a], counter, 1000)] == ["long", "a"]
    assert pack_to_budget([long_doc], counter, 0) == []


def test_packing_keeps_the_best_when_scores_are_below_zero(counter: Any) -> None:
    # A cross-encoder's logits: the short chunk is the better one.
    best = Document(id="best", text="The ferry leaves at 20:30.", score=-1.0)
    worst = Document(id="worst", text="Ferries are boats. " * 15, score=-3.0)
    room = counter.count(worst.text) + 2
    assert [d.id for d in pack_to_budget([worst, best], counter, room)] == ["best"]


def test_long_context_reorder_puts_the_best_at_both_ends() -> None:
    docs = [Document(id=str(i), text=str(i), score=1.0 - i / 10) for i in range(5)]
    assert [d.id for d in long_context_reorder(docs)] == ["0", "2", "4", "3", "1"]
