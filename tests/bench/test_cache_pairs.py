"""The labelled cache pairs: the committed splits are what their seeds build."""

from __future__ import annotations

import re

from ctxproto.bench.cache_pairs import build, load_pairs


def test_the_committed_splits_are_what_the_seeds_build() -> None:
    built = build()
    assert set(built) == {"dev", "test", "independent"}
    for split, rows in built.items():
        assert rows == load_pairs(split), split
    assert len(built["independent"]) > 3000


def test_the_independent_split_shares_no_question_with_the_test_split() -> None:
    """Written later, it was checked against test; a question in both would score
    the guard twice on one phrasing."""

    def questions(split: str) -> set[str]:
        rows = load_pairs(split)
        return {re.sub(r"[^a-z0-9]+", " ", str(r[k]).lower()).strip() for r in rows for k in "ab"}

    assert not questions("independent") & questions("test")
