"""Turning generated token ids into streamed text, with stop strings.

Two things make this more than ``tokenizer.decode``: a byte-level BPE token can end
in the middle of a UTF-8 character (held back until the character completes, and
dropped if the answer ends first), and
a stop string can arrive split over several tokens, so text that might be the start
of a stop string is held back too — a streaming client never receives text that the
final answer does not contain (the rule vLLM's detokenizer follows).
"""

from __future__ import annotations

import codecs
import re
from functools import cache
from typing import Any

from tokenizers.decoders import ByteLevel

__all__ = ["IncrementalDetokenizer"]

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
"""A byte-fallback token (SentencePiece, as Llama 2's and Mistral's tokenizers have)."""


class IncrementalDetokenizer:
    """Accumulates output tokens of one request and hands out safe text deltas."""

    def __init__(self, tokenizer: Any, stop: list[str]) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        # What decode(skip_special_tokens=True) leaves out: the named special tokens and
        # the added ones marked special (SmolLM2's <file_sep>, <filename>, ...). One of
        # those read as text between an emoji's bytes hid the unfinished character, and
        # its replacement character was streamed.
        self._special = set(tokenizer.all_special_ids) | {
            i
            for i, added in getattr(tokenizer, "added_tokens_decoder", {}).items()
            if added.special
        }
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = isinstance(decoder, ByteLevel)
        self._ids: list[int] = []
        self._emitted = 0
        self.text = ""
        """The answer so far, cut before a stop string once one matched."""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; returns the text that became safe to show."""
        self._ids.append(token_id)
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        cut = _first_stop(text, self._stop, max(self._emitted - _longest(self._stop), 0))
        if cut is not None:
            self.text, self.stopped = text[:cut], True
            return self._release(cut)
        self.text = text
        safe = self._complete_end(len(text))
        safe -= _partial_stop_length(text[:safe], self._stop)
        return self._release(max(safe, self._emitted))

    def flush(self) -> str:
        """At the end of generation: whatever was held back (no stop string can follow).

        A character the last tokens only began (the token limit or the end of turn cut
        an emoji's bytes) never completes: its replacement character is dropped from
        the text, not streamed as the answer's last character, as vLLM's detokenizer
        never releases it either.
        """
        self.text = self.text[: self._complete_end(len(self.text))]
        return self._release(len(self.text))

    def _complete_end(self, end: int) -> int:
        """``end`` (the text's end) moved back over the replacement characters of a UTF-8
        character the last tokens only began; never into text already streamed.

        Read from the tokens' bytes, not from the text ending in U+FFFD: a model may
        write U+FFFD itself (its bytes EF BF BD, a complete character), and that one
        is part of the answer.
        """
        return max(end - self._incomplete_characters(), self._emitted)

    def _incomplete_characters(self) -> int:
        """How many characters at the end of the decoded text stand for the bytes of an
        unfinished UTF-8 character: one U+FFFD for them all, as a byte-level decoder
        (``String::from_utf8_lossy``) writes them; one per byte of the run of byte
        tokens they end, as byte fallback writes a run that is not UTF-8 yet."""
        tail: list[bytes] = []  # the last tokens' bytes, newest first
        run = 0  # how many of them are byte-fallback tokens in a row
        ids = (i for i in reversed(self._ids) if i not in self._special)
        for token in (self._tokenizer.convert_ids_to_tokens(i) for i in ids):
            byte = _BYTE_TOKEN.fullmatch(token)
            if byte is not None and run == len(tail):
                run += 1
            if byte is not None:
                tail.append(bytes([int(byte.group(1), 16)]))
            elif self._byte_level:
                tail.append(_byte_level_bytes(token))
            else:
                tail.append(token.encode("utf-8"))  # text: whole characters
            if sum(map(len, tail)) >= 4 and run < len(tail):  # a character's most bytes
                break
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        decoder.decode(b"".join(reversed(tail)))
        pending: bytes = decoder.getstate()[0]
        if not pending:
            return 0
        return run if run >= len(pending) else 1

    def _release(self, end: int) -> str:
        delta = self.text[self._emitted : end]
        self._emitted = max(end, self._emitted)
        return delta


@cache
def _byte_alphabet() -> dict[str, int]:
    """The byte each character of a byte-level BPE token stands for (GPT-2's table)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table: dict[int, str] = bytes_to_unicode()  # type: ignore[no-untyped-call]
    return {char: byte for byte, char in table.items()}


def _byte_level_bytes(token: str) -> bytes:
    """The bytes a byte-level BPE token stands for."""
    alphabet = _byte_alphabet()
    return b"".join(
        bytes([alphabet[char]]) if char in alphabet else char.encode("utf-8") for char in token
    )


def _first_stop(text: str, stops: list[str], start: int) -> int | None:
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def _longest(stops: list[str]) -> int:
    return max((len(s) for s in stops), default=0)


def _partial_stop_length(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:size]):
                best = size
                break
    return best
