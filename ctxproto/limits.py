"""Input limits: how much ctxproto reads from a file, and how much of it an error quotes.

Requests and configs come from users, scripts and other programs, so their size
is not ours to trust: a 50 MB request took 1.2 GB to parse, ``/dev/zero`` as a
request ran out of memory, and an error about a 20 MB request printed all of it.
Files are therefore read with a bounded read (one byte past the cap is enough to
refuse), and error messages quote input through ``excerpt`` only. The limits
are documented in ``docs/limits.md``.
"""

from __future__ import annotations

import reprlib
from pathlib import Path

from ctxproto.errors import ConfigError

__all__ = [
    "EXCERPT_CHARS",
    "MAX_CONFIG_BYTES",
    "MAX_KEY_FILE_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_YAML_DEPTH",
    "excerpt",
    "read_text_capped",
]

MAX_REQUEST_BYTES = 16 * 1024 * 1024
"""Largest chat request file read (``ctxproto run --request``, ``ChatRequest.from_json_file``)."""

MAX_CONFIG_BYTES = 1024 * 1024
"""Largest YAML config file read (pipeline and chatbot configs)."""

MAX_KEY_FILE_BYTES = 64 * 1024
"""Largest API key file read (the proxy's ``tenants[i].key_file``): it holds one key."""

MAX_YAML_DEPTH = 64
"""Deepest nesting of mappings and sequences a YAML config may have."""

EXCERPT_CHARS = 80
"""Most characters of a user's input that an error message quotes."""


def _bounded_repr() -> reprlib.Repr:
    # reprlib stops descending and listing early, so the work is bounded even
    # for a huge or deeply shared structure, not just the printed text.
    shape = reprlib.Repr()
    shape.maxlevel = 3
    shape.maxlist = shape.maxtuple = shape.maxset = shape.maxdict = 6
    shape.maxstring = shape.maxother = EXCERPT_CHARS
    return shape


_REPR = _bounded_repr()


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, saying how long the text was.

    Every error message that quotes input goes through here, so that a bad
    20 MB field yields one readable line rather than 20 MB of stderr.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}… ({len(value)} chars)"
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def read_text_capped(
    path: str | Path, *, limit: int, what: str, key: str | None = None, secret: bool = False
) -> str:
    """The UTF-8 text of ``path``, refused with a ``ConfigError`` when larger than ``limit`` bytes.

    ``what`` names the file's role in messages ("request", "config"). At most
    ``limit + 1`` bytes are read, so an endless file (``/dev/zero``) is refused
    as quickly as a large one. A ``secret`` file (an API key) is refused without
    quoting the byte that is not UTF-8.
    """
    file = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}", file=file, key=key) from exc
    if len(data) > limit:
        raise ConfigError(
            f"the {what} is larger than the {_size(limit)} limit (see docs/limits.md)",
            file=file,
            key=key,
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = "" if secret else f" (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        raise ConfigError(f"the {what} is not UTF-8 text{where}", file=file, key=key) from None


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"
