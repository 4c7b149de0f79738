"""Spans of text that compression must never touch: they survive byte-exact or not at all.

LLMLingua users report compressed prompts with corrupted IDs and numbers and
dropped instructions (LLMLingua issues #93 and #213): token-level pruning cuts
``order_id=A7-3319`` into ``A7 3319`` or drops the digits of a price. Every
stage that edits text below the sentence level (``token_compressor``) and every
stage that must carry user facts forward (``summarizer``) asks this module which
character ranges are untouchable: numbers and anything containing a digit,
identifiers (snake_case, camelCase, dotted paths, ACRONYMS), URLs, e-mail
addresses, code spans, quoted strings, capitalized name spans, and the user's
own force-keep regexes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "FACT_KINDS",
    "Span",
    "compile_patterns",
    "fact_strings",
    "merge_spans",
    "protected_spans",
]


def _character_classes(*groups: frozenset[str]) -> list[str]:
    """For each group of Unicode categories, the characters of the Basic Multilingual
    Plane in them as the ranges of a regex character class (``re`` has no ``\\p{Lu}``).

    One pass over the plane serves every group: this runs at import.
    """
    categories = [unicodedata.category(chr(code)) for code in range(0x10000)]
    classes = []
    for group in groups:
        ranges: list[tuple[int, int]] = []
        for code in (code for code, category in enumerate(categories) if category in group):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
        classes.append(
            "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)
        )
    return classes


_UPPER, _LOWER = _character_classes(frozenset({"Lu", "Lt"}), frozenset({"Ll", "Mn", "Mc"}))
"""Capitals; and lower-case letters with the combining marks of decomposed text
("Jose\\u0301")."""
_NAME_WORD = rf"[{_UPPER}][{_LOWER}'’\-]+"
"""A capitalized word in any cased script: "Zoë", "Łódź" and "Ångström" are whole names,
as "Alice" is (with ASCII letters only, "Zoë" was the fact "Zo" and "Łódź" no fact)."""
_NAME_CONNECTORS = "of|de|da|van|von|del|la"
"""Lower-case words inside a name ("Bank of America"), never at either end of one."""


def _quotation(opening: str, closing: str, *, max_chars: int | None = None) -> str:
    """A quotation within one paragraph, its marks hugging its text.

    The opening mark is followed, and the closing one preceded, by a non-space, as
    typeset quotes are: so a stray mark (a TeX-style ``''``) opens nothing, instead
    of pairing with the next real quote and protecting the prose between them
    while the real quote goes unprotected. A line break may fall inside
    (hard-wrapped text); a blank line may not, so a mark that does pair wrongly
    protects at most the rest of its paragraph. The text holds neither mark, so
    each opening mark is read up to the next mark at most: linear however the
    marks fall (German typesetting closes with "“", the English opening mark).

    ``max_chars`` bounds the text, for a mark that is also an apostrophe: without
    a bound "the '90s" pairs with "the employees' lounge" a paragraph later.
    """
    marks = opening if opening == closing else opening + closing
    if max_chars is None:
        text = rf"[^{marks}\n]*(?:\n(?![ \t\r]*\n)[^{marks}\n]*)*"
    else:
        text = rf"[^{marks}\n]{{0,{max_chars}}}"
    return rf"{opening}(?=[^\s{marks}]){text}(?<=[^\s{marks}]){closing}"


_STRAIGHT_QUOTE_CHARS = 300
"""The longest quotation in straight single quotes, which are also apostrophes."""

_BUILT_IN: dict[str, re.Pattern[str]] = {
    "code": re.compile(r"```.*?```|`[^`\n]+`", re.DOTALL),
    "url": re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"']*[^\s<>\"'.,;:!?)]"),
    "email": re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    "quote": re.compile(
        "|".join(
            (
                # Straight marks open and close only next to a non-word: not the inch
                # mark of 'a 27" iMac', not the apostrophes of "don't" and "Bob's".
                r"(?<!\w)" + _quotation('"', '"') + r"(?!\w)",
                _quotation("“", "”"),
                r"(?<!\w)" + _quotation("'", "'", max_chars=_STRAIGHT_QUOTE_CHARS) + r"(?!\w)",
            )
        )
    ),
    "number": re.compile(r"[A-Za-z0-9_$€£#.,:/+%\-]*\d(?:[A-Za-z0-9_.,:/%\-]*[A-Za-z0-9%])?"),
    "identifier": re.compile(
        r"\b[A-Za-z_][A-Za-z0-9]*(?:[_.][A-Za-z0-9]+)+\b"  # snake_case, dotted.path
        r"|\b[a-z]+[A-Z][A-Za-z0-9]*\b"  # camelCase
        r"|\b[A-Z]{2,}[A-Z0-9]*\b"  # ACRONYM
    ),
    "name": re.compile(rf"\b{_NAME_WORD}(?:(?:\s+(?:{_NAME_CONNECTORS}))*\s+{_NAME_WORD})*"),
}

FACT_KINDS = ("number", "name", "identifier", "email", "url")
"""The spans that state a fact: numbers and dates, names, IDs, addresses."""

# Capitalized words that mostly just start a sentence, and the chat role labels
# transcripts put at the start of a line; alone they are not a name.
_STARTER_WORDS = """
    a about after all also although an and any are as at be because before but by can could
    did do does each even every first for from had has have he her here his how however if in
    instead is it its just let like many maybe me most my no not now of ok okay on once one
    only or our perhaps please she since so some still such sure thank thanks that the their
    then there these they this those though to too up was we well were what when where which
    while who why will with would yes yet you your hi hello hey user assistant system tool
