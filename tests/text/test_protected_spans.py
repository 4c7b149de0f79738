"""Which strings of a text state a fact: names with their connectors, never a connector alone."""

from __future__ import annotations

import pytest

from ctxproto.text.protected_spans import fact_strings


@pytest.mark.parametrize(
    ("text", "facts"),
    [
        ("Which of these plans is cheaper?", set()),
        ("What of it, Alice?", {"Alice"}),
        ("Which of Alice's orders shipped?", {"Alice's"}),
        ("Where is the Tower of London?", {"Tower of London"}),
        ("Ludwig van Beethoven wrote it.", {"Ludwig van Beethoven"}),
        ("Call Bank of", {"Call Bank"}),
        ("When Alice met Bob in 2019", {"Alice", "Bob", "2019"}),
        ("Of course.", set()),
    ],
)
def test_a_name_neither_starts_nor_ends_with_a_connector(text: str, facts: set[str]) -> None:
    assert fact_strings(text) == facts
