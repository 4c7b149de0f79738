"""Which strings of a text state a fact: names with their connectors, never a connector alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxproto.text.protected_spans import fact_strings, protected_spans


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


@pytest.mark.parametrize(
    ("text", "facts"),
    [
        ("My name is Zoë Ångström.", {"Zoë Ångström"}),
        ("I live in Łódź.", {"Łódź"}),
        ("I moved to São Paulo in 2019.", {"São Paulo", "2019"}),
        ("I asked Jose\u0301 about it.", {"Jose\u0301"}),  # decomposed: a combining accent
        ("When Émile met Ürsula", {"Émile", "Ürsula"}),
    ],
)
def test_a_name_with_letters_beyond_ascii_is_a_whole_fact(text: str, facts: set[str]) -> None:
    """Names spelled with accents or other scripts' capitals are facts as ASCII ones are.

    With ASCII letters only, "Zoë" was the fact "Zo" (a summary saying "Zoey" kept
    it), "Łódź" no fact at all (a user saying they live there was not pinned),
    and the compressor could drop "Ångström".
    """
    assert fact_strings(text) == facts


FILLER = "The crew replaced the worn valves and flushed the line before testing it. " * 30


def quoted(text: str) -> list[str]:
    return [text[s.start : s.end] for s in protected_spans(text, kinds=("quote",))]


def test_a_quote_is_protected_whole_however_long() -> None:
    """A quoted passage past 300 characters was not protected at all, so the
    compressor cut words and sentences out of it and could drop its closing mark."""
    passage = " ".join(f"The speaker made point number {i} at length." for i in range(60))
    text = f'The mayor said: "{passage}" Then the meeting ended.'
    assert len(passage) > 2000
    assert quoted(text) == [f'"{passage}"']
    wrapped = f"She wrote:\n“{passage[:900]}\n{passage[900:]}”\n\nNext paragraph."
    assert quoted(wrapped) == [f"“{passage[:900]}\n{passage[900:]}”"]


@pytest.mark.parametrize(
    ("text", "quotes"),
    [
        ('A 27" iMac and a "great" deal.', ['"great"']),  # an inch mark opens nothing
        ('He said "yes" and "no".', ['"yes"', '"no"']),
        ("The users' data, 'as agreed', and don't.", ["'as agreed'"]),
        ('"first paragraph\n\nsecond"', []),  # a quote never spans a blank line
        ('An empty "" and a spaced " " pair.', []),
        # Stray marks a paragraph apart pair with nothing: an inch mark after a digit,
        # an apostrophe that is no quote ("the '90s", "the drivers' union").
        (f'Fit the 12"-pipe first. {FILLER}Then tighten the 3/4" fitting.', []),
        (f"Sales rose in the '90s. {FILLER}The drivers' union agreed.", []),
    ],
)
def test_quote_marks_pair_only_around_text(text: str, quotes: list[str]) -> None:
    """A stray mark must not pair with the next quote's opening mark: that
    protected the prose between them and left the real quote unprotected."""
    assert quoted(text) == quotes


def test_unbalanced_marks_are_read_in_linear_time() -> None:
    """German typesetting closes a quote with the English opening mark ("„Ja“,"):
    each stray opening mark once scanned to its paragraph's end, so the 2M
    characters ``compress_text`` accepts took hours; now each stops at the next
    mark. Read in a child process, so a regression fails instead of hanging."""
    script = (
        "from ctxproto.text.protected_spans import protected_spans\n"
        "text = 'Er sagte „Ja“, und sie antwortete „Nein“. Dann gingen sie. ' * 34000\n"
        "assert len(text) > 1_900_000\n"
        "print(len(protected_spans(text, kinds=('quote',))))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"  # each "“" is followed by punctuation: it hugs nothing