"""
_SENTENCE_STARTERS = frozenset(_STARTER_WORDS.split())
_CONNECTOR_WORDS = frozenset(_NAME_CONNECTORS.split("|"))


@dataclass(frozen=True, order=True)
class Span:
    """A half-open character range ``[start, end)`` of a text."""

    start: int
    end: int


def compile_patterns(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    """Compile user force-keep regexes; a bad one raises ``re.error`` naming it."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise re.error(f"invalid force-keep regex {pattern!r}: {exc.msg}") from None
    return compiled


def protected_spans(
    text: str,
    force_keep: Iterable[re.Pattern[str]] = (),
    *,
    kinds: Iterable[str] | None = None,
) -> list[Span]:
    """Sorted, merged spans of ``text`` that must survive byte-exact.

    ``kinds`` limits the built-in detectors (``code``, ``url``, ``email``,
    ``quote``, ``number``, ``identifier``, ``name``); user patterns always apply.
    """
    wanted = _BUILT_IN.keys() if kinds is None else set(kinds)
    spans: list[Span] = []
    for kind in wanted:
        for match in _BUILT_IN[kind].finditer(text):
            span = _name_span(match) if kind == "name" else Span(match.start(), match.end())
            if span is not None and span.end > span.start:
                spans.append(span)
    for pattern in force_keep:
        spans.extend(
            Span(m.start(), m.end()) for m in pattern.finditer(text) if m.end() > m.start()
        )
    return merge_spans(spans)


def fact_strings(text: str) -> set[str]:
    """The facts ``text`` states, as exact strings ("A7-3319", "Alice Smith", "2024-05-01").

    Two texts that differ in these are not interchangeable however similar
    their embeddings (a near-duplicate or a summary must not lose them).
    """
    return {text[s.start : s.end] for s in protected_spans(text, kinds=FACT_KINDS)}


def _name_span(match: re.Match[str]) -> Span | None:
    """A capitalized run, minus a leading sentence starter and the connectors after it
    ("When Alice" -> "Alice", "Which of Alice's" -> "Alice's")."""
    words = match.group().split()
    if words[0].lower() not in _SENTENCE_STARTERS:
        return Span(match.start(), match.end())
    rest = 1
    while rest < len(words) and words[rest] in _CONNECTOR_WORDS:
        rest += 1
    if rest == len(words):
        return None
    offset = match.group().index(words[rest], len(words[0]))
    return Span(match.start() + offset, match.end())


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Sort and merge overlapping or touching spans."""
    merged: list[Span] = []
    for span in sorted(spans):
        if merged and span.start <= merged[-1].end:
            if span.end > merged[-1].end:
                merged[-1] = Span(merged[-1].start, span.end)
        else:
            merged.append(span)
    return merged
