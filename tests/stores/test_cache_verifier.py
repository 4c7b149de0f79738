"""The semantic cache's verifier: features of a pair, and its shipped weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctxproto.errors import StoreError
from ctxproto.stores.semantic_cache.query_slots import QuerySlots
from ctxproto.stores.semantic_cache.verifier import (
    FEATURE_NAMES,
    HitVerifier,
    align,
    pair_features,
)


def _features(asked: str, cached: str) -> dict[str, float]:
    values = pair_features(QuerySlots.of(asked), QuerySlots.of(cached), 0.9)
    return dict(zip(FEATURE_NAMES, values.tolist(), strict=True))


def test_a_typo_is_read_as_the_word_it_misspells() -> None:
    cached = QuerySlots.of("How do I request a transcript?")
    aligned = align(QuerySlots.of("how do I reqest a trnscript"), cached)
    assert aligned.tokens == cached.tokens
    assert _features("how do I reqest a trnscript", "How do I request a transcript?")[
        "no_difference"
    ]


def test_antonyms_one_letter_apart_are_not_typos() -> None:
    features = _features("How do I export my contacts?", "How do I import my contacts?")
    assert not features["no_difference"]
    assert features["content_swap"] or features["conflict_substitution"]


def test_a_swap_of_word_order_and_an_added_qualifier_are_seen() -> None:
    assert _features("convert a string to a list", "convert a list to a string")["reordered"]
    added = _features("How do I reset my colleague's password?", "How do I reset my password?")
    assert added["addition_only"] and not added["no_difference"]


def test_the_shipped_weights_load_and_unreadable_ones_are_a_store_error(
    tmp_path: Path,
) -> None:
    verifier = HitVerifier.load()
    assert len(verifier.weights) == len(FEATURE_NAMES)
    assert 0.5 <= verifier.min_probability < 1.0
    broken = tmp_path / "weights.json"
    broken.write_text('{"weights": {}}')
    with pytest.raises(StoreError, match="weights"):
        HitVerifier.load(broken)


def test_a_new_word_order_counts_only_around_a_relation() -> None:
    assert not _features("Do you price match Amazon?", "Will you match Amazon's price?")[
        "reordered"
    ]
    assert _features("convert a string to a list", "convert a list to a string")["reordered"]


def test_an_added_qualifier_is_told_from_an_added_clause() -> None:
    qualified = _features(
        "how do i apply for a student loan as a part-time student",
        "How do I apply for a student loan?",
    )
    clause = _features("I forgot my password, how can I reset it?", "How do I reset my password?")
    assert qualified["qualifier_added"] and not clause["qualifier_added"]
