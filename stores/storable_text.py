"""Text a store can hold: valid Unicode, and for PostgreSQL no U+0000.

A lone surrogate is what Python makes of a file name that is not UTF-8
(``caf\\udce9.md``: ``os.fsdecode`` keeps the stray byte as one), so a folder
indexed as it is may hand one over in an id or a source. No UTF-8 encoder takes
it, and a driver's ``UnicodeEncodeError`` escaped from the middle of a write (or
a key's encoding) with no store named. Each store asks here first: it refuses
such text before it writes, naming it, and a lookup by it matches nothing, as
nothing stored holds it.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["unstorable"]


def unstorable(value: object, *, nul: bool = False) -> bool:
    """Whether a text anywhere in ``value`` (keys of mappings included) holds a lone
    surrogate, or with ``nul`` a U+0000, which neither a PostgreSQL ``text`` column
    nor ``jsonb`` can store (a Redis key or value can)."""
    if isinstance(value, str):
        if nul and "\x00" in value:
            return True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, Mapping):
        return any(
            unstorable(key, nul=nul) or unstorable(item, nul=nul) for key, item in value.items()
        )
    if isinstance(value, list | tuple):
        return any(unstorable(item, nul=nul) for item in value)
    return False
