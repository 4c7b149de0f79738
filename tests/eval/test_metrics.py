"""Answer metrics against known cases (SQuAD normalization, subspan EM, token F1)."""

from __future__ import annotations

import pytest

from ctxproto.eval.metrics import best_subspan_em, normalize_answer, percentile, token_f1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  a   cat,  AN apple; the end ", "cat apple end"),
        ("apple;the", "applethe"),  # punctuation goes before articles, as in SQuAD
        ("KU-5969-P", "ku5969p"),
        ("theatre", "theatre"),  # articles only as whole words
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_subspan_em_finds_the_gold_answer_inside_longer_text() -> None:
    assert best_subspan_em("The code is KU-5969-P, see above.", ["ku 5969 p", "KU-5969-P"]) == 1.0
    assert best_subspan_em("It was Lucia Moreau.", ["lucia moreau"]) == 1.0
    assert best_subspan_em("It was Lucia.", ["Lucia Moreau"]) == 0.0
    assert best_subspan_em("anything", []) == 0.0
    # An answer that normalizes to nothing never matches (SQuAD would match it everywhere).
    assert best_subspan_em("anything", ["the"]) == 0.0


def test_subspan_em_is_a_substring_test_as_in_lost_in_the_middle() -> None:
    # The reference implementation tests `gold in prediction` on normalized strings.
    assert best_subspan_em("call 0123456", ["12345"]) == 1.0


def test_token_f1_known_values() -> None:
    assert token_f1("Paris", ["Paris"]) == 1.0
    assert token_f1("the city of Paris", ["Paris"]) == pytest.approx(2 * (1 / 3) / (1 + 1 / 3))
    assert token_f1("New York City", ["York City", "Boston"]) == pytest.approx(0.8)
    assert token_f1("London", ["Paris"]) == 0.0
    assert token_f1("", ["Paris"]) == 0.0


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile(list(map(float, range(101))), 95) == pytest.approx(95.0)
