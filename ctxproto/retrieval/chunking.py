"""Token-sized chunks with overlap that end on paragraph or sentence boundaries.

A chunk never cuts a sentence unless that sentence alone is longer than the chunk
size, and never spans two markdown sections: the heading path of its section
(``["Install", "On Linux"]``) is kept as metadata, since a chunk torn from its
heading loses what it is about. The overlap repeats whole trailing sentences of
the previous chunk, so a fact on a boundary is whole in at least one chunk.

A heading is a markdown heading as CommonMark reads one: at most three spaces
before its ``#``, and never inside a fenced code block. A shell or Python
comment (``# install the extras``) in a code block is code: read as a heading,
it was taken out of the chunk text and made the code below it a section of
its own, under the comment's words.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from ctxproto.documents import Document
from ctxproto.errors import ConfigError, StoreError
from ctxproto.text.sentences import split_sentences
from ctxproto.tokens import TokenCounter

__all__ = ["TextChunk", "check_text", "chunk_document", "chunk_text", "holds_text"]

_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)")
_CLOSING_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})$")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_CUT_BACKTRACK = 8
"""Tokens a cut inside an over-long sentence may move back to land between two
characters: UTF-8 takes at most 4 bytes a character, and BPE merges may straddle
one boundary more."""


@dataclass(frozen=True)
class TextChunk:
    """One chunk's text and the markdown heading path it sits under."""

    text: str
    headings: tuple[str, ...]


@dataclass
class _Unit:
    text: str
    tokens: int
    headings: tuple[str, ...]
    starts_paragraph: bool


