"""Sentence splitting that loses nothing: the pieces concatenate back to the text.

Stages that select sentences (``relevance_filter`` at sentence granularity, the
coarse pass of ``token_compressor``, extractive summaries) need each sentence
as an exact slice of its text, trailing whitespace included, so that keeping
every sentence reproduces the input byte for byte and keeping some of them never
garbles the rest. A boundary never falls inside a protected span (a URL, a
decimal number, a quoted string), so selecting whole sentences keeps those
spans whole.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence

from ctxproto.text.protected_spans import Span

__all__ = ["sentence_spans", "split_sentences"]

# After sentence punctuation (Latin or CJK, optionally closed by a quote or
# bracket) followed by whitespace, after a CJK full stop even without a space,
# and at every line break.
_BOUNDARY = re.compile(r"[.!?…][\"'”’)\]]*\s+|[。！？]+[”’」』)]*\s*|\n+\s*")


def sentence_spans(text: str, protected: Sequence[Span] = ()) -> list[Span]:
    """Spans covering ``text`` end to end, one per sentence, never cutting ``protected``."""
    spans: list[Span] = []
    starts = [span.start for span in protected]
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.end()
        if end >= len(text) or _inside(end, protected, starts):
            continue
        if text[start:end].strip():
            spans.append(Span(start, end))
            start = end
    if start < len(text):
        if spans and not text[start:].strip():
            spans[-1] = Span(spans[-1].start, len(text))
        else:
            spans.append(Span(start, len(text)))
    return spans


def split_sentences(text: str, protected: Sequence[Span] = ()) -> list[str]:
    """The sentences of ``text`` (with their trailing whitespace); ``"".join`` gives ``text``."""
    return [text[s.start : s.end] for s in sentence_spans(text, protected)]


def _inside(position: int, protected: Sequence[Span], starts: list[int]) -> bool:
    """Whether ``position`` falls strictly inside one of the sorted, merged ``protected``."""
    index = bisect_left(starts, position) - 1
    return index >= 0 and protected[index].end > position
