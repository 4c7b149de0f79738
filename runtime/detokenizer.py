"""Turning generated token ids into streamed text, with stop strings.

Two things make this more than ``tokenizer.decode``: a byte-level BPE token can end
in the middle of a UTF-8 character (held back until the character completes, and
dropped if the answer ends first), and
a stop string can arrive split over several tokens, so text that might be the start
of a stop string is held back too — a streaming client never receives text that the
final answer does not contain (the rule vLLM's detokenizer follows).
"""

from __future__ import annotations

from typing import Any

__all__ = ["IncrementalDetokenizer"]

_INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    """Accumulates output tokens of one request and hands out safe text deltas."""

    def __init__(self, tokenizer: Any, stop: list[str]) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
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
        """``end`` moved back over the replacement characters of bytes still incomplete
        there; never into text already streamed."""
        while end > self._emitted and self.text[end - 1] == _INCOMPLETE:
            end -= 1
        return end

    def _release(self, end: int) -> str:
        delta = self.text[self._emitted : end]
        self._emitted = max(end, self._emitted)
        return delta


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