def check_text(text: str, name: str) -> None:
    """Raise ``StoreError`` for empty, binary or garbled text, before it reaches a store."""
    if not text.strip():
        raise StoreError(f"'{name}' is empty")
    if "\x00" in text:
        raise StoreError(f"'{name}' looks binary (it contains NUL bytes)")
    bad = sum(
        1
        for ch in text
        if ch == "\ufffd" or (unicodedata.category(ch) in ("Cc", "Cs", "Co") and ch not in "\t\n\r")
    )
    if bad > max(3, len(text) // 100):
        raise StoreError(f"'{name}' looks garbled: {bad} control or undecodable characters")


def chunk_text(
    text: str, counter: TokenCounter, *, max_tokens: int = 256, overlap_tokens: int = 32
) -> list[TextChunk]:
    """Split ``text`` into chunks of at most ``max_tokens`` tokens (see module docstring)."""
    if max_tokens <= 0:
        raise ConfigError(f"must be at least 1, got {max_tokens}", key="max_tokens")
    if not 0 <= overlap_tokens < max_tokens:
        raise ConfigError(
            f"must be >= 0 and smaller than max_tokens ({max_tokens}), got {overlap_tokens}",
            key="overlap_tokens",
        )
    chunks: list[TextChunk] = []
    current: list[_Unit] = []
    used = 0
    for unit in _units(text, counter, max_tokens):
        if current and (unit.headings != current[0].headings or used + unit.tokens > max_tokens):
            chunks.append(_render(current))
            same_section = unit.headings == current[0].headings
            current = (
                _overlap(current, overlap_tokens, max_tokens - unit.tokens) if same_section else []
            )
            used = sum(u.tokens for u in current)
        current.append(unit)
        used += unit.tokens
    if current:
        chunks.append(_render(current))
    return chunks


def chunk_document(
    document: Document, counter: TokenCounter, *, max_tokens: int = 256, overlap_tokens: int = 32
) -> list[Document]:
    """Chunks of ``document`` as documents ``<id>#<n>`` that carry its metadata and source."""
    check_text(document.text, document.id)
    pieces = chunk_text(
        document.text, counter, max_tokens=max_tokens, overlap_tokens=overlap_tokens
    )
    return [
        Document(
            id=f"{document.id}#{n}",
            text=piece.text,
            metadata={**document.metadata, "doc_id": document.id, "headings": list(piece.headings)},
            source=document.source or document.id,
        )
        for n, piece in enumerate(pieces)
    ]


def holds_text(text: str) -> bool:
    """Whether ``text`` yields any chunk: it holds a line that is neither blank nor a heading.

    Headings are kept as the metadata of the chunks under them, never as chunk
    text, so a markdown file of headings alone (a stub, ``# Roadmap``) has no
    chunk to embed; ``ctxproto index`` skips it as it skips an empty file.
    """
    return any(part.strip() for part, _ in _sections(text))


def _units(text: str, counter: TokenCounter, max_tokens: int) -> list[_Unit]:
    """Sentences (or token windows of over-long ones) with their heading path."""
    units: list[_Unit] = []
    for part, stack in _sections(text):
        units += _sentences(part, counter, max_tokens, stack)
    return units


def _sections(text: str) -> Iterator[tuple[str, list[tuple[int, str]]]]:
    """Each paragraph's lines, joined and cut at headings, with the heading stack above them.

    A leading byte order mark is dropped, as ``ctxproto index`` drops it from a
    file: a text read in Python with ``open(path).read()`` keeps the one Windows
    tools write, and ``\ufeff# Title`` hid the title in the first chunk's text.
    """
    text = text.removeprefix("\ufeff")
    stack: list[tuple[int, str]] = []
    fence: str | None = None  # the fence of the code block the line is in, if any
    for block in _PARAGRAPH_BREAK.split(text):
        lines: list[str] = []
        for line in block.splitlines():
            in_code = fence is not None
            fence = _fence_after(line, fence)
            match = None if in_code or fence is not None else _HEADING.match(line.rstrip())
            if match is None:
                lines.append(line)
                continue
            if lines:
                yield " ".join(lines), stack
                lines = []
            level = len(match.group(1))
            stack = [(lvl, title) for lvl, title in stack if lvl < level] + [
                (level, match.group(2))
            ]
        yield " ".join(lines), stack


def _fence_after(line: str, fence: str | None) -> str | None:
    """The code fence open after ``line``, given the one open before it (CommonMark).

    A fence opens with three or more backticks or tildes, indented at most three
    spaces; a backtick fence's info string holds no backtick, so a line opening
    on inline code (```` ```bash``` runs the shell ````) opens none. It closes with
    a line of the same character, at least as many of them, indented at most
    three spaces and with nothing else: one indented four is code inside it.
    """
    if fence is None:
        opening = _FENCE.match(line)
        if opening is None or (opening.group(1)[0] == "`" and "`" in opening.group(2)):
            return None
        return opening.group(1)
    closing = _CLOSING_FENCE.match(line.rstrip())
    marks = "" if closing is None else closing.group(1)
    return None if marks[:1] == fence[0] and len(marks) >= len(fence) else fence


def _sentences(
    paragraph: str, counter: TokenCounter, max_tokens: int, stack: list[tuple[int, str]]
) -> list[_Unit]:
    headings = tuple(title for _, title in stack)
    units: list[_Unit] = []
    for raw in split_sentences(paragraph.strip()):
        sentence = raw.strip()
        if not sentence:
            continue
        for piece, tokens in _token_windows(sentence, counter, max_tokens):
            units.append(_Unit(piece, tokens, headings, not units))
    return units


def _token_windows(sentence: str, counter: TokenCounter, max_tokens: int) -> list[tuple[str, int]]:
    """``sentence`` in pieces of at most ``max_tokens`` tokens, with their token counts.

    A byte-level tokenizer spends several tokens on one character of Thai,
    Devanagari, Hangul, rarer CJK or an emoji, and a window cut between them
    decodes to U+FFFD on both sides: the character is lost from both chunks.
    Each cut is therefore moved back, by at most ``_CUT_BACKTRACK``
    tokens, to the first one after which the window decodes to the sentence's
    own text. A counter whose decoding does not give the text back (one that
    normalizes it) keeps the plain cuts.
    """
    ids = counter.encode(sentence)
    if len(ids) <= max_tokens:
        return [(sentence, len(ids))]
    pieces: list[tuple[str, int]] = []
    start = 0
    position: int | None = 0  # where the next piece starts in ``sentence``, while known
    while start < len(ids):
        end = min(start + max_tokens, len(ids))
        piece = counter.decode(ids[start:end])
        if position is not None:
            for cut in range(end, max(start, end - _CUT_BACKTRACK), -1):
                decoded = piece if cut == end else counter.decode(ids[start:cut])
                if sentence.startswith(decoded, position):
                    end, piece = cut, decoded
                    position += len(decoded)
                    break
            else:
                position = None
        pieces.append((piece, end - start))
        start = end
    return pieces


def _overlap(units: list[_Unit], overlap_tokens: int, room: int) -> list[_Unit]:
    """Trailing whole units of the last chunk, within the overlap and the room left."""
    kept: list[_Unit] = []
    total = 0
    for unit in reversed(units):
        if total + unit.tokens > min(overlap_tokens, room):
            break
        kept.insert(0, unit)
        total += unit.tokens
    return kept


def _render(units: list[_Unit]) -> TextChunk:
    parts: list[str] = []
    for i, unit in enumerate(units):
        if i:
            parts.append("\n\n" if unit.starts_paragraph else " ")
        parts.append(unit.text)
    return TextChunk("".join(parts), units[0].headings)
